"""The tenant registry on the compacted `tenants` topic.

Each instance reads the topic's single partition from the beginning with its own
group-less consumer (every component needs every tenant), and then follows the partition
in a background task: a change is applied as soon as the broker hands it over (fetch wait
100 ms), so it is in effect everywhere well within 1 s. It reads `read_committed`, because
writers put each change and its audit record in one transaction. A signed deletion
removes the tenant.

Trust. Every record is verified (`sealing.verify_record`: Ed25519 over the body, which
names the tenant and a version) with the public tenants keys
(`QUOTAFLOW_TENANT_VERIFY_KEYS`) before anything is done with it. A record is refused when
it is not authentic (tampered, signed by an unknown key, format 1, for another tenant),
when its version is not above the one held (a replay), and a bare tombstone is refused
unless the tenant's signed deletion came first (the writer never writes bare tombstones).
A refusal is counted (`refused()`, exported by every component as
`quotaflow_tenant_records_refused_total{reason}`), logged by tenant id and reason, and
the tenant's previously held version keeps being served.

With a keyring, secrets are decrypted; without one (routing mode: the pushers) the
tenant is the routing view, every field but the secrets. A record that does not open (a
KEK missing from an incomplete `QUOTAFLOW_KEYRING` during a rotation, a document this
version cannot validate) is likewise not accepted. A refused or unopenable tenant is
listed in `unreadable()` until an acceptable version follows: callers hold that tenant's
work back (503, parked meter jobs) instead of treating it as unknown, and the component
is not ready while the list is not empty.

Scale: checked on first use, and by a background pass. Verifying a signature costs
~0.1 ms of CPU, 10 s for 100,000 tenants, and Python threads share one core for it. So the
initial load only packs each record (`packing`) into its tenant's `Entry` as *pending*
(~12 us a record, off the event loop a fetched batch at a time), and the registry is
ready at the end offsets. A pending record is checked, in topic order and with exactly the
rules above, by whichever comes first:
- the first use of its tenant (`get`, `summary`, `by_account` for an account it claims,
  the writer's accessors): checked there, synchronously, before it is returned;
- the check pass, a background task that checks every pending record in chunks in a
  worker thread and applies the results on the loop.
So no record is acted on unchecked, and a forged or replayed record is refused, counted
and listed in `unreadable()` when first used or at the latest when the pass reaches it;
`checked` is True (and `wait_checked()` returns) once the pass is done. Components that
act on each tenant separately (ingress, worker) are ready before that; a component that
acts on every tenant at once (the pusher's region list) waits for `checked`. Admin tools
(`open_writer`) start with `check_before_ready`: their start returns once all is checked.

A tenant's document (its secrets decrypted with `KeyEncryptionKeys.unwrap_now`) is built
on first use from its packed record and kept in a bounded cache
(`QUOTAFLOW_TENANT_CACHE_SIZE`); `summaries()` serves scans over every tenant without
building any. The account index holds every account a record claims, checked or not, and
`by_account` checks its candidates before answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from quotaflow.exceptions import ConfigurationError
from quotaflow.registry import ChangeListener, TenantSummary
from quotaflow.settings import TenantsGroup, TenantSigningGroup
from quotaflow.tenants.exceptions import DecryptionError, TenantsError
from quotaflow.tenants.keyring import KeyEncryptionKeys
from quotaflow.tenants.packing import RecordPacker
from quotaflow.tenants.sealing import (
    RecordRefused,
    SealedRecord,
    open_record_now,
    routing_tenant,
    verified_body,
    verify_record,
)
from quotaflow.tenants.tenant_store import TOMBSTONE, AccountIndex, Entry, TenantCache
from tables.tenant import Tenant
from wire.signing import Kind, Verifier, public_key_of

__all__ = ["ChangeListener", "TopicTenantRegistry", "tenant_verifier"]

log = logging.getLogger("quotaflow.tenants.registry")

CHECK_CHUNK = 128
"""Records checked per hop to the worker thread (~15-20 ms of CPU)."""


# Where a record's body claims a Connect account: the body is a JSON string inside the
# envelope, so its quotes are escaped. Only a hint for the account index (see above).
_ACCOUNT_CLAIM = re.compile(rb'\\"stripe_account\\":\\"(acct_[A-Za-z0-9]{1,200})\\"')


def tenant_verifier(settings: TenantsGroup) -> Verifier:
    """The verifier of tenant records: `QUOTAFLOW_TENANT_VERIFY_KEYS`, or (admin tools) the
    public halves of `QUOTAFLOW_TENANT_SIGNING_KEYS`. `ConfigurationError` if neither."""
    # Only the admin tools' types hold signing keys; a component's verifies with its own.
    signing = settings.tenant_signing_keys if isinstance(settings, TenantSigningGroup) else []
    keys = list(settings.tenant_verify_keys) or [public_key_of(k) for k in signing]
    if not keys:
        raise ConfigurationError(
            "QUOTAFLOW_TENANT_VERIFY_KEYS is empty: tenant records cannot be verified "
            "(the public key(s) from `quotaflow keys generate-signing --kind tenants`)"
        )
    return Verifier(Kind.TENANT, keys)


@dataclass(frozen=True, slots=True)
class _Check:
    """A record checked: its authentic body or the refusal reason (None: a tombstone),
    and for a live record the tenant it opens to or the field that failed."""

    record: SealedRecord | str | None
    opened: Tenant | str | None = None


class TopicTenantRegistry:
    """`TenantRegistry` built from and following the `tenants` topic."""

    def __init__(
        self,
        settings: TenantsGroup,
        keyring: KeyEncryptionKeys | None,
        *,
        verifier: Verifier | None = None,
        fetch_wait: float = 0.1,
        start_timeout: float = 30.0,
        cache_size: int | None = None,
        check_in_background: bool = True,
        check_before_ready: bool = False,
        defer_checks: bool = False,
        keep_documents: bool = False,
    ) -> None:
        """`keyring=None`: routing mode, tenants without their secrets.
        `check_in_background=False` leaves pending records to their first use (tests);
        `check_before_ready`: `start` returns once every record read is checked;
        `defer_checks`: the check pass starts at `begin_checks()`, not at the end of
        `start()` (the worker: once Faust has recovered its tables and serves);
        `keep_documents`: every document is kept built (the admin tools, which list every
        tenant: the console, `GET /v1/tenants`), as all were before records were packed."""
        self._settings = settings
        self._keyring = keyring
        self._verifier = verifier or tenant_verifier(settings)
        self._tp = TopicPartition(settings.topics.tenants, 0)
        self._fetch_wait = fetch_wait
        self._start_timeout = start_timeout
        size = cache_size if cache_size is not None else settings.tenant_cache_size
        self._keep_all = keep_documents
        self._cache = TenantCache(2**62 if keep_documents else size)
        self._background = check_in_background
        self._check_first = check_before_ready
        self._deferred = defer_checks and not check_before_ready
        self._checking = False
        self._entries: dict[str, Entry] = {}
        self._accounts = AccountIndex()
        self._shared: dict[str, str] = {}
        self._regions: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._packer: RecordPacker | None = None
        self._thread_packers: dict[str, RecordPacker] = {}
        self._unchecked = 0
        self._all_checked = asyncio.Event()
        self._refused: dict[str, int] = {}
        self._position = 0
        self._progress = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False
        self._failed: BaseException | None = None
        self._listeners: list[ChangeListener] = []
        self.undecryptable: dict[str, str] = {}
        """Tenant id -> why its latest record is not accepted (refusal reason or field)."""

    # -- TenantRegistry ------------------------------------------------------------------
    def get(self, tenant_id: str) -> Tenant | None:
        entry = self._checked_entry(tenant_id)
        if entry is None or entry.summary is None or entry.held is None:
            return None
        tenant = self._cache.get(tenant_id)
        if tenant is None:
            tenant = self._build(tenant_id, entry.held)
            if tenant is not None:
                self._cache.put(tenant_id, tenant)
        return tenant

    def summary(self, tenant_id: str) -> TenantSummary | None:
        entry = self._checked_entry(tenant_id)
        return None if entry is None else entry.summary

    def summaries(self) -> Iterator[TenantSummary]:
        return iter([e.summary for e in list(self._entries.values()) if e.summary is not None])

    def by_account(self, account: str) -> Tenant | None:
        holders = self.account_holders(account)
        return self.get(holders[0]) if len(holders) == 1 else None

    def account_holders(self, account: str) -> list[str]:
        candidates = self._accounts.candidates(account)
        for tenant_id in candidates:
            self._checked_entry(tenant_id)
        holders = sorted(
            t
            for t in candidates
            if (s := self._summary_of(t)) is not None and s.stripe_account == account
        )
        self._accounts.replace(account, holders)
        return holders

    def conflicts(self) -> dict[str, list[str]]:
        out = {}
        for account in self._accounts.shared():
            holders = self.account_holders(account)
            if len(holders) > 1:
                out[account] = holders
        return out

    def __iter__(self) -> Iterator[Tenant]:
        self._check_all_now()
        tenants = []
        for tenant_id, entry in list(self._entries.items()):
            if entry.summary is None or entry.held is None:
                continue
            tenant = self._cache.get(tenant_id) or self._build(tenant_id, entry.held)
            if tenant is not None:
                tenants.append(tenant)  # not cached: a scan would evict the hot tenants
        return iter(tenants)

    def unreadable(self) -> Mapping[str, str]:
        return self.undecryptable

    def refused(self) -> Mapping[str, int]:
        return dict(self._refused)

    def __len__(self) -> int:
        """Tenants held live or not checked yet (an unchecked one may turn out deleted)."""
        return sum(1 for e in self._entries.values() if e.summary or e.pending is not None)

    @property
    def ready(self) -> bool:
        """True once the initial load is complete and while the follower runs."""
        return self._ready and self._failed is None

    @property
    def checked(self) -> bool:
        return self._ready and self._unchecked == 0

    async def wait_checked(self, timeout: float = 60.0) -> None:
        """Returns once every record read so far is checked (see the module docstring)."""
        async with asyncio.timeout(timeout):
            await self._all_checked.wait()
        if self._failed is not None:
            raise TenantsError("the tenants registry stopped") from self._failed

    # -- for writers -----------------------------------------------------------------------
    def sealed(self, tenant_id: str) -> SealedRecord | None:
        """The stored (encrypted) record of a live tenant, as last accepted."""
        entry = self._checked_entry(tenant_id)
        if entry is None or entry.summary is None or entry.held is None:
            return None
        return verified_body(self._unpack(entry.held))

    def sealed_records(self) -> dict[str, SealedRecord]:
        self._check_all_now()
        return {t: r for t in list(self._entries) if (r := self.sealed(t)) is not None}

    def version(self, tenant_id: str) -> int:
        """The version held for a tenant (deleted ones too); 0 if none."""
        entry = self._checked_entry(tenant_id)
        return 0 if entry is None else entry.version

    def held_value(self, tenant_id: str) -> bytes | None:
        """The record value (live or deleted) whose version is held."""
        entry = self._checked_entry(tenant_id)
        return None if entry is None or entry.held is None else self._unpack(entry.held)

    def held_record(self, tenant_id: str) -> SealedRecord | None:
        """The accepted record (live or deleted) whose version is held."""
        value = self.held_value(tenant_id)
        return None if value is None else verified_body(value)

    def held_ids(self) -> list[str]:
        """Every tenant id a record was accepted for (deleted ones too)."""
        self._check_all_now()
        return [t for t, e in self._entries.items() if e.held is not None]

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
        """Loads every record (pending), starts the check pass, then follows the topic."""
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
                await self._load(consumer)
        self._ready = True
        log.info("tenants loaded", extra={"tenants": len(self._entries), "offset": end})
        if not self._background and not self._check_first:
            self._maybe_all_checked()
        elif not self._deferred:
            self.begin_checks()
        if self._check_first:
            await self.wait_checked(max(self._start_timeout, 600.0))
        self._spawn(self._follow(consumer), "tenants-registry")

    def begin_checks(self) -> None:
        """Starts the check pass (once; after `start`)."""
        if self._ready and self._background and not self._checking:
            self._checking = True
            self._spawn(self._check_pass(), "tenants-check")

    async def stop(self) -> None:
        """Stops following and checking; safe to call twice."""
        self._ready = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with asyncio.timeout(10):
                await consumer.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._failed = error
            log.error("tenants registry task failed", exc_info=error)
            self._all_checked.set()  # wake waiters: they raise
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _advance(self, consumer: AIOKafkaConsumer) -> None:
        position = await consumer.position(self._tp)
        if position != self._position:
            async with self._progress:
                self._position = position
                self._progress.notify_all()

    # -- the initial load: records packed as pending ------------------------------------------
    async def _load(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(self._tp, timeout_ms=int(self._fetch_wait * 1000))
        messages = batches.get(self._tp, [])
        if messages:
            if self._packer is None:
                self._packer = RecordPacker([m.value for m in messages if m.value])
            read = await asyncio.to_thread(self._pack_all, messages)
            for tenant_id, packed, claims in read:
                entry = self._entries.get(tenant_id)
                if entry is None:
                    entry = self._entries[tenant_id] = Entry()
                if entry.pending is None:
                    self._unchecked += 1
                entry.add_pending(packed)
                for account in claims:
                    self._accounts.add(account, tenant_id)
        await self._advance(consumer)

    def _pack_all(self, messages: list[ConsumerRecord]) -> list[tuple[str, bytes, list[str]]]:
        """Per keyed message: tenant id, packed value, accounts it claims. In a thread."""
        packer = self._thread_packer("load")
        out: list[tuple[str, bytes, list[str]]] = []
        for message in messages:
            if message.key is None:
                continue
            value = message.value
            if value is None:
                out.append((message.key.decode(errors="replace"), TOMBSTONE, []))
                continue
            claims = [m.decode() for m in _ACCOUNT_CLAIM.findall(value)]
            out.append((message.key.decode(errors="replace"), packer.pack(value), claims))
        return out

    def _thread_packer(self, name: str) -> RecordPacker:
        """A packer of its own for each thread that packs or unpacks (zstd contexts are
        not thread-safe); `name` is the job, and each job runs one call at a time."""
        packer = self._thread_packers.get(name)
        if packer is None:
            packer = self._thread_packers[name] = self._main_packer().clone()
        return packer

    def _main_packer(self) -> RecordPacker:
        if self._packer is None:
            self._packer = RecordPacker()
        return self._packer

    def _unpack(self, packed: bytes) -> bytes:
        return self._main_packer().unpack(packed)

    # -- checking ------------------------------------------------------------------------
    def _check(self, tenant_id: str, value: bytes | None) -> _Check:
        """Verifies a record and, if it is a live one, opens it. Pure: safe in a thread."""
        if value is None:
            return _Check(None)
        try:
            record = verify_record(tenant_id, value, self._verifier)
        except RecordRefused as exc:
            return _Check(exc.reason)
        if record.deleted:
            return _Check(record)
        try:
            return _Check(record, self._open(record))
        except DecryptionError as exc:
            return _Check(record, exc.field)

    def _open(self, record: SealedRecord) -> Tenant:
        if self._keyring is None:
            return routing_tenant(record)
        return open_record_now(record, self._keyring)

    def _check_packed(
        self, packer: RecordPacker, tenant_id: str, packed: list[bytes]
    ) -> list[_Check]:
        return [
            self._check(tenant_id, None if p == TOMBSTONE else packer.unpack(p)) for p in packed
        ]

    def _checked_entry(self, tenant_id: str) -> Entry | None:
        """The tenant's entry with its pending records checked (here and now, if the check
        pass has not reached them)."""
        entry = self._entries.get(tenant_id)
        if entry is not None and entry.pending is not None:
            pending = entry.take_pending()
            checks = self._check_packed(self._main_packer(), tenant_id, pending)
            self._settle(tenant_id, entry, pending, checks)
        return entry

    def _settle(
        self, tenant_id: str, entry: Entry, pending: list[bytes], checks: list[_Check]
    ) -> None:
        """Applies checked pending records in order (the initial state: nobody is told)."""
        for packed, check in zip(pending, checks, strict=True):
            self._fold(tenant_id, entry, packed, check, emit=False)
        self._unchecked -= 1
        self._maybe_all_checked()

    def _maybe_all_checked(self) -> None:
        if self._ready and self._unchecked == 0 and not self._all_checked.is_set():
            self._all_checked.set()
            log.info(
                "tenant records checked",
                extra={"tenants": len(self._entries), "unreadable": len(self.undecryptable)},
            )

    def _check_all_now(self) -> None:
        for tenant_id in [t for t, e in self._entries.items() if e.pending is not None]:
            self._checked_entry(tenant_id)

    async def _check_pass(self) -> None:
        """Checks every pending record, a chunk at a time in a worker thread; the results
        are applied on the loop, unless a first use checked that tenant meanwhile."""
        packer = self._thread_packer("check")
        todo = [t for t, e in self._entries.items() if e.pending is not None]
        for start in range(0, len(todo), CHECK_CHUNK):
            chunk = []
            for tenant_id in todo[start : start + CHECK_CHUNK]:
                entry = self._entries.get(tenant_id)
                if entry is not None and entry.pending is not None:
                    chunk.append((tenant_id, entry, entry.pending))
            if not chunk:
                continue

            def check_chunk(
                chunk: list[tuple[str, Entry, bytes | list[bytes]]] = chunk,
            ) -> list[list[_Check]]:
                return [
                    self._check_packed(packer, t, [p] if isinstance(p, bytes) else list(p))
                    for t, _, p in chunk
                ]

            results = await asyncio.to_thread(check_chunk)
            for (tenant_id, entry, pending), checks in zip(chunk, results, strict=True):
                if entry.pending is not pending or self._entries.get(tenant_id) is not entry:
                    continue  # checked on first use meanwhile
                self._settle(tenant_id, entry, entry.take_pending(), checks)
        self._maybe_all_checked()

    # -- following ------------------------------------------------------------------------
    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._poll(consumer, timeout=1.0)

    async def _poll(self, consumer: AIOKafkaConsumer, timeout: float) -> None:
        batches = await consumer.getmany(self._tp, timeout_ms=int(timeout * 1000))
        messages = [m for m in batches.get(self._tp, []) if m.key is not None]
        if messages:
            # Checks (signature ~0.1 ms each) off the loop, a fetched batch at a time; the
            # state they are applied to is only touched here, on the loop, in order.
            checked = await asyncio.to_thread(self._check_and_pack, messages)
            for message, (packed, check) in zip(messages, checked, strict=True):
                tenant_id = message.key.decode(errors="replace")
                entry = self._checked_entry(tenant_id)
                if entry is None:
                    entry = self._entries[tenant_id] = Entry()
                self._fold(tenant_id, entry, packed, check, emit=True)
        await self._advance(consumer)

    def _check_and_pack(self, messages: list[ConsumerRecord]) -> list[tuple[bytes, _Check]]:
        packer = self._thread_packer("follow")
        return [
            (
                TOMBSTONE if m.value is None else packer.pack(m.value),
                self._check(m.key.decode(errors="replace"), m.value),
            )
            for m in messages
        ]

    # -- the rules ---------------------------------------------------------------------------
    def _refuse(self, tenant_id: str, entry: Entry, reason: str) -> None:
        self.undecryptable[tenant_id] = reason
        self._refused[reason] = self._refused.get(reason, 0) + 1
        log.error(
            "tenant record refused; keeping the previous version",
            extra={"tenant_id": tenant_id, "reason": reason, "held": entry.version},
        )

    def _fold(
        self, tenant_id: str, entry: Entry, packed: bytes, check: _Check, *, emit: bool
    ) -> None:
        """Applies one checked record to its tenant's entry: accepted, refused, or not
        openable (see the module docstring)."""
        record = check.record
        if record is None:
            if entry.held is not None and entry.summary is None:
                return  # after the signed deletion: nothing left to remove
            self._refuse(tenant_id, entry, "unsigned_tombstone")
            return
        if isinstance(record, str):
            self._refuse(tenant_id, entry, record)
            return
        if entry.held is not None and record.version <= entry.version:
            if packed == entry.held:
                return  # the same record again (a producer retry): nothing to do
            self._refuse(tenant_id, entry, "stale_version")
            return
        if record.deleted:
            entry.held, entry.version, entry.summary = packed, record.version, None
            self._cache.drop(tenant_id)
            self.undecryptable.pop(tenant_id, None)
            if emit:
                self._emit(tenant_id, None)
            return
        tenant = check.opened
        if not isinstance(tenant, Tenant):
            field = tenant or "document"
            self.undecryptable[tenant_id] = field
            log.error(
                "tenant record does not decrypt; keeping the previous version",
                extra={"tenant_id": tenant_id, "field": field},
            )
            return
        entry.held, entry.version = packed, record.version
        entry.summary = self._summarize(tenant_id, tenant)
        if tenant.stripe_account is not None:
            self._accounts.add(tenant.stripe_account, tenant_id)
        self.undecryptable.pop(tenant_id, None)
        self._cache.drop(tenant_id)
        if emit or self._keep_all:
            self._cache.put(tenant_id, tenant)
        if emit:
            self._emit(tenant_id, tenant)

    def _build(self, tenant_id: str, held: bytes) -> Tenant | None:
        """The document of an accepted record, secrets decrypted: it opened when accepted,
        and the keyring does not change, so a failure here is reported, not expected."""
        try:
            return self._open(verified_body(self._unpack(held)))
        except (DecryptionError, RecordRefused) as exc:
            field = getattr(exc, "field", None) or "document"
            self.undecryptable[tenant_id] = field
            log.error("accepted tenant record no longer opens", extra={"tenant_id": tenant_id})
            return None

    def _summarize(self, tenant_id: str, tenant: Tenant) -> TenantSummary:
        """The tenant's summary, sharing what tenants have in common (status, mode, the
        regions tuple; the id is the entry's key): ~80 bytes a tenant instead of ~300."""
        shared = self._shared
        return TenantSummary(
            tenant_id,
            shared.setdefault(tenant.status, tenant.status),
            shared.setdefault(tenant.mode, tenant.mode),
            self._regions.setdefault(tenant.regions, tenant.regions),
            tenant.stripe_account,
            tenant.resumed_at,
        )

    def _summary_of(self, tenant_id: str) -> TenantSummary | None:
        entry = self._entries.get(tenant_id)
        return None if entry is None else entry.summary

    def _emit(self, tenant_id: str, tenant: Tenant | None) -> None:
        for listener in self._listeners:
            try:
                listener(tenant_id, tenant)
            except Exception:  # a listener's bug must not stop the registry
                log.exception("tenant change listener failed", extra={"tenant_id": tenant_id})
