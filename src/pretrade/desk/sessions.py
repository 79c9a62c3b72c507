"""Who is signed in to the desk: an HttpOnly cookie's random id, the token kept in memory.

The browser never holds the bearer token after it has typed it: the sign-in
form posts it once, and the desk answers with a session cookie (HttpOnly,
SameSite=Strict) whose random id maps to the token here, in this process's
memory only. Nothing writes a token to a log, a URL or a file; a restart of
the desk signs everybody out.
"""

from __future__ import annotations

import collections
import secrets
import time
from dataclasses import dataclass, field

#: Sessions held at once; the least recently used goes first.
MAX_SESSIONS = 1_000
#: A session unused this long is forgotten.
IDLE_SECONDS = 12 * 3600
#: Chart samples a session keeps (one a second: the last five minutes).
SAMPLES = 300
COOKIE = "pretrade_desk"


@dataclass
class Session:
    """One signed-in user: the token its calls carry and who the gateway says it is."""

    token: str | None
    principal: str
    role: str
    used: float = field(default_factory=time.monotonic)
    #: The chart's history: ``{"t": ms, "rate": decisions/s, "p50_us", "p99_us"}``.
    samples: collections.deque[dict[str, float | None]] = field(
        default_factory=lambda: collections.deque(maxlen=SAMPLES))


class SessionStore:
    """Session id -> :class:`Session`, bounded in count and idle time."""

    def __init__(self) -> None:
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session: Session) -> str:
        """Keep ``session``; the new id for its cookie."""
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = session
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        self._expire()
        session = self._sessions.get(session_id)
        if session is not None:
            session.used = time.monotonic()
            self._sessions.move_to_end(session_id)
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        oldest = time.monotonic() - IDLE_SECONDS
        while self._sessions:
            session_id, session = next(iter(self._sessions.items()))
            if session.used >= oldest:
                return
            del self._sessions[session_id]
