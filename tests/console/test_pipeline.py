"""The Pipeline page: consumer lag and edge nodes from the broker, and a plain statement
of what it cannot show."""

from __future__ import annotations

from quotaflow.settings import Settings
from tests.console.conftest import Client, sign_in


async def test_pipeline_page_shows_lag_nodes_and_says_what_it_cannot_show(
    client: Client, settings: Settings
) -> None:
    await sign_in(client)
    html = await (await client.get("/console/pipeline")).text()
    assert 'id="lag-totals"' in html
    assert 'id="outcomes-unavailable"' in html
    assert "QUOTAFLOW_CONSOLE_INGRESS_METRICS" in html
