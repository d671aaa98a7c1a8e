"""The billing worker as a real `quotaflow worker` process on the real broker, fetching each
event's object from the Stripe stand-in (as in production) and in snapshot mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import orjson
import pytest

from quotaflow.envelope import Envelope
from quotaflow.registry import dump_tenants
from quotaflow.schemas import QUOTA_UPDATE_V1, load
from quotaflow.settings import Settings
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from streams.deadletter import REASON
from tables.quota import QuotaUpdate
from tables.tenant import Tenant
from tests.kafkautil import produce, wait_for_records
from tests.pipeline import PERIOD, StripeFeed, wait_committed, worker_env
from tests.processes import components, start
from tests.tables.factories import BASIC, PRO, UNKNOWN, event, make_tenant, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

API_KEY = "sk_test_billing_worker"


def _tenant() -> Tenant:
    return make_tenant(stripe_api_key=API_KEY)


async def test_worker_turns_events_into_versioned_quota_updates_once(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    stripe_fetch: StandinControl | None,
) -> None:
    settings = settings_factory()
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenant = _tenant()
    tenants_file.write_bytes(dump_tenants([tenant]))
    feed = StripeFeed(stripe_fetch, [tenant])
    created = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 2)], period=PERIOD),
    )
    upgraded = event(
        "customer.subscription.updated",
        subscription("sub_1", "cus_1", "active", [(PRO, 1)], period=PERIOD),
        created=PERIOD[0] + 60,
    )
    unknown_price = event(
        "customer.subscription.created",
        subscription("sub_2", "cus_2", "active", [(UNKNOWN, 1)], period=PERIOD),
    )
    t = settings.topics
    records = [
        *feed.records(
            [
                ("acme", created),
                ("acme", created),  # a redelivery
                ("acme", unknown_price),
            ]
        ),
        (
            b"acme",
            b"{not json",
            Envelope("acme", "evt_bad", "x", False, time.time(), "s1").headers(),
        ),
        *feed.records([("nobody", created)]),
    ]
    await produce(settings.kafka_bootstrap, t.stripe_events, records)

    env = worker_env(settings, tenants_file, tmp_path / "w", stripe=stripe_fetch)
    with components({}, tmp_path) as started:
        start(started, ["worker"], env, tmp_path)
        await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 2)
        # The upgrade happens at Stripe after the worker applied the creation: fetched
        # earlier, the subscription would already have been the upgraded one.
        await produce(settings.kafka_bootstrap, t.stripe_events, feed.records([("acme", upgraded)]))
        updates = await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 3)
        letters = await wait_for_records(settings.kafka_bootstrap, t.deadletter, 3)

    validator = jsonschema.Draft202012Validator(load(QUOTA_UPDATE_V1))
    by_customer: dict[str, list[QuotaUpdate]] = {}
    for record in updates:
        validator.validate(orjson.loads(record.value))
        assert dict(record.headers)["qf-schema"] == b"quota-update/1"
        update = QuotaUpdate.from_json(record.value)
        assert record.key == update.key.encode()
        by_customer.setdefault(update.customer_id, []).append(update)
    # The upgrade was sent after the creation's quota was out: two versions (events of one
    # customer applied in one batch would publish only the newest).
    first, second = by_customer["cus_1"]
    assert (first.limit, first.version, first.status) == (2000, 1, "active")
    assert (second.limit, second.version, second.status) == (10_000, 2, "active")
    assert second.reason.id == upgraded["id"]
    # The unknown price grants nothing: blocked, and a dead letter says why.
    assert by_customer["cus_2"][-1].limit == 0
    reasons = sorted(dict(r.headers)[REASON].decode() for r in letters)
    assert reasons == ["malformed", "unknown_price", "unknown_tenant"]
    bad = next(r for r in letters if dict(r.headers)[REASON] == b"malformed")
    assert bad.value == b"{not json"
    feed.assert_fetched("acme", 3)  # sub_1 twice (created, upgraded), sub_2


async def test_restarted_worker_reprocessing_changes_nothing(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    stripe_fetch: StandinControl | None,
) -> None:
    """A second worker with a fresh group re-reads everything: no new quota versions."""
    settings = settings_factory()
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenant = _tenant()
    tenants_file.write_bytes(dump_tenants([tenant]))
    feed = StripeFeed(stripe_fetch, [tenant])
    sub = subscription("sub_9", "cus_9", "active", [(BASIC, 1)], period=PERIOD)
    await produce(
        settings.kafka_bootstrap,
        settings.topics.stripe_events,
        feed.records([("acme", event("customer.subscription.created", sub))]),
    )
    # Static membership, as in production: the restarted worker takes the partitions back
    # at once instead of waiting out the first one's session in the group.
    env = worker_env(
        settings, tenants_file, tmp_path / "w", stripe=stripe_fetch, worker_id="worker-0"
    )
    with components({}, tmp_path) as started:
        start(started, ["worker"], env, tmp_path)
        await wait_for_records(settings.kafka_bootstrap, settings.topics.quota_updates, 1)
        # Stop it once it has committed: a restart then resumes, it does not race startup.
        await wait_committed(settings)
    # Same app id: the table recovers from its changelog, the group resumes; re-feeding the
    # same event (a Stripe redelivery) must not publish a new version.
    await produce(
        settings.kafka_bootstrap,
        settings.topics.stripe_events,
        feed.records([("acme", event("customer.subscription.updated", sub))]),
    )
    with components({}, tmp_path) as started:
        start(started, ["worker"], env, tmp_path)
        marker = event(
            "customer.subscription.created",
            subscription("sub_10", "cus_10", "active", [(BASIC, 1)], period=PERIOD),
        )
        await produce(
            settings.kafka_bootstrap,
            settings.topics.stripe_events,
            feed.records([("acme", marker)]),
        )
        updates = await wait_for_records(
            settings.kafka_bootstrap, settings.topics.quota_updates, 2, timeout=120
        )
        while b"cus_10" not in b"".join(r.key for r in updates):
            updates = await wait_for_records(
                settings.kafka_bootstrap, settings.topics.quota_updates, len(updates) + 1
            )
        # Every record is acknowledged, the redelivery included: none was dropped on the
        # way in (Faust's queue flush after recovery once lost one; see faust_tuning).
        await wait_committed(settings)
    versions = [QuotaUpdate.from_json(r.value) for r in updates]
    # A worker stopped before its commit re-emits what it re-reads at the same version
    # (harmless by design); what must never appear is a second version for cus_9.
    assert {(u.customer_id, u.version) for u in versions} == {("cus_9", 1), ("cus_10", 1)}
    feed.assert_fetched("acme", 2)


async def test_grace_ends_by_time_alone_with_a_blocked_update(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    stripe_fetch: StandinControl | None,
) -> None:
    """No event follows past_due: the worker itself publishes `blocked` once grace ends."""
    settings = settings_factory()
    await ensure_topics(settings)
    tenants_file = tmp_path / "tenants.json"
    tenant = _tenant()
    tenants_file.write_bytes(dump_tenants([tenant]))
    feed = StripeFeed(stripe_fetch, [tenant])
    warm_up = event(
        "customer.subscription.created",
        subscription("sub_w", "cus_w", "active", [(BASIC, 1)], period=PERIOD),
    )
    env = worker_env(
        settings,
        tenants_file,
        tmp_path / "w",
        stripe=stripe_fetch,
        grace_seconds="4",
        grace_check_interval="0.5",
    )
    topic = settings.topics.stripe_events
    with components({}, tmp_path) as started:
        start(started, ["worker"], env, tmp_path)
        # Grace is counted from the event: send it only once the worker applies events, so
        # a slow start on a busy machine cannot eat the grace period before the first apply.
        await produce(settings.kafka_bootstrap, topic, feed.records([("acme", warm_up)]))
        await wait_for_records(settings.kafka_bootstrap, settings.topics.quota_updates, 1)
        now = int(time.time())
        past_due = event(
            "customer.subscription.updated",
            subscription("sub_g", "cus_g", "past_due", [(BASIC, 1)], period=PERIOD),
            created=now,
        )
        await produce(settings.kafka_bootstrap, topic, feed.records([("acme", past_due)]))
        records = await wait_for_records(
            settings.kafka_bootstrap, settings.topics.quota_updates, 3, timeout=60
        )
    updates = [r for r in records if r.key == b"acme/cus_g"]
    grace, blocked = (QuotaUpdate.from_json(r.value) for r in updates)
    assert (grace.status, grace.version, grace.grace_until) == ("grace", 1, now + 4)
    assert (blocked.status, blocked.version, blocked.limit) == ("blocked", 2, 0)
    assert (blocked.reason.kind, blocked.reason.id) == ("policy", "grace")
    assert blocked.updated_at >= now + 4
    feed.assert_fetched("acme")
