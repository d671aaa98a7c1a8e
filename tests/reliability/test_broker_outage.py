"""The broker stopped for 20 s under webhook load, the client retrying like Stripe.

While the broker is away the ingress must refuse (503 with Retry-After) rather than
acknowledge; afterwards every event it did acknowledge is in `stripe.events`, the
Stripe-like client got every event in eventually, and the edge holds the reference.
The broker is the test's own (`own_broker`): stopped and started on the same directory
and port, as an operator's restart would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from quotaflow.commands.localkafka import LocalKafka
from quotaflow.testing.harness import eventually
from tests.reliability.conftest import StackFactory
from tests.reliability.model import build
from tests.reliability.sender import StripeLikeSender
from tests.reliability.stack import event_ids, topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

OUTAGE = 20.0


async def test_broker_outage_refuses_with_503_and_loses_nothing_acknowledged(
    own_broker: LocalKafka, make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["acme", "globex", "initech"], 25, regions=("eu",), seed=3)
    stack = make_stack(
        workload,
        {"eu": 1},
        kafka_bootstrap=own_broker.bootstrap,
        env={"QUOTAFLOW_PUBLISH_TIMEOUT": "2", "QUOTAFLOW_INGRESS_RETRY_AFTER": "2"},
    )
    await stack.start_all()
    deliveries = workload.deliveries(copies=1)
    rate = len(deliveries) / 35.0  # the load spans the outage on both sides
    sender = StripeLikeSender(
        stack.ingress_url, workload.secrets, concurrency=32, backoff=(0.5, 4.0)
    )
    load = asyncio.create_task(sender.send_all(deliveries, rate=rate))
    # The load spans the outage on both sides: part of it is in before the broker goes.
    await eventually(
        lambda: len(sender.report.accepted) >= len(deliveries) // 7,
        timeout=60,
        what="a seventh of the events accepted before the outage",
    )
    before = dict(sender.report.statuses)
    stopped_at = time.monotonic()
    await asyncio.to_thread(own_broker.stop)
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped_at)))
    during = dict(sender.report.statuses)
    await asyncio.to_thread(own_broker.start)
    back_at = time.monotonic()
    outage = back_at - stopped_at
    report = await load
    drained_after = time.monotonic() - back_at

    assert not report.given_up, f"{len(report.given_up)} events never got a 2xx"
    refused = report.unavailable_with_retry_after
    assert refused > 0, "no 503 while the broker was away"
    assert report.unavailable_without_retry_after == 0
    s = stack.settings
    in_topic = event_ids(await topic_records(s.kafka_bootstrap, s.topics.stripe_events))
    assert report.accepted <= in_topic, "an acknowledged event is missing from the topic"
    assert report.accepted == {(d.tenant_id, d.event_id) for d in deliveries}
    await stack.converge(within=120)
    figures.update(
        events=len(deliveries),
        rate_per_s=round(rate, 1),
        outage_s=round(outage, 1),
        statuses_before_outage=before,
        statuses_at_restart=during,
        statuses_total={str(k): v for k, v in report.statuses.items()},
        attempts=report.attempts,
        load_done_after_restart_s=round(drained_after, 1),
    )
