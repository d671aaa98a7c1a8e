"""The console's gate: a session for every page, a CSRF token for every change, and headers
that keep the pages out of frames, caches and other origins.

- `/console/static/…` and the login page are open; everything else needs a session cookie
  (`sessions.py`). A page requested without one redirects to the login form; a change
  (any method but GET/HEAD) without one is refused with 401 and does nothing.
- A change with a session must carry the session's CSRF token (form field `csrf` or header
  `X-CSRF-Token`), else 403 `csrf`; and when the browser says where it comes from
  (`Origin`, `Sec-Fetch-Site`), it must be this origin.
- The login form itself is protected by a double-submit token: a random value in a
  SameSite=Strict cookie that the form must repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from quotaflow.commands.console.context import CONTEXT, SESSION

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "cookie_options", "guard"]

log = logging.getLogger("quotaflow.console")

SESSION_COOKIE = "qf_console"
LOGIN_COOKIE = "qf_console_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN = ("/console/static/", "/console/login")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Pages are scripts-from-self only; charts are inline SVG images (data: URLs).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer browsers send `Origin: null` with a
    # form POST, and the origin check would refuse the console's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def secure_request(request: web.Request, configured: bool | None) -> bool:
    """Whether cookies get `Secure`: as configured, else when the request came over TLS
    (directly or per `X-Forwarded-Proto`; a forged header only makes the cookie stricter)."""
    if configured is not None:
        return configured
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def cookie_options(request: web.Request, max_age: int) -> dict[str, Any]:
    secure = secure_request(request, request.app[CONTEXT].settings.console_secure_cookie)
    return {
        "max_age": max_age,
        "path": "/console",
        "httponly": True,
        "samesite": "Strict",
        "secure": secure,
    }


def _same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site or origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def _refuse(status: int, reason: str, message: str) -> web.Response:
    body = f"{status} {reason}: {message}\n"
    return web.Response(text=body, status=status, headers={"X-Quotaflow-Reason": reason})


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticates and CSRF-checks every console request (see the module doc)."""
    response = await _guarded(request, handler)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONTEXT]
    if request.path.startswith(OPEN):
        if request.method not in SAFE and not _same_origin(request):
            return _refuse(403, "cross_origin", "changes come from the console's own pages")
        return await handler(request)
    session = console.keys.verify(request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.method in SAFE:
            target = quote(request.path_qs, safe="")
            raise web.HTTPSeeOther(f"/console/login?next={target}")
        return _refuse(401, "no_session", "sign in to the console first")
    request[SESSION] = session
    if request.method not in SAFE:
        presented = request.headers.get(CSRF_HEADER)
        if presented is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            field = (await request.post()).get(CSRF_FIELD)
            presented = field if isinstance(field, str) else None
        if not console.keys.check_csrf(session, presented) or not _same_origin(request):
            log.warning(
                "console change refused: CSRF check failed",
                extra={"actor": session.actor, "path": request.path},
            )
            return _refuse(403, "csrf", "the form's CSRF token is missing or wrong: reload")
    return await handler(request)
