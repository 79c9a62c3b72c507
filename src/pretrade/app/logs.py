"""The server's log: text or JSON lines, and a rate limit no client can talk past.

``log_format = "json"`` writes one JSON object per line with the fields a log
pipeline indexes: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger``, ``message``, and whatever the call passed as ``extra=`` (the
servicer and access control pass ``account`` and ``order_id`` where the
request has them), plus ``exception`` with a traceback.

:class:`RateLimit` bounds what one logger writes with one message template
(the "reason" of a line: its format string before the arguments): a token
bucket of ``rate`` lines per second, bursts of as many. Past that, lines are
counted, not written, and once the bucket has room again one line says
``suppressed K similar lines`` (for that logger and template). Denials and
other per-request lines therefore cannot flood the log, however fast a
client sends, while every distinct kind of line still appears.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}
#: (logger, template) buckets kept at most; the oldest idle ones go first.
MAX_BUCKETS = 4096
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Bucket:
    __slots__ = ("level", "suppressed", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.suppressed = 0
        self.level = logging.INFO


class RateLimit(logging.Filter):
    """A handler filter: at most ``rate`` lines per second per (logger, template).

    The summary of suppressed lines is written through ``handler`` (the one
    the filter is attached to) when the bucket has room again, checked on
    every record the handler sees.
    """

    def __init__(self, handler: logging.Handler, rate: int,
                 clock: Any = time.monotonic) -> None:
        super().__init__()
        self.handler = handler
        self.rate = float(rate)
        self.clock = clock
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self._owing: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_pretrade_summary", False):
            return True
        now = self.clock()
        if self._owing:
            self._summarise(now)
        key = (record.name, record.msg if isinstance(record.msg, str) else repr(record.msg))
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._evict()
            bucket = self.buckets[key] = _Bucket(self.rate, now)
        else:
            self._refill(bucket, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        bucket.suppressed += 1
        bucket.level = max(bucket.level, record.levelno)
        self._owing.add(key)
        return False

    def _refill(self, bucket: _Bucket, now: float) -> None:
        bucket.tokens = min(self.rate, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now

    def _summarise(self, now: float) -> None:
        for key in list(self._owing):
            bucket = self.buckets[key]
            self._refill(bucket, now)
            if bucket.tokens < 1:
                continue
            bucket.tokens -= 1
            self._owing.discard(key)
            count, bucket.suppressed = bucket.suppressed, 0
            summary = logging.LogRecord(
                key[0], bucket.level, __file__, 0,
                "suppressed %d similar lines (logger %s: %r) past %d a second",
                (count, key[0], key[1], int(self.rate)), None)
            summary._pretrade_summary = True
            summary.suppressed = count
            self.handler.handle(summary)

    def _evict(self) -> None:
        # Buckets that owe no summary, oldest first (dicts keep insertion order).
        for key in list(self.buckets):
            if key not in self._owing:
                del self.buckets[key]
                if len(self.buckets) < MAX_BUCKETS // 2:
                    return


    def flush_summaries(self) -> None:
        """Write the summary of every bucket that suppressed lines, now (at exit)."""
        for key in list(self._owing):
            self.buckets[key].tokens = max(self.buckets[key].tokens, 1.0)
        self._summarise(self.clock())


class RateLimitedHandler(logging.StreamHandler):
    """stderr, through a :class:`RateLimit`; closing it writes what the limit still owes."""

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.limit = RateLimit(self, rate)
        self.addFilter(self.limit)

    def close(self) -> None:
        # logging.shutdown (at exit) closes every handler: no summary is lost.
        self.limit.flush_summaries()
        super().close()


def configure_logging(level: str, log_format: str = "text", rate: int = 10) -> logging.Handler:
    """The root logger's one handler (stderr): ``log_format`` lines, rate-limited."""
    handler = RateLimitedHandler(rate)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
