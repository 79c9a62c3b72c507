"""The memory-mapped table: layout, capacity, sharing between processes, locks."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import resource

import pytest

from pretrade._core import LAYOUT, Engine, PositionTable, TableFullError, TableLayoutError
from pretrade.engine.limits import LimitKind
from pretrade.engine.table import Capacities, MappedTable, Residency, new_private_table
from pretrade.v1 import risk_pb2 as pb

SMALL = Capacities(max_accounts=16, max_instruments=16, max_positions=64, max_overrides=16,
                   lock_stripes=4)
LIMITS = {int(kind): 1_000_000 for kind in LimitKind}


def test_a_position_slot_takes_at_most_128_bytes():
    assert LAYOUT["position_bytes"] <= 128


def test_limit_kinds_match_the_core():
    assert LAYOUT["limit_kinds"] == len(LimitKind)


def test_full_account_table_raises_instead_of_overwriting():
    table = new_private_table(max_accounts=2, max_instruments=2, max_positions=4,
                              max_overrides=2, lock_stripes=1)
    table.upsert_account(b"A")
    table.upsert_account(b"B")
    with pytest.raises(TableFullError):
        table.upsert_account(b"C")
    assert table.counts()["accounts"] == 2


@pytest.mark.parametrize("bad", [b"", b"x" * 40, b"nul\0byte"])
def test_ids_that_cannot_be_stored_are_refused(bad):
    table = new_private_table(**SMALL.__dict__)
    with pytest.raises(ValueError):
        table.upsert_account(bad)


def test_unstorable_id_in_an_order_is_an_unknown_account_not_a_crash():
    table = new_private_table(**SMALL.__dict__)
    table.set_sync_live(True)
    approved, _, rejections, *_ = Engine(table).evaluate(b"id", b"x" * 500, b"", 1, 1, 1, 1)
    assert not approved
    assert [r[0] for r in rejections] == [pb.REJECT_CODE_UNKNOWN_ACCOUNT,
                                          pb.REJECT_CODE_UNKNOWN_SYMBOL]


def test_attach_refuses_a_buffer_that_is_not_a_table():
    with pytest.raises(TableLayoutError):
        PositionTable.attach(bytearray(SMALL.required_bytes()))


def test_a_table_needs_a_writable_buffer_of_its_size():
    size = SMALL.required_bytes()
    with pytest.raises(BufferError):
        PositionTable.format(bytes(size), SMALL.max_accounts, SMALL.max_instruments,
                             SMALL.max_positions, SMALL.max_overrides, SMALL.lock_stripes,
                             SMALL.max_orders)
    with pytest.raises(ValueError, match="the table needs"):
        PositionTable.format(bytearray(size // 2), SMALL.max_accounts, SMALL.max_instruments,
                             SMALL.max_positions, SMALL.max_overrides, SMALL.lock_stripes,
                             SMALL.max_orders)


def test_a_table_holds_its_mapping_open_until_released():
    size = SMALL.required_bytes()
    mapping = mmap.mmap(-1, size)
    table = PositionTable.format(mapping, SMALL.max_accounts, SMALL.max_instruments,
                                 SMALL.max_positions, SMALL.max_overrides, SMALL.lock_stripes,
                                 SMALL.max_orders)
    table.upsert_account(b"ACC")
    with pytest.raises(BufferError):
        mapping.close()  # the table's pointers point into it
    assert PositionTable.attach(mapping).account_ids() == [b"ACC"]
    table.release()
    mapping.close()


def _write_position_from_another_process(path: str) -> None:
    mapped = MappedTable.attach(path)
    mapped.table.replace_positions(b"ACC", {b"AAPL": (42, 42 * 683_378)})
    mapped.table.set_halt(pb.HALT_SCOPE_SYMBOL, b"AAPL", pb.HALT_MODE_HALTED)
    mapped.close()


def test_a_write_by_another_process_is_seen_through_the_shared_mapping(tmp_path):
    mapped = MappedTable.create(tmp_path / "shared.table", SMALL)
    try:
        process = multiprocessing.get_context("spawn").Process(
            target=_write_position_from_another_process, args=(str(mapped.path),))
        process.start()
        process.join(60)
        assert process.exitcode == 0
        assert mapped.table.position(b"ACC", b"AAPL") == (42, 42 * 683_378)
        assert mapped.table.halt_mode(pb.HALT_SCOPE_SYMBOL, b"AAPL") == pb.HALT_MODE_HALTED
    finally:
        mapped.close(unlink=True)


def _hammer(path: str, rounds: int) -> None:
    # Each round writes a position whose quantity and cost basis agree
    # (cost = quantity x 100); a torn write would break that invariant.
    mapped = MappedTable.attach(path)
    for n in range(rounds):
        mapped.table.replace_positions(b"ACC", {b"AAPL": (n, n * 100), b"MSFT": (n, n * 100)})
    mapped.close()


def test_striped_locks_keep_positions_consistent_across_processes(tmp_path):
    mapped = MappedTable.create(tmp_path / "shared.table", SMALL)
    try:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_hammer, args=(str(mapped.path), 3_000))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        seen = 0
        while any(worker.is_alive() for worker in workers):
            positions = mapped.table.account_positions(b"ACC")
            for quantity, cost_basis in positions.values():
                assert cost_basis == quantity * 100
            seen += 1
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        assert seen > 0
    finally:
        mapped.close(unlink=True)


def test_table_file_is_sparse_until_records_are_written_when_not_prefaulted(tmp_path):
    big = Capacities(max_positions=1_048_576)
    mapped = MappedTable.create(tmp_path / "big.table", big, Residency(prefault=False))
    try:
        stat = os.stat(mapped.path)
        assert stat.st_size == big.required_bytes()
        assert stat.st_blocks * 512 < stat.st_size // 4
    finally:
        mapped.close(unlink=True)


SMALL = Capacities(max_accounts=64, max_instruments=64, max_positions=4096, max_overrides=64,
                   lock_stripes=8, max_orders=4096)


def _faults_touching_every_page(mapped: MappedTable) -> tuple[int, int]:
    """Minor page faults this process takes writing one byte of every page, and the pages.

    A write, as a reservation is (reads would be faulted in 16 pages at a
    time by the kernel's fault-around); the byte written is the one read.
    """
    view = memoryview(mapped._mapping)
    pages = range(0, len(view), mmap.PAGESIZE)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for offset in pages:
        view[offset] = view[offset]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    view.release()
    return after - before, len(pages)


def test_a_prefaulted_table_is_in_memory_and_its_first_touch_takes_no_page_faults(tmp_path):
    mapped = MappedTable.create(tmp_path / "hot.table", SMALL)  # prefault is the default
    try:
        stat = os.stat(mapped.path)
        assert stat.st_blocks * 512 >= stat.st_size  # every page is there, none sparse
        # Another mapping of it (a server process): its page tables filled at attach.
        hot = MappedTable.attach(mapped.path, Residency(prefault=True))
        cold = MappedTable.attach(mapped.path, Residency(prefault=False))
        try:
            faults, pages = _faults_touching_every_page(hot)
            # a few faults come from the interpreter itself (its own pages), not the table
            assert faults < pages // 20, (faults, pages)
            faults, pages = _faults_touching_every_page(cold)
            assert faults > pages // 2, (faults, pages)  # the control: faults do show
        finally:
            hot.close()
            cold.close()
    finally:
        mapped.close(unlink=True)


def test_a_locked_table_counts_in_the_locked_memory_of_the_process(tmp_path):
    def locked_kib() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmLck:"):
                return int(line.split()[1])
        raise AssertionError("no VmLck in /proc/self/status")

    before = locked_kib()
    mapped = MappedTable.create(tmp_path / "locked.table", SMALL,
                                Residency(prefault=True, lock=True))
    try:
        assert locked_kib() - before >= SMALL.required_bytes() // 1024
    finally:
        mapped.close(unlink=True)
    assert locked_kib() <= before + 4  # unmapping unlocks


def _restore_seconds(count: int) -> float:
    """Best of three: time to restore ``count`` working orders of one account."""
    import time

    best = float("inf")
    for _ in range(3):
        table = new_private_table(max_accounts=4, max_instruments=4, max_positions=16,
                                  max_overrides=4, lock_stripes=1, max_orders=count + 16,
                                  max_orders_per_account=count + 16)
        started = time.perf_counter()
        for n in range(count):
            table.restore_order(b"ACC", b"W%d" % n, b"AAPL", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT,
                                1, 100, 100, 100, b"XNAS", b"", True, [])
        best = min(best, time.perf_counter() - started)
        assert table.working(b"ACC", b"AAPL") == (count, 0)
    return best


def test_restoring_decided_orders_takes_time_linear_in_their_number():
    # linear: 4x the orders take about 4x the time; one pass over the working
    # orders per restored order (quadratic) takes 16x
    small, large = _restore_seconds(2_000), _restore_seconds(8_000)
    assert large < 8 * small, (small, large)
