"""The admin API's OpenAPI document, generated from the tenant model.

The repository keeps the rendered document in `openapi.json` beside this module (a test
checks it is current); regenerate it with `python -m quotaflow.commands.tenants.openapi`.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import Any

import orjson

from tables.tenant import Tenant

__all__ = ["OPENAPI_FILE", "openapi_document", "stored_openapi"]

OPENAPI_FILE = "openapi.json"

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {
            "type": "string",
            "enum": [
                "unauthorized",
                "invalid_json",
                "invalid_tenant",
                "not_found",
                "exists",
                "account_in_use",
                "conflict",
                "internal",
            ],
        },
        "message": {"type": "string"},
        "field": {"type": "string", "description": "The refused field, dotted (invalid_tenant)."},
    },
}


def _response(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def openapi_document() -> dict[str, Any]:
    schema = Tenant.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    errors = {
        "401": _response("No or unknown bearer token.", "Error"),
        "404": _response("No such tenant.", "Error"),
    }
    tenant_id = {
        "name": "tenant_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": schema["properties"]["id"]["pattern"]},
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tenant"}}},
    }
    patch = {
        "required": True,
        "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
        "description": "An RFC 7396 JSON merge patch of the tenant document.",
    }
    masked = "Secrets are masked as **********."
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quotaflow tenant admin API",
            "version": "1",
            "description": "Onboard and manage tenants. Every change is encrypted at rest, "
            "audited on the tenants.audit topic and in effect everywhere within 1 s.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/tenants": {
                "get": {
                    "summary": "List tenants",
                    "responses": {
                        "200": {
                            "description": masked,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Tenant"},
                                    }
                                }
                            },
                        },
                        "401": errors["401"],
                    },
                },
                "post": {
                    "summary": "Add a tenant",
                    "requestBody": body,
                    "responses": {
                        "201": _response(f"Added. {masked}", "Tenant"),
                        "400": _response("Not a JSON object.", "Error"),
                        "401": errors["401"],
                        "409": _response(
                            "The id exists (`exists`), or another tenant has the "
                            "`stripe_account` (`account_in_use`).",
                            "Error",
                        ),
                        "422": _response("Invalid document; `field` names the field.", "Error"),
                    },
                },
            },
            "/v1/tenants/{tenant_id}": {
                "parameters": [tenant_id],
                "get": {
                    "summary": "Show a tenant",
                    "responses": {"200": _response(masked, "Tenant"), **errors},
                },
                "patch": {
                    "summary": 'Update a tenant (suspend: {"status": "suspended"})',
                    "requestBody": patch,
                    "responses": {
                        "200": _response(f"Updated. {masked}", "Tenant"),
                        "400": _response("Not a JSON object.", "Error"),
                        **errors,
                        "409": _response(
                            "Another tenant has the `stripe_account` (`account_in_use`), or the "
                            "change does not fit the tenant's state (`conflict`).",
                            "Error",
                        ),
                        "422": _response("Invalid result; `field` names it.", "Error"),
                    },
                },
                "delete": {
                    "summary": "Delete a tenant (its webhooks answer 404 within 1 s)",
                    "responses": {"204": {"description": "Deleted."}, **errors},
                },
            },
            **_endpoint_paths(tenant_id, errors, masked),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**defs, "Tenant": schema, "Error": _ERROR},
        },
    }


def _endpoint_paths(
    tenant_id: dict[str, Any], errors: dict[str, Any], masked: str
) -> dict[str, Any]:
    endpoint_id = {
        "name": "endpoint_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": r"^ep_[A-Za-z0-9]{1,40}$"},
    }
    new = {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "description": "http(s); private addresses refused."},
            "event_types": {"type": "array", "items": {"type": "string"}},
            "thresholds": {"type": "array", "items": {"type": "number"}},
            "feature": {"type": ["string", "null"]},
        },
    }
    created = {
        "description": "Added. The only answer that shows the endpoint's signing secret.",
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/NotificationEndpoint"},
                        {"properties": {"secret": {"type": "string", "pattern": "^whsec_"}}},
                    ]
                }
            }
        },
    }
    return {
        "/v1/tenants/{tenant_id}/notification-endpoints": {
            "parameters": [tenant_id],
            "post": {
                "summary": "Add a notification endpoint (Standard Webhooks)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": new}},
                },
                "responses": {
                    "201": created,
                    "400": _response("Not a JSON object.", "Error"),
                    **errors,
                    "422": _response(
                        "Invalid endpoint, or its host resolves to a private address.", "Error"
                    ),
                },
            },
        },
        "/v1/tenants/{tenant_id}/notification-endpoints/{endpoint_id}": {
            "parameters": [tenant_id, endpoint_id],
            "delete": {
                "summary": "Remove a notification endpoint",
                "responses": {
                    "204": {"description": "Removed."},
                    **errors,
                    "409": _response("No such endpoint (`conflict`).", "Error"),
                },
            },
        },
        "/v1/tenants/{tenant_id}/notification-endpoints/{endpoint_id}/{action}": {
            "parameters": [
                tenant_id,
                endpoint_id,
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["enable", "disable"]},
                },
            ],
            "post": {
                "summary": "Enable or disable a notification endpoint",
                "responses": {
                    "200": _response(f"The tenant. {masked}", "Tenant"),
                    **errors,
                    "409": _response("No such endpoint (`conflict`).", "Error"),
                },
            },
        },
    }


def render() -> bytes:
    return orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def stored_openapi() -> bytes:
    return resources.files("quotaflow.commands.tenants").joinpath(OPENAPI_FILE).read_bytes()


if __name__ == "__main__":
    sys.stdout.buffer.write(render() + b"\n")
