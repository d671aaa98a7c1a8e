"""Versioned JSON Schemas of quotaflow's public records."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from tables.quota import QuotaUpdate

QUOTA_UPDATE_V1 = "quota_update.v1.json"
# Version 2 adds `metered` (per-feature quotas); a superset of version 1, whose file stays
# frozen as the contract version-1 readers were written against.
QUOTA_UPDATE_V2 = "quota_update.v2.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(resources.files(__name__).joinpath(name).read_bytes())
    return data


def quota_update_schema() -> dict[str, Any]:
    """The schema the QuotaUpdate model implies (version 2); the committed file must equal it."""
    schema = QuotaUpdate.model_json_schema(mode="serialization")
    schema.pop("title", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://quotaflow.dev/schemas/quota_update.v2.json",
        "title": "quotaflow quota update, version 2",
        **schema,
        "description": "Value of every quota.updates record (header qf-schema: quota-update/1)."
        " Version 2 adds `metered`, the customer's named metered features, each with its own"
        " limit, used, remaining and rate_per_second; the top-level limit, used, remaining,"
        " rate_per_second and status keep their version-1 meaning as the default feature's."
        " Migration: nothing to do for a version-1 reader (the header still names major"
        " version 1, every version-1 field is unchanged, and a version-2 record validates"
        " against quota_update.v1.json); a reader that wants per-feature quotas reads"
        " `metered` (absent or {} on records from before version 2: only the default"
        " feature). Fields are only ever added, never removed or retyped: consumers must"
        " ignore fields they do not know.",
    }
