"""The tenant admin HTTP API: the CLI's operations for automation (docs: openapi.json).

Every `/v1/tenants` route needs `Authorization: Bearer <token>` with one of the admin
tokens (several, for rotation); the token's name becomes the audit actor. Each presented
token is compared with every configured one in constant time. `/v1/openapi.json` is
public. Responses never carry a secret: tenants are shown masked. `quotaflow admin` serves
it with the console beside it (`quotaflow.commands.console.server`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from pydantic import SecretStr

from quotaflow.commands.tenants.documents import masked
from quotaflow.commands.tenants.endpoints import EndpointAdmin
from quotaflow.commands.tenants.openapi import stored_openapi
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.tenants.exceptions import (
    AccountInUse,
    InvalidTenant,
    TenantExists,
    TenantNotFound,
    TenantsError,
    TenantStateError,
)

__all__ = ["build_admin_app"]

log = logging.getLogger("quotaflow.tenants.admin")

_WRITER = web.AppKey("writer", TenantWriter)
_ACTOR = web.RequestKey("actor", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _error(status: int, error: str, message: str, field: str | None = None) -> web.Response:
    doc = {"error": error, "message": message}
    if field is not None:
        doc["field"] = field
    return _json(doc, status)


def _authenticate(tokens: Mapping[str, SecretStr], header: str) -> str | None:
    """The name of the token presented, or None. Checks every token so timing is the same
    whichever one matches."""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    given = presented.strip().encode()
    found: str | None = None
    for name, token in tokens.items():
        if hmac.compare_digest(given, token.get_secret_value().encode()):
            found = name
    return found


def _auth_middleware(tokens: Mapping[str, SecretStr]) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/tenants"):
            name = _authenticate(tokens, request.headers.get("Authorization", ""))
            if name is None:
                return web.Response(
                    body=orjson.dumps(
                        {"error": "unauthorized", "message": "bearer token required"}
                    ),
                    status=401,
                    content_type="application/json",
                    headers={"WWW-Authenticate": 'Bearer realm="quotaflow-admin"'},
                )
            request[_ACTOR] = f"admin:{name}"
        try:
            return await handler(request)
        except _BadBody as exc:
            return _error(400, "invalid_json", str(exc))
        except InvalidTenant as exc:
            return _error(422, "invalid_tenant", str(exc), exc.field)
        except TenantNotFound as exc:
            return _error(404, "not_found", str(exc))
        except TenantExists as exc:
            return _error(409, "exists", str(exc))
        except AccountInUse as exc:
            return _error(409, "account_in_use", str(exc), "stripe_account")
        except TenantStateError as exc:
            return _error(409, "conflict", str(exc))
        except TenantsError as exc:
            log.error("admin request failed", extra={"error": type(exc).__name__})
            return _error(500, "internal", "the change could not be made")

    return auth


class _BadBody(Exception):
    """The request body is not a JSON object (400)."""


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise _BadBody("body is not JSON") from None
    if not isinstance(doc, dict):
        raise _BadBody("body must be a JSON object")
    return doc


async def _list(request: web.Request) -> web.Response:
    """GET /v1/tenants: every tenant, masked."""
    registry = request.app[_WRITER].registry
    return _json([masked(t) for t in sorted(registry, key=lambda t: t.id)])


async def _add(request: web.Request) -> web.Response:
    """POST /v1/tenants: add a tenant; 201 with the masked document."""
    tenant = await request.app[_WRITER].add(await _body(request), request[_ACTOR])
    return _json(masked(tenant), 201)


async def _show(request: web.Request) -> web.Response:
    """GET /v1/tenants/{tenant_id}: one tenant, masked."""
    tenant_id = request.match_info["tenant_id"]
    tenant = request.app[_WRITER].registry.get(tenant_id)
    if tenant is None:
        raise TenantNotFound(tenant_id)
    return _json(masked(tenant))


async def _update(request: web.Request) -> web.Response:
    """PATCH /v1/tenants/{tenant_id}: apply a JSON merge patch."""
    tenant = await request.app[_WRITER].update(
        request.match_info["tenant_id"], await _body(request), request[_ACTOR]
    )
    return _json(masked(tenant))


async def _delete(request: web.Request) -> web.Response:
    """DELETE /v1/tenants/{tenant_id}: tombstone the tenant."""
    await request.app[_WRITER].delete(request.match_info["tenant_id"], request[_ACTOR])
    return web.Response(status=204)


def _endpoints(request: web.Request) -> EndpointAdmin:
    writer = request.app[_WRITER]
    return EndpointAdmin(writer, allow_private=writer.settings.notify_allow_private)


async def _add_endpoint(request: web.Request) -> web.Response:
    """POST /v1/tenants/{tenant_id}/notification-endpoints: 201 with the endpoint and its
    signing secret, which no later answer shows."""
    doc = await _body(request)
    url = doc.get("url")
    if not isinstance(url, str):
        raise InvalidTenant("url", "a URL string is required")
    for name in ("event_types", "thresholds"):
        if name in doc and not isinstance(doc[name], list):
            raise InvalidTenant(name, "must be a list")
    feature = doc.get("feature")
    if feature is not None and not isinstance(feature, str):
        raise InvalidTenant("feature", "must be a string")
    endpoint, secret = await _endpoints(request).add(
        request.match_info["tenant_id"],
        url,
        request[_ACTOR],
        event_types=doc.get("event_types"),
        thresholds=doc.get("thresholds"),
        feature=feature,
    )
    return _json({**endpoint.model_dump(mode="json"), "secret": secret}, 201)


async def _remove_endpoint(request: web.Request) -> web.Response:
    """DELETE /v1/tenants/{tenant_id}/notification-endpoints/{endpoint_id}."""
    await _endpoints(request).remove(
        request.match_info["tenant_id"], request.match_info["endpoint_id"], request[_ACTOR]
    )
    return web.Response(status=204)


async def _switch_endpoint(request: web.Request) -> web.Response:
    """POST …/notification-endpoints/{endpoint_id}/enable or /disable."""
    tenant = await _endpoints(request).set_enabled(
        request.match_info["tenant_id"],
        request.match_info["endpoint_id"],
        request.match_info["action"] == "enable",
        request[_ACTOR],
    )
    return _json(masked(tenant))


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=stored_openapi(), content_type="application/json")


def build_admin_app(writer: TenantWriter, tokens: Mapping[str, SecretStr]) -> web.Application:
    """The admin app over a started writer; `tokens` maps a token's name to the token."""
    if not tokens:
        raise TenantsError("no admin tokens: set QUOTAFLOW_ADMIN_TOKENS")
    app = web.Application(middlewares=[_auth_middleware(dict(tokens))], client_max_size=256 * 1024)
    app[_WRITER] = writer
    app.router.add_get("/v1/openapi.json", _openapi)
    app.router.add_get("/v1/tenants", _list)
    app.router.add_post("/v1/tenants", _add)
    app.router.add_get("/v1/tenants/{tenant_id}", _show)
    app.router.add_patch("/v1/tenants/{tenant_id}", _update)
    app.router.add_delete("/v1/tenants/{tenant_id}", _delete)
    endpoints = "/v1/tenants/{tenant_id}/notification-endpoints"
    app.router.add_post(endpoints, _add_endpoint)
    app.router.add_delete(endpoints + "/{endpoint_id}", _remove_endpoint)
    app.router.add_post(endpoints + "/{endpoint_id}/{action:enable|disable}", _switch_endpoint)
    return app
