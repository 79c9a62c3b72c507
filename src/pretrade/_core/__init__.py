"""The compiled core: the memory-mapped position table and the check pipeline.

Sources live in ``ext/pretrade/_core`` (Cython); ``setup.py`` builds them into
this package. :mod:`pretrade._core.constants` exports every number of the
table's layout the Python layer uses (one source of truth: ``layout.pxd``).
"""

from pretrade._core.checks import (
    CHECK_NAMES,
    REQUIRED_LIMIT_MASK,
    DecisionPool,
    Engine,
    Verdict,
    account_key_slots,
    symbol_key_slots,
)
from pretrade._core.positions import LAYOUT, PositionTable, TableFullError, TableLayoutError

__all__ = [
    "CHECK_NAMES",
    "LAYOUT",
    "REQUIRED_LIMIT_MASK",
    "DecisionPool",
    "Engine",
    "PositionTable",
    "TableFullError",
    "TableLayoutError",
    "Verdict",
    "account_key_slots",
    "symbol_key_slots",
]
