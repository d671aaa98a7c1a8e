"""The in-process quota cache: answers `check`/`consume` from local memory in microseconds.

Each customer's entry holds the last pushed `QuotaUpdate` (applied only if its `version`
is newer than the one held: pushes are idempotent and order-safe) and the units this
node consumed on top of it.

Local counting, and what the usage reporter (a later issue) relies on:
- `consume` lowers the entry's local `remaining` and adds the cost to two counters:
  `local` (consumed since the last applied push, shown in `used`) and `pending`
  (consumed and not yet drained by `drain_usage()`, i.e. not yet reported upstream).
- A newly applied push resets `remaining` to the pushed `remaining - pending`: units not
  yet reported cannot be in the core's `used`. Units already drained are assumed to be
  in flight towards the core; until a push reflects them the edge under-counts by at
  most one report interval's usage. (A usage watermark on `QuotaUpdate` would close
  this; see the usage issue.)

Unknown customers: until `mark_complete()` (the sidecar calls it when a snapshot's final
batch has landed) a customer the cache does not hold is denied with `no_snapshot`, after
it with `unknown_customer`. A cache built with `complete=True` (an in-process library fed
some other way) never says `no_snapshot`.

Tenant lifecycle: pushes carry tenant states (`set_tenant_state`, `replace_tenant_states`).
A suspended tenant's customers are denied with `tenant_suspended`: the deny is written into
each of its entries (`_Entry.deny`, which the hot path already reads) and kept in a
per-tenant dict that new entries and unknown customers consult, so `consume` still costs
one dict lookup. A removed tenant (deleted, or no longer served in the region) has its
entries dropped from memory and its customers denied with `tenant_removed`; the units
they consumed and not yet drained stay drainable (`drain_usage`), so the reporter sends
them and the ingress decides (today it refuses them for a tenant it no longer serves
there, and the reporter counts them as dropped). Resuming restores each entry's own
status-based deny.

Features and rate limits (the record's `features`, `rate_per_second` and `metered`):
- A call may name a feature (`check`/`consume(..., feature=...)`). A named metered feature
  of the record (`metered`, record version 2) has its own meter: remaining units, local
  counters and token bucket, reported per feature. A boolean feature (`features`) or no
  feature spends the default meter (the record's top-level quota and rate). A feature in
  neither is denied with `no_entitlement`. The record's `exhausted` status is the default
  quota's and denies only calls spending it. `has()` answers a feature on its own.
- `rate_per_second` is calls per second (the plan catalog grants it per unit of quantity,
  and a customer's items add up), enforced by a token bucket per customer and meter on
  this node:
  it refills at `rate_per_second x rate_share` tokens a second and holds at most one
  second's worth (at least 1 token). Every allowed `consume` with `cost >= 1` spends one
  token, whatever the cost (cost is quota units; the rate counts calls); `check` and a
  `consume` with cost 0 (a probe) spend none, and answer `rate_limited` when no whole
  token is there. A denied call spends nothing. The denial carries `retry_after`: the
  seconds until a token is back. A new record keeps the bucket's level (a push must not
  refill it); a customer without `rate_per_second` has no bucket and pays nothing for it.
- Order of denials, first match wins: `stale_state` (fail closed) -> `tenant_suspended`,
  `blocked` or `exhausted` as the record's status says -> `grace_ended` ->
  `no_entitlement` -> `exhausted`/`insufficient` (the local count) -> `rate_limited`.
  Every denial before `rate_limited` is one that waiting does not cure, so a
  `rate_limited` answer is always one that its `retry_after` cures (if nothing else
  changes meanwhile), and a client is never told to retry a call that will fail anyway.

Stale state: every accepted push (heartbeats included) calls `touch(region)`. When a
region's state is older than `stale_after`, customers served from it get the tenant's
policy: fail open (answer from the last state, rate-like limits) or fail closed (deny
with `stale_state`, money-like quotas). The hot path pays for this with one attribute
test and, only while a stale threshold is configured, one clock read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from tables.quota import FeatureQuota, QuotaUpdate

# A drained usage count: (tenant, customer) for the default feature, (tenant, customer,
# feature) for a named metered feature.
UsageKey = tuple[str, str] | tuple[str, str, str]


class Decision(NamedTuple):
    """An answer: allowed or not, the units left after the call (None = unlimited), why."""

    allowed: bool
    remaining: int | None
    reason: str

    @property
    def retry_after(self) -> float | None:
        """Seconds until the call could be allowed, with `rate_limited`; else None."""
        return None


class RateLimited(Decision):
    """A `rate_limited` denial: still the 3-tuple (equal to it, unpacks like it), plus the
    retry hint as an attribute, so every other answer stays a plain, cheap `Decision`."""

    _retry_after: float | None

    @property
    def retry_after(self) -> float | None:
        """Seconds until a token is back (rounded up to the millisecond); None if the
        record's rate is 0 (no call is allowed until a new record says otherwise)."""
        return self._retry_after


def _limited(remaining: int | None, rate: float, tokens: float) -> RateLimited:
    """The `rate_limited` denial for a bucket holding `tokens` (< 1) refilled at `rate`."""
    decision = RateLimited(False, remaining, RATE_LIMITED)
    # Rounded up to the millisecond: a caller that waits exactly this long finds a token.
    # A rate of 0 never refills: no hint (no call until a new record says otherwise).
    decision._retry_after = math.ceil((1.0 - tokens) / rate * 1000.0) / 1000.0 if rate else None
    return decision


OK = "ok"
RATE_LIMITED = "rate_limited"
UNKNOWN = Decision(False, None, "unknown_customer")
# A customer this node does not know while it still waits for its first complete snapshot
# (just started, or restarted and lost its memory): denied, with a reason that says the
# node, not the customer, is the problem.
NO_SNAPSHOT = Decision(False, None, "no_snapshot")
UNLIMITED = Decision(True, None, OK)
BLOCKED = Decision(False, 0, "blocked")
EXHAUSTED = Decision(False, 0, "exhausted")
STALE = Decision(False, None, "stale_state")
GRACE_ENDED = Decision(False, 0, "grace_ended")
# The call names a feature the customer's record does not list.
NO_ENTITLEMENT = Decision(False, None, "no_entitlement")
# Tenant-level denies, set by signed pushes: the tenant is suspended (its quotas are kept,
# and served again on resume), or no longer served here (deleted, or region removed).
SUSPENDED = Decision(False, 0, "tenant_suspended")
REMOVED = Decision(False, None, "tenant_removed")
TENANT_STATES = ("active", "suspended", "removed")
_TENANT_DENY: dict[str, Decision | None] = {
    "active": None,
    "suspended": SUSPENDED,
    "removed": REMOVED,
}

# Skips NamedTuple's Python-level __new__ on the hot path (about 3x cheaper).
_new_decision: Callable[[type[Decision], tuple[bool, int | None, str]], Decision] = tuple.__new__


def _usage_key(tenant: str, customer: str, feature: str | None) -> UsageKey:
    return (tenant, customer) if feature is None else (tenant, customer, feature)


def _denied(remaining: int) -> Decision:
    return EXHAUSTED if remaining <= 0 else Decision(False, remaining, "insufficient")


def _status_deny(update: QuotaUpdate) -> Decision | None:
    if update.status == "blocked":
        return BLOCKED
    if update.status == "exhausted":
        return EXHAUSTED
    return None


class _Meter:
    """One metered quota of a customer on this node: the units left after the last push
    minus local consumption, the counters the reporter drains, and its token bucket.
    `_Entry` is the default feature's meter; named metered features have one each."""

    __slots__ = ("burst", "local", "pending", "rate", "remaining", "stamp", "tokens")

    def _init_meter(
        self,
        remaining: int | None,
        rate_per_second: float | None,
        pending: int,
        rate_share: float,
        now: float,
        held: _Meter | None,
    ) -> None:
        # Token bucket (None: no rate limit). `tokens` is the level at `stamp` (the cache's
        # monotonic clock); the level now is computed on use, so nothing ticks.
        self.rate: float | None = None
        self.burst = self.tokens = self.stamp = 0.0
        if rate_per_second is not None:
            rate = max(rate_per_second * rate_share, 0.0)
            self.rate = rate
            self.burst = max(rate, 1.0) if rate > 0 else 0.0
            self.stamp = now
            # A new record of a customer already limited keeps the bucket's level: pushes
            # come often (usage thresholds, renewals) and must not hand out a fresh burst.
            self.tokens = (
                min(held.level(now), self.burst)
                if held is not None and held.rate is not None
                else self.burst
            )
        self.pending = pending
        self.local = pending
        self.remaining: int | None = None if remaining is None else remaining - pending

    def level(self, now: float) -> float:
        """Tokens in the bucket at `now` (only for a meter with a rate)."""
        tokens = self.tokens + (now - self.stamp) * (self.rate or 0.0)
        return tokens if tokens < self.burst else self.burst


class _FeatureMeter(_Meter):
    __slots__ = ()

    def __init__(
        self,
        quota: FeatureQuota,
        pending: int,
        rate_share: float,
        now: float,
        held: _Meter | None,
    ) -> None:
        self._init_meter(quota.remaining, quota.rate_per_second, pending, rate_share, now, held)


class _Entry(_Meter):
    __slots__ = (
        "deny",
        "features",
        "grace_until",
        "meter_deny",
        "metered",
        "own_deny",
        "region",
        "update",
    )

    def __init__(
        self,
        update: QuotaUpdate,
        region: str,
        pending: int,
        tenant_deny: Decision | None,
        *,
        rate_share: float = 1.0,
        now: float = 0.0,
        held: _Entry | None = None,
    ) -> None:
        self.update = update
        self.features = frozenset(update.features)
        self._init_meter(update.remaining, update.rate_per_second, pending, rate_share, now, held)
        # Named metered features (record version 2), each its own meter; None when the
        # record has none, so a call naming a feature pays one test for them.
        self.metered: dict[str, _Meter] | None = None
        if update.metered:
            old = held.metered if held is not None else None
            self.metered = {
                name: _FeatureMeter(
                    quota,
                    old[name].pending if old is not None and name in old else 0,
                    rate_share,
                    now,
                    old.get(name) if old is not None else None,
                )
                for name, quota in update.metered.items()
            }
        self.region = region
        # What the quota's own status says; `deny` is what the hot path reads: a tenant
        # deny (suspended) wins over it, and resuming puts `own_deny` back.
        self.own_deny = _status_deny(update)
        self.deny: Decision | None = None
        self.meter_deny: Decision | None = None
        self.set_tenant_deny(tenant_deny)
        # The core publishes the deadline with the grace status: past it the customer is
        # blocked here at once, before the core's next record says so.
        self.grace_until = update.grace_until if update.status == "grace" else None

    def set_tenant_deny(self, tenant_deny: Decision | None) -> None:
        """`deny` answers the default feature; `meter_deny` a named metered feature, which
        the record's `exhausted` status (the default quota's) does not concern."""
        own = self.own_deny
        self.deny = tenant_deny or own
        self.meter_deny = tenant_deny or (None if own is EXHAUSTED else own)

    def drain(self) -> list[tuple[str | None, int]]:
        """Pending units per meter (None: the default feature); resets them."""
        out: list[tuple[str | None, int]] = []
        if self.pending:
            out.append((None, self.pending))
            self.pending = 0
        if self.metered is not None:
            for name, meter in self.metered.items():
                if meter.pending:
                    out.append((name, meter.pending))
                    meter.pending = 0
        return out


class QuotaCache:
    """Every customer's quota as last pushed, plus local consumption. Single event loop."""

    def __init__(
        self,
        *,
        regions: tuple[str, ...] = (),
        stale_after: float | None = None,
        fail_open: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        complete: bool = True,
        rate_share: float = 1.0,
    ) -> None:
        """`fail_open(tenant_id)` picks a tenant's stale-state policy; default: fail open.

        `complete=False`: the cache waits for a snapshot; unknown customers get `no_snapshot`.
        `rate_share`: the fraction of each customer's `rate_per_second` this node enforces
        (1.0: the full rate on every node; 1/N with N nodes serving a region evenly).
        """
        if not 0.0 < rate_share <= 1.0:
            raise ValueError("rate_share must be in (0, 1]")
        self._rate_share = rate_share
        self._entries: dict[tuple[str, str], _Entry] = {}
        # Customers held per tenant, so a tenant state change touches only its entries.
        self._by_tenant: dict[str, set[str]] = {}
        # Tenants denied as a whole (suspended or removed), by their deny.
        self._tenant_deny: dict[str, Decision] = {}
        # Undrained units of entries dropped with a removed tenant, for `drain_usage`.
        self._orphaned: dict[UsageKey, int] = {}
        self._unknown = UNKNOWN if complete else NO_SNAPSHOT
        self._clock = clock
        self._wall = wall_clock
        self._created = clock()
        self._last_push: dict[str, float] = {}
        self._regions = set(regions)
        self._stale_after = stale_after
        self._stale_after_s = math.inf if stale_after is None else stale_after
        self._fail_open = fail_open if fail_open is not None else (lambda _tenant: True)
        self._guard = stale_after is not None
        self._stale_deadline = math.inf
        self._recompute_deadline()

    # -- writes: pushes -------------------------------------------------------------

    def apply(self, update: QuotaUpdate, region: str = "") -> bool:
        """Applies `update` if its version is newer than the one held; True if applied."""
        tenant = update.tenant_id
        key = (tenant, update.customer_id)
        held = self._entries.get(key)
        if held is not None and update.version <= held.update.version:
            return False
        deny = self._tenant_deny.get(tenant)
        if deny is REMOVED:
            # A removed tenant's update still queued towards this node when the removal
            # went out: it must not bring the tenant's customers back. Only an `active`
            # state (the tenant served here again) lifts the removal.
            return False
        self._entries[key] = _Entry(
            update,
            region,
            held.pending if held is not None else 0,
            deny,
            rate_share=self._rate_share,
            now=self._clock() if update.rate_per_second is not None or update.metered else 0.0,
            held=held,
        )
        if held is None:
            self._by_tenant.setdefault(tenant, set()).add(update.customer_id)
        elif held.metered is not None:
            # A feature the new record no longer grants: its undrained units were consumed
            # while it was granted, so they stay drainable (reported, billed) all the same.
            kept = update.metered
            for name, meter in held.metered.items():
                if meter.pending and name not in kept:
                    orphan = (tenant, update.customer_id, name)
                    self._orphaned[orphan] = self._orphaned.get(orphan, 0) + meter.pending
        return True

    # -- writes: tenant states (signed pushes only) ---------------------------------

    def set_tenant_state(self, tenant_id: str, state: str) -> bool:
        """Applies `active`, `suspended` or `removed` to a tenant; True if it changed."""
        deny = _TENANT_DENY[state]  # KeyError: not a tenant state (the caller validates)
        if self._tenant_deny.get(tenant_id) is deny:
            return False
        customers = self._by_tenant.get(tenant_id, set())
        if deny is REMOVED:
            for customer in customers:
                entry = self._entries.pop((tenant_id, customer))
                for feature, units in entry.drain():
                    key = _usage_key(tenant_id, customer, feature)
                    self._orphaned[key] = self._orphaned.get(key, 0) + units
            self._by_tenant.pop(tenant_id, None)
            self._tenant_deny[tenant_id] = REMOVED
            return True
        for customer in customers:
            self._entries[(tenant_id, customer)].set_tenant_deny(deny)
        if deny is None:
            self._tenant_deny.pop(tenant_id, None)
        else:
            self._tenant_deny[tenant_id] = deny
        return True

    def replace_tenant_states(self, states: Mapping[str, str], region: str) -> int:
        """A complete list of `region`'s tenants (a snapshot's): applies each state, and
        removes every tenant held from `region` that the list lacks (it was deleted or
        left the region while this node was away). Returns how many states changed."""
        changed = 0
        for tenant_id in list(self._by_tenant):
            if tenant_id not in states and any(
                self._entries[(tenant_id, c)].region == region for c in self._by_tenant[tenant_id]
            ):
                changed += self.set_tenant_state(tenant_id, "removed")
        for tenant_id, state in states.items():
            changed += self.set_tenant_state(tenant_id, state)
        return changed

    def tenant_state(self, tenant_id: str) -> str:
        """`active`, `suspended` or `removed`, as the last signed push said."""
        deny = self._tenant_deny.get(tenant_id)
        return "active" if deny is None else "suspended" if deny is SUSPENDED else "removed"

    def tenant_counts(self) -> dict[str, int]:
        """How many tenants are `suspended` and `removed` here (for the metrics)."""
        suspended = sum(1 for d in self._tenant_deny.values() if d is SUSPENDED)
        return {"suspended": suspended, "removed": len(self._tenant_deny) - suspended}

    def mark_complete(self) -> None:
        """A complete snapshot has been applied: unknown customers are truly unknown now."""
        self._unknown = UNKNOWN

    def expect_snapshot(self) -> None:
        """Until `mark_complete()`, an unknown customer is denied with `no_snapshot`."""
        self._unknown = NO_SNAPSHOT

    @property
    def complete(self) -> bool:
        """Whether the cache holds a complete snapshot (or never waited for one)."""
        return self._unknown is UNKNOWN

    def touch(self, region: str) -> None:
        """Records that `region` pushed now (any accepted push, heartbeats included)."""
        self._last_push[region] = self._clock()
        self._regions.add(region)
        self._recompute_deadline()

    def _recompute_deadline(self) -> None:
        if self._stale_after is None:
            return
        starts = [self._last_push.get(r, self._created) for r in self._regions] or [self._created]
        self._stale_deadline = min(starts) + self._stale_after

    # -- reads: the hot path --------------------------------------------------------

    def check(
        self, tenant_id: str, customer_id: str, cost: int = 1, feature: str | None = None
    ) -> Decision:
        """Would a call costing `cost` (naming `feature`, if given) be allowed now? Counts
        nothing and spends no rate token."""
        if cost < 0:
            raise ValueError("cost must be >= 0")
        entry = self._entries.get((tenant_id, customer_id))
        if entry is None:
            # Miss path only: a suspended or removed tenant says so for every customer.
            return self._tenant_deny.get(tenant_id) or self._unknown
        if self._guard and self._clock() >= self._stale_deadline and self._is_stale(entry):
            return STALE
        # Which meter the call spends: the default one, unless it names a metered feature.
        meter: _Meter | None = entry
        deny = entry.deny
        if feature is not None:
            metered = entry.metered
            named = metered.get(feature) if metered is not None else None
            if named is not None:
                meter = named
                deny = entry.meter_deny
            elif feature not in entry.features:
                meter = None
        if deny is not None:
            return deny
        if entry.grace_until is not None and self._wall() >= entry.grace_until:
            return GRACE_ENDED
        if meter is None:
            return NO_ENTITLEMENT
        remaining = meter.remaining
        if remaining is not None and cost > remaining:
            return _denied(remaining)
        # Meters without a rate limit pay one attribute test for it.
        rate = meter.rate
        if rate is not None:
            # The bucket's level now, inlined (the hot path of a limited customer). Capping
            # at the burst cannot change a `< 1` test (a positive rate's burst is at least
            # 1), and a rate of 0 stays at its 0 tokens.
            tokens = meter.tokens + (self._clock() - meter.stamp) * rate
            if tokens < 1.0:
                return _limited(remaining, rate, tokens)
        if remaining is None:
            return UNLIMITED
        return _new_decision(Decision, (True, remaining - cost, OK))

    def consume(
        self, tenant_id: str, customer_id: str, cost: int = 1, feature: str | None = None
    ) -> Decision:
        """Allows and counts a call costing `cost` (naming `feature`, if given), or denies it
        and counts nothing. An allowed call with `cost >= 1` spends one rate token."""
        if cost < 0:
            raise ValueError("cost must be >= 0")
        entry = self._entries.get((tenant_id, customer_id))
        if entry is None:
            # Miss path only: a suspended or removed tenant says so for every customer.
            return self._tenant_deny.get(tenant_id) or self._unknown
        if self._guard and self._clock() >= self._stale_deadline and self._is_stale(entry):
            return STALE
        meter: _Meter | None = entry
        deny = entry.deny
        if feature is not None:
            metered = entry.metered
            named = metered.get(feature) if metered is not None else None
            if named is not None:
                meter = named
                deny = entry.meter_deny
            elif feature not in entry.features:
                meter = None
        if deny is not None:
            return deny
        if entry.grace_until is not None and self._wall() >= entry.grace_until:
            return GRACE_ENDED
        if meter is None:
            return NO_ENTITLEMENT
        # Meters without a rate limit pay one attribute test for it (`meter.rate`).
        remaining = meter.remaining
        if remaining is None:
            if meter.rate is not None and (limited := self._take(meter, None, cost)) is not None:
                return limited
            meter.local += cost
            meter.pending += cost
            return UNLIMITED
        if cost <= remaining:
            if meter.rate is not None and (limited := self._take(meter, remaining, cost)):
                return limited
            remaining -= cost
            meter.remaining = remaining
            meter.local += cost
            meter.pending += cost
            return _new_decision(Decision, (True, remaining, OK))
        return _denied(remaining)

    def has(self, tenant_id: str, customer_id: str, feature: str) -> bool:
        """Whether the customer holds `feature` now: its record lists it as a boolean
        feature or grants it as a metered one, and the customer is served (not
        stale-closed, suspended, removed, blocked or past grace). Running out of units and
        the rate limit do not take a feature away."""
        entry = self._entries.get((tenant_id, customer_id))
        if entry is None:
            return False
        if feature not in entry.features and (
            entry.metered is None or feature not in entry.metered
        ):
            return False
        if self._guard and self._clock() >= self._stale_deadline and self._is_stale(entry):
            return False
        if entry.meter_deny is not None:
            return False
        return entry.grace_until is None or self._wall() < entry.grace_until

    def _take(self, meter: _Meter, remaining: int | None, cost: int) -> Decision | None:
        """For meters with a rate limit: takes a token (none for a cost-0 probe, which
        counts nothing) and answers None, or answers the `rate_limited` denial."""
        rate = meter.rate or 0.0
        now = self._clock()
        tokens = meter.tokens + (now - meter.stamp) * rate
        if tokens < 1.0:
            return _limited(remaining, rate, tokens)
        if cost:
            burst = meter.burst
            meter.tokens = (burst if tokens > burst else tokens) - 1.0
            meter.stamp = now
        return None

    def _is_stale(self, entry: _Entry) -> bool:
        """Slow path, taken only once some region's state is past `stale_after`."""
        age = self._clock() - self._last_push.get(entry.region, self._created)
        return age >= self._stale_after_s and not self._fail_open(entry.update.tenant_id)

    # -- inspection and usage -------------------------------------------------------

    def get(self, tenant_id: str, customer_id: str) -> dict[str, Any] | None:
        """The customer's quota as JSON-ready fields, with local consumption applied."""
        entry = self._entries.get((tenant_id, customer_id))
        if entry is None:
            return None
        doc = entry.update.model_dump(mode="json")
        remaining = entry.remaining
        doc["used"] = entry.update.used + entry.local
        doc["remaining"] = None if remaining is None else max(remaining, 0)
        if remaining is not None and remaining <= 0 and doc["status"] in ("active", "grace"):
            doc["status"] = "exhausted"
        doc["pending_usage"] = entry.pending
        doc["region"] = entry.region
        if entry.metered is not None:
            for name, meter in entry.metered.items():
                quota = doc["metered"][name]
                quota["used"] += meter.local
                left = meter.remaining
                quota["remaining"] = None if left is None else max(left, 0)
                quota["pending_usage"] = meter.pending
        return doc

    def drain_usage(self) -> dict[UsageKey, int]:
        """Units consumed since the last drain, per (tenant, customer) for the default
        feature and per (tenant, customer, feature) for a named metered one; resets them."""
        drained, self._orphaned = self._orphaned, {}
        for (tenant, customer), entry in self._entries.items():
            if entry.pending or entry.metered is not None:
                for feature, units in entry.drain():
                    key = _usage_key(tenant, customer, feature)
                    drained[key] = drained.get(key, 0) + units
        return drained

    def state_age_seconds(self) -> dict[str, float]:
        """Seconds since each region's last accepted push (since start if none yet)."""
        now = self._clock()
        return {r: now - self._last_push.get(r, self._created) for r in sorted(self._regions)}

    def version(self, tenant_id: str, customer_id: str) -> int | None:
        entry = self._entries.get((tenant_id, customer_id))
        return None if entry is None else entry.update.version

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._entries))
