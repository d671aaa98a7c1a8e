"""Envelope encryption of a tenant document: what the `tenants` topic holds.

Each tenant has a random 256-bit data key. Every secret field is encrypted with it under
AES-256-GCM, with associated data naming the tenant and the field, so a ciphertext copied
to another tenant or another field does not open. The data key itself is stored wrapped
by a key-encryption key (see `keyring`), bound to the tenant id as context.

The record (JSON):

    {"format": 1,
     "data_key": {"kek_id": "k2", "wrapped": "<base64>"},
     "tenant": {...the tenant document; each secret is "enc:v1:<base64 nonce+ciphertext>"...}}

Secret fields: `stripe_api_key` and `webhook_secrets.<secret id>.secret` (the secret's id,
not its position, names it: a roll reorders the list).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, ValidationError

from quotaflow.tenants.exceptions import DecryptionError, KeyringError
from quotaflow.tenants.keyring import KeyEncryptionKeys, WrappedKey
from tables.tenant import Tenant

__all__ = ["DataKey", "SealedRecord", "new_data_key", "open_record", "seal_tenant"]

_PREFIX = "enc:v1:"
_NONCE = 12
_SECRET_AAD = b"quotaflow/secret/v1\x00"


class SealedDataKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kek_id: str
    wrapped: str


class SealedRecord(BaseModel):
    """The value of a `tenants` record; holds ciphertexts only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    data_key: SealedDataKey
    tenant: dict[str, Any]

    @property
    def wrapped_key(self) -> WrappedKey:
        return WrappedKey(self.data_key.kek_id, base64.b64decode(self.data_key.wrapped))


@dataclass(frozen=True)
class DataKey:
    """A tenant's plaintext data key with its wrapped form. Never logged or repr'd."""

    key: bytes
    wrapped: WrappedKey

    def __repr__(self) -> str:
        return f"DataKey(kek_id={self.wrapped.kek_id!r})"


def _context(tenant_id: str) -> bytes:
    return tenant_id.encode()


async def new_data_key(tenant_id: str, keyring: KeyEncryptionKeys) -> DataKey:
    key = AESGCM.generate_key(bit_length=256)
    return DataKey(key, await keyring.wrap(key, _context(tenant_id)))


async def unwrap_data_key(
    tenant_id: str, record: SealedRecord, keyring: KeyEncryptionKeys
) -> DataKey:
    wrapped = record.wrapped_key
    return DataKey(await keyring.unwrap(wrapped, _context(tenant_id)), wrapped)


async def rewrap_data_key(tenant_id: str, key: DataKey, keyring: KeyEncryptionKeys) -> DataKey:
    """The same data key wrapped under the keyring's active KEK (a no-op if it already is)."""
    if key.wrapped.kek_id == keyring.active_key_id:
        return key
    return DataKey(key.key, await keyring.wrap(key.key, _context(tenant_id)))


def _aad(tenant_id: str, field: str) -> bytes:
    return _SECRET_AAD + tenant_id.encode() + b"\x00" + field.encode()


def encrypt_field(key: bytes, tenant_id: str, field: str, plaintext: str) -> str:
    nonce = os.urandom(_NONCE)
    body = AESGCM(key).encrypt(nonce, plaintext.encode(), _aad(tenant_id, field))
    return _PREFIX + base64.b64encode(nonce + body).decode()


def decrypt_field(key: bytes, tenant_id: str, field: str, sealed: object) -> str:
    if not isinstance(sealed, str) or not sealed.startswith(_PREFIX):
        raise DecryptionError(tenant_id, field)  # a plaintext secret is never accepted
    try:
        raw = base64.b64decode(sealed[len(_PREFIX) :], validate=True)
        plain = AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], _aad(tenant_id, field))
        return plain.decode()
    except (InvalidTag, ValueError):
        raise DecryptionError(tenant_id, field) from None


def _webhook_field(secret_id: str) -> str:
    return f"webhook_secrets.{secret_id}.secret"


def seal_tenant(tenant: Tenant, key: DataKey) -> bytes:
    """The `tenants` record value for `tenant`: every secret encrypted under `key`."""
    doc = tenant.model_dump(mode="json")
    doc["webhook_secrets"] = [
        {
            **s.model_dump(mode="json"),
            "secret": encrypt_field(
                key.key, tenant.id, _webhook_field(s.id), s.secret.get_secret_value()
            ),
        }
        for s in tenant.webhook_secrets
    ]
    if tenant.stripe_api_key is not None:
        doc["stripe_api_key"] = encrypt_field(
            key.key, tenant.id, "stripe_api_key", tenant.stripe_api_key.get_secret_value()
        )
    record = SealedRecord(
        data_key=SealedDataKey(
            kek_id=key.wrapped.kek_id, wrapped=base64.b64encode(key.wrapped.blob).decode()
        ),
        tenant=doc,
    )
    return orjson.dumps(record.model_dump(mode="json"))


def parse_record(value: bytes) -> SealedRecord:
    return SealedRecord.model_validate_json(value)


async def open_record(
    tenant_id: str, value: bytes, keyring: KeyEncryptionKeys
) -> tuple[Tenant, SealedRecord]:
    """Decrypts a `tenants` record whose key is `tenant_id`; refuses one for another tenant."""
    try:
        record = parse_record(value)
    except ValidationError:
        raise DecryptionError(tenant_id, "record") from None
    if record.tenant.get("id") != tenant_id:
        raise DecryptionError(tenant_id, "id")
    try:
        key = await unwrap_data_key(tenant_id, record, keyring)
    except KeyringError:
        raise DecryptionError(tenant_id, "data_key") from None
    doc = dict(record.tenant)
    secrets = []
    for item in doc.get("webhook_secrets") or []:
        if not isinstance(item, dict):
            raise DecryptionError(tenant_id, "webhook_secrets")
        secret_id = str(item.get("id"))
        secrets.append(
            {
                **item,
                "secret": decrypt_field(
                    key.key, tenant_id, _webhook_field(secret_id), item.get("secret")
                ),
            }
        )
    doc["webhook_secrets"] = secrets
    if doc.get("stripe_api_key") is not None:
        doc["stripe_api_key"] = decrypt_field(
            key.key, tenant_id, "stripe_api_key", doc["stripe_api_key"]
        )
    try:
        return Tenant.model_validate(doc), record
    except ValidationError:
        raise DecryptionError(tenant_id, "document") from None
