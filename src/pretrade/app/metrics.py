"""The Prometheus ``/metrics`` endpoint of one server process.

Nothing on the order path touches Prometheus. The compiled engine counts its
decisions in its own C memory (``Engine.metrics``: verdicts, rejection codes,
an engine-time histogram of fixed buckets), the gRPC interceptor and the sync
count in plain Python memory (:mod:`pretrade.engine.tally`), and the rest is
state the server keeps anyway (table counts, audit queue, stream
subscribers). :class:`GatewayCollector`, a prometheus-client custom
collector, reads all of it when Prometheus scrapes.

One endpoint per process. With ``workers`` N, server process i (from 0)
serves ``/metrics`` on the configured port + i; Prometheus scrapes each as
its own target and sums with ``sum without (instance)``. Why not one
exporter for the group: the engine's counters would have to be written by
every process into one shared cache line (the table) on every decision; and
prometheus-client's multiprocess mode needs a directory of files cleaned at
every start, supports no custom collectors and keeps a dead process's
figures. Per process, each figure is exact for the process that made it, a
worker that dies takes its figures with it, and the table gauges, which
every process reads from the one shared table, say the same on every port
(aggregate them with ``max``).

The endpoint is a small asyncio HTTP/1.0 server on the gateway's own loop
(no thread reads the gateway's state while the loop changes it): GET or HEAD
``/metrics``, at most :data:`MAX_CONNECTIONS` at once, each bounded in time
and request size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pretrade._core import Engine, PositionTable
from pretrade._core.constants import (
    AUTO_HALT_LOSS_LIMIT,
    AUTO_HALT_REJECT_STORM,
    LATENCY_BUCKET_BOUNDS_NS,
    VERDICT_NAMES,
)
from pretrade.api.servicer import PreTradeRiskServicer
from pretrade.api.telemetry import CallMetrics
from pretrade.app.config import parse_listen
from pretrade.audit.trail import AuditTrail
from pretrade.engine.names import short_name
from pretrade.engine.tally import Buckets
from pretrade.stream.portfolio import PortfolioHub
from pretrade.v1 import risk_pb2 as pb

log = logging.getLogger("pretrade.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Scrapes served at once; more connections are closed unanswered.
MAX_CONNECTIONS = 16
#: A scrape's request must arrive within this, and be at most MAX_REQUEST_BYTES.
REQUEST_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192
#: Engine time: the core counts in ns, the histogram shows microseconds.
LATENCY_BOUNDS_US = tuple(bound / 1000 for bound in LATENCY_BUCKET_BOUNDS_NS)
#: The table's records and their capacities, as GetStatus counts them.
TABLE_KINDS = ("accounts", "instruments", "positions", "overrides", "groups", "orders")
#: AutoHalt -> the breaker's reason label.
BREAKER_REASONS = {AUTO_HALT_LOSS_LIMIT: "loss_limit", AUTO_HALT_REJECT_STORM: "reject_storm"}


def worker_listen(listen: str, worker: int) -> str:
    """The metrics address of server process ``worker`` (from 0): the port + ``worker``.

    Port 0 stays 0: every process then picks a free port of its own.
    """
    host, port = parse_listen(listen)
    if port == 0 or worker == 0:
        return listen
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + worker}"


def _histogram(name: str, documentation: str, labels: list[str],
               series: Iterable[tuple[list[str], Buckets]], scale: float = 1.0) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, buckets in series:
        family.add_metric(values, [(_bound(bound * scale), count)
                                   for bound, count in buckets.cumulative()],
                          sum_value=buckets.total * scale)
    return family


def _counters(name: str, documentation: str, label: str,
              values: dict[str, int]) -> CounterMetricFamily:
    """A counter with one label, a sample per value of it."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Gateway(Protocol):
    """What the collector reads: the parts of :class:`pretrade.app.server.Gateway`."""

    engine: Engine
    table: PositionTable
    servicer: PreTradeRiskServicer
    calls: CallMetrics
    audit: AuditTrail
    portfolio: PortfolioHub

    @property
    def update_lag(self) -> Buckets: ...

    def status(self) -> pb.ServerStatus: ...


class GatewayCollector(Collector):
    """Reads one gateway's figures at scrape time."""

    def __init__(self, gateway: Gateway, worker: int = 0) -> None:
        self.gateway = gateway
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._engine()
        yield from self._breakers()
        yield from self._grpc()
        yield from self._sync()
        yield from self._table()
        yield from self._audit()
        yield from self._streams()
        yield from self._reconciliation()

    def _process(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("pretrade_process", "This server process (1): its worker "
                                 "number (0: the table's owner) and pid.",
                                 labels=["worker", "pid"])
        info.add_metric([str(self.worker), str(os.getpid())], 1)
        yield info

    def _engine(self) -> Iterator[Metric]:
        figures = self.gateway.engine.metrics()
        checks = CounterMetricFamily("pretrade_risk_checks", "Orders the engine decided, by "
                                     "verdict (replayed: a re-sent id answered with its stored "
                                     "decision).", labels=["verdict"])
        latency = HistogramMetricFamily(
            "pretrade_risk_check_latency_microseconds",
            "Engine time of one decision (the check pipeline, its locks and its bookkeeping; "
            "not the gRPC call), by verdict.", labels=["verdict"])
        for index, verdict in sorted(VERDICT_NAMES.items()):
            checks.add_metric([verdict], figures["checks"][index])
            running = 0
            buckets = []
            for bound, count in zip((*LATENCY_BOUNDS_US, float("inf")),
                                    figures["latency"][index], strict=True):
                running += count
                buckets.append((_bound(bound), running))
            latency.add_metric([verdict], buckets,
                               sum_value=figures["latency_sum_ns"][index] / 1000)
        yield checks
        yield latency
        rejections = CounterMetricFamily(
            "pretrade_rejections", "Rejections by reject code (a decision lists every check "
            "that failed, so one rejected order may count under several codes).",
            labels=["code"])
        for code, count in sorted(figures["rejections"].items()):
            rejections.add_metric([short_name(pb.RejectCode, code)], count)
        yield rejections

    def _breakers(self) -> Iterator[Metric]:
        breakers = self.gateway.servicer.breakers
        trips = CounterMetricFamily("pretrade_circuit_breaker_trips", "Automatic halts the "
                                    "circuit breakers applied, by scope and reason.",
                                    labels=["scope", "reason"])
        for (scope, kind), count in sorted(breakers.trips.items()):
            trips.add_metric([short_name(pb.HaltScope, scope).lower(),
                              BREAKER_REASONS.get(kind, str(kind))], count)
        yield trips
        yield GaugeMetricFamily("pretrade_circuit_breaker_halts_unwritten", "Automatic halts in "
                                "force here that Redis does not hold yet.",
                                value=breakers.unwritten)

    def _grpc(self) -> Iterator[Metric]:
        calls = self.gateway.calls
        labels = ["grpc_service", "grpc_method", "grpc_type"]
        started = CounterMetricFamily("grpc_server_started", "RPCs started on the server.",
                                      labels=labels)
        for (service, method), count in sorted(calls.started.items()):
            started.add_metric([service, method, calls.types[(service, method)]], count)
        yield started
        handled = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, "
                                      "by status code.", labels=[*labels, "grpc_code"])
        for (service, method, code), count in sorted(calls.handled.items()):
            handled.add_metric([service, method, calls.types[(service, method)], code], count)
        yield handled
        yield _histogram("grpc_server_handling_seconds", "Time from the handler's start to "
                         "its end, seconds.", labels,
                         [([service, method, calls.types[(service, method)]], buckets)
                          for (service, method), buckets in sorted(calls.handling.items())])

    def _sync(self) -> Iterator[Metric]:
        # The sync runs in the sync process of ``pretrade serve``: its figures come
        # with the change feed (GetStatus's, at most a quarter of a second old);
        # liveness is the shared table's own, read now.
        status = self.gateway.status()
        yield GaugeMetricFamily("pretrade_sync_live", "1 while the table is in sync with "
                                "Redis (orders are decided), 0 while every order gets "
                                "STALE_DATA.", value=1 if self.gateway.table.sync_live else 0)
        yield GaugeMetricFamily("pretrade_sync_lost_slots", "Redis Cluster slots whose primary "
                                "the sync lost and has not re-read yet: orders with a key in "
                                "one get STALE_DATA, the rest trade.",
                                value=self.gateway.table.lost_slot_count())
        yield CounterMetricFamily("pretrade_sync_primaries_lost", "Redis Cluster primaries "
                                  "lost while following (their slots stale until re-read on "
                                  "the promoted replica).", value=status.primaries_lost)
        yield _counters("pretrade_sync_replica_reads", "Large accounts re-read "
                        "(redis_read_url): on the replica, or on the primary because the "
                        "replica failed or lagged.", "on",
                        {"replica": status.replica_reads, "primary": status.replica_fallbacks})
        yield _counters("pretrade_sync_lot_log_reads", "Large accounts with a lot log "
                        "re-read: lot by lot, or whole (a write not through pretrade_lots, a "
                        "gap in the log).", "read",
                        {"lots": status.lot_log_reads, "whole": status.lot_log_whole_reads})
        yield GaugeMetricFamily("pretrade_sync_lag_seconds", "How far the table may be behind "
                                "Redis: the age of the newest canary write seen applied.",
                                value=status.lag_ms / 1000)
        yield GaugeMetricFamily("pretrade_sync_max_lag_seconds", "The lag past which the "
                                "table is not live.", value=status.max_lag_ms / 1000)
        yield CounterMetricFamily("pretrade_sync_full_loads", "Full loads of the table from "
                                  "Redis (the first, then one per resync).",
                                  value=status.full_loads)
        yield CounterMetricFamily("pretrade_sync_resyncs", "Full loads after the first: link "
                                  "losses, gaps, a replaced database.",
                                  value=max(status.full_loads - 1, 0))
        yield CounterMetricFamily("pretrade_sync_events", "Keyspace notifications read.",
                                  value=status.events_applied)
        yield CounterMetricFamily("pretrade_sync_invalid_entities", "Entities whose Redis state "
                                  "did not parse (their orders are rejected INVALID_STATE).",
                                  value=status.invalid_entities)
        yield GaugeMetricFamily("pretrade_sync_over_capacity", "Entities that do not fit in the "
                                "table now.", value=status.capacity_exhausted)
        yield CounterMetricFamily("pretrade_price_ticks", "Price ticks applied.",
                                  value=status.price_ticks)
        yield _histogram("pretrade_position_update_lag_seconds", "From a write to Redis to its "
                         "change applied in the table, seconds: measured on the sync's own "
                         "canary key, which travels the same path (keyspace notification, "
                         "re-read, apply) as every position, limit and halt change.", [],
                         [([], self.gateway.update_lag)])

    def _table(self) -> Iterator[Metric]:
        counts = self.gateway.table.counts()
        records = GaugeMetricFamily("pretrade_table_records", "Records in use in the shared "
                                    "table, by kind (the same in every process).",
                                    labels=["kind"])
        capacity = GaugeMetricFamily("pretrade_table_capacity", "The table's fixed capacity, "
                                     "by kind.", labels=["kind"])
        for kind in TABLE_KINDS:
            records.add_metric([kind], counts[kind])
            capacity.add_metric([kind], counts[f"max_{kind}"])
        yield records
        yield capacity
        yield CounterMetricFamily("pretrade_table_orders_evicted", "Decided orders that left "
                                  "the table for their durable copy.",
                                  value=counts["orders_evicted"])

    def _audit(self) -> Iterator[Metric]:
        audit = self.gateway.audit
        yield CounterMetricFamily("pretrade_audit_written", "Audit entries written to the "
                                  "Redis stream.", value=audit.stats.written)
        yield GaugeMetricFamily("pretrade_audit_pending", "Audit entries queued, not yet "
                                "acknowledged by Redis.", value=audit.pending)
        yield CounterMetricFamily("pretrade_audit_dropped", "Audit entries dropped because "
                                  "the queue was full.", value=audit.stats.dropped)
        yield CounterMetricFamily("pretrade_audit_write_errors", "Failed writes of audit "
                                  "batches (retried).", value=audit.stats.write_errors)

    def _streams(self) -> Iterator[Metric]:
        hub = self.gateway.portfolio
        yield GaugeMetricFamily("pretrade_stream_subscribers", "StreamPortfolio calls open.",
                                value=hub.subscriber_count)
        yield CounterMetricFamily("pretrade_stream_messages", "Portfolio updates sent.",
                                  value=hub.messages_sent)

    def _reconciliation(self) -> Iterator[Metric]:
        # Scheduled beside the table writer; its figures travel with the sync's.
        status = self.gateway.status()
        yield CounterMetricFamily("pretrade_reconcile_runs", "Scheduled reconciliations of "
                                  "the table with Redis that completed.",
                                  value=status.reconcile_runs)
        yield CounterMetricFamily("pretrade_reconcile_failures", "Scheduled reconciliations "
                                  "that could not read Redis.", value=status.reconcile_failures)
        yield GaugeMetricFamily("pretrade_reconcile_differences", "Fields on which the table "
                                "and Redis disagreed at the last reconciliation (found twice "
                                "in a row).", value=status.reconcile_differences)
        yield GaugeMetricFamily("pretrade_reconcile_last_run_timestamp_seconds", "When the "
                                "last reconciliation completed (Unix time; 0: never).",
                                value=status.last_reconcile_unix_ms / 1000)


class MetricsServer:
    """``/metrics`` over HTTP for one gateway: :meth:`start`, then :meth:`stop`."""

    def __init__(self, gateway: Gateway, listen: str, worker: int = 0) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gateway, worker))
        ProcessCollector(registry=self.registry)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.scrapes = 0

    async def start(self) -> int:
        """Bind and serve; returns the port. OSError when the address cannot be bound."""
        host, port = parse_listen(self.listen)
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  reuse_address=True, limit=MAX_REQUEST_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics on http://%s:%d/metrics", shown, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            try:
                status, body = await asyncio.wait_for(self._answer(reader), REQUEST_SECONDS)
                writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: "
                             + (CONTENT_TYPE.encode() if status.startswith(b"200")
                                else b"text/plain")
                             + b"\r\nContent-Length: " + str(len(body[1])).encode()
                             + b"\r\nConnection: close\r\n\r\n" + (body[1] if body[0] else b""))
                await asyncio.wait_for(writer.drain(), REQUEST_SECONDS)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, ConnectionError) as error:
                log.debug("metrics request ended early: %r", error)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[bytes, tuple[bool, bytes]]:
        """(status line, (send the body?, body)) for one request."""
        request = await reader.readuntil(b"\r\n\r\n")
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) != 3:
            return b"400 Bad Request", (True, b"bad request\n")
        method, target = line[0], line[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", (True, b"GET or HEAD /metrics\n")
        if target != b"/metrics":
            return b"404 Not Found", (method == b"GET", b"only /metrics is served here\n")
        self.scrapes += 1
        return b"200 OK", (method == b"GET", self.render())
