"""Which shard an account belongs to: its Redis Cluster slot, in contiguous ranges.

An account's keys all carry the hash tag ``{ACC}`` (``limits:{ACC}``,
``orders:{ACC}``...), so Redis Cluster puts them in one slot: HASH_SLOT =
CRC16/XMODEM(ACC) mod 16384 (the Redis Cluster specification). Account ids
hold no braces (:mod:`pretrade.engine.text`), so the tag is the whole id.
With ``n`` shards, shard ``i`` holds the slots ``s`` with
``i * 16384 <= s * n < (i + 1) * 16384``: contiguous ranges of 16384/n slots
(rounded), the shard of a slot being ``s * n // 16384``. The compiled core
computes the same (``pt_key_slot`` / ``pt_shard_of_slot`` in shared_sync.h);
tests compare both with Redis's ``CLUSTER KEYSLOT``.
"""

from __future__ import annotations

import binascii
import re

from pretrade._core.constants import CLUSTER_SLOTS, MAX_SHARDS

__all__ = ["CLUSTER_SLOTS", "DEFAULT_SHARD_COUNT", "MAX_SHARDS", "key_slot", "parse_shards",
           "shard_of", "shard_of_slot", "slot_range"]

#: The ``shard_count`` setting's default: 1,024 slots a shard.
DEFAULT_SHARD_COUNT = 16
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)


def key_slot(account: bytes) -> int:
    """The Redis Cluster slot of the account's keys (CRC16/XMODEM of ``account`` mod 16384)."""
    # binascii.crc_hqx is CRC-CCITT with the initial value given: 0 is XMODEM.
    return binascii.crc_hqx(account, 0) & (CLUSTER_SLOTS - 1)


def shard_of_slot(slot: int, shard_count: int) -> int:
    """The shard (of ``shard_count``) that holds ``slot``."""
    return slot * shard_count // CLUSTER_SLOTS


def shard_of(account: bytes, shard_count: int) -> int:
    """The shard (of ``shard_count``) the account belongs to."""
    return shard_of_slot(key_slot(account), shard_count)


def slot_range(shard: int, shard_count: int) -> tuple[int, int]:
    """``(first, last)`` slot of a shard, both included."""
    if not 0 <= shard < shard_count:
        raise ValueError(f"no shard {shard} of {shard_count}")
    first = -(-shard * CLUSTER_SLOTS // shard_count)        # ceil(shard * 16384 / n)
    after = -(-(shard + 1) * CLUSTER_SLOTS // shard_count)
    return first, after - 1


def parse_shards(text: str, shard_count: int) -> tuple[int, ...]:
    """The shards a ``owned_shards`` setting names, sorted: ``all``, or ``0-7,9,12-15``.

    Raises ValueError (saying what is wrong) for a shard not in
    ``0..shard_count-1``, a reversed range, or anything else.
    """
    words = text.strip().lower()
    if words == "all":
        return tuple(range(shard_count))
    shards: set[int] = set()
    for part in words.split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a shard or a range of shards "
                             "(expected e.g. 'all' or '0-7,9')")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last:
            raise ValueError(f"range {part.strip()!r} is reversed")
        if last >= shard_count:
            raise ValueError(f"shard {last} is not one of the {shard_count} shards "
                             f"(0..{shard_count - 1})")
        shards.update(range(first, last + 1))
    return tuple(sorted(shards))
