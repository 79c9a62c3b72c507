"""``python -m pretrade``: the same as the ``pretrade`` command."""

from pretrade.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
