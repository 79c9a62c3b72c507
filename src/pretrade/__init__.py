"""pretrade: a pre-trade risk gateway.

A Cython check pipeline over a shared memory table, fed from Redis, served
over gRPC (``pretrade.v1.PreTradeRisk``).
"""

__version__ = "0.1.0"
