"""Opening the shared position table: the file and the mapping live here, not in the core.

The compiled ``PositionTable`` only ever sees a writable buffer. This module
creates the backing file (normally under ``/dev/shm``), sizes it, maps it with
``MAP_SHARED`` so every server process that maps the same path shares one
table, and hands the mapping to the core.

A table in use is never truncated: the process that creates a table holds an
exclusive ``flock`` on its file for as long as it lives (forked workers share
it; the kernel releases it when the last of them dies), and writes its pid
next to it (``<table>.owner``), so a second server refused the lock can name
the one that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from pretrade._core import PositionTable
from pretrade._core.constants import DEFAULT_ORDER_EXPIRY_MS
from pretrade.engine.errors import CapacityRefused, TableInUse
from pretrade.engine.locks import try_lock

#: Suffix of the file next to a table that names the process holding its lock.
OWNER_SUFFIX = ".owner"


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


@dataclass(frozen=True)
class Residency:
    """Whether a table's memory is faulted in when it is mapped, and locked there.

    ``prefault``: every page is touched (written) at once, so no order pays a
    page fault on its first use of a record, and a table that does not fit
    in memory fails at start instead of with SIGBUS later. ``lock``: the
    pages are also ``mlock``-ed, so the kernel never swaps or reclaims them
    (needs ``ulimit -l`` or CAP_IPC_LOCK for the table's size).
    """

    prefault: bool = True
    lock: bool = False


#: The two usual choices: every page in at once (the server's default), or a
#: sparse table that gains pages as records are written.
PREFAULTED = Residency()
SPARSE = Residency(prefault=False)

#: madvise(MADV_POPULATE_WRITE), Linux 5.14+: fault every page in, writable,
#: without changing its contents (Python's mmap module has no name for it).
_MADV_POPULATE_WRITE = 23


def make_resident(mapping: mmap.mmap, memory: Residency, where: Path | str = "memory") -> None:
    """Fault in (and optionally lock) every page of ``mapping``, as ``memory`` says.

    Raises
    ------
    CapacityRefused
        The pages do not fit, or cannot be locked: the message names the limit.
    """
    if memory.prefault:
        try:
            mapping.madvise(_MADV_POPULATE_WRITE)
        except OSError as error:
            if error.errno in (errno.ENOMEM, errno.EFAULT, errno.EIO):
                raise CapacityRefused(
                    f"the table at {where} ({_size_text(len(mapping))}) does not fit in memory: "
                    f"{error.strerror}; lower its capacities") from None
            _touch_pages(mapping)  # an older kernel: the same, one page at a time
    if memory.lock:
        _lock_pages(mapping, where)


def _touch_pages(mapping: mmap.mmap) -> None:
    # A read fault maps a page; writing back the byte read makes it writable
    # and changes nothing (the creator touches before formatting; other
    # processes see the same byte).
    view = memoryview(mapping)
    try:
        for offset in range(0, len(mapping), mmap.PAGESIZE):
            view[offset] = view[offset]
    finally:
        view.release()


def _lock_pages(mapping: mmap.mmap, where: Path | str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        address = ctypes.addressof(anchor)
    finally:
        del anchor  # an exported buffer would keep the mapping from closing
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(len(mapping))) != 0:
        code = ctypes.get_errno()
        raise CapacityRefused(
            f"cannot lock the table at {where} ({_size_text(len(mapping))}) in memory: "
            f"{os.strerror(code)}; raise `ulimit -l` (RLIMIT_MEMLOCK) or set "
            "lock_table_memory = false")


class MappedTable:
    """A PositionTable backed by a shared file mapping.

    Use :meth:`create` in the process that owns the table (it formats a fresh
    one) and :meth:`attach` in every other process that maps it.
    """

    def __init__(self, path: Path, mapping: mmap.mmap, table: PositionTable,
                 lock_fd: int | None = None) -> None:
        self.path = path
        self._mapping = mapping
        self.table = table
        #: The locked descriptor of the table file (the creator only).
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, path: str | os.PathLike[str], capacities: Capacities,
               memory: Residency = PREFAULTED) -> MappedTable:
        """Lock the file at ``path``, then (re)make it an empty table of ``capacities``.

        The file is sparse: pages cost memory only once a record is written,
        unless ``memory`` says to fault them all in now (see :class:`Residency`).
        Its lock is held until :meth:`close` (or the death of this process and
        every process forked from it).

        Raises
        ------
        TableInUse
            Another live process holds the lock: nothing was changed.
        CapacityRefused
            The core refuses the capacities, or the table would not fit in the
            free space of its filesystem (a sparse file that outgrows a tmpfs
            kills the process with SIGBUS later). No file is left behind.
        """
        target = Path(path)
        try:
            size = capacities.required_bytes()
        except (ValueError, OverflowError) as error:
            raise CapacityRefused(f"the table capacities are refused: {error}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(target)
        try:
            _check_room(target, fd, size)
            os.ftruncate(fd, 0)  # ours now: start from zeroes
            os.ftruncate(fd, size)
            try:
                mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                    prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except (OSError, OverflowError, ValueError) as error:
                raise CapacityRefused(
                    f"cannot map a table of {_size_text(size)} at {target}: {error}; lower "
                    "max_orders, max_positions, max_instruments or max_accounts") from None
            make_resident(mapping, memory, target)
            table = _format(mapping, capacities)
            _owner_path(target).write_text(f"{os.getpid()}\n")
        except BaseException:
            _remove(target)
            os.close(fd)
            raise
        return cls(target, mapping, table, fd)

    @classmethod
    def attach(cls, path: str | os.PathLike[str],
               memory: Residency = SPARSE) -> MappedTable:
        """Map a table another process created; raises TableLayoutError if foreign.

        With ``memory.prefault`` this process's page tables are filled now
        (the pages themselves are the creator's), so its first touch of each
        page is not a fault either.
        """
        target = Path(path)
        fd = os.open(target, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        table = PositionTable.attach(mapping)
        make_resident(mapping, memory, target)
        return cls(target, mapping, table)

    def close(self, unlink: bool = False) -> None:
        """Unmap the table; with ``unlink``, remove the file too (the owner, at exit).

        The creator's lock is released last, after the file is gone. A second
        call does nothing.
        """
        if self._mapping.closed:
            return
        self.table.release()
        self._mapping.close()
        if unlink:
            _remove(self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def table_owner(path: str | os.PathLike[str]) -> int | None:
    """The pid recorded next to a table by the process that created it, if readable."""
    try:
        text = _owner_path(Path(path)).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def _owner_path(target: Path) -> Path:
    return target.with_name(target.name + OWNER_SUFFIX)


def _remove(target: Path) -> None:
    target.unlink(missing_ok=True)
    _owner_path(target).unlink(missing_ok=True)


def _open_locked(target: Path) -> int:
    """A descriptor of ``target`` (created if missing) with an exclusive flock on it.

    Never truncates. Retries when the file it locked was unlinked meanwhile
    (its previous owner was removing it): the lock must be on the file the
    path names.
    """
    while True:
        fd = try_lock(target)
        if fd is None:
            owner = table_owner(target)
            who = f"pretrade pid {owner}" if owner is not None else "another process"
            raise TableInUse(
                f"the table {target} is in use by {who}: stop that server first, or give "
                "this one its own --table-path (and --listen)") from None
        try:
            same = os.stat(target).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _size_text(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _check_room(target: Path, fd: int, size: int) -> None:
    """Refuse a table larger than the free space of its filesystem (counting its old file)."""
    with contextlib.suppress(OSError):
        stats = os.fstatvfs(fd)
        free = stats.f_bavail * stats.f_frsize + os.fstat(fd).st_blocks * 512
        if size > free:
            raise CapacityRefused(
                f"the table needs {_size_text(size)} but {target.parent} has only "
                f"{_size_text(free)} free: lower max_orders, max_positions, max_instruments or "
                "max_accounts, or put table_path on a filesystem with room")


#: The currency of an instrument whose ``instrument:<SYM>`` names none (the
#: default_currency setting's default).
DEFAULT_CURRENCY = "USD"


def currency_of(table: PositionTable, symbol: bytes, default: str = DEFAULT_CURRENCY) -> str:
    """The symbol's currency in the table, or ``default`` when its instrument names none."""
    return table.instrument_currency(symbol) or default


def new_private_table(*, memory: Residency = SPARSE,
                      **capacities: int) -> PositionTable:
    """A table in anonymous memory, for one process (tests, the reference checks).

    Sparse unless ``memory`` says otherwise: the reconciliation builds one of
    the server's full size and touches only what Redis holds.
    """
    caps = Capacities(**capacities)
    mapping = mmap.mmap(-1, caps.required_bytes())
    make_resident(mapping, memory)
    return _format(mapping, caps)


def _format(mapping: mmap.mmap, caps: Capacities) -> PositionTable:
    return PositionTable.format(mapping, caps.max_accounts, caps.max_instruments,
                                caps.max_positions, caps.max_overrides, caps.lock_stripes,
                                caps.max_orders, assume_zeroed=True,
                                max_orders_per_account=caps.max_orders_per_account,
                                order_expiry_ms=caps.order_expiry_ms)
