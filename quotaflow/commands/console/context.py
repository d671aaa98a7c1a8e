"""What every console view is given: settings, the tenant writer and registry, the session
keys and the shared HTTP client. Built once per admin process (`app.build_console_app`)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from quotaflow.commands.console.ingress_watch import IngressWatch
from quotaflow.commands.console.sessions import Session, SessionKeys
from quotaflow.commands.console.tenant_index import TenantIndex
from quotaflow.commands.console.throttle import SignInThrottle
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.registry import TenantRegistry
from quotaflow.settings import AdminSettings

__all__ = ["CONTEXT", "SESSION", "ConsoleContext"]


@dataclass
class ConsoleContext:
    settings: AdminSettings
    writer: TenantWriter
    registry: TenantRegistry  # what the lists read: the writer's own, unless told otherwise
    keys: SessionKeys
    watch: IngressWatch
    throttle: SignInThrottle
    index: TenantIndex  # the tenant list's, over `registry`
    http: aiohttp.ClientSession | None = None  # set on startup, closed on cleanup

    def client(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise RuntimeError("the console's HTTP client is not started")
        return self.http


CONTEXT = web.AppKey("console", ConsoleContext)
SESSION = web.RequestKey("console_session", Session)
