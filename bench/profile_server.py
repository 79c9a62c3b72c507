"""py-spy profiles of a server process under one kind of load, summed by frame.

    .venv/bin/python bench/profile_server.py fanout   # 1,000 StreamPortfolio subscribers, ticks
    .venv/bin/python bench/profile_server.py session  # an OrderSession, 64 orders in flight
    .venv/bin/python bench/profile_server.py batch    # EvaluateOrders, 1,000 per message

Each starts a redis-server and a server over the book its benchmark uses
(``bench/test_portfolio_fanout.py``, ``bench/test_loadgen.py``), runs the load
for ``--seconds``, records the server process with ``py-spy record -f raw``
and prints the frames with the largest share of samples, on their own line
and with what they call. py-spy must be on PATH (``pip install py-spy``); the
session needs the C++ load generator (``make loadgen``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from pretrade.app.devredis import RedisServer
from servers import children_of, serve_process, start_bench_server


def _record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)),
                             "-r", "300", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fanout(seconds: float, out: Path, work: Path) -> None:
    import test_portfolio_fanout as bench

    with RedisServer(data_dir=work / "redis") as server:
        bench.seed(redis.Redis.from_url(server.url))
        with serve_process(server.url, work / "fanout.table") as (target, pid):
            loop = asyncio.new_event_loop()
            streams = bench.Fanout(target, server.url, bench.SUBSCRIBERS)
            loop.run_until_complete(streams.open())
            spy = _record(children_of(pid)[0], seconds, out)
            started, ticks = time.monotonic(), 0
            while time.monotonic() - started < seconds + 1:
                ticks += 1
                loop.run_until_complete(streams.tick(bench.FIRST_PRICE + ticks))
            spy.wait()
            loop.run_until_complete(streams.close())
            print(f"{ticks} ticks to {bench.SUBSCRIBERS} subscribers")


def session(seconds: float, out: Path, work: Path) -> None:
    _loadgen_profile(seconds, out, work, ["--mode", "session", "--inflight", "64"])


def batch(seconds: float, out: Path, work: Path) -> None:
    _loadgen_profile(seconds, out, work, ["--mode", "batch", "--batch", "1000",
                                          "--threads", "2"], durable_decisions=False)


def _loadgen_profile(seconds: float, out: Path, work: Path, mode: list[str],
                     **settings: object) -> None:
    import test_grpc
    from test_loadgen import ACCOUNTS, LOADGEN

    with RedisServer(data_dir=work / "redis") as server:
        client = redis.Redis.from_url(server.url)
        client.hset("instrument:AAPL", mapping={"tick_size": 1})
        client.set("price:AAPL", test_grpc.PRICE)
        for a in range(ACCOUNTS):
            client.hset(f"limits:{{ACC-{a}}}", mapping=test_grpc.BIG)
        bench_server = start_bench_server(server.url, work / "profiled.table", **settings)
        try:
            load = subprocess.Popen(
                [str(LOADGEN), "--target", bench_server.target, *mode,
                 "--seconds", str(seconds + 2), "--account", "ACC", "--accounts",
                 str(ACCOUNTS)], stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            _record(bench_server.pid, seconds, out).wait()
            print(load.communicate()[0].strip())
        finally:
            bench_server.close()


def summary(raw: Path, top: int) -> None:
    total, own, calls = 0, Counter[str](), Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            calls[frame] += n
    print(f"{total} samples")
    for title, counts in (("on its own line", own), ("with what it calls", calls)):
        print(f"\n-- {title}")
        for frame, n in counts.most_common(top):
            print(f"{100 * n / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("load", choices=["fanout", "session", "batch"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        out = work / "profile.raw"
        {"fanout": fanout, "session": session, "batch": batch}[args.load](args.seconds, out,
                                                                          work)
        summary(out, args.top)


if __name__ == "__main__":
    main()
