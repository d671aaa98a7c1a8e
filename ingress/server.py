"""Runs the ingress: producer and HTTP site start together and stop in reverse order.

On `stop`, the site stops accepting, in-flight requests finish (each bounded by the
publish timeout), and only then is the producer flushed and closed, so no request is
answered by a producer that is already gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from aiohttp import web

from ingress.app import build_app
from ingress.publisher import Publisher
from quotaflow.registry import TenantRegistry
from quotaflow.settings import IngressSettings

__all__ = ["publisher_for", "serve"]

log = logging.getLogger("quotaflow.ingress")


def publisher_for(settings: IngressSettings) -> Publisher:
    """The producer the ingress uses for `settings` (request size follows the body limit)."""
    return Publisher(settings.kafka_bootstrap, max_request_size=settings.max_body_bytes + 64 * 1024)


async def serve(
    settings: IngressSettings,
    registry: TenantRegistry,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
) -> None:
    """Serves the ingress on settings.ingress_host:ingress_port until `stop` is set.

    `reuse_port` binds with SO_REUSEPORT, so that several processes share the port."""
    async with contextlib.AsyncExitStack() as stack:
        publisher = publisher_for(settings)
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        runner = web.AppRunner(
            build_app(settings, registry, publisher),
            access_log=None,  # we write our own JSON access log
            handle_signals=False,  # the caller owns signals and sets `stop`
            shutdown_timeout=settings.publish_timeout + 1.0,
            # Bodies are verified byte for byte and never compressed by Stripe: inflating
            # them in the parser would let a tiny gzip bomb cost a lot before any check.
            auto_decompress=False,
            # aiohttp arms this timer when a connection opens and after each answer, and
            # closes the connection if no complete request head came by then: it is our
            # header timeout (slow headers hold no handler, no budget, only a socket).
            keepalive_timeout=settings.ingress_header_timeout,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(
            runner,
            settings.ingress_host,
            settings.ingress_port,
            backlog=1024,
            reuse_port=reuse_port or None,
        )
        await site.start()
        log.info(
            "ingress listening",
            extra={
                "host": settings.ingress_host,
                "port": settings.ingress_port,
                "pid": os.getpid(),
            },
        )
        await stop.wait()
        log.info("ingress stopping")
