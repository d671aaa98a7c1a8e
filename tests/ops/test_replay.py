"""Replay against a real `quotaflow worker` process (fetching from the Stripe stand-in):
replaying everything changes nothing, and `quota explain` replays the same records through
the domain to the published quota."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quotaflow.commands.ops.explain import explain
from quotaflow.commands.ops.quota_show import current_quotas
from quotaflow.commands.ops.replay import REPLAY, REPLAY_OF, replay
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topicread import Position
from quotaflow.topics import ensure_topics
from tables.quota import QuotaUpdate
from tests.kafkautil import produce, read_all, wait_for_records
from tests.pipeline import PERIOD, StripeFeed, stripe_record, worker_env
from tests.processes import components, start
from tests.tables.factories import BASIC, PRO, UNKNOWN, event, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def _lifecycle() -> list[dict[str, object]]:
    created = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 2)], period=PERIOD),
    )
    upgraded = event(
        "customer.subscription.updated",
        subscription("sub_1", "cus_1", "active", [(PRO, 1)], period=PERIOD),
        created=PERIOD[0] + 60,
    )
    other = event(
        "customer.subscription.created",
        subscription("sub_2", "cus_2", "active", [(UNKNOWN, 1), (BASIC, 1)], period=PERIOD),
    )
    return [created, created, upgraded, other]


async def test_replaying_everything_publishes_no_new_quota_version(
    settings_factory: Callable[..., Settings], tmp_path: Path, stripe_standin: StandinControl
) -> None:
    settings = settings_factory(partitions=1)
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenant = make_tenant(stripe_api_key="sk_test_replay")
    tenants_file.write_bytes(dump_tenants([tenant]))
    feed = StripeFeed(stripe_standin, [tenant])
    t = settings.topics
    bodies = _lifecycle()
    env = worker_env(settings, tenants_file, tmp_path / "w", stripe=stripe_standin)

    with components({}, tmp_path) as started:
        start(started, ["worker"], env, tmp_path)
        # Stripe: the subscription is created (the event twice), then upgraded once the
        # worker applied the creation, and another customer subscribes.
        originals = feed.records([("acme", body) for body in bodies[:2]])
        await produce(settings.kafka_bootstrap, t.stripe_events, originals)
        await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 1)
        later = feed.records([("acme", body) for body in bodies[2:]])
        await produce(settings.kafka_bootstrap, t.stripe_events, later)
        originals += later
        before = await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 3)
        letters = await wait_for_records(settings.kafka_bootstrap, t.deadletter, 1)

        dry = await replay(settings, "stripe.events", Position(edge="beginning"), dry_run=True)
        assert (dry.selected, dry.sent) == (4, 0)
        report = await replay(settings, "stripe.events", Position(edge="beginning"))
        assert (report.scanned, report.sent) == (4, 4)
        # A marker after the replay, in the same partition: once its quota is out, the
        # worker has processed every replayed record before it.
        marker = event(
            "customer.subscription.created",
            subscription("sub_9", "cus_9", "active", [(BASIC, 1)], period=PERIOD),
        )
        await produce(settings.kafka_bootstrap, t.stripe_events, feed.records([("acme", marker)]))
        after = await wait_for_records(settings.kafka_bootstrap, t.quota_updates, len(before) + 1)

    events = await read_all(settings.kafka_bootstrap, t.stripe_events)
    copies = events[len(originals) : len(originals) * 2]
    for original, copy in zip(originals, copies, strict=True):
        headers = dict(copy.headers)
        assert copy.key == original[0]
        assert copy.value == original[1]
        assert list(copy.headers)[: len(original[2])] == original[2]
        assert headers[REPLAY] == report.replay_id.encode()
        assert headers[REPLAY_OF].startswith(b"0:")
    new = [QuotaUpdate.from_json(r.value) for r in after[len(before) :]]
    assert [(u.customer_id, u.version) for u in new] == [("cus_9", 1)]
    assert len(await read_all(settings.kafka_bootstrap, t.deadletter)) == len(letters)

    # A second replay skips the first one's copies.
    again = await replay(settings, "stripe.events", Position(edge="beginning"), dry_run=True)
    assert (again.selected, again.skipped_replays) == (5, 4)

    shown = await current_quotas(settings, "acme")
    assert sorted(shown) == ["acme/cus_1", "acme/cus_2", "acme/cus_9"]
    assert (shown["acme/cus_1"].limit, shown["acme/cus_1"].version) == (10_000, 2)

    why = await explain(settings, make_tenant(), "cus_1")
    assert why.matches, why.to_dict()
    outcomes = [(s.id, s.outcome, s.version) for s in why.steps]
    created, _, upgraded, _ = bodies
    assert outcomes[:3] == [
        (created["id"], "changed", 1),
        (created["id"], "duplicate", None),
        (upgraded["id"], "changed", 2),
    ]
    # The replayed copies are duplicates, step by step.
    assert {o for _, o, _ in outcomes[3:]} == {"duplicate"}
    assert why.steps[0].changes["limit"] == [None, 2000]
    assert why.steps[2].changes["limit"] == [2000, 10_000]
    unknown = await explain(settings, make_tenant(), "cus_2")
    assert unknown.steps[0].deadletters
    assert unknown.matches
    feed.assert_fetched("acme", 4)  # sub_1 twice, sub_2, sub_9


async def test_replay_of_one_tenant_and_type_reads_only_its_partition(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(partitions=4)
    await ensure_topics(settings)
    created, _, upgraded, _ = _lifecycle()
    records = [
        stripe_record(tenant, body) for tenant in ("acme", "other") for body in (created, upgraded)
    ]
    await produce(settings.kafka_bootstrap, settings.topics.stripe_events, records)
    report = await replay(
        settings,
        "stripe.events",
        Position(edge="beginning"),
        tenant="acme",
        event_type="customer.subscription.updated",
        dry_run=True,
    )
    assert len(report.spans) == 1
    assert report.selected == 1
    assert dict(report.by_type) == {"customer.subscription.updated": 1}
