"""The archiver as a process: ``pretrade archive``, and the one ``pretrade serve`` runs beside it.

:func:`run_archiver` is ``pretrade archive``: one :class:`~pretrade.audit.archive.Archiver`
until SIGTERM or SIGINT. It runs in a process of its own, never in a server
process: encoding rows and talking to PostgreSQL take no time from orders.

:func:`archiver_beside` is what ``pretrade serve --archive`` wraps the gateway
in: without ``database_url`` it starts an embedded PostgreSQL
(:mod:`pretrade.app.devpostgres`, data in ``<data_dir>/postgres``), then an
archiver child process that dies with the server (``PR_SET_PDEATHSIG``) and
is started again when it ends on its own (:class:`~pretrade.app.lifetime.KeptChild`). At
the end the gateway has written its last audit entries to Redis; the
archiver is then stopped, and what it did not archive yet stays in the
stream for the next one.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pretrade.app.config import Settings, child_environment, parse_listen, redacted_url
from pretrade.app.lifetime import KeptChild
from pretrade.audit.archive import Archiver, ArchiveStore
from pretrade.engine.errors import EmbeddedServerFailed

log = logging.getLogger("pretrade.archive")

#: How long a stopped archiver child may take to finish its round.
STOP_SECONDS = 10.0
#: The settings an archiver child gets from its server, through its environment.
_CHILD_SETTINGS = ("redis_username", "redis_password", "audit_retain_ms",
                   "archive_claim_idle_ms", "archive_metrics_listen", "log_level")


def run_archiver(settings: Settings, consumer: str | None = None) -> int:
    """``pretrade archive``: archive until SIGTERM or SIGINT; the exit status."""
    import redis

    assert settings.redis_url is not None and settings.database_url is not None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    client = redis.Redis.from_url(settings.redis_url, username=settings.redis_username or None,
                                  password=settings.redis_password or None,
                                  socket_timeout=10, socket_connect_timeout=10)
    archiver = Archiver(client, ArchiveStore(settings.database_url), consumer=consumer,
                        claim_idle_ms=settings.archive_claim_idle_ms,
                        retain_ms=settings.audit_retain_ms)
    log.info("archiving %s into %s", redacted_url(settings.redis_url),
             redacted_url(settings.database_url))
    exporter = None
    if settings.archive_metrics_listen:
        try:
            exporter = serve_archive_metrics(archiver, settings.archive_metrics_listen)
        except OSError as error:
            log.critical("cannot serve the archiver's metrics on %s (%s): choose another "
                         "archive_metrics_listen", settings.archive_metrics_listen,
                         error.strerror or error)
            client.close()
            return 4
    try:
        archiver.run(stop)
    finally:
        if exporter is not None:
            exporter.shutdown()
        client.close()
    return 0


class ArchiveCollector(Collector):
    """The archiver's figures, read at scrape time."""

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    def collect(self) -> Iterator[Metric]:
        stats = self.archiver.stats
        yield CounterMetricFamily("pretrade_audit_archived_entries", "Audit stream entries "
                                  "archived into PostgreSQL and acknowledged.",
                                  value=stats.entries)
        yield CounterMetricFamily("pretrade_audit_archived_rows", "Rows written (one per "
                                  "decision or halt change).", value=stats.rows)
        yield CounterMetricFamily("pretrade_audit_archive_duplicates", "Rows that were in "
                                  "PostgreSQL already (an entry delivered twice).",
                                  value=stats.duplicates)
        yield CounterMetricFamily("pretrade_audit_archive_claimed", "Entries taken over "
                                  "from archivers that stopped acknowledging.",
                                  value=stats.claimed)
        yield CounterMetricFamily("pretrade_audit_archive_trimmed", "Entries trimmed from "
                                  "the stream once archived.", value=stats.trimmed)
        yield CounterMetricFamily("pretrade_audit_archive_errors", "Failed rounds (retried).",
                                  value=stats.errors)
        yield GaugeMetricFamily("pretrade_audit_archive_lag_seconds", "From the newest "
                                "archived entry's stream time to its archiving.",
                                value=stats.lag_ms / 1000)


def serve_archive_metrics(archiver: Archiver, listen: str) -> Any:
    """``/metrics`` of the archiver on ``listen`` (prometheus-client's server, a thread)."""
    registry = CollectorRegistry()
    registry.register(ArchiveCollector(archiver))
    host, port = parse_listen(listen)
    server, _ = start_http_server(port, addr=host, registry=registry)
    log.info("archiver metrics on http://%s:%d/metrics", host, server.server_port)
    return server


@contextlib.contextmanager
def archiver_beside(settings: Settings, redis_url: str) -> Iterator[str | None]:
    """Run the archiver (and, without ``database_url``, an embedded PostgreSQL) meanwhile.

    Yields the database URL, or None when ``settings.archive`` is off (then
    nothing is started).
    """
    if not settings.archive:
        yield None
        return
    with contextlib.ExitStack() as stack:
        database_url = settings.database_url
        if database_url is None:
            from pretrade.app.devpostgres import PostgresServer

            data_dir = Path(settings.data_dir) / "postgres"
            data_dir.mkdir(parents=True, exist_ok=True)
            try:
                embedded = stack.enter_context(PostgresServer(data_dir=data_dir))
            except RuntimeError as error:  # no binary, an unreachable directory, no port
                raise EmbeddedServerFailed(f"the embedded PostgreSQL: {error}") from None
            log.info("embedded PostgreSQL pid %d at %s (data in %s)", embedded.pid,
                     embedded.url, data_dir)
            database_url = embedded.url
        # Started again when it ends on its own (checked by the sync process's
        # supervision round): until then the entries wait in the stream.
        archiver = KeptChild(["archive"], child_environment(settings, _CHILD_SETTINGS, {
            "redis_url": redis_url, "database_url": database_url}), "archiver")
        stack.callback(archiver.stop, STOP_SECONDS,
                       "audit entries since then wait in the Redis stream for the next archiver")
        yield database_url
