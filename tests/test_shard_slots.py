"""The slot of an account and the shards of slots: Python, the compiled core, the twin and
Redis itself agree.

An account's keys carry the hash tag ``{ACC}``; its slot is Redis Cluster's
HASH_SLOT (CRC16/XMODEM mod 16384). The known vector of the Redis Cluster
specification, redis-py's own ``key_slot``, the twin's bit-by-bit CRC and
``CLUSTER KEYSLOT`` of a real redis-server must all give the same slot, and
the compiled pipeline must find the same shard (it approves exactly when
that shard, and only it, is held).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.crc

from pretrade._core import Engine
from pretrade._core.constants import CLUSTER_SLOTS
from pretrade.app.devredis import find_redis_server
from pretrade.engine.limits import LimitKind as K
from pretrade.engine.reference import ReferenceBook, cluster_slot
from pretrade.engine.table import new_private_table
from pretrade.shards.slots import key_slot, parse_shards, shard_of, shard_of_slot, slot_range
from pretrade.v1 import risk_pb2 as pb
from serving import free_port

SEED = random.randrange(2**32)
ID_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-+=#@$&!~^"


def random_accounts(count: int) -> list[bytes]:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    return [("".join(rng.choice(ID_CHARACTERS) for _ in range(rng.randint(1, 39)))).encode()
            for _ in range(count)]


def test_the_slot_of_the_redis_cluster_specification_vector():
    assert key_slot(b"123456789") == 0x31C3 == cluster_slot(b"123456789")


def test_the_slot_is_redis_pys_and_the_twins_for_random_account_ids():
    for account in random_accounts(2_000):
        tagged = b"limits:{" + account + b"}"
        assert key_slot(account) == redis.crc.key_slot(tagged) == cluster_slot(account)


def _start_cluster_node(tmp_path: Path) -> tuple[subprocess.Popen[bytes], redis.Redis] | None:
    """redis-server with cluster support on a free port; None when it could not bind it."""
    port = free_port()
    log = tmp_path / f"redis-{port}.log"
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--cluster-enabled", "yes", "--dir", str(tmp_path),
         "--cluster-config-file", str(tmp_path / f"nodes-{port}.conf"), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return process, client
        except redis.ConnectionError:
            if process.poll() is not None:  # the port was taken meanwhile: another one
                client.close()
                return None
            assert time.monotonic() < deadline, f"redis-server did not start: {log.read_text()}"
            time.sleep(0.05)


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[redis.Redis]:
    """A real redis-server with cluster support on (it answers CLUSTER KEYSLOT unassigned)."""
    started = None
    for _ in range(5):
        started = _start_cluster_node(tmp_path)
        if started is not None:
            break
    assert started is not None, "redis-server exited at start five times"
    process, client = started
    try:
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def test_the_slot_is_what_redis_says_for_the_accounts_keys(cluster_node: redis.Redis):
    for account in random_accounts(300):
        for key in (b"limits:{" + account + b"}", b"orders:{" + account + b"}"):
            assert int(cluster_node.execute_command("CLUSTER", "KEYSLOT", key)) \
                == key_slot(account)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 1000, 1024])
def test_shards_are_contiguous_slot_ranges_that_cover_every_slot_once(count):
    ranges = [slot_range(shard, count) for shard in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == CLUSTER_SLOTS - 1
    for (_, last), (first, _) in zip(ranges, ranges[1:], strict=False):
        assert first == last + 1
    for shard, (first, last) in enumerate(ranges):
        assert shard_of_slot(first, count) == shard == shard_of_slot(last, count)


@pytest.mark.parametrize("kind", ["core", "twin"])
def test_the_pipeline_finds_the_same_shard_as_the_python_layer(kind):
    count = 16
    accounts = random_accounts(64)
    if kind == "core":
        state = new_private_table(max_accounts=128, max_instruments=2, max_positions=256,
                                  max_overrides=4, max_orders=2_000, lock_stripes=4)
        engine = Engine(state)
    else:
        state = engine = ReferenceBook(max_accounts=128, max_instruments=2, max_positions=256,
                                       max_overrides=4, max_orders=2_000)
    state.set_sync_live(True)
    state.set_instrument(b"AAPL", known=True)
    state.set_last_price(b"AAPL", 10_000)
    state.set_shards(count)
    limits = {K.MAX_ORDER_QUANTITY: 1_000, K.MAX_ORDER_NOTIONAL: 10**9,
              K.MAX_NET_POSITION: 10**6, K.MAX_LONG_POSITION: 10**6,
              K.MAX_SHORT_POSITION: 10**6, K.PRICE_COLLAR_BPS: 1_000}
    for number, account in enumerate(accounts):
        state.set_account_state(account, known=True)
        state.set_account_limits(account, limits)
        mine = shard_of(account, count)
        for shard in range(count):
            state.set_shard_lease(shard, 0 if shard == mine else 1, 10**12)
        refused = engine.evaluate(b"o%d" % number, account, b"AAPL", pb.SIDE_BUY,
                                  pb.ORDER_TYPE_LIMIT, 1, 10_000, now_ns=1)
        assert refused[2] == ((pb.REJECT_CODE_STALE_DATA, 0, 0),), account
        for shard in range(count):
            state.set_shard_lease(shard, 1 if shard == mine else 0, 10**12)
        assert engine.evaluate(b"p%d" % number, account, b"AAPL", pb.SIDE_BUY,
                               pb.ORDER_TYPE_LIMIT, 1, 10_000, now_ns=1)[0], account


def test_the_owned_shards_setting_reads_all_single_shards_and_ranges():
    assert parse_shards("all", 4) == (0, 1, 2, 3)
    assert parse_shards("0-2, 7,5", 8) == (0, 1, 2, 5, 7)
    for bad in ("8", "3-1", "x", "1,,2", "-1"):
        with pytest.raises(ValueError):
            parse_shards(bad, 8)
