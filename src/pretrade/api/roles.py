"""The names of access control: roles and authentication modes, and nothing else.

Access control (:mod:`pretrade.api.access`), the settings
(:mod:`pretrade.app.config`) and the CLI's ``pretrade token`` share these;
importing them costs nothing (no gRPC, no core).
"""

from __future__ import annotations

TRADER = "trader"
RISK_OPERATOR = "risk_operator"
ADMIN = "admin"
ROLES = (TRADER, RISK_OPERATOR, ADMIN)
"""Every role, least powerful first."""
ALL_ACCOUNTS = "*"
"""In a trader's ``accounts``: every account (an OMS trading for all of them)."""

AUTH_MODES = ("tokens", "none")
"""``auth`` settings: bearer tokens from ``tokens_file``, or none (loopback only)."""
