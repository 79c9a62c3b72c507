"""The ``pretrade`` command line: argument parsing and commands, tables, a small client.

:func:`main` is the entry point (``pretrade`` and ``python -m pretrade``);
see :mod:`pretrade.cli.commands` for the commands, :mod:`pretrade.cli.format` for
what they print and :mod:`pretrade.cli.client` for the gateway client.
"""

from pretrade.cli.commands import main

__all__ = ["main"]
