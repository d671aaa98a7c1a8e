"""The Pipeline page: consumer lag and edge nodes from the broker, and a plain statement
of what it cannot show."""

from __future__ import annotations

import pytest

from quotaflow.commands.console.push_watch import quantile
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
    assert 'id="push-unavailable"' in html
    assert "QUOTAFLOW_CONSOLE_PUSHER_METRICS" in html


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    buckets = [(0.001, 0.0), (0.005, 10.0), (0.01, 20.0), (float("inf"), 20.0)]
    assert quantile(0.5, buckets) == 0.005
    assert quantile(0.99, buckets) == pytest.approx(0.0099)
    # Beyond the last finite bound: that bound; no observations: no figure.
    assert quantile(0.99, [(0.01, 1.0), (float("inf"), 10.0)]) == 0.01
    assert quantile(0.5, [(0.01, 0.0), (float("inf"), 0.0)]) is None
