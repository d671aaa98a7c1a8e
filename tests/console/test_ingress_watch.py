"""The console's view of the ingress outcomes: sampled from a real ingress metrics page
(`ingress.metrics.IngressMetrics`, served over HTTP), as differences over the window."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ingress.metrics import IngressMetrics
from quotaflow.commands.console import ingress_watch
from quotaflow.commands.console.ingress_watch import IngressWatch


async def test_outcomes_and_signature_failures_are_counted_over_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = IngressMetrics()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", page)
    metrics.count("stripe", "accepted", "ok", 0.01, "acme")
    metrics.count("stripe", "rejected", "bad_signature", 0.01, "acme")
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        dead = "http://127.0.0.1:9/metrics"  # nothing listens on the discard port
        watch = IngressWatch([str(server.make_url("/metrics")), dead])
        await watch.start(http)
        try:
            first = await watch.window()
            # One sample: everything since the ingress started.
            assert first.since is None
            assert ("stripe", "accepted", "ok", 1) in first.outcomes
            assert first.signature_failures == {"acme": 1}
            assert [e.split(":")[0] for e in first.errors] == ["http"]
            assert dead in first.errors[0]

            for _ in range(3):
                metrics.count("stripe", "accepted", "ok", 0.01, "acme")
            metrics.count("stripe", "rejected", "bad_signature", 0.01, "globex")
            monkeypatch.setattr(ingress_watch, "FRESH", 0.0)
            second = await watch.window()
            # Two samples: only what happened between them.
            assert second.since is not None
            assert second.outcomes == [
                ("stripe", "accepted", "ok", 3),
                ("stripe", "rejected", "bad_signature", 1),
            ]
            assert second.signature_failures == {"globex": 1}
            assert watch.signature_failures() == {"globex": 1}
        finally:
            await watch.stop()


async def test_without_urls_the_window_says_not_configured() -> None:
    watch = IngressWatch([])
    window = await watch.window()
    assert not window.configured
    assert watch.signature_failures() is None


def test_a_tenant_the_ingress_does_not_name_is_unknown_only_when_others_failed() -> None:
    from quotaflow.commands.console.tenants import UNKNOWN, _failures

    assert _failures("acme", None) is None
    assert _failures("acme", {"acme": 3, "other": 9}) == 3
    assert _failures("globex", {"acme": 3}) == 0
    assert _failures("globex", {"acme": 3, "other": 0}) == 0
    assert _failures("globex", {"acme": 3, "other": 2}) == UNKNOWN
