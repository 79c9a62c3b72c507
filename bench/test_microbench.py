"""bench/microbench.py runs whole (its figures are docs/performance.md's): it cannot rot."""

from __future__ import annotations

import re

import microbench


def test_the_microbench_times_every_building_block(capsys):
    microbench.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13, lines
    figures = [re.search(r"\s(\d+\.\d+) µs", line) for line in lines]
    assert all(found and float(found.group(1)) > 0 for found in figures), lines
