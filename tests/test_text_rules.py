"""The id and tag rules of the core (pretrade._core.text) against the documented rules.

The core checks each character with a table lookup; the oracle here is the
rule as docs/redis-schema.md and pretrade.engine.text word it, written as a
regular expression: for any text (ASCII, other Unicode, empty, too long) the
core must accept exactly what the expression accepts, and give the same bytes.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pretrade._core.constants import MAX_ID_LENGTH, MAX_ORDER_ID_LENGTH, MAX_TAG_LENGTH
from pretrade._core.text import id_bytes, is_valid_id, is_valid_tag, order_ids, tag_bytes
from pretrade.api.requests import validate_order
from pretrade.engine.errors import InvalidRequest
from pretrade.v1 import risk_pb2 as pb

ID_RULE = re.compile(rf"[A-Za-z0-9._/\-+=#@$&!~^]{{1,{MAX_ID_LENGTH}}}")


def tag_rule(longest: int) -> re.Pattern[str]:
    return re.compile(rf"[\x21-\x7e]{{1,{longest}}}")


#: Texts near the rules' edges: the id alphabet, every printable character,
#: spaces, braces and colons, control characters, other Unicode.
texts = st.text(alphabet=st.one_of(
    st.sampled_from("AZaz09._/-+=#@$&!~^{}: \t\x00\x7f"),
    st.characters(min_codepoint=0x20, max_codepoint=0x7e),
    st.characters(exclude_categories=("Cs",))), max_size=MAX_ORDER_ID_LENGTH + 3)


@given(texts)
@example("A" * MAX_ID_LENGTH)
@example("A" * (MAX_ID_LENGTH + 1))
@example("{ACC}")
@example("é")
@example("\ud800")  # a lone surrogate: no valid UTF-8 carries one, the core refuses it still
def test_an_id_is_accepted_exactly_when_the_documented_rule_accepts_it(text):
    expected = text.encode("ascii") if ID_RULE.fullmatch(text) else None
    assert id_bytes(text) == expected
    raw = text.encode("utf-8", "surrogatepass")
    assert is_valid_id(raw) == (expected is not None)


@given(texts, st.sampled_from([MAX_TAG_LENGTH, MAX_ORDER_ID_LENGTH, 1]))
@example("X" * MAX_TAG_LENGTH, MAX_TAG_LENGTH)
@example("X" * (MAX_TAG_LENGTH + 1), MAX_TAG_LENGTH)
@example("a b", MAX_TAG_LENGTH)
def test_a_tag_is_accepted_exactly_when_the_documented_rule_accepts_it(text, longest):
    expected = text.encode("ascii") if tag_rule(longest).fullmatch(text) else None
    assert tag_bytes(text, longest) == expected
    if longest == MAX_TAG_LENGTH:
        assert is_valid_tag(text.encode("utf-8", "surrogatepass")) == (expected is not None)


@given(texts, texts, texts, texts, texts)
def test_an_orders_texts_are_valid_together_exactly_when_each_is(order_id, account, symbol,
                                                                  venue, counterparty):
    each = (tag_rule(MAX_ORDER_ID_LENGTH).fullmatch(order_id), ID_RULE.fullmatch(account),
            ID_RULE.fullmatch(symbol), not venue or tag_rule(MAX_TAG_LENGTH).fullmatch(venue),
            not counterparty or tag_rule(MAX_TAG_LENGTH).fullmatch(counterparty))
    found = order_ids(order_id, account, symbol, venue, counterparty)
    if all(each):
        assert found == tuple(t.encode("ascii")
                              for t in (order_id, account, symbol, venue, counterparty))
    else:
        assert found is None
    # validate_order agrees, and a refusal names the first refused field
    order = pb.Order(order_id=order_id, account_id=account, symbol=symbol, venue=venue,
                     counterparty=counterparty, side=pb.SIDE_BUY,
                     order_type=pb.ORDER_TYPE_LIMIT, quantity=1, price=1)
    fields = ("order_id", "account_id", "symbol", "venue", "counterparty")
    if all(each):
        assert tuple(validate_order(order)) == found
    else:
        with pytest.raises(InvalidRequest) as refused:
            validate_order(order)
        assert refused.value.field == fields[[bool(x) for x in each].index(False)]
