"""Tenant documents: invalid input is refused naming the field; secrets never echoed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quotaflow.commands.tenants.documents import (
    MASK,
    apply_patch,
    audit_changes,
    load_document,
    masked,
    parse_tenant,
)
from quotaflow.tenants.exceptions import InvalidTenant
from tests.tenants.conftest import REGIONS, tenant_doc


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"id": "Bad Id!"}, "id"),
        ({"plans": {"pro": {"quota": -1}}}, "plans.pro.quota"),
        ({"plans": {"pro": {"quota": 1.5}}}, "plans.pro.quota"),
        ({"plans": {"pro": {"quota": "100"}}}, "plans.pro.quota"),
        ({"plans": {"pro": {"quota": True}}}, "plans.pro.quota"),
        (
            {"webhook_secrets": [{"id": "s1", "secret": "sk_not_a_whsec"}]},
            "webhook_secrets.0.secret",
        ),
        ({"stripe_api_key": "pk_test_publishable"}, "stripe_api_key"),
        ({"regions": ["eu", "mars"]}, "regions.1"),
        ({"mode": "staging"}, "mode"),
    ],
)
def test_invalid_document_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTenant) as caught:
        parse_tenant({**tenant_doc(), **change}, REGIONS)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_refused_secret_is_not_echoed() -> None:
    with pytest.raises(InvalidTenant) as caught:
        parse_tenant({**tenant_doc(), "stripe_api_key": "pk_live_SUPERSECRET"})
    assert "SUPERSECRET" not in str(caught.value)


def test_masked_view_and_repr_hide_secrets() -> None:
    doc = tenant_doc()
    tenant = parse_tenant(doc)
    view = masked(tenant)
    assert view["stripe_api_key"] == MASK
    assert view["webhook_secrets"][0]["secret"] == MASK
    for text in (repr(tenant), str(tenant), str(view)):
        assert doc["stripe_api_key"] not in text
        assert doc["webhook_secrets"][0]["secret"] not in text


def test_merge_patch_changes_and_removes() -> None:
    tenant = parse_tenant(tenant_doc())
    patched = apply_patch(tenant, {"plans": {"pro": None, "team": {"quota": 7}}, "name": "New"})
    assert set(patched.plans) == {"unlimited", "team"}
    assert patched.name == "New"
    assert patched.created_at == tenant.created_at
    with pytest.raises(InvalidTenant, match="read-only"):
        apply_patch(tenant, {"id": "other"})


def test_audit_changes_show_fields_but_never_secret_values() -> None:
    before = parse_tenant(tenant_doc())
    after = apply_patch(before, {"status": "suspended", "stripe_api_key": "rk_test_NEWKEY"})
    changes = {c["field"]: c for c in audit_changes(before, after)}
    assert changes["status"] == {"field": "status", "from": "active", "to": "suspended"}
    assert changes["stripe_api_key"] == {"field": "stripe_api_key", "from": MASK, "to": MASK}
    assert "NEWKEY" not in str(changes)


def test_yaml_and_json_files_load(tmp_path: Path) -> None:
    yml = tmp_path / "t.yaml"
    yml.write_text("id: acme\nregions: [eu]\nplans:\n  pro: {quota: 10}\n")
    assert parse_tenant(load_document(yml)).plans["pro"].quota == 10
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InvalidTenant, match="mapping"):
        load_document(bad)
