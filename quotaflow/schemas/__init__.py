"""Versioned JSON Schemas of quotaflow's public records."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from tables.quota import QuotaUpdate

QUOTA_UPDATE_V1 = "quota_update.v1.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(resources.files(__name__).joinpath(name).read_bytes())
    return data


def quota_update_schema() -> dict[str, Any]:
    """The schema the QuotaUpdate model implies; the committed file must equal it."""
    schema = QuotaUpdate.model_json_schema(mode="serialization")
    schema.pop("title", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://quotaflow.dev/schemas/quota_update.v1.json",
        "title": "quotaflow quota update, major version 1",
        **schema,
        "description": "Value of every quota.updates record (header qf-schema: quota-update/1)."
        " Within major version 1 fields are only ever added, never removed or retyped:"
        " consumers must ignore fields they do not know.",
    }
