"""The wire figures again, from a C++ client (bench/loadgen), so the client is not the limit.

On a 2-core machine the Python client of bench/test_grpc.py costs about as much CPU per
call as the server it measures, and takes the core the server would use. The C++ load
generator (``make loadgen``: built from proto/pretrade/v1/risk.proto against Debian's
gRPC C++ library) costs a fraction of that. Each figure here has its Python-client
twin in bench/test_grpc.py; ``make bench`` records both side by side.

1. EvaluateOrder against the empty echo handler on the same server, alternately on one
   connection (durable decisions off and on).
2. Unary EvaluateOrder throughput, 8 connections with one call in flight each.
3. Batch EvaluateOrders, 1,000 orders per message (durable decisions off and on).
4. OrderSession against unary EvaluateOrder on one connection, alternately on one server
   (issue 16's targets: at least 3x the unary orders/s, p50 per order at most unary's).

With ``--benchmark-disable`` (CI) each runs for a fraction of a second and checks that
every order was decided and approved: the load generator itself cannot rot.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hdr import scale
from servers import cpu_seconds, start_bench_server
from test_grpc import redis_url  # noqa: F401  (the seeded Redis: accounts ACC-0..ACC-15)

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "build" / "loadgen" / "pretrade-loadgen"
ACCOUNTS = 16
#: How long each load generator run lasts, benchmarking and in CI's smoke run.
FULL_SECONDS, SMOKE_SECONDS = 5.0, 0.3


@pytest.fixture(scope="module")
def loadgen() -> Path:
    """The C++ load generator, built (and its packages installed) by ``make loadgen``."""
    built = subprocess.run(["make", "--no-print-directory", "loadgen"], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    if built.returncode != 0:
        pytest.fail(f"make loadgen failed:\n{built.stdout}\n{built.stderr}")
    return LOADGEN


def run(binary: Path, target: str, mode: str, seconds: float, prefix: str,
        **flags: int) -> dict[str, Any]:
    """One run of the load generator; its JSON line, after checking that nothing failed."""
    command = [str(binary), "--target", target, "--mode", mode, "--seconds", str(seconds),
               "--account", "ACC", "--accounts", str(ACCOUNTS), "--prefix", prefix]
    for name, value in flags.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    assert finished.returncode == 0, finished.stderr
    result: dict[str, Any] = json.loads(finished.stdout)
    assert result["errors"] == 0, result["last_error"]
    # Every account has limits far above what the run can reach: all approved.
    assert result["approved"] == result["orders"], result["first_reject_codes"]
    return result


def _µs(ns: int) -> str:
    return f"{ns / 1000:,.1f} µs"


def _percentiles(summary: dict[str, int]) -> str:
    return (f"p50 {_µs(summary['p50_ns'])}, p99 {_µs(summary['p99_ns'])}, "
            f"p99.9 {_µs(summary['p999_ns'])} ({summary['count']:,} calls)")


@pytest.mark.benchmark(group="loadgen")
@pytest.mark.parametrize("audit_wait", [True, False], ids=["audit-wait", "no-audit-wait"])
@pytest.mark.parametrize("durable", [False, True], ids=["durable-off", "durable-on"])
def test_cpp_client_evaluate_order_against_the_echo(benchmark, latency, redis_url,  # noqa: F811
                                                    tmp_path, loadgen, durable, audit_wait):
    """What each Redis write before the answer costs (issue 16, item 5): the decided-order
    journal (``durable_decisions``) and the audit record (``audit_before_answer``), each
    on and off, against the echo on the same server."""
    server = start_bench_server(redis_url, tmp_path / "pair.table", durable_decisions=durable,
                                audit_before_answer=audit_wait)
    try:
        seconds = scale(benchmark.disabled, FULL_SECONDS, SMOKE_SECONDS)
        result = run(loadgen, server.target, "pair", seconds,
                     f"pair{int(durable)}{int(audit_wait)}", threads=1)
        assert result["echo_latency"]["count"] == result["latency"]["count"] > 0
        mode = ("durable decisions on" if durable else "durable decisions off") \
            + ("" if audit_wait else ", answers not waiting for their audit record")
        ratio = result["latency"]["p50_ns"] / result["echo_latency"]["p50_ns"]
        latency.figure(f"C++ client: EvaluateOrder ({mode})", _percentiles(result["latency"]))
        latency.figure(f"C++ client: empty echo ({mode} run)",
                       _percentiles(result["echo_latency"]))
        latency.figure(f"C++ client: EvaluateOrder p50 / echo p50 ({mode})", f"{ratio:.2f}x")
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        server.close()


@pytest.mark.benchmark(group="loadgen")
def test_cpp_client_unary_throughput(benchmark, latency, redis_url,  # noqa: F811
                                     tmp_path, loadgen):
    server = start_bench_server(redis_url, tmp_path / "unary.table")
    try:
        seconds = scale(benchmark.disabled, FULL_SECONDS, SMOKE_SECONDS)
        cpu_before = cpu_seconds([server.pid])
        result = run(loadgen, server.target, "unary", seconds, "unary", threads=8)
        cpu = cpu_seconds([server.pid]) - cpu_before
        assert result["orders"] > 0
        latency.figure("C++ client: unary EvaluateOrder, 8 connections, 1 server process",
                       f"{result['orders_per_second']:,.0f} orders/s; server CPU "
                       f"{cpu / result['orders'] * 1e6:.1f} µs/order; "
                       + _percentiles(result["latency"]))
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        server.close()


@pytest.mark.benchmark(group="loadgen")
@pytest.mark.parametrize("durable", [False, True], ids=["durable-off", "durable-on"])
def test_cpp_client_batch_throughput(benchmark, latency, redis_url,  # noqa: F811
                                     tmp_path, loadgen, durable):
    server = start_bench_server(redis_url, tmp_path / "batch.table", durable_decisions=durable)
    try:
        seconds = scale(benchmark.disabled, FULL_SECONDS, SMOKE_SECONDS)
        cpu_before = cpu_seconds([server.pid])
        result = run(loadgen, server.target, "batch", seconds, f"batch{int(durable)}",
                     threads=2, batch=1_000)
        cpu = cpu_seconds([server.pid]) - cpu_before
        assert result["orders"] >= 1_000
        mode = "durable decisions on" if durable else "durable decisions off"
        latency.figure(f"C++ client: batch EvaluateOrders, 1000 orders per message, "
                       f"2 connections, 1 server process, {mode}",
                       f"{result['orders_per_second']:,.0f} orders/s; server CPU "
                       f"{cpu / result['orders'] * 1e6:.2f} µs/order; per message "
                       + _percentiles(result["latency"]))
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        server.close()


@pytest.mark.benchmark(group="loadgen")
def test_cpp_client_order_session_against_unary_on_one_connection(
        benchmark, latency, redis_url, tmp_path, loadgen):  # noqa: F811
    server = start_bench_server(redis_url, tmp_path / "session.table")
    try:
        seconds = scale(benchmark.disabled, FULL_SECONDS / 2, SMOKE_SECONDS)
        runs: dict[str, list[dict[str, Any]]] = {"unary": [], "session": [], "session-1": []}
        cpu: dict[str, float] = dict.fromkeys(runs, 0.0)
        for round_ in range(scale(benchmark.disabled, 2, 1)):  # alternately, side by side
            for name, mode, flags in (("unary", "unary", {}),
                                      ("session", "session", {"inflight": 64}),
                                      ("session-1", "session", {"inflight": 1})):
                before = cpu_seconds([server.pid])
                runs[name].append(run(loadgen, server.target, mode, seconds,
                                      f"{name}{round_}", threads=1, **flags))
                cpu[name] += cpu_seconds([server.pid]) - before
        rate = {name: sum(r["orders"] for r in rs) / sum(r["seconds"] for r in rs)
                for name, rs in runs.items()}
        p50 = {name: sorted(r["latency"]["p50_ns"] for r in rs)[len(rs) // 2]
               for name, rs in runs.items()}
        per_order = {name: cpu[name] / sum(r["orders"] for r in rs) * 1e6
                     for name, rs in runs.items()}
        assert all(r["orders"] > 0 for rs in runs.values() for r in rs)
        for name, label in (("unary", "unary EvaluateOrder, one call in flight"),
                            ("session", "OrderSession, 64 orders in flight"),
                            ("session-1", "OrderSession, 1 order in flight")):
            latency.figure(f"C++ client, one connection: {label}",
                           f"{rate[name]:,.0f} orders/s; server CPU {per_order[name]:.1f} "
                           f"µs/order; " + _percentiles(runs[name][-1]["latency"]))
        latency.figure("OrderSession orders/s / unary orders/s, one connection (target >= 3x)",
                       f"{rate['session'] / rate['unary']:.1f}x")
        latency.figure("OrderSession p50 per order / unary p50, 1 in flight (target <= 1x)",
                       f"{p50['session-1'] / p50['unary']:.2f}x")
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        server.close()
