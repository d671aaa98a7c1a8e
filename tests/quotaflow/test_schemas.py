"""quota.updates is a public contract: the committed schema is what the model emits, and
version 2 (per-feature quotas) keeps every version-1 reader working."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from quotaflow.schemas import QUOTA_UPDATE_V1, QUOTA_UPDATE_V2, load, quota_update_schema
from tables.quota import FeatureQuota, QuotaUpdate, Reason


def _update(**fields: Any) -> QuotaUpdate:
    base: dict[str, Any] = {
        "tenant_id": "acme",
        "customer_id": "cus_1",
        "limit": None,
        "used": 3,
        "remaining": None,
        "status": "active",
        "version": 1,
        "reason": Reason(kind="usage", id="n1:1"),
        "updated_at": 1.0,
    }
    return QuotaUpdate(**(base | fields))


def test_committed_schema_matches_the_model() -> None:
    # A model change must come with a deliberate schema change (additive within v1).
    assert load(QUOTA_UPDATE_V2) == quota_update_schema()


def test_version_1_schema_is_version_2_without_its_additions() -> None:
    # v1 stays frozen: v2 only adds `metered` (and its definition) and retitles.
    v1, v2 = load(QUOTA_UPDATE_V1), load(QUOTA_UPDATE_V2)
    added = set(v2["properties"]) - set(v1["properties"])
    assert added == {"metered"}
    assert {k: v for k, v in v2["properties"].items() if k not in added} == v1["properties"]
    assert v1["required"] == v2["required"]
    assert set(v2["$defs"]) - set(v1["$defs"]) == {"FeatureQuota"}


@pytest.mark.parametrize("name", [QUOTA_UPDATE_V1, QUOTA_UPDATE_V2])
def test_a_quota_update_validates_and_a_broken_one_does_not(name: str) -> None:
    update = _update(
        metered={"exports": FeatureQuota(limit=10, used=4, remaining=6, rate_per_second=2.0)}
    )
    validator = jsonschema.Draft202012Validator(load(name))
    validator.validate(update.model_dump(mode="json"))
    broken = update.model_dump(mode="json") | {"status": "maybe"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_version_2_refuses_a_broken_feature_quota() -> None:
    doc = _update().model_dump(mode="json") | {"metered": {"exports": {"limit": 1, "used": -1}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(load(QUOTA_UPDATE_V2)).validate(doc)


def test_a_version_1_record_reads_as_version_2_with_only_the_default_feature() -> None:
    v1_doc = {k: v for k, v in _update().model_dump(mode="json").items() if k != "metered"}
    assert QuotaUpdate.model_validate(v1_doc).metered == {}
