"""The desk as a process: ``pretrade desk``, and the one ``pretrade serve --desk`` runs beside it.

:class:`DeskServer` binds the web server on the desk's loop (tests run it in
a thread); :func:`run_desk` is ``pretrade desk`` until SIGTERM or SIGINT;
:func:`desk_beside` is what ``pretrade serve`` wraps the gateway in when
``desk_listen`` is set: a ``pretrade desk`` child process pointed at this
server, dying with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

from aiohttp import web

from pretrade.app.config import (
    DEFAULT_DESK_LISTEN,
    ConfigError,
    Settings,
    child_environment,
    is_loopback,
    parse_listen,
)
from pretrade.app.lifetime import KeptChild
from pretrade.cli.client import GatewayClient
from pretrade.desk.gateway import DeskError, DeskGateway
from pretrade.desk.web import Desk
from pretrade.engine.errors import CannotListen

log = logging.getLogger("pretrade.desk")

#: How long a stopped desk child may take to close its streams.
STOP_SECONDS = 5.0
#: The settings a desk child gets from its server, through its environment.
_CHILD_SETTINGS = ("desk_listen", "desk_tls_ca", "desk_client_cert", "desk_client_key",
                   "auth", "log_level", "log_format")


def gateway_target(settings: Settings) -> str:
    """Where the desk calls: ``desk_gateway``, else this server's ``listen`` (a wildcard
    host as the loopback address)."""
    if settings.desk_gateway:
        return settings.desk_gateway
    return _reachable(settings.listen)


def stream_gateway_target(settings: Settings) -> str:
    """Where the desk opens portfolio streams: ``desk_stream_gateway``, else this server's
    ``stream_listen`` (streams apart from the orders), else :func:`gateway_target`."""
    if settings.desk_stream_gateway:
        return settings.desk_stream_gateway
    if settings.stream_listen and not settings.desk_gateway:
        return _reachable(settings.stream_listen)
    return gateway_target(settings)


def _reachable(listen: str) -> str:
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def desk_client(settings: Settings, target: str | None = None) -> GatewayClient:
    """The desk's view of the gateway: its target and TLS files (the token is per session)."""
    return GatewayClient(target or gateway_target(settings), tls_ca=settings.desk_tls_ca,
                         tls_cert=settings.desk_client_cert, tls_key=settings.desk_client_key)


def check_desk_settings(settings: Settings) -> str:
    """The desk's listen address; ConfigError for settings it cannot run with."""
    listen = settings.desk_listen or DEFAULT_DESK_LISTEN
    host, _ = parse_listen(listen)
    if settings.auth == "none" and not is_loopback(host):
        raise ConfigError(f"desk_listen={listen!r}: auth = 'none' makes every visitor an "
                          "admin, so the desk serves it on a loopback address only")
    if (settings.desk_client_cert is None) != (settings.desk_client_key is None):
        raise ConfigError("desk_client_cert and desk_client_key go together")
    return listen


class DeskServer:
    """The desk's web server on the running loop: :meth:`start`, then :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.listen = check_desk_settings(settings)
        self.client = desk_client(settings)
        streams = stream_gateway_target(settings)
        self.streams = desk_client(settings, streams) if streams != self.client.target else None
        self.auth = settings.auth
        self.port = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.desk: Desk | None = None

    async def start(self) -> int:
        """Bind and serve; the port. CannotListen when the address cannot be bound."""
        self.desk = Desk(DeskGateway(self.client, self.streams), self.auth)
        self._runner = web.AppRunner(self.desk.application(), access_log=None,
                                     handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        host, port = parse_listen(self.listen)
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await self.stop()
            raise CannotListen(f"the desk cannot listen on {self.listen} "
                               f"({error.strerror or error}): choose another --listen "
                               "HOST:PORT (desk_listen)") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        return self.port

    async def stop(self) -> None:
        if self.desk is not None:
            await self.desk.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.desk is not None:
            await self.desk.gateway.close()
            self.desk = None


async def _serve(settings: Settings) -> int:
    server = DeskServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except DeskError as error:
        log.critical("%s", error.message)
        return 2
    access = ("no sign-in: everybody is admin" if server.auth == "none"
              else "sign in with a bearer token")
    print(f"pretrade risk desk on {server.url} (gateway {server.client.target}; {access})",
          flush=True)
    if not is_loopback(parse_listen(server.listen)[0]):
        log.warning("the desk serves plain HTTP on %s: bearer tokens typed into it cross "
                    "the network in clear; put TLS in front of it", server.listen)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


def run_desk(settings: Settings) -> int:
    """``pretrade desk``: serve the page until SIGTERM or SIGINT; the exit status.

    Raises ConfigError (bad settings) or CannotListen before serving.
    """
    return asyncio.run(_serve(settings))


@contextlib.contextmanager
def desk_beside(settings: Settings) -> Iterator[None]:
    """Run ``pretrade desk`` against this server meanwhile, when ``desk_listen`` is set."""
    if not settings.desk_listen:
        yield
        return
    check_desk_settings(settings)
    if not settings.desk_gateway and any(
            listen and parse_listen(listen)[1] == 0
            for listen in (settings.listen, settings.stream_listen)):
        raise ConfigError("desk_listen needs the gateway on a fixed port: set --listen "
                          "(and --stream-listen) HOST:PORT, not port 0, or desk_gateway")
    # Started again when it ends on its own (the sync process's supervision round).
    desk = KeptChild(["desk"], child_environment(settings, _CHILD_SETTINGS, {
        "desk_gateway": gateway_target(settings),
        "desk_stream_gateway": stream_gateway_target(settings)}), "risk desk")
    try:
        yield
    finally:
        desk.stop(STOP_SECONDS)
