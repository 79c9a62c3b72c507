"""Time `make serve` on a fresh clone, the way a new user meets it (issue 15: under 40 s).

    .venv/bin/python bench/fresh_serve.py            # clone HEAD, cold caches, time it
    .venv/bin/python bench/fresh_serve.py --warm     # keep pip's and uv's download caches
    .venv/bin/python bench/fresh_serve.py --rev REV  # an earlier commit, for a before/after

It clones this repository's HEAD into a temporary directory, runs `make serve`
there with empty download caches (PIP_NO_CACHE_DIR, a new UV_CACHE_DIR: the
packages come from PyPI, as on a new machine), and stamps each line of its
output with the seconds since the start, until the banner's last line
("Ctrl-C stops it."). It prints the phases (installer, virtualenv, packages,
core, gateway) and the total, then stops the server with SIGTERM. Nothing
else may listen on 127.0.0.1:50051 meanwhile (`make serve`'s port).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANNER_END = "Ctrl-C stops it."
#: make echoes each command before it runs it, so a phase ends when the echo
#: of the first command after it appears.
PHASES = (
    ("the installer (uv, from PyPI)", " venv --quiet"),
    ("virtualenv and build tools", ".build-tools"),
    ("dependencies and the core, in parallel", 'pretrade" serve'),
    ("the gateway: redis-server, PostgreSQL, table, demo book", BANNER_END),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", action="store_true", help="keep the download caches")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (default HEAD)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pretrade-fresh-") as scratch:
        os.chmod(scratch, 0o711)  # PostgreSQL runs as nobody under root: it must reach .run/
        clone = Path(scratch) / "pretrade"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", args.rev], check=True)
        env = dict(os.environ)
        if not args.warm:
            env["PIP_NO_CACHE_DIR"] = "1"
            env["UV_CACHE_DIR"] = str(Path(scratch) / "uv-cache")
        for name in ("VIRTUAL_ENV", "REDIS_URL", "DATABASE_URL"):
            env.pop(name, None)
        started = time.monotonic()
        process = subprocess.Popen(["make", "serve"], cwd=clone, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        assert process.stdout is not None
        stamped: list[tuple[float, str]] = []
        try:
            for line in process.stdout:
                stamped.append((time.monotonic() - started, line.rstrip()))
                if BANNER_END in line or time.monotonic() - started > args.timeout:
                    break
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if not stamped or BANNER_END not in stamped[-1][1]:
            print("make serve did not print its banner:", *(line for _, line in stamped[-30:]),
                  sep="\n", file=sys.stderr)
            return 1
        previous = 0.0
        print(f"make serve on a fresh clone of {ROOT.name} at {args.rev} "
              f"({'warm' if args.warm else 'cold'} download caches, {os.cpu_count()} cores)")
        for name, marker in PHASES:
            at = next((t for t, line in stamped if marker in line), None)
            if at is None:
                continue
            print(f"  {at - previous:6.1f} s  {name}")
            previous = at
        installed = next((t for t, line in stamped if '.venv/.installed-runtime' in line), None)
        if installed is not None:
            print(f"  (the dependencies were in at {installed:.1f} s; the rest of that phase "
                  "is the core's compile)")
        print(f"  {stamped[-1][0]:6.1f} s  total, to the banner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
