"""Trading sessions on the wall clock: when a DAY order stops counting.

The session end is a time of day in UTC (the setting ``day_session_end_utc``,
``HH:MM`` or ``HH:MM:SS``). A DAY or IOC order works until the first session
end after it was decided; the servicer reads the clock and hands that instant
to the compiled core as a value (the core reads no clock).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pretrade._core.constants import TIME_IN_FORCE_NUMBERS

_GTD = TIME_IN_FORCE_NUMBERS["GTD"]
_UNTIL_SESSION_END = (TIME_IN_FORCE_NUMBERS["DAY"], TIME_IN_FORCE_NUMBERS["IOC"])

MS_PER_DAY = 86_400_000
_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?", re.ASCII)


def parse_time_of_day(text: str) -> int:
    """``HH:MM`` or ``HH:MM:SS`` (24-hour) as milliseconds after midnight; ValueError if not."""
    match = _TIME_OF_DAY.fullmatch(text)
    if match is None:
        raise ValueError(f"expected HH:MM or HH:MM:SS (UTC, 24-hour), got {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((hours * 60 + minutes) * 60 + seconds) * 1000


def next_session_end_unix_ms(now_unix_ms: int, end_of_day_ms: int) -> int:
    """The first session end strictly after ``now_unix_ms`` (both Unix ms, UTC).

    An order decided exactly at the session end belongs to the next session.
    """
    midnight = now_unix_ms - now_unix_ms % MS_PER_DAY
    end = midnight + end_of_day_ms
    return end if end > now_unix_ms else end + MS_PER_DAY


def working_until(time_in_force: int, expire_at_ms: int, session_end_ms: int) -> int:
    """When an approved order stops counting, Unix ms (0: when its fill or cancel
    is reported): a GTD order at its expiry, a DAY or IOC order at the end of
    its session (0 when none is configured). An IOC order's fill or cancel is
    reported at once, but until it is in Redis the engine cannot tell filled
    units from cancelled ones, so its reservation stands until then, or the
    session end. The compiled core's ``working_until`` is the same rule."""
    if time_in_force == _GTD:
        return expire_at_ms
    if time_in_force in _UNTIL_SESSION_END:
        return session_end_ms
    return 0


def format_unix_ms(unix_ms: int) -> str:
    """A Unix ms instant as people read it: ``2026-01-01 20:00:00.000 UTC``."""
    seconds, ms = divmod(unix_ms, 1000)
    try:
        when = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{unix_ms} (Unix ms)"
    return f"{when:%Y-%m-%d %H:%M:%S}.{ms:03d} UTC"
