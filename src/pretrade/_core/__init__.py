"""The compiled core: the memory-mapped position table and the check pipeline.

Sources live in ``ext/pretrade/_core`` (Cython); ``setup.py`` builds them into
this package.
"""

from pretrade._core.checks import CHECK_NAMES, REQUIRED_LIMIT_MASK, DecisionPool, Engine
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
]
