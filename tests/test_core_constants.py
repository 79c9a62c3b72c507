"""One source of truth: every number the Python layer shares with the compiled core is the core's.

``layout.pxd`` writes each constant once; :mod:`pretrade._core.constants`
exports it. These tests fail when a module of the Python layer restates one
(an assignment instead of an import), when a copy differs, when the limit
catalogue or a wire enum drifts from the core, or when the settings accept a
capacity the core refuses.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import pretrade
from pretrade import _core
from pretrade._core import Verdict, constants
from pretrade.app.config import ConfigError, Settings
from pretrade.engine.limits import REQUIRED_COUNT, LimitKind
from pretrade.engine.reference import ReferenceBook
from pretrade.v1 import risk_pb2 as pb

PACKAGE = Path(pretrade.__file__).parent
#: Every name the core exports as a constant.
CORE_NAMES = frozenset(name for name in vars(constants) if name.isupper())


def python_modules() -> list[str]:
    """Every module of the Python layer (not the generated code, not the core)."""
    names = []
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="pretrade."):
        if info.name.startswith(("pretrade.v1", "pretrade._core")):
            continue
        names.append(info.name)
    return sorted(names)


def test_the_core_exports_every_constant_the_python_layer_needs():
    for name in ("MAX_ID_LENGTH", "MAX_ORDER_ID_LENGTH", "MAX_TAG_LENGTH", "TAG_LIMIT_SLOTS",
                 "STORED_REJECTIONS", "MAX_REJECTIONS", "RATE_RING_CAPACITY",
                 "REJECT_RING_CAPACITY", "DEFAULT_ORDER_WINDOW_MS",
                 "DEFAULT_NOTIONAL_WINDOW_MS", "DEFAULT_REJECT_WINDOW_MS", "AUTO_HALT_NONE",
                 "AUTO_HALT_LOSS_LIMIT", "AUTO_HALT_REJECT_STORM", "HALT_NONE", "MAX_CAPACITY",
                 "MAX_LOCK_STRIPES", "LIMIT_KINDS", "LIMIT_REQUIRED_COUNT",
                 "CAPACITY_NUMBERS", "ORDER_ID_EXPIRED", "DEFAULT_ORDER_EXPIRY_MS",
                 "ACCOUNT_SHARE_DIVISOR", "EVICTED_FILTER_WORDS", "EVICTED_FILTER_HASHES",
                 "EVICT_SCAN"):
        assert name in CORE_NAMES, name


@pytest.mark.parametrize("module_name", python_modules())
def test_no_module_restates_a_core_constant(module_name):
    """A core constant is imported, never assigned, and every copy is the core's value."""
    module = importlib.import_module(module_name)
    source = Path(module.__file__ or "").read_text()
    assigned = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            for element in ast.walk(target):
                if isinstance(element, ast.Name):
                    assigned.add(element.id)
    restated = sorted(assigned & CORE_NAMES)
    assert not restated, f"{module_name} assigns {restated}: import them from pretrade._core"
    for name in CORE_NAMES & set(vars(module)):
        assert getattr(module, name) == getattr(constants, name), (module_name, name)


def test_the_limit_catalogue_is_the_cores():
    assert {kind.name: int(kind) for kind in LimitKind} == constants.LIMIT_KINDS
    assert len(LimitKind) == constants.LIMIT_KIND_COUNT == _core.LAYOUT["limit_kinds"]
    assert REQUIRED_COUNT == constants.LIMIT_REQUIRED_COUNT
    assert _core.REQUIRED_LIMIT_MASK == (1 << REQUIRED_COUNT) - 1


@pytest.mark.parametrize(("core", "wire", "prefix"), [
    (constants.SIDE_NUMBERS, pb.Side, "SIDE_"),
    (constants.ORDER_TYPE_NUMBERS, pb.OrderType, "ORDER_TYPE_"),
    (constants.HALT_MODE_NUMBERS, pb.HaltMode, "HALT_MODE_"),
    (constants.HALT_SCOPE_NUMBERS, pb.HaltScope, "HALT_SCOPE_"),
    (constants.CAPACITY_NUMBERS, pb.Capacity, "CAPACITY_"),
])
def test_the_cores_enums_equal_the_wire_contract(core, wire, prefix):
    named = {name.removeprefix(prefix): number for name, number in wire.items() if number}
    assert core == named


def test_every_reject_code_of_the_core_is_on_the_wire_with_the_same_number():
    wire = {name.removeprefix("REJECT_CODE_"): number for name, number in pb.RejectCode.items()}
    for name, number in constants.REJECT_CODE_NUMBERS.items():
        assert wire[name] == number, name


@pytest.mark.parametrize("name", ["max_accounts", "max_instruments", "max_positions",
                                  "max_orders"])
def test_settings_accept_exactly_the_capacities_the_core_accepts(name):
    limit = constants.MAX_CAPACITY
    Settings(**{name: limit})
    with pytest.raises(ConfigError, match=f"{name}={limit + 1}"):
        Settings(**{name: limit + 1})
    sizes = {"max_accounts": 1, "max_instruments": 1, "max_positions": 1, "max_orders": 1}
    _core.PositionTable.required_size(**{**sizes, name: limit}, max_overrides=1,
                                      lock_stripes=1)
    with pytest.raises(ValueError, match=name):
        _core.PositionTable.required_size(**{**sizes, name: limit + 1}, max_overrides=1,
                                          lock_stripes=1)


def test_settings_accept_exactly_the_lock_stripes_the_core_accepts():
    Settings(lock_stripes=constants.MAX_LOCK_STRIPES)
    with pytest.raises(ConfigError, match="lock_stripes"):
        Settings(lock_stripes=constants.MAX_LOCK_STRIPES * 2)
    with pytest.raises(ValueError, match="lock_stripes"):
        _core.PositionTable.required_size(1, 1, 1, 1, constants.MAX_LOCK_STRIPES * 2, 1)


def test_engine_and_twin_answer_with_the_same_named_verdict():
    from pretrade.engine.table import new_private_table

    engine = _core.Engine(new_private_table(max_accounts=4, max_instruments=4,
                                            max_positions=4, max_overrides=4,
                                            lock_stripes=1, max_orders=4))
    book = ReferenceBook(max_orders=4)
    args = (b"o1", b"ACC", b"SYM", pb.SIDE_BUY, pb.ORDER_TYPE_LIMIT, 10, 100)
    core, twin = engine.evaluate(*args), book.evaluate(*args)
    assert type(core) is type(twin) is Verdict
    assert core == twin
    assert core.approved is False and core.rejections[0][0] == pb.REJECT_CODE_STALE_DATA
    assert Verdict._fields == ("approved", "notional", "rejections", "replayed", "auto_halt",
                               "profit_and_loss", "stored")


def test_settings_accept_exactly_the_order_policy_the_core_accepts():
    from pretrade.engine.table import new_private_table

    limit = constants.MAX_CAPACITY
    assert Settings(max_orders_per_account=limit).account_share == limit
    with pytest.raises(ConfigError, match="max_orders_per_account"):
        Settings(max_orders_per_account=limit + 1)
    table = new_private_table(max_accounts=1, max_instruments=1, max_positions=1,
                              max_overrides=1, lock_stripes=1, max_orders=8,
                              max_orders_per_account=limit,
                              order_expiry_ms=Settings(order_expiry_ms=2**31 - 1).order_expiry_ms)
    assert table.counts()["max_orders_per_account"] == limit
    with pytest.raises(ValueError, match="max_orders_per_account"):
        new_private_table(max_accounts=1, max_instruments=1, max_positions=1, max_overrides=1,
                          lock_stripes=1, max_orders=8, max_orders_per_account=limit + 1)
    assert new_private_table(max_accounts=1, max_instruments=1, max_positions=1,
                             max_overrides=1, lock_stripes=1, max_orders=8
                             ).counts()["max_orders_per_account"] == 1 == ReferenceBook(8).share
