"""``pretrade reconcile``: the table of a running server compared with Redis.

It maps the server's table file (``MappedTable.attach``: the same file every
server process maps, at ``settings.resolved_table_path()``) rather than
asking the server over gRPC: the comparison then sees every field of every
record, needs no token or new RPC, puts no load on the server's event loop,
and works while the server is too busy or too wedged to answer. It only
reads the table. The price: it runs on the server's machine, as a user who
may open the table file.
"""

from __future__ import annotations

import json
import sys

from pretrade.app.config import Settings, redacted_url
from pretrade.cli.format import format_differences
from pretrade.engine.table import MappedTable
from pretrade.state.connection import redis_client
from pretrade.state.reconciler import confirmed_differences

EXIT_EQUAL = 0
EXIT_DIFFERENT = 1
EXIT_FAILED = 2


async def reconcile_running_server(settings: Settings, confirm_seconds: float, *,
                                   as_json: bool = False) -> int:
    """Compare, print, and return the exit status (0 equal, 1 differences, 2 failed)."""
    if settings.redis_url is None:
        print("pretrade: reconcile needs --redis-url (or $PRETRADE_REDIS_URL, $REDIS_URL): the "
              "Redis that `pretrade serve` names in its banner", file=sys.stderr)
        return EXIT_FAILED
    path = settings.resolved_table_path()
    try:
        mapped = MappedTable.attach(path)
    except FileNotFoundError:
        print(f"pretrade: no table at {path}: is `pretrade serve` running on this machine "
              "with this --listen (or --table-path)?", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as error:
        print(f"pretrade: cannot map the table at {path}: {error}", file=sys.stderr)
        return EXIT_FAILED
    client = redis_client(settings.redis_url, username=settings.redis_username,
                          password=settings.redis_password, socket_timeout=10)
    try:
        if not mapped.table.sync_live:
            print(f"pretrade: the server's table at {path} is not in sync with Redis now (its "
                  "orders get STALE_DATA); compare again once it is live", file=sys.stderr)
            return EXIT_FAILED
        differences = await confirmed_differences(
            client, mapped.table, confirm_seconds,
            series_prices=settings.price_source == "timeseries")
    except OSError as error:
        print(f"pretrade: reading Redis at {redacted_url(settings.redis_url)} failed: {error}",
              file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # redis-py's errors and a state that does not load
        print(f"pretrade: could not load Redis at {redacted_url(settings.redis_url)} for the "
              f"comparison: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await client.aclose()
        mapped.close()
    if as_json:
        for difference in differences:
            print(json.dumps({"entity": difference.entity, "field": difference.field,
                              "table": difference.live, "redis": difference.redis},
                             default=str, ensure_ascii=False))
    else:
        print(format_differences(differences))
    return EXIT_DIFFERENT if differences else EXIT_EQUAL
