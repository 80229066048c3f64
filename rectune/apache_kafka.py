"""The Apache Kafka lane: a real KRaft broker run from Maven Central jars.

Apache Kafka is the reference engine (see DESIGN.md, "Brokers"): durability,
crash and restart tests run against it, because the embedded `tansu` keeps
everything in memory and lacks idempotent producers and correct end offsets.
The integration fixtures and benchmarks call `fetch_kafka_jars` once per machine
and then start one `ApacheKafkaBroker` per test session. Java 17+ and Maven are
needed; `java_and_maven_available` says whether they are here.

Measured on the 2-core dev machine (2026-11-25, Kafka 4.1.1, OpenJDK 17):
- `fetch_kafka_jars`: ~8.5 s cold (empty Maven repo: 46 jars, 43 MB, plus
  Maven's own plugins, 64 MB in ~/.m2), ~4 s with ~/.m2 already filled,
  ~1 ms when the cache marker says the jars are complete (the usual case);
- `start()` on a fresh dir: format ~1.5 s + JVM start to the first client
  round trip ~4.5 s, about 6 s in all (8 s beside a busy test session);
- `restart()` (SIGTERM, controlled shutdown ~1 s, start on existing data)
  ~5 s; `kill()` + `start()` ~6 s (the crashed node's registration must
  expire first: `broker.session.timeout.ms`, lowered to 3 s here);
- JVM RSS ~340 MB after start and a few thousand records (512 MB heap cap).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from rectune.embedded import (
    LOOPBACK,
    ManagedProcess,
    check_port_free,
    free_port,
    kafka_metadata_probe,
    read_tail,
    spawn,
    wait_ready,
)
from rectune.errors import RuntimeStartError

__all__ = [
    "DEFAULT_POM",
    "ApacheKafkaBroker",
    "fetch_kafka_jars",
    "java_and_maven_available",
]

DEFAULT_POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
_MARKER = "jars.complete"
_MVN_TIMEOUT_S = 600.0
_FORMAT_TIMEOUT_S = 120.0
_MIN_JAVA = 17
_JVM_OPTS = (
    "-Xms512m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def _java_major(java: str) -> int | None:
    try:
        # `java -version` prints to stderr, e.g. `openjdk version "17.0.15" …`.
        out = subprocess.run(  # noqa: S603 (resolved path, fixed argument)
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    quoted = out.split('"')
    if len(quoted) < 2:
        return None
    parts = quoted[1].split(".")
    # Java 8 and older report "1.8.0_…".
    head = parts[1] if parts[0] == "1" and len(parts) > 1 else parts[0]
    return int(head) if head.isdigit() else None


def java_and_maven_available() -> tuple[bool, str]:
    """Whether Java 17+ and Maven are installed: `(True, "")` or `(False, reason)`.

    Called by the `kafka_broker` test fixture (which skips loudly, or fails on
    CI, when they are missing) and by the CLI before it offers the Apache Kafka
    engine.
    """
    java = shutil.which("java")
    if java is None:
        return False, "`java` (17+) is not on PATH"
    major = _java_major(java)
    if major is None or major < _MIN_JAVA:
        return False, f"`{java}` is Java {major or 'unknown'}; Apache Kafka 4 needs 17+"
    if shutil.which("mvn") is None:
        return False, "`mvn` (Maven) is not on PATH; it fetches the Kafka jars"
    return True, ""


def fetch_kafka_jars(cache_dir: Path, *, pom: Path = DEFAULT_POM) -> Path:
    """Download Apache Kafka and its runtime jars into `cache_dir`; return the jars dir.

    Called by the `kafka_broker` fixture and the benchmarks before starting an
    `ApacheKafkaBroker`. The jars dir is keyed by a hash of `pom`, and a marker
    file listing the jars is written only after Maven succeeded, so a later call
    (or a changed pom) knows whether the set is complete: repeated calls cost a
    stat. Maven downloads into a temporary sibling that is renamed into place,
    so an interrupted fetch never leaves a half-filled jars dir behind.
    """
    try:
        pom_bytes = pom.read_bytes()
    except OSError as err:
        msg = f"cannot read the Kafka pom {pom}: {err.strerror}"
        raise RuntimeStartError(msg, hint="run from a full checkout") from err
    # Absolute: Maven resolves a relative outputDirectory against the pom's dir.
    cache_dir = cache_dir.resolve()
    jars_dir = cache_dir / f"jars-{hashlib.sha256(pom_bytes).hexdigest()[:12]}"
    if _jars_complete(jars_dir):
        return jars_dir
    ok, reason = java_and_maven_available()
    if not ok:
        msg = f"cannot fetch the Apache Kafka jars: {reason}"
        raise RuntimeStartError(msg, hint="install OpenJDK 17+ and Maven")
    mvn = shutil.which("mvn") or "mvn"
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="jars-partial-", dir=cache_dir))
    argv = [
        mvn, "-q", "-B", "-f", str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    try:
        done = subprocess.run(  # noqa: S603 (our pom, resolved mvn)
            argv, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        shutil.rmtree(staging, ignore_errors=True)
        msg = f"Maven did not fetch the Kafka jars within {_MVN_TIMEOUT_S:.0f} s"
        hint = "check network access to Maven Central (or a mirror in ~/.m2)"
        raise RuntimeStartError(msg, hint=hint) from err
    jars = sorted(p.name for p in staging.glob("*.jar"))
    if done.returncode != 0 or not any(j.startswith("kafka_2.13-") for j in jars):
        shutil.rmtree(staging, ignore_errors=True)
        output = (done.stdout + done.stderr)[-3000:]
        msg = f"Maven failed to fetch the Kafka jars (exit {done.returncode}):\n{output}"
        hint = "check network access to Maven Central, then retry"
        raise RuntimeStartError(msg, hint=hint)
    (staging / _MARKER).write_text("\n".join(jars) + "\n", encoding="utf-8")
    try:
        staging.rename(jars_dir)
    except OSError:
        # A concurrent fetch won the race (or a stale incomplete dir is there).
        if not _jars_complete(jars_dir):
            shutil.rmtree(jars_dir, ignore_errors=True)
            staging.rename(jars_dir)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return jars_dir


def _jars_complete(jars_dir: Path) -> bool:
    try:
        names = (jars_dir / _MARKER).read_text(encoding="utf-8").split()
    except OSError:
        return False
    return bool(names) and all((jars_dir / name).is_file() for name in names)


def _random_cluster_id() -> str:
    # Same format as `kafka-storage.sh random-uuid` (org.apache.kafka.common.Uuid:
    # URL-safe base64 of 16 random bytes, no padding, never starting with "-"),
    # generated here to save a ~1 s JVM launch.
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


class _KafkaProcess(ManagedProcess):
    name = "Apache Kafka broker"


class ApacheKafkaBroker:
    """One Apache Kafka node in KRaft combined mode (broker + controller) on loopback.

    Used by the `kafka_broker` fixture, durability/crash tests and benchmarks.
    Ports and the data dir are fixed at construction, so `restart()` (and a
    `start()` after `kill()`) brings the same node back with its data. All files
    live under `work_dir`: `server.properties`, `log4j2.properties`, `data/`
    (the Kafka log dir) and `logs/server.log` (broker log and JVM output).
    """

    def __init__(
        self,
        work_dir: Path,
        jars_dir: Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        extra_properties: Mapping[str, str] | None = None,
    ) -> None:
        # Absolute, because the JVM runs with `work_dir` as its cwd.
        self.work_dir = work_dir.resolve()
        self.jars_dir = jars_dir.resolve()
        self.port = free_port() if port is None else port
        self.controller_port = free_port() if controller_port is None else controller_port
        self.bootstrap = f"{LOOPBACK}:{self.port}"
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "logs" / "server.log"
        self._properties_path = self.work_dir / "server.properties"
        self._log4j_path = self.work_dir / "log4j2.properties"
        self._extra = dict(extra_properties or {})
        self._proc: _KafkaProcess | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM, None when not started."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """True while the broker JVM runs."""
        return self._proc is not None and self._proc.alive()

    def properties(self) -> dict[str, str]:
        """The broker configuration written to `server.properties`.

        Single node, so every internal topic has replication factor 1; group
        timings are lowered so tests can use short session timeouts and do not
        wait for the initial rebalance delay.
        """
        controller = f"{LOOPBACK}:{self.controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # Fewer offsets partitions make the first consumer group start faster.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # After a SIGKILL the node's old registration blocks the restarted
            # broker (DUPLICATE_BROKER_REGISTRATION) until its session expires:
            # 9 s by default, 3 s here, so crash tests restart quickly.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
        }
        props.update(self._extra)
        return props

    def _write_config(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.properties().items()]
        self._properties_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # A .properties log4j2 config needs no YAML/JSON parser on the classpath.
        self._log4j_path.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.file.type = File",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.log_path}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    # The request logger and the controller's per-record logs are
                    # noise at INFO in tests.
                    "logger.request.name = kafka.request.logger",
                    "logger.request.level = WARN",
                    "",
                ]
            ),
            encoding="utf-8",
        )

    def _java_argv(self, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            msg = "cannot start Apache Kafka: `java` (17+) is not on PATH"
            raise RuntimeStartError(msg, hint="install OpenJDK 17+")
        if not any(self.jars_dir.glob("kafka_2.13-*.jar")):
            msg = f"cannot start Apache Kafka: no kafka_2.13 jar in {self.jars_dir}"
            raise RuntimeStartError(msg, hint="call fetch_kafka_jars() first")
        return [
            java,
            *_JVM_OPTS,
            f"-Dlog4j2.configurationFile={self._log4j_path}",
            f"-Dkafka.logs.dir={self.log_path.parent}",
            "-cp",
            # Java expands `dir/*` to every jar in dir itself; no shell involved.
            f"{self.jars_dir}{os.sep}*",
            main_class,
            *args,
        ]

    def _format_if_new(self) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        argv = self._java_argv(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            _random_cluster_id(),
            "--config",
            str(self._properties_path),
        )
        try:
            done = subprocess.run(  # noqa: S603 (resolved java, generated options)
                argv,
                capture_output=True,
                text=True,
                timeout=_FORMAT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            msg = f"formatting the Kafka data dir {self.data_dir} timed out"
            raise RuntimeStartError(msg, hint="is the machine overloaded?") from err
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            msg = f"formatting the Kafka data dir {self.data_dir} failed:\n{output}"
            raise RuntimeStartError(msg, hint="delete the work dir and retry")

    def start(self, ready_timeout_s: float = 90.0) -> None:
        """Write the config, format the data dir if new, launch and wait until ready.

        Ready means an aiokafka metadata round trip lists this broker and its
        advertised address accepts a connection. Raises `RuntimeStartError` when
        Java or the jars are missing, a port is taken, or it is not ready within
        `ready_timeout_s` (the message ends with the broker log).
        """
        if self.alive():
            return
        check_port_free(self.port, "Apache Kafka broker listener")
        check_port_free(self.controller_port, "Apache Kafka controller listener")
        self._write_config()
        self._format_if_new()
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- rectune: starting Kafka at {time.ctime()}\n")
        popen = spawn(
            self._java_argv("kafka.Kafka", str(self._properties_path)),
            what="Apache Kafka broker (java)",
            log_path=self.log_path,
            cwd=self.work_dir,
        )
        proc = _KafkaProcess(popen, self.log_path)
        self._proc = proc
        wait_ready(
            proc,
            lambda: kafka_metadata_probe(self.bootstrap),
            what=f"Apache Kafka broker on {self.bootstrap}",
            timeout_s=ready_timeout_s,
            interval_s=0.25,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL if still running after `timeout_s`."""
        if self._proc is not None:
            self._proc.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; `start()` brings it back."""
        if self._proc is not None:
            self._proc.kill()

    def restart(self, ready_timeout_s: float = 90.0) -> None:
        """Stop and start again on the same ports and data dir (durability tests)."""
        self.stop()
        self.start(ready_timeout_s)

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the broker log, for test failure messages."""
        return read_tail(self.log_path, max_bytes)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
