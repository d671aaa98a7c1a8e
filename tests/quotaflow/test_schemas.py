"""quota.updates is a public contract: the committed schema is what the model emits."""

from __future__ import annotations

import jsonschema
import pytest

from quotaflow.schemas import QUOTA_UPDATE_V1, load, quota_update_schema
from tables.quota import QuotaUpdate, Reason


def test_committed_schema_matches_the_model() -> None:
    # A model change must come with a deliberate schema change (additive within v1).
    assert load(QUOTA_UPDATE_V1) == quota_update_schema()


def test_a_quota_update_validates_and_a_broken_one_does_not() -> None:
    update = QuotaUpdate(
        tenant_id="acme",
        customer_id="cus_1",
        limit=None,
        used=3,
        remaining=None,
        status="active",
        version=1,
        reason=Reason(kind="usage", id="n1:1"),
        updated_at=1.0,
    )
    validator = jsonschema.Draft202012Validator(load(QUOTA_UPDATE_V1))
    validator.validate(update.model_dump(mode="json"))
    broken = update.model_dump(mode="json") | {"status": "maybe"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)
