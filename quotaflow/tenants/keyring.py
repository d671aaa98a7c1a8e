"""Key-encryption keys (KEKs): the keys that wrap each tenant's data key.

`KeyEncryptionKeys` is the seam a cloud KMS stands behind: it wraps and unwraps small
keys, names the key it used, and binds each wrap to a context (the tenant id), which
maps onto AWS KMS's encryption context or GCP KMS's additional authenticated data. It
is async because a KMS is a network call.

`LocalKeyring` is the built-in implementation: AES-256-GCM keys from `QUOTAFLOW_KEYRING`
(a JSON object of id -> base64 of 32 bytes, newest first). The newest wraps; every key
unwraps, so after `quotaflow keys rotate` the old key can be dropped from the ring.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from quotaflow.tenants.exceptions import KeyringError

__all__ = ["KeyEncryptionKeys", "LocalKeyring", "WrappedKey", "generate_kek"]

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NONCE = 12
_WRAP_AAD = b"quotaflow/kek/v1\x00"


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under the KEK `kek_id`. Safe to store and to log."""

    kek_id: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(kek_id={self.kek_id!r})"


class KeyEncryptionKeys(Protocol):
    """Wraps data keys under the active KEK; unwraps under whichever KEK wrapped them."""

    @property
    def active_key_id(self) -> str: ...

    def has_key(self, kek_id: str) -> bool: ...

    async def wrap(self, data_key: bytes, context: bytes) -> WrappedKey: ...

    async def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...

    def unwrap_now(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """`unwrap` without awaiting: registries open a tenant's secrets on first use,
        inside a synchronous lookup. A KMS-backed implementation unwraps its KEKs from the
        KMS at start (envelope encryption) and data keys locally, as `LocalKeyring` does."""
        ...


def generate_kek() -> str:
    """A fresh KEK, base64 of 32 random bytes, as `QUOTAFLOW_KEYRING` holds it."""
    return base64.b64encode(os.urandom(32)).decode()


class LocalKeyring:
    """AES-256-GCM KEKs held in memory; the first one given is the active one."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise KeyringError(
                "the keyring is empty: set QUOTAFLOW_KEYRING "
                '(JSON {"k1": "<base64 of 32 random bytes>"}; `quotaflow keys generate` makes one)'
            )
        for kek_id, key in keys.items():
            if not KEY_ID_PATTERN.match(kek_id):
                raise KeyringError(f"keyring: bad key id {kek_id!r} (letters, digits, _.:-)")
            if len(key) != 32:
                raise KeyringError(f"keyring: key {kek_id!r} must be 32 bytes")
        self._keys = {kek_id: AESGCM(key) for kek_id, key in keys.items()}
        self._active = next(iter(keys))

    @classmethod
    def from_secrets(cls, keys: Mapping[str, SecretStr]) -> LocalKeyring:
        """From the setting's form: id -> base64 text, newest first."""
        raw: dict[str, bytes] = {}
        for kek_id, value in keys.items():
            try:
                raw[kek_id] = base64.b64decode(value.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"keyring: key {kek_id!r} is not base64") from None
        return cls(raw)

    def __repr__(self) -> str:
        return f"LocalKeyring(active={self._active!r}, ids={list(self._keys)!r})"

    @property
    def active_key_id(self) -> str:
        return self._active

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def has_key(self, kek_id: str) -> bool:
        return kek_id in self._keys

    async def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        nonce = os.urandom(_NONCE)
        aead = self._keys[self._active]
        blob = nonce + aead.encrypt(nonce, data_key, self._aad(self._active, context))
        return WrappedKey(self._active, blob)

    async def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return self.unwrap_now(wrapped, context)

    def unwrap_now(self, wrapped: WrappedKey, context: bytes) -> bytes:
        aead = self._keys.get(wrapped.kek_id)
        if aead is None:
            raise KeyringError(f"keyring has no key {wrapped.kek_id!r}")
        nonce, body = wrapped.blob[:_NONCE], wrapped.blob[_NONCE:]
        try:
            return aead.decrypt(nonce, body, self._aad(wrapped.kek_id, context))
        except InvalidTag:
            raise KeyringError(
                f"data key does not unwrap under {wrapped.kek_id!r} for this tenant"
            ) from None

    @staticmethod
    def _aad(kek_id: str, context: bytes) -> bytes:
        return _WRAP_AAD + kek_id.encode() + b"\x00" + context
