"""Envelope encryption: round trips, ciphertexts bound to tenant and field, KEK rotation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import quotaflow.tenants
from quotaflow.commands.tenants.documents import parse_tenant
from quotaflow.tenants.exceptions import DecryptionError, KeyringError
from quotaflow.tenants.keyring import KeyEncryptionKeys, LocalKeyring
from quotaflow.tenants.sealing import (
    RecordRefused,
    SealedRecord,
    new_data_key,
    open_record,
    rewrap_data_key,
    routing_tenant,
    seal_deleted,
    sign_record,
    unwrap_data_key,
    verify_record,
)
from quotaflow.tenants.sealing import seal_tenant as _seal
from tables.tenant import Tenant
from tests.tenants.conftest import kek, tenant_doc
from wire.signing import Kind, Signer, Verifier, generate_keypair, public_key_of

PRIVATE, PUBLIC = generate_keypair()
SIGNER = Signer(Kind.TENANT, [PRIVATE])
VERIFIER = Verifier(Kind.TENANT, [PUBLIC])


def seal_tenant(tenant: Tenant, key: object, version: int = 1) -> bytes:
    return _seal(tenant, key, version=version, signer=SIGNER)  # type: ignore[arg-type]


async def _open(
    tenant_id: str, value: bytes, ring: KeyEncryptionKeys
) -> tuple[Tenant, SealedRecord]:
    record = verify_record(tenant_id, value, VERIFIER)
    return await open_record(record, ring), record


def _body(value: bytes) -> dict[str, object]:
    return orjson.loads(orjson.loads(value)["body"])  # type: ignore[no-any-return]


def _resigned(body: dict[str, object]) -> bytes:
    """A body re-signed with the genuine key: the secrets' own binding is still checked."""
    return sign_record(SealedRecord.model_validate(body), SIGNER)


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
    opened, record = await _open("acme", value, ring)
    assert opened == tenant
    assert record.data_key is not None
    assert record.data_key.kek_id == "k1"
    assert record.version == 1


async def test_ciphertext_moved_to_another_field_does_not_open() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    doc: dict[str, Any] = _body(value)
    doc["tenant"]["webhook_secrets"][0]["secret"] = doc["tenant"]["stripe_api_key"]
    with pytest.raises(DecryptionError) as caught:
        await _open("acme", _resigned(doc), ring)
    assert caught.value.field == "webhook_secrets.s1.secret"


async def test_ciphertext_moved_to_another_tenant_does_not_open() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    acme: dict[str, Any] = _body(value)
    # Even with the whole envelope (data key included) copied, the AAD names the tenant.
    acme["tenant"]["id"] = "evil"
    acme["tenant_id"] = "evil"
    with pytest.raises(DecryptionError):
        await _open("evil", _resigned(acme), ring)
    # A genuine record served under another key is refused before any decryption.
    with pytest.raises(RecordRefused) as caught:
        await _open("other", value, ring)
    assert caught.value.reason == "tenant_id"


async def test_secret_renamed_to_another_secret_id_does_not_open() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    doc: dict[str, Any] = _body(value)
    doc["tenant"]["webhook_secrets"][0]["id"] = "s2"
    with pytest.raises(DecryptionError):
        await _open("acme", _resigned(doc), ring)


async def test_plaintext_secret_in_a_record_is_refused() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    doc: dict[str, Any] = _body(value)
    doc["tenant"]["stripe_api_key"] = "rk_test_plain"
    with pytest.raises(DecryptionError):
        await _open("acme", _resigned(doc), ring)


async def test_rotation_then_old_key_removed_still_decrypts() -> None:
    k1, k2 = kek(), kek()
    old_ring = LocalKeyring({"k1": k1})
    tenant = parse_tenant(tenant_doc("acme"))
    key = await new_data_key("acme", old_ring)
    value = seal_tenant(tenant, key)

    both = LocalKeyring({"k2": k2, "k1": k1})
    _, record = await _open("acme", value, both)  # both decrypt during rotation
    rewrapped = await rewrap_data_key("acme", await unwrap_data_key("acme", record, both), both)
    assert rewrapped.wrapped.kek_id == "k2"
    new_value = seal_tenant(tenant, rewrapped)

    only_new = LocalKeyring({"k2": k2})
    opened, _ = await _open("acme", new_value, only_new)
    assert opened == tenant
    with pytest.raises(DecryptionError) as caught:
        await _open("acme", value, only_new)  # the old record needs the dropped key
    assert caught.value.field == "data_key"


async def test_any_change_to_a_signed_record_is_refused() -> None:
    ring = LocalKeyring({"k1": kek()})
    value = seal_tenant(parse_tenant(tenant_doc("acme")), await new_data_key("acme", ring))
    envelope = orjson.loads(value)
    body: dict[str, Any] = _body(value)
    changes: list[tuple[str | None, str, object]] = [
        ("tenant", "plans", {"pro": {"quota": None}}),
        ("tenant", "status", "suspended"),
        ("tenant", "stripe_account", "acct_1Other"),
        (None, "version", 99),
    ]
    for where, name, new in changes:
        tampered = orjson.loads(orjson.dumps(body))
        (tampered[where] if where else tampered)[name] = new
        forged = orjson.dumps({**envelope, "body": orjson.dumps(tampered).decode()})
        with pytest.raises(RecordRefused) as caught:
            verify_record("acme", forged, VERIFIER)
        assert caught.value.reason == "bad_signature"
    # Signed with a key the readers do not hold; the format before signing.
    other = Signer(Kind.TENANT, [generate_keypair()[0]])
    with pytest.raises(RecordRefused) as caught:
        verify_record("acme", sign_record(SealedRecord.model_validate(body), other), VERIFIER)
    assert caught.value.reason == "unknown_key"
    legacy = orjson.dumps({"format": 1, "data_key": body["data_key"], "tenant": body["tenant"]})
    with pytest.raises(RecordRefused) as caught:
        verify_record("acme", legacy, VERIFIER)
    assert caught.value.reason == "unsigned_format"
    # A signature of another kind (a push key) never verifies as a tenant record.
    push = Signer(Kind.PUSH, [PRIVATE])
    resigned = orjson.dumps({**envelope, "signature": push.header(envelope["body"].encode())})
    with pytest.raises(RecordRefused) as caught:
        verify_record("acme", resigned, VERIFIER)
    assert caught.value.reason == "bad_signature"


async def test_routing_view_needs_no_keyring_and_holds_no_secret() -> None:
    ring = LocalKeyring({"k1": kek()})
    doc = tenant_doc("acme", regions=["eu", "us"], status="suspended")
    value = seal_tenant(parse_tenant(doc), await new_data_key("acme", ring), version=3)
    routed = routing_tenant(verify_record("acme", value, Verifier(Kind.TENANT, [PUBLIC])))
    assert (routed.id, routed.regions, routed.status) == ("acme", ("eu", "us"), "suspended")
    assert routed.stripe_account == doc["stripe_account"]
    assert routed.webhook_secrets == ()
    assert routed.stripe_api_key is None
    deleted = verify_record("acme", seal_deleted("acme", version=4, signer=SIGNER), VERIFIER)
    assert deleted.deleted
    assert deleted.version == 4
    assert deleted.tenant is None
    assert public_key_of(PRIVATE) == PUBLIC


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
