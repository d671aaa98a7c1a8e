"""A small operations HTTP server: `/healthz`, `/readyz` and `/metrics`.

For components whose main job is not HTTP (the pusher); the ingress and the edge serve
the same three routes from their own apps. `/metrics` serves the component's own
registry (no default: nothing in quotaflow registers on prometheus_client's global one).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("quotaflow.health")


def ops_app(
    ready: Callable[[], bool],
    registry: CollectorRegistry,
    detail: Callable[[], Mapping[str, object]] | None = None,
) -> web.Application:
    """`detail()` adds fields to `/readyz` (why it is not ready; never a secret)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        doc = {"ready": ok, **(detail() if detail is not None else {})}
        return web.json_response(doc, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def ops_server(
    host: str,
    port: int,
    ready: Callable[[], bool],
    registry: CollectorRegistry,
    *,
    detail: Callable[[], Mapping[str, object]] | None = None,
) -> AsyncIterator[int]:
    """Serves the three routes while the block runs; yields the bound port (0 picks one)."""
    app = ops_app(ready, registry, detail)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound: int = runner.addresses[0][1]
        log.info("ops server listening", extra={"host": host, "port": bound})
        yield bound
    finally:
        await runner.cleanup()
