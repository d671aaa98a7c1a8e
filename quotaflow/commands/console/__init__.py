"""The operator console: server-rendered pages under `/console` of `quotaflow admin`.

A thin face over the operator code: tenants through `TenantWriter` and
`quotaflow.commands.tenants.onboarding` (what `quotaflow tenants …` calls), customers
through `quotaflow.commands.ops.explain` and `quota_show`, dead letters through
`quotaflow.commands.ops.deadletter`, lag through `quotaflow.commands.ops.lag`. Sign-in
with an admin token (`sessions.py`), CSRF on every change (`guard.py`), nothing secret
rendered (tenants are masked; forms never echo one).
"""

from quotaflow.commands.console.app import build_console_app
from quotaflow.commands.console.server import build_admin_server, serve_admin

__all__ = ["build_admin_server", "build_console_app", "serve_admin"]
