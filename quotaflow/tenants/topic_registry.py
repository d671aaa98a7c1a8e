"""The tenant registry on the compacted `tenants` topic.

Each instance reads the topic's single partition from the beginning with its own
group-less consumer (every component needs every tenant), decrypts each record, and
then follows the partition in a background task: a change is applied as soon as the
broker hands it over (fetch wait 100 ms), so it is in effect everywhere well within 1 s.
It reads `read_committed`, because writers put each change and its audit record in one
transaction. A tombstone removes the tenant.

Every record is verified first (`sealing.verify_record`: Ed25519 over the body, which names
the tenant and a version) with the public tenants keys (`QUOTAFLOW_TENANT_VERIFY_KEYS`).
A record is refused when it is not authentic (tampered, signed by an unknown key, format
1, for another tenant), when its version is not above the one held (a replay), and a bare
tombstone is refused unless the tenant's signed deletion came first (the writer never
writes bare tombstones). A refusal is counted (`refused()`, exported by every component as
`quotaflow_tenant_records_refused_total{reason}`), logged by tenant id and reason, and
the tenant's previously held version keeps being served.

With a keyring, secrets are decrypted; without one (routing mode: the pushers) the
tenant is the routing view, every field but the secrets. A record that does not decrypt
(for example a KEK dropped from the keyring too early, or a component started with an
incomplete `QUOTAFLOW_KEYRING` during a rotation) is likewise skipped.

A refused or undecryptable tenant is listed in `unreadable()` until an acceptable
version follows: callers hold that tenant's work back (503, parked meter jobs) instead
of treating it as unknown, and the component is not ready while the list is not empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from quotaflow.exceptions import ConfigurationError
from quotaflow.registry import ChangeListener, StaticTenantRegistry
from quotaflow.settings import Settings
from quotaflow.tenants.exceptions import DecryptionError, TenantsError
from quotaflow.tenants.keyring import KeyEncryptionKeys
from quotaflow.tenants.sealing import (
    RecordRefused,
    SealedRecord,
    open_record,
    routing_tenant,
    verify_record,
)
from tables.tenant import Tenant
from wire.signing import Kind, Verifier, public_key_of

__all__ = ["ChangeListener", "TopicTenantRegistry", "tenant_verifier"]

log = logging.getLogger("quotaflow.tenants.registry")


def tenant_verifier(settings: Settings) -> Verifier:
    """The verifier of tenant records: `QUOTAFLOW_TENANT_VERIFY_KEYS`, or (admin tools) the
    public halves of `QUOTAFLOW_TENANT_SIGNING_KEYS`. `ConfigurationError` if neither."""
    keys = list(settings.tenant_verify_keys) or [
        public_key_of(k) for k in settings.tenant_signing_keys
    ]
    if not keys:
        raise ConfigurationError(
            "QUOTAFLOW_TENANT_VERIFY_KEYS is empty: tenant records cannot be verified "
            "(the public key(s) from `quotaflow keys generate-signing --kind tenants`)"
        )
    return Verifier(Kind.TENANT, keys)


class TopicTenantRegistry:
    """`TenantRegistry` built from and following the `tenants` topic."""

    def __init__(
        self,
        settings: Settings,
        keyring: KeyEncryptionKeys | None,
        *,
        verifier: Verifier | None = None,
        fetch_wait: float = 0.1,
        start_timeout: float = 30.0,
    ) -> None:
        """`keyring=None`: routing mode, tenants without their secrets."""
        self._settings = settings
        self._keyring = keyring
        self._verifier = verifier or tenant_verifier(settings)
        self._tp = TopicPartition(settings.topics.tenants, 0)
        self._fetch_wait = fetch_wait
        self._start_timeout = start_timeout
        self._view = StaticTenantRegistry()
        self._sealed: dict[str, SealedRecord] = {}
        self._held: dict[str, tuple[SealedRecord, bytes]] = {}
        """Tenant id -> the accepted record (live or deleted) and its value, by version."""
        self._refused: dict[str, int] = {}
        self._position = 0
        self._progress = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._failed: BaseException | None = None
        self._listeners: list[ChangeListener] = []
        self.undecryptable: dict[str, str] = {}
        """Tenant id -> the field that failed, for records skipped since start."""

    # -- TenantRegistry ------------------------------------------------------------------
    def get(self, tenant_id: str) -> Tenant | None:
        return self._view.get(tenant_id)

    def by_account(self, account: str) -> Tenant | None:
        return self._view.by_account(account)

    def account_holders(self, account: str) -> list[str]:
        return self._view.account_holders(account)

    def conflicts(self) -> dict[str, list[str]]:
        return self._view.conflicts()

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._view)

    def unreadable(self) -> Mapping[str, str]:
        return self.undecryptable

    def refused(self) -> Mapping[str, int]:
        return dict(self._refused)

    def __len__(self) -> int:
        return len(self._view)

    @property
    def ready(self) -> bool:
        """True once the initial load is complete and while the follower runs."""
        return self._ready and self._failed is None

    # -- for writers -----------------------------------------------------------------------
    def sealed(self, tenant_id: str) -> SealedRecord | None:
        """The stored (encrypted) record of a tenant, as last read."""
        return self._sealed.get(tenant_id)

    def sealed_records(self) -> dict[str, SealedRecord]:
        return dict(self._sealed)

    def version(self, tenant_id: str) -> int:
        """The version held for a tenant (deleted ones too); 0 if none."""
        held = self._held.get(tenant_id)
        return 0 if held is None else held[0].version

    def held_value(self, tenant_id: str) -> bytes | None:
        """The record value (live or deleted) whose version is held."""
        held = self._held.get(tenant_id)
        return None if held is None else held[1]

    def held_record(self, tenant_id: str) -> SealedRecord | None:
        """The accepted record (live or deleted) whose version is held."""
        held = self._held.get(tenant_id)
        return None if held is None else held[0]

    def held_ids(self) -> list[str]:
        """Every tenant id a record was accepted for (deleted ones too)."""
        return list(self._held)

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def routing_only(self) -> bool:
        """True when this registry has no keyring: tenants come without their secrets."""
        return self._keyring is None

    @property
    def position(self) -> int:
        """The next offset to apply: every record below it is in effect here."""
        return self._position

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def wait_for(self, offset: int, timeout: float = 5.0) -> None:
        """Returns once the record at `offset` is in effect in this instance."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(
                lambda: self._position > offset or self._failed is not None
            )
        if self._failed is not None:
            raise TenantsError("the tenants registry follower stopped") from self._failed

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Loads every tenant, then follows the topic in the background."""
        if self._consumer is not None:
            raise RuntimeError("registry already started")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=int(self._fetch_wait * 1000),
            auto_offset_reset="earliest",
            request_timeout_ms=int(self._start_timeout * 1000),
        )
        self._consumer = consumer
        async with asyncio.timeout(self._start_timeout):
            await consumer.start()
            consumer.assign([self._tp])
            await consumer.seek_to_beginning(self._tp)
            end = (await consumer.end_offsets([self._tp]))[self._tp]
            while await consumer.position(self._tp) < end:
                await self._poll(consumer, timeout=self._fetch_wait)
        self._ready = True
        log.info("tenants loaded", extra={"tenants": len(self._view), "offset": self._position})
        self._task = asyncio.create_task(self._follow(consumer), name="tenants-registry")
        self._task.add_done_callback(self._follower_done)

    async def stop(self) -> None:
        """Stops following; safe to call twice."""
        self._ready = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with asyncio.timeout(10):
                await consumer.stop()

    def _follower_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._failed = error
            log.error("tenants registry follower failed", exc_info=error)
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._poll(consumer, timeout=1.0)

    async def _poll(self, consumer: AIOKafkaConsumer, timeout: float) -> None:
        batches = await consumer.getmany(self._tp, timeout_ms=int(timeout * 1000))
        messages = batches.get(self._tp, [])
        if messages:
            # Signature checks (~0.1 ms each) off the loop, a fetched batch at a time; the
            # state they are applied to is only touched here, on the loop, in order.
            checked = await asyncio.to_thread(self._verify_all, messages)
            for message, result in zip(messages, checked, strict=True):
                await self._apply(message.key, message.value, result)
        position = await consumer.position(self._tp)
        if position != self._position:
            async with self._progress:
                self._position = position
                self._progress.notify_all()

    def _refuse(self, tenant_id: str, reason: str) -> None:
        self.undecryptable[tenant_id] = reason
        self._refused[reason] = self._refused.get(reason, 0) + 1
        log.error(
            "tenant record refused; keeping the previous version",
            extra={"tenant_id": tenant_id, "reason": reason, "held": self.version(tenant_id)},
        )

    def _verify_all(self, messages: list[ConsumerRecord]) -> list[SealedRecord | str | None]:
        """Per message: its authentic record, the reason it is refused, or None (no key or
        no value). Pure: safe in a worker thread."""
        out: list[SealedRecord | str | None] = []
        for message in messages:
            if message.key is None or message.value is None:
                out.append(None)
                continue
            try:
                out.append(
                    verify_record(
                        message.key.decode(errors="replace"), message.value, self._verifier
                    )
                )
            except RecordRefused as exc:
                out.append(exc.reason)
        return out

    async def _apply(
        self, key: bytes | None, value: bytes | None, checked: SealedRecord | str | None
    ) -> None:
        if key is None:
            return
        tenant_id = key.decode(errors="replace")
        held = self._held.get(tenant_id)
        if value is None:
            if held is not None and held[0].deleted:
                return  # after the signed deletion: nothing left to remove
            self._refuse(tenant_id, "unsigned_tombstone")
            return
        if isinstance(checked, str) or checked is None:
            self._refuse(tenant_id, checked or "unsigned_format")
            return
        record = checked
        if held is not None and record.version <= held[0].version:
            if value == held[1]:
                return  # the same record again (a producer retry): nothing to do
            self._refuse(tenant_id, "stale_version")
            return
        if record.deleted:
            self._held[tenant_id] = (record, value)
            self._view.remove(tenant_id)
            self._sealed.pop(tenant_id, None)
            self.undecryptable.pop(tenant_id, None)
            self._emit(tenant_id, None)
            return
        try:
            if self._keyring is None:
                tenant = routing_tenant(record)
            else:
                tenant = await open_record(record, self._keyring)
        except DecryptionError as exc:
            self.undecryptable[tenant_id] = exc.field
            log.error(
                "tenant record does not decrypt; keeping the previous version",
                extra={"tenant_id": tenant_id, "field": exc.field},
            )
            return
        self._held[tenant_id] = (record, value)
        self.undecryptable.pop(tenant_id, None)
        self._view.put(tenant)
        self._sealed[tenant_id] = record
        self._emit(tenant_id, tenant)

    def _emit(self, tenant_id: str, tenant: Tenant | None) -> None:
        for listener in self._listeners:
            try:
                listener(tenant_id, tenant)
            except Exception:  # a listener's bug must not stop the registry
                log.exception("tenant change listener failed", extra={"tenant_id": tenant_id})
