"""The operations server answers liveness, readiness from its callable, and metrics."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from quotaflow.health import ops_server


async def test_ops_server_reports_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("quotaflow_probe_total", "A probe.", registry=registry).inc()
    ready = False
    async with ops_server("127.0.0.1", 0, lambda: ready, registry) as port:
        base = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
            ready = True
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                assert "quotaflow_probe_total 1.0" in await r.text()
