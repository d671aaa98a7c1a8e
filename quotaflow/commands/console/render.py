"""Server-side rendering: Jinja2 templates with autoescaping on, one environment per process.

Every page gets the session's CSRF token (`csrf`) for its forms, and the console's base
path; nothing in a template context is a secret (tenants arrive masked)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from quotaflow.commands.console.context import CONTEXT, SESSION

__all__ = ["page", "when"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("quotaflow.commands.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(ts: float | None) -> str:
    """A Unix time as UTC ISO 8601 to the second; "-" for none."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "never"
    seconds = max((now or datetime.now(UTC).timestamp()) - ts, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


_ENV.filters["when"] = when
_ENV.filters["ago"] = ago


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """Renders `template` for the signed-in operator (or the login page, without one)."""
    console = request.app[CONTEXT]
    session = request.get(SESSION)
    csrf = console.keys.csrf_token(session) if session is not None else ""
    body = _ENV.get_template(template).render(
        operator=None if session is None else session.name,
        csrf=csrf,
        path=request.path,
        **context,
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
