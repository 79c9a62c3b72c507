"""The lapse sweep over OCO legs: one end_lapsed_orders call, N DAY legs working.

    .venv/bin/python bench/oco_sweep.py

For 1,000, 2,000 and 4,000 legs of one account (every control on), in pairs
of one group each, a DAY leg and a GTC leg: the time of the one sweep that
ends the DAY legs at their session end, each leaving its group's other leg
working, best of five fresh tables. The sweep holds the account's
stripe lock, so this is how long that account's orders wait.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pretrade.v1 import risk_pb2 as pb  # noqa: E402
from test_core_latency import ACCOUNT, PRICE, SYMBOL, make_engine  # noqa: E402

SESSION_END_MS = 2_000_000_000_000   # Unix ms
NOW_MS = SESSION_END_MS - 60_000


def sweep_ms(legs: int) -> float:
    engine = make_engine(legs + 1_000)
    for n in range(legs):
        # each pair: a DAY leg, which lapses, and a GTC leg, which works on
        verdict = engine.evaluate(
            f"o{n}".encode(), ACCOUNT, SYMBOL, pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 1, PRICE,
            b"XNAS", b"", (n + 1) * 10_000,
            time_in_force=pb.TIME_IN_FORCE_DAY if n % 2 == 0 else pb.TIME_IN_FORCE_GTC,
            now_unix_ms=NOW_MS, session_end_unix_ms=SESSION_END_MS,
            group_id=f"g{n // 2}".encode())
        assert verdict.approved, verdict
    started = time.perf_counter()
    ended = engine.table.end_lapsed_orders(SESSION_END_MS)
    took = time.perf_counter() - started
    assert ended == legs // 2, ended
    return took * 1000


def main() -> None:
    for legs in (1_000, 2_000, 4_000):
        print(f"{legs:,} legs: sweep {min(sweep_ms(legs) for _ in range(5)):.2f} ms (best of 5)")


if __name__ == "__main__":
    main()
