"""The Customer page over records on the real broker: the `quota explain` timeline and
the usage chart, from the operator code."""

from __future__ import annotations

from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from tests.console.conftest import Client, sign_in
from tests.kafkautil import produce
from tests.pipeline import PERIOD, stripe_record
from tests.tables.factories import BASIC, event, subscription
from tests.tenants.conftest import tenant_doc


async def test_customer_page_shows_the_explain_timeline_and_a_usage_chart(
    client: Client, writer: TenantWriter, settings: Settings
) -> None:
    await writer.add(tenant_doc("acme", plans={"basic": {"quota": 500}}), "test")
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 2)], period=PERIOD),
    )
    await produce(
        settings.kafka_bootstrap, settings.topics.stripe_events, [stripe_record("acme", body)]
    )
    await sign_in(client)
    html = await (await client.get("/console/customers?tenant=acme&customer=cus_1")).text()
    timeline = html[html.index('id="timeline"') :]
    assert "customer.subscription.created" in timeline
    assert body["id"] in timeline
    assert "limit None → 1000" in timeline  # 2 units of 500
    assert 'class="step changed"' in timeline
    assert 'id="usage-chart" src="data:image/svg+xml;base64,' in html
    # Nothing published yet (no worker here): the page says so, and that they differ.
    assert "none published" in html
    unknown = await client.get("/console/customers?tenant=nobody&customer=cus_1")
    assert unknown.status == 404
