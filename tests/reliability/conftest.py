"""Fixtures of the reliability suite: whole pipelines as real processes, a broker of the
test's own when it must be stopped, and a place for the figures RELIABILITY.md quotes.

The soak test (`@pytest.mark.soak`) runs only when QUOTAFLOW_SOAK=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from quotaflow.commands.localkafka import LocalKafka, free_port
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl
from tests.processes import Component
from tests.reliability.model import Workload
from tests.reliability.stack import Stack

FIGURES_DIR = Path(os.environ.get("QUOTAFLOW_RELIABILITY_OUT", ".quotaflow/reliability"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long run, only with QUOTAFLOW_SOAK=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("QUOTAFLOW_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak runs only with QUOTAFLOW_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(
    settings_factory: Callable[..., Settings], tmp_path: Path, stripe_standin: StandinControl
) -> Iterator[StackFactory]:
    """Builds `Stack`s whose processes are all stopped when the test ends; their worker
    fetches from the Stripe stand-in unless `fetch=False`."""
    started: list[Component] = []

    def make(
        workload: Workload,
        nodes: dict[str, int],
        *,
        env: dict[str, str] | None = None,
        fetch: bool = True,
        **overrides: Any,
    ) -> Stack:
        settings = settings_factory(**overrides)
        stripe = stripe_standin if fetch else None
        return Stack(
            settings, workload, tmp_path, started, nodes, stripe, extra_env=dict(env or {})
        )

    try:
        yield make
    finally:
        for component in reversed(started):
            component.stop()


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker only this test uses, so it may stop, restart or read all of it."""
    broker = LocalKafka(tmp_path_factory.mktemp("own-kafka"), port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Figures a test measured; written to QUOTAFLOW_RELIABILITY_OUT/<test>.json."""
    found: dict[str, Any] = {}
    yield found
    if found:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        path = FIGURES_DIR / f"{request.node.name}.json"
        path.write_bytes(orjson.dumps(found, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        print(f"\nfigures ({path}): {orjson.dumps(found, option=orjson.OPT_NON_STR_KEYS).decode()}")
