"""The audit trail: every decision and halt change, written to the Redis stream ``audit``.

``entries`` is the format, ``trail`` the writer the server runs, and
``query`` the reader ``pretrade audit`` uses (it needs nothing else).
"""
