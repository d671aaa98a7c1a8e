"""Every event delivered three times, shuffled across its 3-day window, through the real
ingress with signed webhooks; then the operator replays the whole `stripe.events` topic
(`quotaflow replay --topic stripe.events --from beginning`). Each time the edges must
hold exactly the reference quotas, and the replay must not change a single version.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from typing import Any

import pytest

from quotaflow.testing.harness import eventually
from tests.reliability.conftest import StackFactory
from tests.reliability.model import build
from tests.reliability.sender import StripeLikeSender
from tests.reliability.stack import Stack, event_ids, group_lag, topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


REPLAY = [sys.executable, "-m", "quotaflow.commands.cli", "replay", "--topic", "stripe.events"]


def _operator_replay(stack: Stack) -> str:
    """`quotaflow replay --topic stripe.events --from beginning`, as an operator runs it."""
    done = subprocess.run(
        [*REPLAY, "--from", "beginning", "--json"],
        env={**os.environ, **stack.env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.decode()


async def _drained(stack: Stack, within: float = 60.0) -> None:
    s = stack.settings
    lag = -1

    async def drained() -> bool:
        nonlocal lag
        lag = await group_lag(s.kafka_bootstrap, s.app_id, [s.topics.stripe_events])
        return lag == 0

    await eventually(
        drained,
        timeout=within,
        interval=1.0,
        what="the worker consumes the replay",
        detail=lambda: f"lag {lag}",
    )


async def test_triple_shuffled_delivery_and_a_full_replay_end_in_the_reference(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["acme", "globex"], 30, regions=("eu",), seed=11)
    stack = make_stack(workload, {"eu": 2})
    await stack.start_all()
    deliveries = workload.deliveries(copies=3, rng=random.Random(5))
    sender = StripeLikeSender(stack.ingress_url, workload.secrets, concurrency=16)
    report = await sender.send_all(deliveries, rate=150)
    assert not report.given_up
    wanted = {(d.tenant_id, d.event_id) for d in workload.events}
    assert report.accepted == wanted
    s = stack.settings
    assert event_ids(await topic_records(s.kafka_bootstrap, s.topics.stripe_events)) == wanted
    before = await stack.converge()
    updates_before = len(await topic_records(s.kafka_bootstrap, s.topics.quota_updates))

    replayed = await asyncio.to_thread(_operator_replay, stack)
    await _drained(stack)
    after = await stack.converge()
    updates_after = len(await topic_records(s.kafka_bootstrap, s.topics.quota_updates))
    assert after == before, "the replay changed a version at an edge"
    assert updates_after == updates_before, "the replay published quota updates"
    figures.update(
        events=len(workload.events),
        deliveries=len(deliveries),
        customers=len(workload.expected),
        statuses={str(k): v for k, v in report.statuses.items()},
        replay_report=replayed.strip()[-400:],
        quota_updates=updates_before,
    )
