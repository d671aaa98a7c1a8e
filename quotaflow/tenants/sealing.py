"""What the `tenants` topic holds: a signed, versioned record per tenant, secrets sealed.

The record (JSON, format 2):

    {"format": 2,
     "body": "<JSON text of the body>",
     "signature": "t=<unix s>,k=<key id>,ed25519=<base64url>"}

    body = {"tenant_id": "acme", "version": 7, "deleted": false,
            "data_key": {"kek_id": "k2", "wrapped": "<base64>"},
            "tenant": {...the tenant document; each secret is "enc:v1:<base64>"...}}

The signature is `wire.signing` Ed25519 of kind `tenant-record` over the body's exact bytes,
which name the tenant and the version: the whole document (plans, status, regions, account,
a rolled secret's `expires_at`, the wrapped data key) is authenticated, so write access to
the topic alone can neither change a tenant, nor move a record to another tenant, nor
replay an older one (readers refuse a version not above the one they hold). A deletion is
a signed body with `"deleted": true` and no document; it stays on the topic (compaction
keeps it as the tenant's last record), so a bare Kafka tombstone is never genuine.

Only the admin tools hold the private (signing) key; every component holds the public
key(s) and so can read the routing fields without any secret. Secrets stay encrypted
under the tenant's data key (AES-256-GCM, associated data = tenant id + field), the data
key wrapped by a KEK of the keyring (see `keyring`): only the components that use a
secret (ingress, worker, admin tools) hold the keyring.

Secret fields: `stripe_api_key`, `webhook_secrets.<secret id>.secret` and
`notification_endpoints.<endpoint id>.secret` (each endpoint's Standard Webhooks signing
secret; the routing view drops it, and a document without endpoints is sealed as before).

Format 1 (before this scheme: unsigned, unversioned) is refused by readers with reason
`unsigned_format`; `quotaflow tenants reseal` rewrites such records in format 2.
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

from quotaflow.tenants.exceptions import DecryptionError, KeyringError, TenantsError
from quotaflow.tenants.keyring import KeyEncryptionKeys, WrappedKey
from tables.tenant import Tenant
from wire.exceptions import SignatureError
from wire.signing import Signer, Verifier

__all__ = [
    "DataKey",
    "LegacyRecord",
    "RecordRefused",
    "SealedRecord",
    "new_data_key",
    "open_record",
    "open_record_now",
    "routing_tenant",
    "seal_deleted",
    "seal_tenant",
    "sign_record",
    "verified_body",
    "verify_record",
]

_PREFIX = "enc:v1:"
_NONCE = 12
_SECRET_AAD = b"quotaflow/secret/v1\x00"


class SealedDataKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kek_id: str
    wrapped: str


class SealedRecord(BaseModel):
    """The signed body of a `tenants` record; holds ciphertexts only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    version: int
    deleted: bool = False
    data_key: SealedDataKey | None = None
    tenant: dict[str, Any] | None = None

    @property
    def wrapped_key(self) -> WrappedKey:
        if self.data_key is None:
            raise KeyringError(f"tenant {self.tenant_id!r} is deleted: no data key")
        return WrappedKey(self.data_key.kek_id, base64.b64decode(self.data_key.wrapped))


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[2]
    body: str
    signature: str


class LegacyRecord(BaseModel):
    """A format 1 record (unsigned, unversioned): read only by `quotaflow tenants reseal`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    data_key: SealedDataKey
    tenant: dict[str, Any]

    @property
    def wrapped_key(self) -> WrappedKey:
        return WrappedKey(self.data_key.kek_id, base64.b64decode(self.data_key.wrapped))


class RecordRefused(TenantsError):
    """A `tenants` record that is not authentic (or not for this tenant); never opened.

    `reason`: `unsigned_format` (format 1, or not a record), `unknown_key`,
    `bad_signature`, `no_keys`, `malformed_signature`, `tenant_id`, `body`."""

    def __init__(self, tenant_id: str, reason: str) -> None:
        super().__init__(f"tenant record for {tenant_id!r} refused: {reason}")
        self.tenant_id = tenant_id
        self.reason = reason


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


async def unwrap_wrapped(
    tenant_id: str, wrapped: WrappedKey, keyring: KeyEncryptionKeys
) -> DataKey:
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


def _endpoint_field(endpoint_id: str) -> str:
    return f"notification_endpoints.{endpoint_id}.secret"


def sealed_document(tenant: Tenant, key: DataKey) -> dict[str, Any]:
    """The tenant document with every secret encrypted under `key`."""
    doc = tenant.model_dump(mode="json")
    if tenant.notification_endpoints:
        doc["notification_endpoints"] = [
            {
                **e.model_dump(mode="json"),
                "secret": encrypt_field(
                    key.key, tenant.id, _endpoint_field(e.id), e.secret.get_secret_value()
                ),
            }
            for e in tenant.notification_endpoints
        ]
    else:
        doc.pop("notification_endpoints", None)  # records stay as they were without any
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
    return doc


def _sealed_key(key: DataKey) -> SealedDataKey:
    return SealedDataKey(
        kek_id=key.wrapped.kek_id, wrapped=base64.b64encode(key.wrapped.blob).decode()
    )


def sign_record(record: SealedRecord, signer: Signer) -> bytes:
    """The `tenants` record value for `record`, signed with the tenants signing key."""
    body = orjson.dumps(record.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    envelope = {"format": 2, "body": body.decode(), "signature": signer.header(body)}
    return orjson.dumps(envelope)


def seal_tenant(tenant: Tenant, key: DataKey, *, version: int, signer: Signer) -> bytes:
    """The `tenants` record value for `tenant` at `version`: secrets encrypted under `key`,
    the whole body signed."""
    record = SealedRecord(
        tenant_id=tenant.id,
        version=version,
        data_key=_sealed_key(key),
        tenant=sealed_document(tenant, key),
    )
    return sign_record(record, signer)


def with_data_key(record: SealedRecord, key: DataKey, *, version: int) -> SealedRecord:
    """`record` with its data key re-wrapped (same ciphertexts), at `version`."""
    return record.model_copy(update={"data_key": _sealed_key(key), "version": version})


def seal_deleted(tenant_id: str, *, version: int, signer: Signer) -> bytes:
    """The signed deletion of a tenant: the last record of its key on the topic."""
    return sign_record(SealedRecord(tenant_id=tenant_id, version=version, deleted=True), signer)


def parse_legacy(value: bytes) -> LegacyRecord | None:
    try:
        return LegacyRecord.model_validate_json(value)
    except ValidationError:
        return None


def verify_record(tenant_id: str, value: bytes, verifier: Verifier) -> SealedRecord:
    """The authentic body of a `tenants` record whose key is `tenant_id`, or `RecordRefused`.
    Checks the signature over the exact body bytes, then that the body names `tenant_id`.
    Nothing but ids and reasons goes into the exception."""
    try:
        envelope = _Envelope.model_validate_json(value)
    except ValidationError:
        raise RecordRefused(tenant_id, "unsigned_format") from None
    body = envelope.body.encode()
    try:
        verifier.verify_record(envelope.signature, body)
    except SignatureError as exc:
        raise RecordRefused(tenant_id, exc.reason) from None
    try:
        record = SealedRecord.model_validate_json(body)
    except ValidationError:
        raise RecordRefused(tenant_id, "body") from None
    if record.tenant_id != tenant_id:
        raise RecordRefused(tenant_id, "tenant_id")
    if not record.deleted and (
        record.tenant is None or record.data_key is None or record.tenant.get("id") != tenant_id
    ):
        raise RecordRefused(tenant_id, "body")
    return record


def verified_body(value: bytes) -> SealedRecord:
    """The body of a record value this process verified before (`verify_record`) and kept:
    parsed again, not verified again. `RecordRefused("body")` if it does not parse."""
    try:
        return SealedRecord.model_validate_json(_Envelope.model_validate_json(value).body)
    except ValidationError:
        raise RecordRefused("", "body") from None


def _without_secrets(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    out["webhook_secrets"] = []
    out["stripe_api_key"] = None
    out.pop("notification_endpoints", None)
    return out


def routing_tenant(record: SealedRecord) -> Tenant:
    """The routing view of an authentic record, no keyring needed: every field but the
    secrets (no webhook secrets, no Stripe API key). `DecryptionError("document")` if the
    document does not validate."""
    if record.tenant is None:
        raise DecryptionError(record.tenant_id, "document")
    try:
        return Tenant.model_validate(_without_secrets(record.tenant))
    except ValidationError:
        raise DecryptionError(record.tenant_id, "document") from None


async def open_document(
    tenant_id: str, doc_in: dict[str, Any], wrapped: WrappedKey, keyring: KeyEncryptionKeys
) -> Tenant:
    """Decrypts the secrets of a sealed document (format 1 or 2)."""
    try:
        key = await unwrap_wrapped(tenant_id, wrapped, keyring)
    except KeyringError:
        raise DecryptionError(tenant_id, "data_key") from None
    return open_with_key(tenant_id, doc_in, key)


def open_record_now(record: SealedRecord, keyring: KeyEncryptionKeys) -> Tenant:
    """`open_record` without awaiting (`KeyEncryptionKeys.unwrap_now`): for a registry that
    opens a tenant's secrets on first use, inside a synchronous lookup."""
    if record.tenant is None or record.data_key is None:
        raise DecryptionError(record.tenant_id, "document")
    wrapped = record.wrapped_key
    try:
        key = DataKey(keyring.unwrap_now(wrapped, _context(record.tenant_id)), wrapped)
    except KeyringError:
        raise DecryptionError(record.tenant_id, "data_key") from None
    return open_with_key(record.tenant_id, record.tenant, key)


def open_with_key(tenant_id: str, doc_in: dict[str, Any], key: DataKey) -> Tenant:
    """The tenant of a sealed document, its secrets decrypted with its data key."""
    doc = dict(doc_in)
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
    endpoints = []
    for item in doc.get("notification_endpoints") or []:
        if not isinstance(item, dict):
            raise DecryptionError(tenant_id, "notification_endpoints")
        endpoint_id = str(item.get("id"))
        endpoints.append(
            {
                **item,
                "secret": decrypt_field(
                    key.key, tenant_id, _endpoint_field(endpoint_id), item.get("secret")
                ),
            }
        )
    if endpoints:
        doc["notification_endpoints"] = endpoints
    if doc.get("stripe_api_key") is not None:
        doc["stripe_api_key"] = decrypt_field(
            key.key, tenant_id, "stripe_api_key", doc["stripe_api_key"]
        )
    try:
        return Tenant.model_validate(doc)
    except ValidationError:
        raise DecryptionError(tenant_id, "document") from None


async def open_record(record: SealedRecord, keyring: KeyEncryptionKeys) -> Tenant:
    """The full tenant (secrets decrypted) of an authentic, live record."""
    if record.tenant is None or record.data_key is None:
        raise DecryptionError(record.tenant_id, "document")
    return await open_document(record.tenant_id, record.tenant, record.wrapped_key, keyring)
