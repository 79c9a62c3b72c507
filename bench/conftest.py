"""The latency suite's shared parts: HdrHistogram summaries and the report.

Every benchmark that measures a latency distribution records it with
``latency.record(name, histogram_ns, note)``; at the end of a run with
benchmarking enabled, the table of p50/p99/p99.9 is printed and written to
docs/performance.md together with the command and the machine. With
``--benchmark-disable`` (CI) the code runs once, small, and nothing is written.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hdr import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass
class LatencyReport:
    enabled: bool
    rows: list[tuple[str, HdrHistogram, str]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def record(self, name: str, histogram: HdrHistogram, note: str = "") -> None:
        self.rows.append((name, histogram, note))

    def figure(self, name: str, value: str) -> None:
        """A single figure (a rate, a ratio, a size) for the report."""
        self.figures.append((name, value))

    def table(self) -> str:
        lines = ["| measurement | count | p50 | p99 | p99.9 | max | note |",
                 "|---|---:|---:|---:|---:|---:|---|"]
        for name, h, note in self.rows:
            cells = [_ns(h.get_value_at_percentile(p)) for p in (50, 99, 99.9)]
            lines.append(f"| {name} | {h.get_total_count():,} | {' | '.join(cells)} | "
                         f"{_ns(h.get_max_value())} | {note} |")
        if self.figures:
            lines += ["", "| figure | value |", "|---|---|"]
            lines += [f"| {name} | {value} |" for name, value in self.figures]
        return "\n".join(lines)


def _ns(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f} ms"
    if value >= 1_000:
        return f"{value / 1_000:.2f} µs"
    return f"{value} ns"


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
            f"Python {platform.python_version()}")


@pytest.fixture(scope="session")
def latency(request: pytest.FixtureRequest) -> Iterator[LatencyReport]:
    disabled = bool(request.config.getoption("benchmark_disable", False))
    report = LatencyReport(enabled=not disabled)
    yield report
    if not report.enabled or not (report.rows or report.figures):
        return
    command = "make bench  # = .venv/bin/python -m pytest " + " ".join(sys.argv[1:])
    body = (f"{BEGIN}\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
            f"{_machine()}.\n\nCommand: `{command.strip()}`\n\n{report.table()}\n{END}")
    print("\n" + report.table())
    text = REPORT.read_text() if REPORT.exists() else "# Performance\n\n" + BEGIN + END + "\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text += "\n" + body + "\n"
    REPORT.write_text(text)
