"""An embedded, real redis-server for development and tests.

``make serve`` without ``REDIS_URL`` and the test fixtures both need a Redis
that nobody installed by hand. This module finds a ``redis-server`` binary
(:mod:`pretrade.app.redisbinaries`: Redis 7.4 of Redis Stack, with the
RedisTimeSeries module loaded, unless another is named) and runs it as a
child process on a loopback port.

Examples
--------
>>> with RedisServer() as server:                      # doctest: +SKIP
...     client = redis.Redis.from_url(server.url)
...     client.ping()
True
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pretrade._core.constants import CLUSTER_SLOTS
from pretrade.app.lifetime import die_with_parent
from pretrade.app.redisbinaries import (
    find_cluster_redis_server,
    find_redis_cli,
    find_redis_server,
    find_timeseries_module,
)
from pretrade.engine.errors import DataDirInUse
from pretrade.engine.locks import holder_of, try_lock

__all__ = ["CLUSTER_SLOTS", "RedisClusterServer", "RedisServer", "find_redis_cli",
           "find_redis_server"]

logger = logging.getLogger(__name__)

LOCK_FILE = "redis-server.lock"
"""The file in a data directory that its redis-server and the process that started it lock."""

_READY_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_FREE_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 20


def _pick_free_port() -> int:
    """A loopback port that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


#: A cluster node's bus listens 10,000 ports above its own (cluster-port is left unset).
CLUSTER_BUS_OFFSET = 10_000


def _pick_free_cluster_port() -> int:
    """A port below 55536 that was free a moment ago, and so was the one 10,000 above it."""
    for _ in range(100):
        port = random.randrange(20_000, 65_536 - CLUSTER_BUS_OFFSET)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                probe.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports (node and cluster bus) found for a cluster node")


def tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} was not written)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def lock_data_dir(data_dir: Path, lock_file: str, server: str) -> int:
    """An exclusive flock on ``data_dir``'s lock file; DataDirInUse names its holder.

    The descriptor is passed on to the server child, so the directory stays
    locked while either of them lives, and the kernel unlocks it when both
    are gone (however they ended). ``server`` names it in the message.
    """
    path = data_dir / lock_file
    fd = try_lock(path)
    if fd is None:
        raise DataDirInUse(
            f"the {server} data directory {data_dir} is in use by {holder_of(path)}: stop that "
            "server (or the pretrade serve that started it), or give this one another "
            "data_dir (PRETRADE_DATA_DIR)")
    return fd


def _note_holder(fd: int, redis_pid: int) -> None:
    """Write who holds the lock into the lock file (for the message of a refused start)."""
    text = f"redis-server pid {redis_pid} (started by pid {os.getpid()})\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a bounded wait. Safe on an exited process."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning(
            "redis-server pid %d ignored SIGTERM for %.0f s; killing it",
            process.pid,
            _STOP_TIMEOUT_SECONDS,
        )
        process.kill()
        process.wait()


class _PortInUse(Exception):
    """redis-server exited because another process took its port first."""


class _DiedBeforeExec(Exception):
    """The child died of a signal before it became redis-server (it wrote no log)."""

    def __init__(self, signal: int) -> None:
        super().__init__(signal)
        self.signal = signal


_EXEC_ATTEMPTS = 3


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1``.

    Nothing runs until :meth:`start` (or entering the ``with`` block); the
    server stops at :meth:`stop`, on leaving the ``with`` block, or, as a
    last resort, when this object is garbage collected or the interpreter
    exits.

    Parameters
    ----------
    port : int, default 0
        TCP port to bind on 127.0.0.1; 0 picks a free one (and retries with
        another if a different process takes it between the pick and the
        bind).
    data_dir : pathlib.Path, optional
        Working directory of the server: the append-only file (when
        persistent), ``redis.log`` and ``redis-server.console.log``. Created
        if missing. When omitted, a temporary directory is used and removed
        by :meth:`stop`.
    persistent : bool, default False
        Keep data across restarts with the same ``data_dir`` through the
        append-only file (``appendonly yes``). RDB snapshots are always off
        (``save ""``). Requires ``data_dir``.
    password : str, optional
        Set ``requirepass``. It goes to redis-server in a mode 0600 config
        file in ``data_dir``, deleted once the server is up, rather than on
        the command line, where ``ps`` would show it.
    notify_keyspace_events : str, default "KEA"
        The server's ``notify-keyspace-events`` at start. ``""`` starts it
        the way a stock redis-server starts, with none: what pretrade must
        then set itself (fault tests restart such a server).
    cluster_node_timeout_ms : int, optional
        Start it as a Redis Cluster node (``cluster-enabled yes``, its
        ``nodes.conf`` in ``data_dir``) with this ``cluster-node-timeout``;
        :class:`RedisClusterServer` makes a cluster of such nodes.
    replica_of : int, optional
        Start it as a replica (``replicaof 127.0.0.1 <port>``) of the server on
        this port; :meth:`start` then returns once its link to the primary is
        up and the first synchronisation is done.
    timeseries : bool, default True
        Load the RedisTimeSeries module when the binary is Redis Stack's
        (:attr:`timeseries` says whether it was); False starts a server
        without it.
    binary : str, optional
        The redis-server to run; :func:`find_redis_server` when omitted.

    Raises
    ------
    DataDirInUse
        From :meth:`start`, when another redis-server (or the process that
        started it) holds ``data_dir``: two servers never share one
        append-only file.

    Notes
    -----
    By default the server runs with ``notify-keyspace-events KEA`` so that clients can
    subscribe to ``__keyspace@0__:*`` and ``__keyevent@0__:*`` changes. It
    runs in its own session, so a Ctrl-C in the terminal reaches only the
    parent process, which then stops the server in order. It dies with its
    parent: on Linux the kernel sends it SIGTERM when the thread that started
    it ends (``PR_SET_PDEATHSIG``), so start it from the main thread; a
    ``kill -9`` of the parent leaves no redis-server behind. The data
    directory is locked (``redis-server.lock``) by both while either lives.
    """

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | None = None,
        persistent: bool = False,
        password: str | None = None,
        notify_keyspace_events: str = "KEA",
        cluster_node_timeout_ms: int | None = None,
        replica_of: int | None = None,
        timeseries: bool = True,
        binary: str | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if persistent and data_dir is None:
            raise ValueError(
                "persistent=True needs a data_dir: a temporary directory is removed at stop()"
            )
        self._requested_port = port
        self._requested_data_dir = Path(data_dir) if data_dir is not None else None
        self._persistent = persistent
        self._password = password
        self._notify_keyspace_events = notify_keyspace_events
        self._cluster_node_timeout_ms = cluster_node_timeout_ms
        self._replica_of = replica_of
        self._load_timeseries = timeseries
        self._binary = binary
        self._timeseries = False
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._data_dir: Path | None = None
        self._temporary_dir: tempfile.TemporaryDirectory[str] | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock_fd: int | None = None
        self._unlock: weakref.finalize | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.

        Returns
        -------
        RedisServer
            ``self``, so that ``server = RedisServer().start()`` reads well.

        Raises
        ------
        RuntimeError
            If it is already running, no binary is found, or the server does
            not answer PING within about 10 seconds (the message carries the
            tail of its log).
        """
        if self.running:
            raise RuntimeError(f"redis-server is already running on port {self._port}")
        binary = self._binary or find_redis_server()
        if self._requested_data_dir is not None:
            self._data_dir = self._requested_data_dir.resolve()
            self._data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._temporary_dir = tempfile.TemporaryDirectory(prefix="pretrade-redis-")
            self._data_dir = Path(self._temporary_dir.name)
        try:
            self._lock_fd = lock_data_dir(self._data_dir, LOCK_FILE, "Redis")
            self._unlock = weakref.finalize(self, os.close, self._lock_fd)
            attempts = _FREE_PORT_ATTEMPTS if self._requested_port == 0 else 1
            for attempt in range(1, attempts + 1):
                port = self._requested_port or (
                    _pick_free_port() if self._cluster_node_timeout_ms is None
                    else _pick_free_cluster_port())
                try:
                    self._launch_retrying(binary, port)
                    return self
                except _PortInUse:
                    if attempt == attempts:
                        raise RuntimeError(
                            f"redis-server could not bind 127.0.0.1:{port}: address in use"
                            + (f" (tried {attempts} free ports)" if attempts > 1 else "")
                        ) from None
                    logger.info("port %d was taken before redis-server bound it; retrying", port)
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable: the port loop returns or raises")

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 5 seconds.

        Idempotent; a server that was never started or already stopped is
        left as it is. Removes the data directory only if it was temporary.
        """
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _terminate(process)
        # Unlocked after the server is gone (and only once: the finalizer runs once).
        unlock, self._unlock, self._lock_fd = self._unlock, None, None
        if unlock is not None:
            unlock()
        if self._temporary_dir is not None:
            self._temporary_dir.cleanup()
            self._temporary_dir = None
        self._port = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (127.0.0.1)."""
        if self._port is None:
            raise RuntimeError("redis-server is not running; call start() first")
        return self._port

    @property
    def pid(self) -> int:
        """Process id of the redis-server child."""
        if self._process is None:
            raise RuntimeError("redis-server is not running; call start() first")
        return self._process.pid

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, with the password when one is set."""
        credentials = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def timeseries(self) -> bool:
        """Whether the server runs with the RedisTimeSeries module (``TS.ADD``, ``TS.GET``)."""
        return self._timeseries

    @property
    def data_dir(self) -> Path:
        """The server's working directory (AOF and logs)."""
        if self._data_dir is None:
            raise RuntimeError("redis-server has not been started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server's own log file (``redis.log`` in :attr:`data_dir`)."""
        return self.data_dir / "redis.log"

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self.running else "stopped"
        return f"RedisServer({where}, data_dir={self._data_dir}, persistent={self._persistent})"

    # -- internals ------------------------------------------------------------

    def _command(self, binary: str, port: int) -> list[str]:
        data_dir = self.data_dir
        command = [binary]
        if self._password is not None:
            # redis-server reads the config file first; the flags below add to it.
            secrets = data_dir / "redis-secrets.conf"
            secrets.touch(mode=0o600)
            secrets.chmod(0o600)
            escaped = self._password.replace("\\", "\\\\").replace('"', '\\"')
            secrets.write_text(f'requirepass "{escaped}"\n')
            command.append(str(secrets))
        command += [
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self._persistent else "no",
            "--dir", str(data_dir),
            "--logfile", str(self.log_path),
            "--notify-keyspace-events", self._notify_keyspace_events,
            # A replica's first synchronisation starts at once (Redis 7 waits
            # 5 s by default for more replicas to share a diskless transfer).
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self._cluster_node_timeout_ms is not None:
            command += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self._cluster_node_timeout_ms),
                # The slots of a failed primary stop, the others keep serving.
                "--cluster-require-full-coverage", "no",
            ]  # fmt: skip
        if self._replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(self._replica_of)]
        module = find_timeseries_module(binary) if self._load_timeseries else None
        if module is not None:
            command += ["--loadmodule", module]
        self._timeseries = module is not None
        return command

    def _launch_retrying(self, binary: str, port: int) -> None:
        """:meth:`_launch`, again when the child died of a signal before it ran redis-server.

        A process that runs gRPC forks with gRPC's at-fork handlers armed; now
        and then one of them aborts the child between fork and exec (SIGABRT,
        "epoll_wait error: Bad file descriptor" on its console). That child
        never was a redis-server, so starting it again is safe.
        """
        for attempt in range(1, _EXEC_ATTEMPTS + 1):
            try:
                self._launch(binary, port)
                return
            except _DiedBeforeExec as died:
                if attempt == _EXEC_ATTEMPTS:
                    console = tail(self.data_dir / "redis-server.console.log")
                    raise RuntimeError(
                        f"redis-server's child died of signal {died.signal} before it ran, "
                        f"{_EXEC_ATTEMPTS} times:\n{console}") from None
                logger.warning("redis-server's child died of signal %d before it ran; "
                               "starting it again", died.signal)

    def _launch(self, binary: str, port: int) -> None:
        console_log = self.data_dir / "redis-server.console.log"
        assert self._lock_fd is not None
        with console_log.open("ab") as console:
            process = subprocess.Popen(
                self._command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The child holds the data directory's lock too, and dies with us.
                pass_fds=(self._lock_fd,),
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        _note_holder(self._lock_fd, process.pid)
        self._process = process
        self._port = port
        self._finalizer = weakref.finalize(self, _terminate, process)
        try:
            self._wait_until_ready(process, port, console_log)
        finally:
            # Read once at startup; no reason to leave the password on disk.
            (self.data_dir / "redis-secrets.conf").unlink(missing_ok=True)
        logger.info("redis-server pid %d ready on 127.0.0.1:%d", process.pid, port)

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], port: int, console_log: Path
    ) -> None:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self._password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            # This loop is the retry; redis-py's own backoff would hide for
            # seconds that the process already died.
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    self._process = None
                    self._port = None
                    log_tail = tail(self.log_path)
                    if "Address already in use" in log_tail:
                        raise _PortInUse(port)
                    if process.returncode < 0 and not self.log_path.exists():
                        raise _DiedBeforeExec(-process.returncode)
                    raise RuntimeError(
                        f"redis-server exited with status {process.returncode} during startup.\n"
                        f"--- {self.log_path} ---\n{log_tail}\n"
                        f"--- {console_log} ---\n{tail(console_log)}"
                    )
                try:
                    if client.ping() and (self._replica_of is None or client.info(
                            "replication").get("master_link_status") == "up"):
                        return
                except redis.AuthenticationError as error:
                    # A subclass of ConnectionError, but waiting will not fix it.
                    raise RuntimeError(
                        f"redis-server on 127.0.0.1:{port} refused the password: {error}"
                    ) from error
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as error:
                    # Not listening yet, or still loading the append-only file.
                    last_error = error
                time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(
            f"redis-server pid {process.pid} did not answer PING on 127.0.0.1:{port} within "
            f"{_READY_TIMEOUT_SECONDS:.0f} s (last error: {last_error}).\n"
            f"--- {self.log_path} ---\n{tail(self.log_path)}\n"
            f"--- {console_log} ---\n{tail(console_log)}"
        )


_CLUSTER_READY_TIMEOUT_SECONDS = 30.0
# How often the orphaned replicas are asked again to take their slots over.
_TAKEOVER_ROUND_SECONDS = 3.0


class RedisClusterServer:
    """A real Redis Cluster on ``127.0.0.1``: primaries, each with its replicas.

    Every node is a :class:`RedisServer` (the same binary,
    :func:`~pretrade.app.redisbinaries.find_cluster_redis_server`, free ports, its
    own data directory) started with ``cluster-enabled yes``. The cluster is
    made with plain commands, not ``redis-cli --cluster``: CLUSTER ADDSLOTS
    gives each primary an equal range of the 16,384 slots, CLUSTER MEET
    introduces every node to the first, CLUSTER REPLICATE attaches the
    replicas; :meth:`start` returns once every node reports
    ``cluster_state:ok`` and every replica's link to its primary is up.

    Parameters
    ----------
    primaries : int, default 3
    replicas : int, default 1
        Replicas per primary.
    node_timeout_ms : int, default 2000
        ``cluster-node-timeout``: how long a primary may be unreachable
        before its replica is promoted (small, so failover tests are quick).
    notify_keyspace_events : str, default "KEA"
        As for :class:`RedisServer`; keyspace notifications are node-local.
    data_dir : pathlib.Path, optional
        Parent of the nodes' data directories (``node-N``); a temporary
        directory when omitted.

    Notes
    -----
    ``cluster-require-full-coverage no``: while a primary is down (until its
    replica is promoted) only its slots fail, the others keep serving.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000,
                 notify_keyspace_events: str = "KEA", data_dir: Path | None = None) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError(f"need at least one primary, got {primaries} and {replicas} replicas")
        self._primaries_wanted = primaries
        self._replicas_wanted = replicas
        self._node_timeout_ms = node_timeout_ms
        self._notify_keyspace_events = notify_keyspace_events
        self._requested_data_dir = Path(data_dir) if data_dir is not None else None
        self._temporary_dir: tempfile.TemporaryDirectory[str] | None = None
        self.nodes: list[RedisServer] = []
        #: The nodes started as primaries (a failover may have demoted one since).
        self.initial_primaries: list[RedisServer] = []

    def start(self) -> RedisClusterServer:
        """Start every node, assign the slots, attach the replicas, wait for ``ok``."""
        if self.nodes:
            raise RuntimeError("the cluster is already running")
        if self._requested_data_dir is not None:
            base = self._requested_data_dir
            base.mkdir(parents=True, exist_ok=True)
        else:
            self._temporary_dir = tempfile.TemporaryDirectory(prefix="pretrade-cluster-")
            base = Path(self._temporary_dir.name)
        binary = find_cluster_redis_server()
        try:
            total = self._primaries_wanted * (1 + self._replicas_wanted)
            for number in range(total):
                node = RedisServer(data_dir=base / f"node-{number}",
                                   notify_keyspace_events=self._notify_keyspace_events,
                                   cluster_node_timeout_ms=self._node_timeout_ms,
                                   binary=binary)
                self.nodes.append(node.start())
            self.initial_primaries = self.nodes[:self._primaries_wanted]
            self._form()
        except BaseException:
            self.stop()
            raise
        logger.info("Redis Cluster ready: %d primaries, %d replicas each, on ports %s",
                    self._primaries_wanted, self._replicas_wanted,
                    ",".join(str(node.port) for node in self.nodes))
        return self

    def _form(self) -> None:
        clients = [_node_client(node.port) for node in self.nodes]
        try:
            primaries = clients[:self._primaries_wanted]
            share = CLUSTER_SLOTS // len(primaries)
            for number, client in enumerate(primaries):
                first = number * share
                last = CLUSTER_SLOTS - 1 if number == len(primaries) - 1 else first + share - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
            ids = [client.execute_command("CLUSTER MYID") for client in clients]
            ids = [as_id.decode() if isinstance(as_id, bytes) else as_id for as_id in ids]
            self._wait("every node knows every other",
                       lambda: all(_known_nodes(client) == len(clients) for client in clients))
            for number, client in enumerate(clients[len(primaries):]):
                client.execute_command("CLUSTER REPLICATE", ids[number % len(primaries)])
            self._wait("cluster_state:ok on every node and every replica linked",
                       lambda: all(_node_ready(client) for client in clients))
        finally:
            for client in clients:
                client.close()

    def _wait(self, what: str, done: Callable[[], bool],
              seconds: float = _CLUSTER_READY_TIMEOUT_SECONDS) -> None:
        if not _poll(done, seconds):
            logs = "\n".join(f"--- {node.log_path} ---\n{tail(node.log_path)}"
                             for node in self.nodes)
            raise RuntimeError(f"Redis Cluster: not {what} within {seconds:.0f} s\n{logs}")

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node and reap it (a crash, for the failover tests)."""
        process = node._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{node!r} is not running")
        process.kill()
        process.wait()

    def restart(self, node: RedisServer) -> None:
        """Start a killed node again on its port, from its data directory.

        It keeps its cluster identity (``nodes.conf``) and so its slots, but not
        its data (nothing is persisted): a primary back within the node timeout
        that lost its writes, as one restarted with persistence off.
        """
        if node.running:
            raise RuntimeError(f"{node!r} is running")
        port = node.port
        node.stop()  # reaped already; this unlocks the data directory
        node._requested_port = port
        node.start()

    def wait_until_served(self) -> None:
        """Wait until every running node sees every slot served by a running primary.

        After a primary is killed: its replica has been promoted, and the
        rest of the cluster knows. (``cluster_state`` alone would not say:
        with ``cluster-require-full-coverage no`` it stays ``ok``.)
        """
        running = {node.port for node in self.nodes if node.running}
        clients = [_node_client(port) for port in sorted(running)]

        def served() -> bool:
            return all(_serves_all_slots(client, running) for client in clients)

        # Redis's own election first. It can be denied (a voter has not marked
        # the primary failed yet, or voted in that epoch already), and the
        # replica tries again only after four node timeouts; one retry fits in
        # this patience. After it, the orphaned replicas take their primary's
        # slots without a vote (CLUSTER FAILOVER TAKEOVER), asked again every
        # few seconds: a replica too slow to answer once (a loaded machine)
        # is asked on the next round, not forgotten.
        patience = max(5.0, 6 * self._node_timeout_ms / 1000)
        started = time.monotonic()
        next_round = started + patience

        def served_or_taken_over() -> bool:
            nonlocal next_round
            if served():
                return True
            now = time.monotonic()
            if now >= next_round:
                next_round = now + _TAKEOVER_ROUND_SECONDS
                self._take_over_orphans(running, now - started)
            return False

        try:
            self._wait("every slot served by a running primary, as every node sees it",
                       served_or_taken_over, patience + _CLUSTER_READY_TIMEOUT_SECONDS)
        finally:
            for client in clients:
                client.close()

    def _take_over_orphans(self, running: set[int], waited_s: float) -> None:
        for port in self._orphaned_replicas(running):
            logger.warning("Redis Cluster: the replica on port %d was not elected "
                           "within %.0f s; CLUSTER FAILOVER TAKEOVER", port, waited_s)
            with closing(_node_client(port)) as replica:
                try:
                    replica.execute_command("CLUSTER FAILOVER", "TAKEOVER")
                except redis.RedisError as error:
                    logger.warning("Redis Cluster: CLUSTER FAILOVER TAKEOVER on port %d "
                                   "failed (%s); asked again in %.0f s", port, error,
                                   _TAKEOVER_ROUND_SECONDS)

    def _orphaned_replicas(self, running: set[int]) -> list[int]:
        """The running replicas whose primary is not running, by port."""
        orphans = []
        for port in sorted(running):
            with closing(_node_client(port)) as client:
                try:
                    replication = client.info("replication")
                except redis.RedisError:
                    continue
            if replication.get("role") == "slave" and \
                    int(replication.get("master_port", 0)) not in running:
                orphans.append(port)
        return orphans

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL); idempotent."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.stop()
        self.initial_primaries = []
        if self._temporary_dir is not None:
            self._temporary_dir.cleanup()
            self._temporary_dir = None

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------

    def primaries(self) -> list[RedisServer]:
        """The running nodes that are primaries now (``role:master``), by port."""
        found = []
        for node in self.nodes:
            if not node.running:
                continue
            client = _node_client(node.port)
            try:
                if client.info("replication").get("role") == "master":
                    found.append(node)
            except redis.RedisError:
                continue
            finally:
                client.close()
        return found

    def primary_of(self, key: bytes | str) -> RedisServer:
        """The running primary that serves ``key``'s slot."""
        for node in self.primaries():
            client = _node_client(node.port)
            try:
                slot = client.execute_command("CLUSTER KEYSLOT", key)
                owners = client.execute_command("CLUSTER SLOTS")
            finally:
                client.close()
            for first, last, owner, *_ in owners:
                if first <= slot <= last and owner[1] == node.port:
                    return node
        raise LookupError(f"no running primary serves {key!r}")

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``: every node, as seeds."""
        if not self.nodes:
            raise RuntimeError("the Redis Cluster is not running; call start() first")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def __repr__(self) -> str:
        return f"RedisClusterServer({self.url if self.nodes else 'stopped'})"


def _node_client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=2,
                       decode_responses=True, retry=Retry(NoBackoff(), 0))


def _known_nodes(client: redis.Redis) -> int:
    return int(client.execute_command("CLUSTER INFO")["cluster_known_nodes"])


def _cluster_ok(client: redis.Redis) -> bool:
    try:
        return str(client.execute_command("CLUSTER INFO")["cluster_state"]) == "ok"
    except redis.RedisError:
        return False


def _poll(done: Callable[[], bool], seconds: float) -> bool:
    """Whether ``done()`` became true within ``seconds``, asked every 50 ms."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _serves_all_slots(client: redis.Redis, running: set[int]) -> bool:
    try:
        if not _cluster_ok(client):
            return False
        covered = 0
        for first, last, owner, *_ in client.execute_command("CLUSTER SLOTS"):
            if int(owner[1]) not in running:
                return False
            covered += last - first + 1
        return covered == CLUSTER_SLOTS
    except redis.RedisError:
        return False


def _node_ready(client: redis.Redis) -> bool:
    if not _cluster_ok(client):
        return False
    replication = client.info("replication")
    return replication.get("role") == "master" or replication.get("master_link_status") == "up"
