"""Account groups in Redis, pure: the keys, the ``group:<G>`` parser and the flattening.

No Redis: the functions of pretrade.state.schema that the sync applies to what
it reads (tests/test_account_groups_service.py runs them against a real
redis-server and a gateway).
"""

from __future__ import annotations

import pytest

from pretrade._core.constants import RATE_RING_CAPACITY
from pretrade.engine.limits import GROUP_LIMIT_KINDS, MAX_ACCOUNT_GROUPS, LimitKind
from pretrade.state.schema import (
    GROUP_LIMIT_FIELDS,
    KeyKind,
    StateError,
    classify,
    flatten_groups,
    group_key,
    groups_key,
    parse_group,
)

# -- keys --


def test_the_keys_of_an_account_and_of_a_group():
    assert groups_key(b"ACC-1") == b"groups:{ACC-1}"
    assert group_key(b"DESK-1") == b"group:DESK-1"


@pytest.mark.parametrize(("key", "expected"), [
    (b"groups:{ACC-1}", (KeyKind.GROUPS, 0, b"ACC-1")),
    (b"group:DESK-1", (KeyKind.GROUP, 0, b"DESK-1")),
    (b"groups:ACC-1", None),            # no braces: not pretrade's
    (b"group:{DESK-1}", None),          # a group id has no braces
    (b"group:", None),
    (b"group:" + b"G" * 40, None),      # longer than an id
    (b"group:A B", None),
])
def test_classify_knows_both_group_keys_and_ignores_misspelled_ones(key, expected):
    assert classify(key) == expected


# -- the group hash --


def test_a_group_hash_gives_its_limits_and_its_parent():
    limits, parent = parse_group({b"max_long_position": b"150", b"loss_limit": b"50000000000",
                                  b"parent": b"FIRM"})
    assert limits == {LimitKind.MAX_LONG_POSITION: 150, LimitKind.LOSS_LIMIT: 50_000_000_000}
    assert parent == b"FIRM"
    assert parse_group({b"parent": b"FIRM"}) == ({}, b"FIRM")
    assert parse_group({b"max_short_position": b"0"}) == (
        {LimitKind.MAX_SHORT_POSITION: 0}, None)


def test_every_group_limit_kind_parses_and_only_those_are_group_fields():
    assert GROUP_LIMIT_FIELDS == {kind.field.encode() for kind in GROUP_LIMIT_KINDS}
    fields = {kind.field.encode(): b"7" for kind in GROUP_LIMIT_KINDS}
    assert parse_group(fields) == ({kind: 7 for kind in GROUP_LIMIT_KINDS}, None)
    for kind in set(LimitKind) - GROUP_LIMIT_KINDS:
        with pytest.raises(StateError, match="neither parent nor a group limit"):
            parse_group({kind.field.encode(): b"1"})


@pytest.mark.parametrize("fields", [
    {b"max_foo": b"1"},                                  # no limit name
    {b"MAX_LONG_POSITION": b"1"},                        # not in lower case
    {b"max_long_position:AAPL": b"1"},                   # no per-symbol override on a group
    {b"max_order_quantity": b"1"},                       # a limit, but not a group's
    {b"max_long_position": b"1.5"},                      # a value limits:{ACC} refuses
    {b"max_long_position": b"-1"},
    {b"max_long_position": b"1e3"},
    {b"max_long_position": b"9223372036854775808"},
    {b"max_long_position": b" 1"},
    {b"max_orders_per_window": str(RATE_RING_CAPACITY + 1).encode()},
    {b"parent": b""},                                    # bad parent ids
    {b"parent": b"A B"},
    {b"parent": b"{FIRM}"},
    {b"parent": b"F\x00"},
    {b"parent": b"F" * 40},
])
def test_a_group_hash_that_does_not_parse_is_invalid(fields):
    with pytest.raises(StateError):
        parse_group(fields)


def test_a_group_value_parses_exactly_as_an_account_limit_does():
    assert parse_group({b"max_orders_per_window": str(RATE_RING_CAPACITY).encode(),
                        b"max_net_exposure": b"+10"}) == (
        {LimitKind.MAX_ORDERS_PER_WINDOW: RATE_RING_CAPACITY, LimitKind.MAX_NET_EXPOSURE: 10},
        None)


# -- flattening --


def test_an_account_is_in_its_groups_and_their_parents_sorted_by_id():
    parents = {b"DESK-B": b"FIRM", b"DESK-A": b"FIRM", b"FIRM": b"HOLDING"}
    assert flatten_groups([b"DESK-B"], parents) == (b"DESK-B", b"FIRM", b"HOLDING")
    # two desks of one firm: the firm once
    assert flatten_groups({b"DESK-B", b"DESK-A"}, parents) == (
        b"DESK-A", b"DESK-B", b"FIRM", b"HOLDING")
    # a direct group that is also a parent of another
    assert flatten_groups([b"FIRM", b"DESK-A"], parents) == (b"DESK-A", b"FIRM", b"HOLDING")
    assert flatten_groups([], parents) == ()
    # a group without a hash (not in parents) has no parent
    assert flatten_groups([b"LONE"], parents) == (b"LONE",)


def test_the_order_is_by_bytes():
    assert flatten_groups([b"b", b"B", b"a", b"A-1", b"A"], {}) == (
        b"A", b"A-1", b"B", b"a", b"b")


@pytest.mark.parametrize(("direct", "parents", "words"), [
    ([b"A"], {b"A": b"A"}, "cycle: A -> A"),
    ([b"A"], {b"A": b"B", b"B": b"C", b"C": b"A"}, "cycle: A -> B -> C -> A"),
    ([b"X"], {b"X": b"A", b"A": b"B", b"B": b"A"}, "cycle: A -> B -> A"),
    ([b"A B"], {}, "not a valid id"),
    ([b""], {}, "not a valid id"),
    ([b"{A}"], {}, "not a valid id"),
    ([b"A" * 40], {}, "not a valid id"),
    ([b"A"], {b"A": b"B\x00"}, "not a valid id"),
    ([b"G%d" % n for n in range(MAX_ACCOUNT_GROUPS + 1)], {}, "more than 8 groups"),
    ([b"G0"], {b"G%d" % n: b"G%d" % (n + 1) for n in range(MAX_ACCOUNT_GROUPS)},
     "more than 8 groups"),
])
def test_a_cycle_a_bad_id_or_too_many_groups_make_the_tree_invalid(direct, parents, words):
    with pytest.raises(StateError, match=words.replace("(", r"\(")):
        flatten_groups(direct, parents)


def test_eight_groups_are_allowed():
    chain = {b"G%d" % n: b"G%d" % (n + 1) for n in range(MAX_ACCOUNT_GROUPS - 1)}
    assert flatten_groups([b"G0"], chain) == tuple(b"G%d" % n for n in range(8))
    assert len(flatten_groups([b"G%d" % n for n in range(8)], {})) == MAX_ACCOUNT_GROUPS


# -- the reconciliation compares groups --


def test_compare_finds_a_difference_of_membership_and_of_group_limits():
    from pretrade.engine.table import new_private_table
    from pretrade.state.reconcile import compare

    tables = [new_private_table(max_accounts=16, max_instruments=16, max_positions=64)
              for _ in range(2)]
    for table in tables:
        table.set_account_state(b"ACC-1", known=True)
        table.set_group(b"DESK-1", {LimitKind.MAX_LONG_POSITION: 150})
        table.set_account_groups(b"ACC-1", [b"DESK-1"])
        # a group record nothing uses any more (no hash, no member) is no difference
    tables[0].set_account_groups(b"ORPHAN-HOLDER", [b"OLD"])
    tables[0].set_account_groups(b"ORPHAN-HOLDER", [])
    assert compare(*tables) == []
    live, fresh = tables
    fresh.set_group(b"DESK-1", {LimitKind.MAX_LONG_POSITION: 300})
    fresh.set_account_groups(b"ACC-1", [b"DESK-1", b"FIRM"])
    assert [str(d) for d in compare(live, fresh)] == [
        "account ACC-1: groups is (b'DESK-1',) in the table, (b'DESK-1', b'FIRM') in Redis",
        "group DESK-1: limits is {3: 150} in the table, {3: 300} in Redis",
        "group FIRM: members is () in the table, (b'ACC-1',) in Redis",
    ]
