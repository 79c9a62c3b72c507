"""The risk desk's real parts for its tests: the desk on its own loop, tokens, an HTTP client.

:class:`DeskThread` runs :class:`pretrade.desk.process.DeskServer` on an
asyncio loop in a background thread, in front of a real gateway
(``conftest.GatewayThread``); :class:`WebClient` speaks plain HTTP to it
(``http.client``) with a cookie jar of one cookie, and reads its
server-sent events line by line.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from pretrade.api.access import new_token, token_entry
from pretrade.app.config import Settings
from pretrade.desk.process import DeskServer

T = TypeVar("T")

#: name: (role, accounts)
DESK_PRINCIPALS = {
    "trader-1": ("trader", ["ACC-1"]),
    "operator": ("risk_operator", []),
    "root": ("admin", []),
}


@dataclass(frozen=True)
class DeskTokens:
    path: Path
    by_name: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.by_name[name]


def write_tokens(directory: Path) -> DeskTokens:
    """A tokens file of :data:`DESK_PRINCIPALS`, made as ``pretrade token`` makes them."""
    by_name = {name: new_token() for name in DESK_PRINCIPALS}
    path = directory / "tokens.toml"
    path.write_text("\n".join(token_entry(name, role, accounts, by_name[name])
                              for name, (role, accounts) in DESK_PRINCIPALS.items()))
    return DeskTokens(path, by_name)


#: ACC-1's 100 AAPL bought at $68.3378 and priced there, at 50% initial and 25% maintenance
#: margin long, with the cash to cover the initial margin exactly: equity = margin used.
MARGIN_CASH = 34_168_900                    # $3,416.89 = 50% of $6,833.78
MAINTENANCE = 17_084_450                    # 25% of $6,833.78
#: A last price at which equity falls below the maintenance margin: at $40, equity is
#: $3,416.89 - $2,833.78 = $583.11, under the $1,000.00 maintenance margin.
CALLING_PRICE = 400_000


def seed_margin(r: redis.Redis, account: str = "ACC-1", symbol: str = "AAPL") -> None:
    """Margin rates on ``symbol`` and :data:`MARGIN_CASH` in ``account``'s balances."""
    r.hset(f"instrument:{symbol}", mapping={
        "initial_margin_long_bps": 5_000, "initial_margin_short_bps": 15_000,
        "maintenance_margin_long_bps": 2_500, "maintenance_margin_short_bps": 7_500})
    r.hset(f"balances:{{{account}}}", "cash", MARGIN_CASH)


class DeskThread:
    """A desk on its own loop in a thread, calling the gateway at ``gateway_target``."""

    def __init__(self, gateway_target: str, auth: str = "tokens") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="desk", daemon=True)
        self.thread.start()
        settings = Settings(desk_listen="127.0.0.1:0", desk_gateway=gateway_target, auth=auth)
        self.server: DeskServer = self.run(self._build(settings))
        self.port: int = self.run(self.server.start())
        self.url = self.server.url

    @staticmethod
    async def _build(settings: Settings) -> DeskServer:
        return DeskServer(settings)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class WebClient:
    """One browser's worth of HTTP: requests with its session cookie, and event streams."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""
        self.last_headers: dict[str, str] = {}

    def request(self, method: str, path: str, body: object = None,
                content_type: str = "application/json", raw: bytes | None = None
                ) -> tuple[int, Any]:
        """``(status, JSON body)``; a Set-Cookie of the answer is kept for the next."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": content_type}
        if self.cookie:
            headers["Cookie"] = self.cookie
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            self.last_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        cookie = self.last_headers.get("set-cookie", "")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        try:
            return response.status, json.loads(payload) if payload else None
        except ValueError:
            return response.status, payload.decode(errors="replace")

    def sign_in(self, token: str) -> dict[str, Any]:
        status, body = self.request("POST", "/api/session", {"token": token})
        assert status == 200, body
        return dict(body)

    def events(self, path: str) -> EventReader:
        return EventReader(self.port, path, self.cookie)


class EventReader:
    """Server-sent events from one stream: :meth:`wait_for` an event that satisfies a test."""

    def __init__(self, port: int, path: str, cookie: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.connection.request("GET", path, headers={"Cookie": cookie,
                                                       "Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.seen: list[tuple[str, Any]] = []

    def next_event(self) -> tuple[str, Any]:
        name, data = "", []
        while True:
            line = self.response.readline()
            if not line:
                raise AssertionError(f"the event stream ended; seen: {self.seen[-5:]}")
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                name = text[len("event: "):]
            elif text.startswith("data: "):
                data.append(text[len("data: "):])
            elif text == "" and name:
                event = (name, json.loads("\n".join(data)))
                self.seen.append(event)
                return event

    def wait_for(self, name: str, accept: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event, data = self.next_event()
            if event == name and accept(data):
                return data
        raise AssertionError(f"no {name!r} event as wanted within {timeout} s; "
                             f"seen: {self.seen[-5:]}")

    def close(self) -> None:
        self.connection.close()
