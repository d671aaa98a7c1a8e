"""`/console/login` and `/console/logout`: the admin token in, a session cookie out."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets

from aiohttp import web

from quotaflow.commands.console.context import CONTEXT, SESSION
from quotaflow.commands.console.guard import LOGIN_COOKIE, SESSION_COOKIE, cookie_options
from quotaflow.commands.console.render import page

__all__ = ["routes"]

log = logging.getLogger("quotaflow.console")
routes = web.RouteTableDef()
FAILED_DELAY = 0.5  # a wrong token costs the guesser half a second


def _next(target: str | None) -> str:
    """Only a path inside the console: never another host (an open redirect)."""
    if target and target.startswith("/console/") and not target.startswith("/console//"):
        return target
    return "/console/tenants"


def _login_page(request: web.Request, error: str | None, status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = page(
        request,
        "login.html",
        status=status,
        login_csrf=nonce,
        next=_next(request.query.get("next")),
        error=error,
    )
    response.set_cookie(LOGIN_COOKIE, nonce, **cookie_options(request, 600))
    return response


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    """The login form; its double-submit token rides in a SameSite=Strict cookie."""
    return _login_page(request, None)


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    """Checks the form's token against the admin tokens; sets the session cookie."""
    console = request.app[CONTEXT]
    form = await request.post()
    presented, cookie = form.get("login_csrf"), request.cookies.get(LOGIN_COOKIE)
    if not (
        isinstance(presented, str)
        and cookie
        and hmac.compare_digest(presented.encode(), cookie.encode())
    ):
        return _login_page(request, "The form expired: sign in again.", 403)
    # The TCP peer, not X-Forwarded-For: a guesser would pick a fresh one per try. Behind a
    # proxy all share the proxy's address; the global limit holds either way.
    address = request.remote or "unknown"
    wait = console.throttle.retry_after(address)
    if wait > 0:
        log.warning("console sign-in throttled", extra={"remote": address})
        response = _login_page(request, "Too many failed sign-ins: try again later.", 429)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    token = form.get("token")
    name = console.keys.authenticate(token) if isinstance(token, str) and token else None
    if name is None:
        console.throttle.failed(address)  # before any await: parallel guesses count at once
        log.warning("console sign-in refused", extra={"remote": address})
        await asyncio.sleep(FAILED_DELAY)
        return _login_page(request, "That is not an admin token.", 401)
    _, value = console.keys.open(name)
    log.info("console sign-in", extra={"actor": f"console:{name}"})
    target = form.get("next")
    response = web.HTTPSeeOther(_next(target if isinstance(target, str) else None))
    response.set_cookie(SESSION_COOKIE, value, **cookie_options(request, int(console.keys.ttl)))
    response.del_cookie(LOGIN_COOKIE, path="/console")
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """Ends the session here and drops the cookie."""
    request.app[CONTEXT].keys.revoke(request[SESSION])
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(SESSION_COOKIE, path="/console")
    raise response


@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console/tenants")
