"""The audit trail: one record per tenant change on `{prefix}tenants.audit`.

Who (the actor: an admin token's name or `cli:user@host`), when, which action, and the
field-level changes from `documents.audit_changes`, in which a secret shows only as
set, changed or removed. The writer puts the audit record and the tenant record in one
Kafka transaction, so neither exists without the other.
"""

from __future__ import annotations

import getpass
import socket
import time
from typing import Any

import orjson

from quotaflow.commands.tenants.documents import audit_changes
from quotaflow.settings import KafkaGroup
from quotaflow.tenants.config import audit_topic
from quotaflow.topics import ensure_topics
from tables.tenant import Tenant

__all__ = ["audit_record", "cli_actor", "ensure_audit_topic"]


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def audit_record(
    action: str,
    tenant_id: str,
    actor: str,
    before: Tenant | None,
    after: Tenant | None,
    **details: Any,
) -> bytes:
    doc = {
        "ts": time.time(),
        "actor": actor,
        "action": action,
        "tenant_id": tenant_id,
        "changes": audit_changes(before, after),
        **details,
    }
    return orjson.dumps(doc)


async def ensure_audit_topic(settings: KafkaGroup) -> bool:
    """Creates the audit topic (with every other topic) if missing; True if it was."""
    return audit_topic(settings) in await ensure_topics(settings)
