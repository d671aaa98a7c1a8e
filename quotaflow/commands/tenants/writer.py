"""The write side of the registry: every tenant change, encrypted, audited, in effect.

One `TenantWriter` per process (CLI command or admin API). Each change is a
read-modify-write under one lock: read the current tenant from the writer's own
`TopicTenantRegistry`, validate the new document, seal it, and write the tenant record
and its audit record in one Kafka transaction (acks=all, idempotent). The call returns
once the writer's own registry has applied the record, so the next call sees it.

Every record is signed with the tenants signing key (`QUOTAFLOW_TENANT_SIGNING_KEYS`, the
first one signs) over its body, which carries the tenant id and a version one above the
one held; a deletion is a signed deleted record, never a bare tombstone.

Two writers in different processes are not serialised against each other: if both write
the same version, readers keep the first and refuse the second; the losing writer sees its
record was not taken, re-signs the winner's record one version up (so every reader, and
compaction, converge on it; audited as `conflict-repair`) and raises `TenantStateError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as token_source
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from quotaflow.commands.tenants.audit import audit_record, ensure_audit_topic
from quotaflow.commands.tenants.documents import (
    apply_patch,
    audit_changes,
    parse_tenant,
    plain_document,
)
from quotaflow.commands.tenants.topicscan import scan_topic
from quotaflow.exceptions import ConfigurationError
from quotaflow.settings import AdminSettings, TenantSigningGroup
from quotaflow.tenants.config import audit_topic, known_regions
from quotaflow.tenants.exceptions import (
    AccountInUse,
    DecryptionError,
    KeyringError,
    TenantExists,
    TenantNotFound,
    TenantStateError,
)
from quotaflow.tenants.keyring import KeyEncryptionKeys
from quotaflow.tenants.running import keyring_from_settings
from quotaflow.tenants.sealing import (
    DataKey,
    SealedRecord,
    new_data_key,
    open_document,
    parse_legacy,
    rewrap_data_key,
    seal_deleted,
    seal_tenant,
    sign_record,
    unwrap_data_key,
    unwrap_wrapped,
    with_data_key,
)
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.topics import ensure_topics
from tables.tenant import Tenant
from wire.signing import Kind, Signer

__all__ = ["TenantWriter", "open_writer", "tenant_signer"]


def tenant_signer(settings: TenantSigningGroup) -> Signer:
    """The tenants signer (`QUOTAFLOW_TENANT_SIGNING_KEYS`, first signs); admin tools only."""
    if not settings.tenant_signing_keys:
        raise ConfigurationError(
            "QUOTAFLOW_TENANT_SIGNING_KEYS is empty: tenant records cannot be signed "
            "(the private key from `quotaflow keys generate-signing --kind tenants`)"
        )
    try:
        return Signer(Kind.TENANT, settings.tenant_signing_keys)
    except ValueError:
        raise ConfigurationError(
            "QUOTAFLOW_TENANT_SIGNING_KEYS: a key is not base64 of 32 bytes"
        ) from None


DEFAULT_OVERLAP = 24 * 3600.0


class TenantWriter:
    """Adds, changes and removes tenants on the `tenants` topic."""

    def __init__(
        self,
        settings: AdminSettings,
        keyring: KeyEncryptionKeys,
        registry: TopicTenantRegistry,
        *,
        known_regions: frozenset[str] | None = None,
        signer: Signer | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._signer = signer or tenant_signer(settings)
        self._registry = registry
        self._regions = known_regions
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None

    @property
    def settings(self) -> AdminSettings:
        return self._settings

    @property
    def registry(self) -> TopicTenantRegistry:
        return self._registry

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            transactional_id=f"{self._settings.topic_prefix}quotaflow-tenants-{uuid.uuid4().hex}",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            request_timeout_ms=int(self._timeout * 1000),
        )
        async with asyncio.timeout(self._timeout):
            await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            async with asyncio.timeout(self._timeout):
                await producer.stop()

    # -- operations --------------------------------------------------------------------------
    async def add(self, doc: Mapping[str, Any], actor: str) -> Tenant:
        """Registers a new tenant from a document; refuses an id that exists."""
        now = time.time()
        tenant = parse_tenant({**doc, "created_at": now, "updated_at": now}, self._regions)
        async with self._lock:
            if self._registry.sealed(tenant.id) is not None or self._registry.get(tenant.id):
                raise TenantExists(tenant.id)
            self._check_readable(tenant.id)
            self._check_account(tenant)
            key = await new_data_key(tenant.id, self._keyring)
            version = self._registry.version(tenant.id) + 1
            await self._write(
                tenant.id,
                seal_tenant(tenant, key, version=version, signer=self._signer),
                audit_record(
                    "add",
                    tenant.id,
                    actor,
                    None,
                    tenant,
                    kek_id=key.wrapped.kek_id,
                    version=version,
                ),
                version=version,
            )
        return tenant

    async def update(
        self,
        tenant_id: str,
        patch: Mapping[str, Any],
        actor: str,
        *,
        action: str = "update",
        **details: Any,
    ) -> Tenant:
        """Applies a JSON merge patch; a patch that changes nothing writes nothing."""
        async with self._lock:
            return await self._update(tenant_id, patch, actor, action, details)

    async def suspend(self, tenant_id: str, actor: str) -> Tenant:
        return await self.update(tenant_id, {"status": "suspended"}, actor, action="suspend")

    async def resume(self, tenant_id: str, actor: str) -> Tenant:
        return await self.update(tenant_id, {"status": "active"}, actor, action="resume")

    async def delete(self, tenant_id: str, actor: str) -> None:
        """Writes the tombstone: webhooks answer 404 within 1 s, and every edge denies the
        tenant's customers (`tenant_removed`) and drops them within 2 s."""
        async with self._lock:
            current = self._current(tenant_id)
            # No readability check: the signed deletion supersedes whatever follows the
            # held version, and needs no secret.
            version = self._registry.version(tenant_id) + 1
            await self._write(
                tenant_id,
                seal_deleted(tenant_id, version=version, signer=self._signer),
                audit_record("delete", tenant_id, actor, current, None, version=version),
                version=version,
            )

    async def roll_webhook_secret(
        self,
        tenant_id: str,
        new_secret: str,
        actor: str,
        *,
        overlap: float = DEFAULT_OVERLAP,
        endpoint_id: str | None = None,
    ) -> Tenant:
        """Makes `new_secret` the tenant's signing secret; the current one keeps verifying
        for `overlap` seconds (0: it stops at once). A previous roll's old secret goes."""
        async with self._lock:
            current = self._current(tenant_id)
            now = time.time()
            secrets: list[dict[str, Any]] = []
            keep = [
                s for s in plain_document(current)["webhook_secrets"] if s["expires_at"] is None
            ]
            if any(s["secret"] == new_secret for s in keep):
                raise TenantStateError(tenant_id, "the new secret is already active")
            secret_id = f"ws_{token_source.token_hex(4)}"
            secrets.append({"id": secret_id, "secret": new_secret, "expires_at": None})
            if keep and overlap > 0:
                secrets.append({**keep[0], "expires_at": now + overlap})
            patch: dict[str, Any] = {"webhook_secrets": secrets}
            if endpoint_id is not None:
                patch["webhook_endpoint_id"] = endpoint_id
            action = "register-webhook" if endpoint_id is not None else "roll-webhook-secret"
            return await self._update(
                tenant_id, patch, actor, action, {"new_secret_id": secret_id, "overlap": overlap}
            )

    async def rotate_keys(
        self, actor: str, on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Re-wraps every data key not under the active KEK; returns how many were. The
        secrets' ciphertexts stay as they are: only the wrapped data key changes."""
        active = self._keyring.active_key_id
        count = 0
        async with self._lock:
            last: int | None = None
            for tenant_id, record in sorted(self._registry.sealed_records().items()):
                if record.data_key is not None and record.data_key.kek_id != active:
                    old = record.data_key.kek_id
                    key = await rewrap_data_key(
                        tenant_id,
                        await unwrap_data_key(tenant_id, record, self._keyring),
                        self._keyring,
                    )
                    version = record.version + 1
                    value = sign_record(with_data_key(record, key, version=version), self._signer)
                    audit = audit_record(
                        "rotate-key",
                        tenant_id,
                        actor,
                        None,
                        None,
                        kek_from=old,
                        kek_to=active,
                        version=version,
                    )
                    last = await self._write(tenant_id, value, audit, wait=False)
                    count += 1
                if on_progress is not None:
                    on_progress(1)
            if last is not None:
                await self._registry.wait_for(last, self._timeout)
        return count

    async def purge(self, tenant_id: str, actor: str) -> int:
        """Tombstones a deleted tenant's keys in `quota.updates`; returns how many. Refused
        while the tenant exists: delete it first."""
        async with self._lock:
            if self._registry.get(tenant_id) is not None:
                raise TenantStateError(tenant_id, "still registered: delete it before purging")
            keys = await self._live_keys(self._settings.topics.quota_updates, f"{tenant_id}/")
            producer = self._started()
            async with asyncio.timeout(self._timeout):
                async with producer.transaction():
                    for partition, key in keys:
                        await producer.send(
                            self._settings.topics.quota_updates, None, key=key, partition=partition
                        )
                    audit = audit_record(
                        "purge",
                        tenant_id,
                        actor,
                        None,
                        None,
                        purged={self._settings.topics.quota_updates: len(keys)},
                    )
                    await producer.send(audit_topic(self._settings), audit, key=tenant_id.encode())
        return len(keys)

    # -- internals ---------------------------------------------------------------------------
    def _current(self, tenant_id: str) -> Tenant:
        tenant = self._registry.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(tenant_id)
        return tenant

    async def _update(
        self,
        tenant_id: str,
        patch: Mapping[str, Any],
        actor: str,
        action: str,
        details: Mapping[str, Any],
    ) -> Tenant:
        current = self._current(tenant_id)
        self._check_readable(tenant_id)
        tenant = apply_patch(current, patch, self._regions)
        if not audit_changes(current, tenant):
            return current
        self._check_account(tenant)
        record = self._registry.sealed(tenant_id)
        if record is None:  # pragma: no cover - get() and sealed() are updated together
            raise TenantNotFound(tenant_id)
        key = await self._data_key(tenant_id, record)
        version = record.version + 1
        await self._write(
            tenant_id,
            seal_tenant(tenant, key, version=version, signer=self._signer),
            audit_record(action, tenant_id, actor, current, tenant, version=version, **details),
            version=version,
        )
        return tenant

    def _check_readable(self, tenant_id: str) -> None:
        reason = self._registry.unreadable().get(tenant_id)
        if reason is not None:
            raise TenantStateError(
                tenant_id,
                f"its latest record is not readable here ({reason}): "
                "see `quotaflow tenants reseal`",
            )

    def _check_account(self, tenant: Tenant) -> None:
        """`AccountInUse` if another tenant holds `tenant`'s Connect account."""
        if tenant.stripe_account is None:
            return
        others = [
            t for t in self._registry.account_holders(tenant.stripe_account) if t != tenant.id
        ]
        if others:
            raise AccountInUse(tenant.id, others[0])

    async def _data_key(self, tenant_id: str, record: SealedRecord) -> DataKey:
        """The tenant's data key, wrapped under the active KEK (every write moves it there)."""
        key = await unwrap_data_key(tenant_id, record, self._keyring)
        return await rewrap_data_key(tenant_id, key, self._keyring)

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("TenantWriter.start() was not awaited")
        return self._producer

    async def _write(
        self,
        tenant_id: str,
        value: bytes,
        audit: bytes,
        *,
        wait: bool = True,
        version: int | None = None,
    ) -> int:
        """Tenant record and audit record in one transaction; returns the record's offset.
        With `wait` and `version`, checks that readers took it (see the module doc)."""
        producer = self._started()
        key = tenant_id.encode()
        async with asyncio.timeout(self._timeout):
            async with producer.transaction():
                sent = await producer.send(
                    self._settings.topics.tenants, value, key=key, partition=0
                )
                await producer.send(audit_topic(self._settings), audit, key=key)
            offset: int = (await sent).offset
        if wait:
            await self._registry.wait_for(offset, self._timeout)
            if version is not None and self._registry.held_value(tenant_id) != value:
                await self._repair(tenant_id, version)
        return offset

    async def _repair(self, tenant_id: str, version: int) -> None:
        """Another writer's record of the same version came first: re-sign the record
        readers hold one version up, so that the last record of the key (what compaction
        keeps) is the one every reader holds; then report the conflict."""
        held = self._registry.held_record(tenant_id)
        if held is not None:
            repaired = held.model_copy(update={"version": self._registry.version(tenant_id) + 1})
            audit = audit_record(
                "conflict-repair",
                tenant_id,
                "quotaflow",
                None,
                None,
                lost_version=version,
                version=repaired.version,
            )
            await self._write(tenant_id, sign_record(repaired, self._signer), audit)
        raise TenantStateError(
            tenant_id, "changed concurrently by another writer: nothing applied, retry"
        )

    async def reseal(
        self,
        actor: str,
        on_progress: Callable[[int], None] | None = None,
        *,
        every: bool = False,
    ) -> dict[str, int]:
        """Rewrites, signed and versioned, every tenant whose latest record on the topic is
        not accepted here: format 1 records (the migration), and records refused as
        tampered or replayed (re-signing the version held, if any). A bare tombstone with
        no signed deletion becomes a signed deletion. `every`: also re-sign every accepted
        record one version up (with the current signing key: a signing key rotation).
        Returns counts by what was done."""
        done = {"resealed": 0, "re-signed": 0, "deleted": 0, "unrecoverable": 0}
        latest: dict[str, bytes | None] = {}
        async for _, m in scan_topic(self._settings.kafka_bootstrap, self._settings.topics.tenants):
            if m.key is not None:
                latest[m.key.decode(errors="replace")] = m.value
        async with self._lock:
            last: int | None = None
            for tenant_id, value in sorted(latest.items()):
                if on_progress is not None:
                    on_progress(1)
                if not every and tenant_id not in self._registry.unreadable():
                    continue
                version = self._registry.version(tenant_id) + 1
                held = self._registry.held_record(tenant_id)
                legacy = parse_legacy(value) if value is not None else None
                if held is not None:
                    # A refused record after an accepted one: the held one is the truth.
                    new_value = sign_record(
                        held.model_copy(update={"version": version}), self._signer
                    )
                    what = "re-signed"
                elif legacy is not None:
                    try:
                        tenant = await open_document(
                            tenant_id, legacy.tenant, legacy.wrapped_key, self._keyring
                        )
                        key = await rewrap_data_key(
                            tenant_id,
                            await unwrap_wrapped(tenant_id, legacy.wrapped_key, self._keyring),
                            self._keyring,
                        )
                    except (DecryptionError, KeyringError):
                        done["unrecoverable"] += 1
                        continue
                    new_value = seal_tenant(tenant, key, version=version, signer=self._signer)
                    what = "resealed"
                elif value is None:
                    new_value = seal_deleted(tenant_id, version=version, signer=self._signer)
                    what = "deleted"
                else:
                    done["unrecoverable"] += 1
                    continue
                audit = audit_record(
                    "reseal", tenant_id, actor, None, None, version=version, how=what
                )
                last = await self._write(tenant_id, new_value, audit, wait=False)
                done[what] += 1
            if last is not None:
                await self._registry.wait_for(last, self._timeout)
        return done

    async def _live_keys(self, topic: str, key_prefix: str) -> list[tuple[int, bytes]]:
        """(partition, key) of every key with `key_prefix` whose latest value is not a tombstone."""
        prefix = key_prefix.encode()
        live: dict[tuple[int, bytes], bool] = {}
        async for partition, m in scan_topic(self._settings.kafka_bootstrap, topic):
            if m.key is not None and m.key.startswith(prefix):
                live[(partition, m.key)] = m.value is not None
        return sorted(k for k, alive in live.items() if alive)


@contextlib.asynccontextmanager
async def open_writer(
    settings: AdminSettings, *, keyring: KeyEncryptionKeys | None = None
) -> AsyncIterator[TenantWriter]:
    """A started `TenantWriter` with its own registry; creates missing topics first."""
    ring = keyring or keyring_from_settings(settings)
    await ensure_topics(settings)
    await ensure_audit_topic(settings)
    async with contextlib.AsyncExitStack() as stack:
        # The writer builds on every tenant (accounts, versions): all checked first; the
        # admin tools list every tenant, so every document is kept built.
        registry = TopicTenantRegistry(settings, ring, check_before_ready=True, keep_documents=True)
        await registry.start()
        stack.push_async_callback(registry.stop)
        writer = TenantWriter(settings, ring, registry, known_regions=known_regions(settings))
        await writer.start()
        stack.push_async_callback(writer.stop)
        yield writer
