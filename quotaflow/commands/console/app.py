"""The console application, mounted under `/console` of the admin server (`server.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from quotaflow.commands.console import customer, deadletters, login, pipeline, tenants
from quotaflow.commands.console.context import CONTEXT, ConsoleContext
from quotaflow.commands.console.guard import guard
from quotaflow.commands.console.ingress_watch import IngressWatch
from quotaflow.commands.console.sessions import SessionKeys
from quotaflow.commands.console.tenant_index import TenantIndex
from quotaflow.commands.console.throttle import SignInThrottle
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.registry import TenantRegistry
from quotaflow.settings import AdminSettings

__all__ = ["build_console_app"]

STATIC = Path(__file__).with_name("static")
HTTP_LIMIT = 32  # connections the console opens at once (edge nodes, ingress metrics)


def build_console_app(
    settings: AdminSettings, writer: TenantWriter, *, registry: TenantRegistry | None = None
) -> web.Application:
    """The console over a started writer; `registry` (default: the writer's) is what the
    lists read."""
    lists = registry if registry is not None else writer.registry
    context = ConsoleContext(
        settings=settings,
        writer=writer,
        registry=lists,
        keys=SessionKeys(settings.admin_tokens, settings.console_session_ttl),
        watch=IngressWatch(settings.console_ingress_metrics),
        throttle=SignInThrottle(),
        index=TenantIndex(lists),
    )
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[CONTEXT] = context

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        context.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=HTTP_LIMIT), raise_for_status=False
        )
        await context.watch.start(context.http)
        try:
            yield
        finally:
            await context.watch.stop()
            await context.http.close()
            context.http = None

    app.cleanup_ctx.append(lifecycle)
    for module in (login, tenants, customer, deadletters, pipeline):
        app.router.add_routes(module.routes)
    app.router.add_static("/static/", STATIC, append_version=True)
    return app
