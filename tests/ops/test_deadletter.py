"""Dead letters on the real broker: listed and filtered, shown, re-driven once."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from quotaflow.commands.ops import deadletter as dl
from quotaflow.settings import Settings
from quotaflow.topicread import tenant_partition
from quotaflow.topics import ensure_topics
from streams.deadletter import REDRIVE, deadletter_headers
from tests.kafkautil import produce, read_all
from tests.pipeline import PERIOD, Record, stripe_record
from tests.tables.factories import BASIC, event, subscription

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def _letter(settings: Settings, original: Record, reason: str, offset: int) -> Record:
    key, value, headers = original
    partition = tenant_partition(key.decode(), settings.partitions)
    dead = deadletter_headers(
        headers,
        reason=reason,
        detail=f"{reason} detail",
        source_topic=settings.topics.stripe_events,
        partition=partition,
        offset=offset,
    )
    return key, value, dead


async def test_letters_are_listed_by_tenant_and_reason_and_redriven_once(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(partitions=2)
    await ensure_topics(settings)
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    acme = stripe_record("acme", body)
    other = stripe_record("globex", body)
    await produce(
        settings.kafka_bootstrap,
        settings.topics.deadletter,
        [
            _letter(settings, acme, "unknown_price", 3),
            _letter(settings, acme, "processing_error", 4),
            _letter(settings, other, "unknown_price", 7),
        ],
    )

    everything = await dl.read_letters(settings, dl.Selection())
    assert len(everything) == 3
    mine = await dl.read_letters(settings, dl.Selection(tenant="acme", reason="unknown_price"))
    assert [m.summary()["source"].endswith(":3") for m in mine] == [True]
    full = mine[0].full()
    assert full["body"]["id"] == body["id"]
    assert full["headers"]["qf-dl-reason"] == "unknown_price"

    dry = await dl.redrive(settings, mine, dry_run=True)
    assert (dry.redriven, dry.already) == (1, 0)
    assert await read_all(settings.kafka_bootstrap, settings.topics.stripe_events) == []

    first = await dl.redrive(settings, mine)
    second = await dl.redrive(settings, mine)
    assert (first.redriven, second.redriven, second.already) == (1, 0, 1)
    redriven = await read_all(settings.kafka_bootstrap, settings.topics.stripe_events)
    assert len(redriven) == 1
    record = redriven[0]
    assert (record.key, record.value) == (acme[0], acme[1])
    assert record.partition == tenant_partition("acme", settings.partitions)
    assert list(record.headers)[:-1] == acme[2]
    assert record.headers[-1] == (REDRIVE, mine[0].ref.encode())
    assert await dl.redriven_refs(settings) == {mine[0].ref}

    forced = await dl.redrive(settings, mine, force=True)
    assert forced.redriven == 1
    by_ref = await dl.read_letters(settings, dl.Selection(refs=frozenset({mine[0].ref})))
    assert [b.ref for b in by_ref] == [mine[0].ref]
    assert orjson.loads(by_ref[0].value or b"")["id"] == body["id"]


async def test_a_redrive_with_an_actor_is_audited_per_tenant(
    settings_factory: Callable[..., Settings],
) -> None:
    from quotaflow.tenants.config import audit_topic
    from tests.tenants.topicdump import audit_records

    settings = settings_factory(partitions=2)
    await ensure_topics(settings)
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    await produce(
        settings.kafka_bootstrap,
        settings.topics.deadletter,
        [
            _letter(settings, stripe_record("acme", body), "unknown_price", 3),
            _letter(settings, stripe_record("acme", body), "unknown_price", 4),
            _letter(settings, stripe_record("globex", body), "unknown_price", 5),
        ],
    )
    letters = await dl.read_letters(settings, dl.Selection())
    dry = await dl.redrive(settings, letters, dry_run=True, actor="cli:ops@host")
    assert dry.redriven == 3
    assert await audit_records(settings.kafka_bootstrap, audit_topic(settings)) == []
    done = await dl.redrive(settings, letters, actor="cli:ops@host")
    assert done.redriven == 3
    audit = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    by_tenant = {str(a["tenant_id"]): a for a in audit}
    assert sorted(by_tenant) == ["acme", "globex"]
    assert {a["action"] for a in audit} == {"redrive-deadletter"}
    assert {a["actor"] for a in audit} == {"cli:ops@host"}
    refs = by_tenant["acme"]["refs"]
    assert isinstance(refs, list)
    assert sorted(refs) == sorted(letter.ref for letter in letters if letter.tenant == "acme")
    markers = await read_all(settings.kafka_bootstrap, settings.topics.deadletter_redriven)
    assert {orjson.loads(m.value)["actor"] for m in markers} == {"cli:ops@host"}
