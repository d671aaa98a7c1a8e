"""Re-driving dead letters through a real `quotaflow worker` (fetching from the Stripe
stand-in, tenants on the encrypted `tenants` topic): after the fix, a re-driven
`unknown_price` event takes effect, as the README promises; a re-drive of an event
that was applied already changes nothing."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from quotaflow.commands.ops import deadletter as dl
from quotaflow.commands.ops.explain import explain
from quotaflow.commands.ops.quota_show import current_quotas
from quotaflow.commands.tenants.writer import open_writer
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.testing.harness import eventually
from quotaflow.testing.stripe_standin import StandinControl
from quotaflow.topics import ensure_topics
from streams.deadletter import deadletter_headers
from tables.quota import QuotaUpdate
from tests.conftest import tenant_verify_env
from tests.kafkautil import produce, read_all, wait_for_records
from tests.pipeline import PERIOD, StripeFeed, worker_env
from tests.processes import components, start
from tests.tables.factories import BASIC, UNKNOWN, event, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def test_a_redriven_unknown_price_takes_effect_after_the_catalog_fix(
    settings_factory: Callable[..., Settings], tmp_path: Path, stripe_standin: StandinControl
) -> None:
    settings = settings_factory(partitions=1)
    await ensure_topics(settings)
    kek = os.urandom(32)
    doc = {
        "id": "acme",
        "webhook_secrets": [{"id": "s1", "secret": f"whsec_{os.urandom(8).hex()}"}],
        "stripe_api_key": f"sk_test_redrive_{os.urandom(4).hex()}",
        "regions": ["local"],
        "plans": {str(BASIC.lookup_key): {"quota": 1000}},
    }
    t = settings.topics
    async with open_writer(settings, keyring=LocalKeyring({"k1": kek})) as writer:
        tenant = await writer.add(doc, actor="test")
        feed = StripeFeed(stripe_standin, [tenant])
        env = {
            **worker_env(settings, tmp_path / "none.json", tmp_path / "w", stripe=stripe_standin),
            "QUOTAFLOW_KEYRING": orjson.dumps({"k1": base64.b64encode(kek).decode()}).decode(),
            **tenant_verify_env(),
        }
        env.pop("QUOTAFLOW_TENANTS_FILE")
        with components({}, tmp_path) as started:
            start(started, ["worker"], env, tmp_path)
            # cus_1 subscribes to a price outside the catalog: dead-lettered, quota 0.
            # cus_2 subscribes to a known one (applied: its re-drive must change nothing).
            mystery = event(
                "customer.subscription.created",
                subscription("sub_1", "cus_1", "active", [(UNKNOWN, 1)], period=PERIOD),
            )
            known = event(
                "customer.subscription.created",
                subscription("sub_2", "cus_2", "active", [(BASIC, 2)], period=PERIOD),
            )
            await produce(
                settings.kafka_bootstrap,
                t.stripe_events,
                feed.records([("acme", mystery), ("acme", known)]),
            )
            await wait_for_records(settings.kafka_bootstrap, t.deadletter, 1)
            before = await wait_for_records(settings.kafka_bootstrap, t.quota_updates, 2)
            quotas = await current_quotas(settings, "acme")
            assert quotas["acme/cus_1"].limit == 0
            assert quotas["acme/cus_2"].limit == 2000

            # The fix: the price joins the catalog; the worker sees it from the topic.
            fixed_tenant = await writer.update(
                "acme", {"plans": {str(UNKNOWN.lookup_key): {"quota": 5000}}}, actor="test"
            )
            letters = await dl.read_letters(settings, dl.Selection(reason="unknown_price"))
            assert len(letters) == 1
            # A letter of an event that WAS applied (cus_2's: as if a crash after the apply
            # had dead-lettered it too) is re-driven alongside: it must change nothing.
            applied = (await read_all(settings.kafka_bootstrap, t.stripe_events))[1]
            await produce(
                settings.kafka_bootstrap,
                t.deadletter,
                [
                    (
                        applied.key,
                        applied.value,
                        deadletter_headers(
                            list(applied.headers),
                            reason="processing_error",
                            detail="test",
                            source_topic=t.stripe_events,
                            partition=applied.partition,
                            offset=applied.offset,
                        ),
                    )
                ],
            )
            letters = await dl.read_letters(settings, dl.Selection())
            assert sorted(letter.reason for letter in letters) == [
                "processing_error",
                "unknown_price",
            ]
            report = await dl.redrive(settings, letters, actor="cli:test@host")
            assert report.redriven == 2

            async def fixed() -> bool:
                shown = await current_quotas(settings, "acme")
                return shown["acme/cus_1"].limit == 5000

            await eventually(fixed, timeout=60, interval=0.5, what="the re-drive applies")
        after = await read_all(settings.kafka_bootstrap, t.quota_updates)
        dead = await read_all(settings.kafka_bootstrap, t.deadletter)
    new = [QuotaUpdate.from_json(r.value) for r in after[len(before) :]]
    # cus_1's quota takes the fixed price; cus_2's applied event counted once (no new
    # version: its re-drive re-applied an idempotent snapshot, nothing changed).
    assert [(u.customer_id, u.limit, u.version) for u in new] == [("cus_1", 5000, 2)]
    assert len(dead) == 2  # both re-drives applied cleanly: no new dead letter
    # `quota explain` replays the re-drive as the worker applied it.
    # (Explain applies today's catalog to the original too, so its versions differ from
    # the worker's; what counts: the re-drive is applied, not taken for a duplicate.)
    why = await explain(settings, fixed_tenant, "cus_1")
    assert [s.outcome for s in why.steps] == ["changed", "unchanged"]
