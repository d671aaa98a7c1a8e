"""`quotaflow admin`: the tenant admin API (`/v1/…`) and, unless turned off, the console
(`/console/…`) in one server, over one tenant writer."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from quotaflow.commands.console.app import build_console_app
from quotaflow.commands.tenants.admin_api import build_admin_app
from quotaflow.commands.tenants.writer import TenantWriter, open_writer
from quotaflow.settings import AdminSettings

__all__ = ["build_admin_server", "serve_admin"]

log = logging.getLogger("quotaflow.tenants.admin")


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console/tenants")


def build_admin_server(settings: AdminSettings, writer: TenantWriter) -> web.Application:
    """The admin API with the console mounted under `/console` (QUOTAFLOW_CONSOLE_ENABLED)."""
    app = build_admin_app(writer, settings.admin_tokens)
    if settings.console_enabled:
        app.router.add_get("/console", _to_console)
        app.add_subapp("/console", build_console_app(settings, writer))
    return app


async def serve_admin(settings: AdminSettings, stop: asyncio.Event) -> None:
    """Serves QUOTAFLOW_ADMIN_HOST:QUOTAFLOW_ADMIN_PORT until `stop`."""
    async with open_writer(settings) as writer:
        runner = web.AppRunner(
            build_admin_server(settings, writer), access_log=None, handle_signals=False
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
            await site.start()
            log.info(
                "admin API listening",
                extra={
                    "host": settings.admin_host,
                    "port": settings.admin_port,
                    "console": settings.console_enabled,
                },
            )
            await stop.wait()
        finally:
            await runner.cleanup()
