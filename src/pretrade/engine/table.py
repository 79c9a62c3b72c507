"""Opening the shared position table: the file and the mapping live here, not in the core.

The compiled ``PositionTable`` only ever sees a writable buffer. This module
creates the backing file (normally under ``/dev/shm``), sizes it, maps it with
``MAP_SHARED`` so every server process that maps the same path shares one
table, and hands the mapping to the core.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from pretrade._core import PositionTable
from pretrade._core.constants import DEFAULT_ORDER_EXPIRY_MS


@dataclass(frozen=True)
class Capacities:
    """Fixed record counts of a table (the file size follows from them), and the
    policy for its decided orders: one account's share of them (0: an eighth of
    ``max_orders``) and how long one that no longer works stays once durable."""

    max_accounts: int = 16_384
    max_instruments: int = 65_536
    max_positions: int = 1_048_576
    max_overrides: int = 65_536
    lock_stripes: int = 64
    max_orders: int = 262_144
    max_orders_per_account: int = 0
    order_expiry_ms: int = DEFAULT_ORDER_EXPIRY_MS

    def required_bytes(self) -> int:
        return int(PositionTable.required_size(
            self.max_accounts, self.max_instruments, self.max_positions,
            self.max_overrides, self.lock_stripes, self.max_orders))


class MappedTable:
    """A PositionTable backed by a shared file mapping.

    Use :meth:`create` in the process that owns the table (it formats a fresh
    one) and :meth:`attach` in every other process that maps it.
    """

    def __init__(self, path: Path, mapping: mmap.mmap, table: PositionTable) -> None:
        self.path = path
        self._mapping = mapping
        self.table = table

    @classmethod
    def create(cls, path: str | os.PathLike[str], capacities: Capacities) -> MappedTable:
        """Create (or replace) the file at ``path`` and format an empty table in it.

        The file is sparse: pages cost memory only once a record is written.
        """
        target = Path(path)
        size = capacities.required_bytes()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        table = _format(mapping, capacities)
        return cls(target, mapping, table)

    @classmethod
    def attach(cls, path: str | os.PathLike[str]) -> MappedTable:
        """Map a table another process created; raises TableLayoutError if foreign."""
        target = Path(path)
        fd = os.open(target, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(target, mapping, PositionTable.attach(mapping))

    def close(self, unlink: bool = False) -> None:
        """Unmap the table; with ``unlink``, remove the file too (the owner, at exit)."""
        self.table.release()
        self._mapping.close()
        if unlink:
            self.path.unlink(missing_ok=True)


def new_private_table(**capacities: int) -> PositionTable:
    """A table in anonymous memory, for one process (tests, the reference checks)."""
    caps = Capacities(**capacities)
    return _format(mmap.mmap(-1, caps.required_bytes()), caps)


def _format(mapping: mmap.mmap, caps: Capacities) -> PositionTable:
    return PositionTable.format(mapping, caps.max_accounts, caps.max_instruments,
                                caps.max_positions, caps.max_overrides, caps.lock_stripes,
                                caps.max_orders, assume_zeroed=True,
                                max_orders_per_account=caps.max_orders_per_account,
                                order_expiry_ms=caps.order_expiry_ms)
