"""The Dead letters page over the real broker: list, filter, show, and a re-drive that
needs its dry run first and is audited."""

from __future__ import annotations

import re

from quotaflow.commands.ops import deadletter as dl
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from quotaflow.topicread import tenant_partition
from streams.deadletter import REDRIVE, deadletter_headers
from tests.console.conftest import Client, post, sign_in
from tests.kafkautil import produce, read_all
from tests.pipeline import PERIOD, Record, stripe_record
from tests.tables.factories import BASIC, event, subscription
from tests.tenants.topicdump import audit_records

PREVIEW = re.compile(r'name="preview" value="([^"]+)"')


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


async def test_dead_letters_list_show_and_redrive_only_after_a_dry_run(
    client: Client, writer: TenantWriter, settings: Settings
) -> None:
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    acme = stripe_record("acme", body)
    await produce(
        settings.kafka_bootstrap,
        settings.topics.deadletter,
        [
            _letter(settings, acme, "unknown_price", 3),
            _letter(settings, stripe_record("globex", body), "processing_error", 7),
        ],
    )
    (letter,) = await dl.read_letters(settings, dl.Selection(tenant="acme"))
    csrf = await sign_in(client, "alice")

    listing = await (await client.get("/console/deadletters?tenant=acme")).text()
    assert letter.ref in listing
    assert "unknown_price" in listing
    assert "processing_error" not in listing
    one = await client.get(f"/console/deadletters/{letter.partition}/{letter.offset}")
    assert body["id"] in await one.text()

    selection = {"csrf": csrf, "tenant": "acme", "ref": letter.ref}
    # Straight to the real thing, without the dry run's token: refused, nothing sent.
    for preview in ({}, {"preview": "guessed"}):
        refused = await post(
            client, "/console/deadletters/redrive", {**selection, "mode": "run", **preview}
        )
        assert refused.status == 409
    dry = await post(client, "/console/deadletters/redrive", {**selection, "mode": "dry-run"})
    dry_html = await dry.text()
    assert "Would re-drive <b>1</b> of 1" in dry_html
    assert await read_all(settings.kafka_bootstrap, settings.topics.stripe_events) == []
    token = PREVIEW.search(dry_html)
    assert token is not None
    # The dry run's token is for that selection only.
    widened = await post(
        client,
        "/console/deadletters/redrive",
        {"csrf": csrf, "mode": "run", "preview": token.group(1)},
    )
    assert widened.status == 409
    done = await post(
        client,
        "/console/deadletters/redrive",
        {**selection, "mode": "run", "preview": token.group(1)},
    )
    assert "Re-drove <b>1</b> of 1" in await done.text()
    (redriven,) = await read_all(settings.kafka_bootstrap, settings.topics.stripe_events)
    assert redriven.value == acme[1]
    assert redriven.headers[-1] == (REDRIVE, letter.ref.encode())
    audit = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    assert [(a["action"], a["actor"], a["refs"]) for a in audit] == [
        ("redrive-deadletter", "console:alice", [letter.ref])
    ]
    again = await (await client.get("/console/deadletters?tenant=acme")).text()
    assert "<td>yes</td>" in again
