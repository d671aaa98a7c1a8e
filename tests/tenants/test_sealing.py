"""Envelope encryption: round trips, ciphertexts bound to tenant and field, KEK rotation."""

from __future__ import annotations

import orjson
import pytest

import quotaflow.tenants
from quotaflow.tenants.documents import parse_tenant
from quotaflow.tenants.exceptions import DecryptionError, KeyringError
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.sealing import (
    new_data_key,
    open_record,
    rewrap_data_key,
    seal_tenant,
    unwrap_data_key,
)
from tests.tenants.conftest import kek, tenant_doc


def _secrets_of(doc: dict[str, object]) -> list[str]:
    hooks = doc["webhook_secrets"]
    assert isinstance(hooks, list)
    return [str(doc["stripe_api_key"])] + [str(h["secret"]) for h in hooks]


async def test_sealed_record_round_trips_and_holds_no_plaintext() -> None:
    ring = LocalKeyring({"k1": kek()})
    doc = tenant_doc("acme")
    tenant = parse_tenant(doc)
    value = seal_tenant(tenant, await new_data_key("acme", ring))
    for secret in _secrets_of(doc):
        assert secret.encode() not in value
    opened, record = await open_record("acme", value, ring)
    assert opened == tenant
    assert record.data_key.kek_id == "k1"


async def test_ciphertext_moved_to_another_field_does_not_open() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    doc = orjson.loads(value)
    doc["tenant"]["webhook_secrets"][0]["secret"] = doc["tenant"]["stripe_api_key"]
    with pytest.raises(DecryptionError) as caught:
        await open_record("acme", orjson.dumps(doc), ring)
    assert caught.value.field == "webhook_secrets.s1.secret"


async def test_ciphertext_moved_to_another_tenant_does_not_open() -> None:
    ring = LocalKeyring({"k1": kek()})
    acme = orjson.loads(
        seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    )
    # Even with the whole envelope (data key included) copied, the AAD names the tenant.
    acme["tenant"]["id"] = "evil"
    with pytest.raises(DecryptionError):
        await open_record("evil", orjson.dumps(acme), ring)
    # A record served under another key is refused before any decryption.
    with pytest.raises(DecryptionError):
        await open_record("other", orjson.dumps(acme), ring)


async def test_secret_renamed_to_another_secret_id_does_not_open() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    doc = orjson.loads(value)
    doc["tenant"]["webhook_secrets"][0]["id"] = "s2"
    with pytest.raises(DecryptionError):
        await open_record("acme", orjson.dumps(doc), ring)


async def test_plaintext_secret_in_a_record_is_refused() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    doc = orjson.loads(value)
    doc["tenant"]["stripe_api_key"] = "rk_test_plain"
    with pytest.raises(DecryptionError):
        await open_record("acme", orjson.dumps(doc), ring)


async def test_rotation_then_old_key_removed_still_decrypts() -> None:
    k1, k2 = kek(), kek()
    old_ring = LocalKeyring({"k1": k1})
    tenant = parse_tenant(tenant_doc("acme"))
    key = await new_data_key("acme", old_ring)
    value = seal_tenant(tenant, key)

    both = LocalKeyring({"k2": k2, "k1": k1})
    _, record = await open_record("acme", value, both)  # both decrypt during rotation
    rewrapped = await rewrap_data_key("acme", await unwrap_data_key("acme", record, both), both)
    assert rewrapped.wrapped.kek_id == "k2"
    new_value = seal_tenant(tenant, rewrapped)

    only_new = LocalKeyring({"k2": k2})
    opened, _ = await open_record("acme", new_value, only_new)
    assert opened == tenant
    with pytest.raises(DecryptionError) as caught:
        await open_record("acme", value, only_new)  # the old record needs the dropped key
    assert caught.value.field == "data_key"


async def test_wrapped_key_bound_to_tenant() -> None:
    ring = LocalKeyring({"k1": kek()})
    key = await new_data_key("acme", ring)
    with pytest.raises(KeyringError):
        await ring.unwrap(key.wrapped, b"other")


def test_keyring_refuses_bad_keys_without_echoing_them() -> None:
    with pytest.raises(KeyringError, match="empty"):
        LocalKeyring({})
    with pytest.raises(KeyringError, match="32 bytes"):
        LocalKeyring({"k1": b"short"})
    from pydantic import SecretStr

    with pytest.raises(KeyringError, match="not base64") as caught:
        LocalKeyring.from_secrets({"k1": SecretStr("not base64 at all!")})
    assert "at all" not in str(caught.value)


async def test_reprs_never_show_keys() -> None:
    raw = kek()
    ring = LocalKeyring({"k1": raw})
    key = await new_data_key("acme", ring)
    for text in (repr(ring), repr(key), repr(key.wrapped)):
        assert raw.hex() not in text
        assert key.key.hex() not in text
        assert "k1" in text


def test_public_api_is_curated() -> None:
    assert sorted(quotaflow.tenants.__all__) == quotaflow.tenants.__all__
    for name in quotaflow.tenants.__all__:
        assert hasattr(quotaflow.tenants, name)
