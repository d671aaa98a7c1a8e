"""Tenant documents in and out: strict parsing with errors that name the field, JSON merge
patches, masked views, and the secret-free diff the audit log records.

Input is validated in strict mode (a quota of "5", 1.5 or true is refused, not coerced).
Error messages carry the field path and pydantic's message, never the input value, so a
refused secret is not echoed back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from quotaflow.tenants.exceptions import InvalidTenant
from tables.tenant import Tenant

__all__ = [
    "MASK",
    "READ_ONLY_FIELDS",
    "apply_patch",
    "audit_changes",
    "check_regions",
    "load_document",
    "masked",
    "parse_tenant",
    "plain_document",
]

MASK = "**********"
# `suspended_at`/`resumed_at` follow `status` (see `apply_patch`), never a client's say.
READ_ONLY_FIELDS = frozenset({"id", "created_at", "updated_at", "suspended_at", "resumed_at"})


def _field_path(loc: Iterable[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _refusal(error: ValidationError) -> InvalidTenant:
    first = error.errors(include_input=False, include_url=False)[0]
    more = error.error_count() - 1
    suffix = f" (and {more} more)" if more else ""
    return InvalidTenant(_field_path(first["loc"]), first["msg"] + suffix)


def parse_tenant(doc: Mapping[str, Any], known_regions: frozenset[str] | None = None) -> Tenant:
    """A validated `Tenant` from a plain document, or `InvalidTenant` naming the field."""
    try:
        raw = orjson.dumps(doc)
    except TypeError as exc:
        raise InvalidTenant("", f"not a JSON document: {type(exc).__name__}") from None
    try:
        tenant = Tenant.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _refusal(exc) from None
    if known_regions is not None:
        check_regions(tenant, known_regions)
    return tenant


def check_regions(tenant: Tenant, known: frozenset[str]) -> None:
    for i, region in enumerate(tenant.regions):
        if region not in known:
            raise InvalidTenant(
                f"regions.{i}", f"unknown region {region!r} (known: {', '.join(sorted(known))})"
            )


def load_document(path: Path) -> dict[str, Any]:
    """A tenant document from a JSON or YAML file (YAML is a superset of JSON)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidTenant("", f"{path.name} is not valid JSON/YAML{where}") from None
    if not isinstance(doc, dict):
        raise InvalidTenant("", f"{path.name} must hold one tenant document (a mapping)")
    return doc


def plain_document(tenant: Tenant) -> dict[str, Any]:
    """The full document with secrets in clear: in memory only, for patching."""
    doc = tenant.model_dump(mode="json")
    doc["webhook_secrets"] = [
        {**s.model_dump(mode="json"), "secret": s.secret.get_secret_value()}
        for s in tenant.webhook_secrets
    ]
    if tenant.stripe_api_key is not None:
        doc["stripe_api_key"] = tenant.stripe_api_key.get_secret_value()
    doc["notification_endpoints"] = [
        {**e.model_dump(mode="json"), "secret": e.secret.get_secret_value()}
        for e in tenant.notification_endpoints
    ]
    return doc


def masked(tenant: Tenant) -> dict[str, Any]:
    """The document as `show`, the admin API and logs present it: every secret masked."""
    return tenant.model_dump(mode="json")  # SecretStr dumps as **********


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def apply_patch(
    tenant: Tenant, patch: Mapping[str, Any], known_regions: frozenset[str] | None = None
) -> Tenant:
    """`tenant` with a JSON merge patch applied, validated as a whole, `updated_at` now."""
    for name in patch:
        if name in READ_ONLY_FIELDS:
            raise InvalidTenant(name, "is read-only")
    doc = _merge(plain_document(tenant), dict(patch))
    now = time.time()
    doc["id"], doc["created_at"], doc["updated_at"] = tenant.id, tenant.created_at, now
    # The suspended window, recorded with the status change that opens or closes it: the
    # worker reconciles it with Stripe on resume (the tenant's webhooks got 403 meanwhile).
    if tenant.status == "active" and doc.get("status") == "suspended":
        doc["suspended_at"] = now
    elif tenant.status == "suspended" and doc.get("status") == "active":
        doc["resumed_at"] = now
    return parse_tenant(doc, known_regions)


def _flatten(tenant: Tenant) -> dict[str, tuple[Any, bool]]:
    """Leaf path -> (value shown in the audit, is it a secret?). Secrets carry their clear
    value here only so that a change can be detected; `audit_changes` never emits it."""
    doc = tenant.model_dump(mode="json")
    doc.pop("updated_at", None)
    doc.pop("webhook_secrets", None)
    endpoints = doc.pop("notification_endpoints", None) or []
    out: dict[str, tuple[Any, bool]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = (value, False)

    walk("", doc)
    for item in endpoints:
        for name, value in item.items():
            if name != "secret":
                out[f"notification_endpoints.{item['id']}.{name}"] = (value, False)
    for e in tenant.notification_endpoints:
        out[f"notification_endpoints.{e.id}.secret"] = (e.secret.get_secret_value(), True)
    for s in tenant.webhook_secrets:
        out[f"webhook_secrets.{s.id}.expires_at"] = (s.expires_at, False)
        out[f"webhook_secrets.{s.id}.secret"] = (s.secret.get_secret_value(), True)
    key = tenant.stripe_api_key
    out["stripe_api_key"] = (None if key is None else key.get_secret_value(), True)
    return out


def audit_changes(before: Tenant | None, after: Tenant | None) -> list[dict[str, Any]]:
    """What changed, field by field; a secret shows only as set, changed or removed."""
    old = _flatten(before) if before is not None else {}
    new = _flatten(after) if after is not None else {}
    changes: list[dict[str, Any]] = []
    for path in sorted(old.keys() | new.keys()):
        (was, secret_a), (now, secret_b) = (
            old.get(path, (None, False)),
            new.get(path, (None, False)),
        )
        if was == now:
            continue
        if secret_a or secret_b:
            changes.append(
                {
                    "field": path,
                    "from": None if was is None else MASK,
                    "to": None if now is None else MASK,
                }
            )
        else:
            changes.append({"field": path, "from": was, "to": now})
    return changes
