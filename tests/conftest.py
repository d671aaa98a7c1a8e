"""Session-wide real peers: an Apache Kafka broker, stripe-mock, localstripe and the Stripe
stand-in (`quotaflow.testing.stripe_standin`).

The broker is `QUOTAFLOW_KAFKA_BOOTSTRAP` if set; otherwise a KRaft broker from Maven jars
(`quotaflow.commands.localkafka`); otherwise testcontainers' Kafka module when a Docker engine
answers. A missing tool fails the run: nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotaflow.commands.localkafka import LocalKafka, free_port
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl, run_standin
from wire.signing import generate_keypair

# Fixtures that start or need a real peer (broker, Stripe servers, deploy tools, the package
# index): a test using any of them is marked `peers`, and `make unit` runs everything else.
PEER_FIXTURES = frozenset(
    {
        "kafka_bootstrap",
        "settings_factory",
        "own_broker",
        "make_stack",
        "stripe_mock",
        "localstripe",
        "stripe_standin_url",
        "stripe_standin",
        "stripe_fetch",
        "helm",
        "promtool",
        "amtool",
        # the slim edge distribution installed from the package index into a clean venv
        "slim_edge_venv",
        "nginx",
        "caddy",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "peers: needs a real peer process (set by conftest)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    peers = pytest.mark.peers
    for item in items:
        marked = item.get_closest_marker("kafka") or item.get_closest_marker("stripe")
        if marked or PEER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(peers)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    import subprocess

    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real broker for the whole session."""
    external = os.environ.get("QUOTAFLOW_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if shutil.which("java") is None and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Random names so that tests sharing the broker never see each other's topics."""
    return lambda stem: f"{stem}-{uuid.uuid4().hex[:10]}"


TENANT_SIGNING_KEY, TENANT_VERIFY_KEY = generate_keypair()


def tenant_verify_env() -> dict[str, str]:
    """What a component process started by a test needs to verify the tests' tenants."""
    return {"QUOTAFLOW_TENANT_VERIFY_KEYS": f'["{TENANT_VERIFY_KEY}"]'}


@pytest.fixture
def settings_factory(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> Callable[..., Settings]:
    """Settings on the session broker with a fresh topic prefix and app id per test."""
    prefix = unique("t") + "."

    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": prefix,
            "partitions": 2,
            "app_id": prefix.rstrip(".") + "-app",
            "data_dir": tmp_path / "data",
            "store": "memory://",
            # The tests' tenants signing key: every tenant record goes through the writer.
            "tenant_signing_keys": [TENANT_SIGNING_KEY],
            "tenant_verify_keys": [TENANT_VERIFY_KEY],
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def stripe_mock() -> Iterator[str]:
    """Base URL of stripe-mock, the shape oracle for every outbound Stripe call."""
    from tests.peers import run_stripe_mock

    with run_stripe_mock() as url:
        yield url


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of localstripe: stateful, sends signed webhooks to registered URLs."""
    from tests.peers import run_localstripe

    with run_localstripe(tmp_path_factory.mktemp("localstripe")) as url:
        yield url


@pytest.fixture(scope="session")
def stripe_standin_url() -> Iterator[str]:
    """Base URL of one Stripe stand-in for the session (a thread of the test process)."""
    with run_standin() as url:
        yield url


@pytest.fixture
def stripe_standin(stripe_standin_url: str) -> StandinControl:
    """The session's Stripe stand-in, emptied for this test: objects, settings, stats."""
    control = StandinControl(stripe_standin_url)
    control.reset()
    return control


@pytest.fixture(params=["fetch_on", "fetch_off"])
def stripe_fetch(request: pytest.FixtureRequest, stripe_standin_url: str) -> StandinControl | None:
    """Runs a test twice: with the worker fetching from the emptied stand-in (production's
    default) and in snapshot mode (None: the fetch off)."""
    if request.param == "fetch_off":
        return None
    control = StandinControl(stripe_standin_url)
    control.reset()
    return control


@pytest.fixture(scope="session")
def nginx() -> Path:
    """Debian's nginx from `make tools` (QUOTAFLOW_NGINX elsewhere); missing fails."""
    from tests.deploy.support import tool

    return tool("QUOTAFLOW_NGINX", "nginx")


@pytest.fixture(scope="session")
def caddy() -> Path:
    """Debian's caddy from `make tools` (QUOTAFLOW_CADDY elsewhere); missing fails."""
    from tests.deploy.support import tool

    return tool("QUOTAFLOW_CADDY", "caddy")
