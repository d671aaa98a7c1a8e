"""`quota explain`: which Stripe events and usage batches made a customer's quota.

The tenant's partition of `stripe.events` and of `usage.events` is read (the tenant's
records only) and replayed, in log order per topic and by record time across the two,
through the pure domain functions the worker uses (`tables.billing.apply_event`,
`tables.usage.apply_usage`), from an empty state. Every step that concerns the customer
is listed with what it changed in the published quota.

Limits, said plainly: the live worker fetches each event's object from Stripe (the event
is a signal), explain applies the events' own snapshots (as the worker does with
`QUOTAFLOW_STRIPE_FETCH=false` or when Stripe is unreachable). It also sees only what the
topics still hold (14 days). The result is therefore compared with the quota the worker
published (`published`, from `quota.updates`), and `matches` says whether they agree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from quotaflow.commands.ops.quota_show import current_quotas
from quotaflow.envelope import RECEIVED_AT
from quotaflow.settings import AdminSettings
from quotaflow.topicread import Position, TopicReader, Tracker, header, tenant_partition
from streams.deadletter import REDRIVE, REPLAY
from tables.billing import CustomerState, Outcome, QuotaPolicy, Source, apply_event, customer_of
from tables.quota import QuotaUpdate
from tables.tenant import Tenant
from tables.usage import UsageRecord, apply_usage

COMPARED = (
    "customer_id",
    "limit",
    "used",
    "remaining",
    "status",
    "period_start",
    "period_end",
    "features",
    "rate_per_second",
    "metered",
)


@dataclass
class Step:
    """One input applied to the customer's state, and what it did to the quota."""

    source: str  # topic@partition:offset
    kind: str  # "stripe_event" | "usage"
    id: str
    type: str | None
    at: float
    outcome: str  # changed | counted (usage, not published) | unchanged | duplicate | error
    changes: dict[str, list[Any]] = field(default_factory=dict)
    version: int | None = None
    deadletters: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Explanation:
    tenant: str
    customer: str
    stripe_customer_id: str | None
    steps: list[Step]
    final: QuotaUpdate | None
    published: QuotaUpdate | None

    @property
    def matches(self) -> bool:
        if self.final is None or self.published is None:
            return self.final is None and self.published is None
        return all(
            getattr(self.final, f) == getattr(self.published, f) for f in (*COMPARED, "version")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "customer": self.customer,
            "stripe_customer_id": self.stripe_customer_id,
            "steps": [s.to_dict() for s in self.steps],
            "final": None if self.final is None else self.final.model_dump(mode="json"),
            "published": None if self.published is None else self.published.model_dump(mode="json"),
            "matches": self.matches,
        }


def quota_diff(before: QuotaUpdate | None, after: QuotaUpdate | None) -> dict[str, list[Any]]:
    """Field → [old, new] for the published fields that differ."""
    if after is None or before == after:
        return {}
    old = {} if before is None else before.model_dump(mode="json")
    new = after.model_dump(mode="json")
    return {f: [old.get(f), new[f]] for f in COMPARED if old.get(f) != new[f]}


@dataclass(frozen=True)
class _Input:
    at: float
    topic_rank: int
    partition: int
    offset: int
    topic: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


async def _tenant_records(
    settings: AdminSettings, topic: str, rank: int, tenant: str, progress: Tracker | None
) -> list[_Input]:
    key = tenant.encode()
    out = []
    async with TopicReader(settings, topic) as reader:
        partitions = await reader.partitions()
        spans = await reader.spans(
            [tenant_partition(tenant, len(partitions))], Position(edge="beginning")
        )
        async for record in reader.records(spans, progress):
            if record.key != key or record.value is None:
                continue
            headers = tuple(record.headers or ())
            received = header(headers, RECEIVED_AT)
            at = float(received) if received else record.timestamp / 1000
            out.append(
                _Input(at, rank, record.partition, record.offset, topic, record.value, headers)
            )
    return out


async def tenant_inputs(
    settings: AdminSettings, tenant: str, progress: Tracker | None = None
) -> AsyncIterator[_Input]:
    """The tenant's Stripe events and usage batches, in the order explain applies them."""
    topics = settings.topics
    events = await _tenant_records(settings, topics.stripe_events, 0, tenant, progress)
    usage = await _tenant_records(settings, topics.usage_events, 1, tenant, progress)
    # Within a topic, log order (a replayed copy keeps its original time); across the
    # two, whichever next record was received first.
    i = j = 0
    while i < len(events) or j < len(usage):
        if j >= len(usage) or (i < len(events) and events[i].at <= usage[j].at):
            yield events[i]
            i += 1
        else:
            yield usage[j]
            j += 1


class Replayer:
    """Applies a tenant's inputs to per-customer states with the pure domain functions."""

    def __init__(
        self,
        tenant: Tenant,
        policy: QuotaPolicy,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.tenant = tenant
        self.policy = policy
        self.thresholds = thresholds
        self.states: dict[str, CustomerState] = {}

    def _stripe_id(self, customer: str) -> str:
        if customer in self.states:
            return customer
        for stripe_id, state in self.states.items():
            if state.alias == customer:
                return stripe_id
        return customer

    def apply(self, item: _Input) -> list[tuple[str, Step]]:
        """The steps this input made, one per customer it touched."""
        source = f"{item.topic}@{item.partition}:{item.offset}"
        if item.topic_rank == 0:
            return self._apply_event(item, source)
        return self._apply_usage(item, source)

    def _apply_event(self, item: _Input, source: str) -> list[tuple[str, Step]]:
        try:
            body = orjson.loads(item.value)
        except orjson.JSONDecodeError as exc:
            return [("", Step(source, "stripe_event", "?", None, item.at, "error", error=str(exc)))]
        if not isinstance(body, dict):
            return []
        customer = customer_of(body)
        if customer is None:
            return []
        step = Step(source, "stripe_event", str(body.get("id")), body.get("type"), item.at, "")
        before = self.states.get(customer)
        try:
            outcome = apply_event(
                before,
                body,
                tenant=self.tenant,
                fetched=None,
                source=Source(item.partition, item.offset),
                now=item.at,
                policy=self.policy,
                # As the worker: a re-driven dead letter takes effect though its id was seen.
                redrive=header(item.headers, REDRIVE) is not None
                and header(item.headers, REPLAY) is None,
            )
        except Exception as exc:  # noqa: BLE001 - the worker dead-letters it; show why
            step.outcome, step.error = "error", f"{type(exc).__name__}: {exc}"
            return [(customer, step)]
        self._record(customer, before, outcome, step)
        return [(customer, step)]

    def _apply_usage(self, item: _Input, source: str) -> list[tuple[str, Step]]:
        try:
            record = UsageRecord.model_validate_json(item.value)
        except ValueError as exc:
            return [("", Step(source, "usage", "?", None, item.at, "error", error=str(exc)))]
        steps = []
        # As the worker does: one apply per customer with the default units and each named
        # feature's units of the record (they share the batch-id and offset guards).
        grouped: dict[str, tuple[list[int], dict[str, int]]] = {}
        for usage in record.items:
            default, features = grouped.setdefault(self._stripe_id(usage.customer_id), ([0], {}))
            if usage.feature is None:
                default[0] += usage.units
            else:
                features[usage.feature] = features.get(usage.feature, 0) + usage.units
        for customer, (default, features) in grouped.items():
            what = " ".join(
                [f"units={default[0]}", *(f"{f}={n}" for f, n in sorted(features.items()))]
            )
            step = Step(source, "usage", record.batch_id, what, item.at, "")
            before = self.states.get(customer)
            outcome = apply_usage(
                before,
                tenant_id=self.tenant.id,
                customer_id=customer,
                batch_id=record.batch_id,
                units=default[0],
                source=Source(item.partition, item.offset),
                now=item.at,
                policy=self.policy,
                thresholds=self.thresholds,
                key_id=record.key_id,  # the worker's marks are per signing key too
                features=features,
            )
            self._record(customer, before, outcome, step)
            steps.append((customer, step))
        return steps

    def _record(
        self, customer: str, before: CustomerState | None, outcome: Outcome, step: Step
    ) -> None:
        if outcome.state is not None:
            self.states[customer] = outcome.state
        step.deadletters = [f"{d.reason}: {d.detail}"[:200] for d in outcome.deadletters]
        if outcome.duplicate:
            step.outcome = "duplicate"
        elif outcome.update is not None:
            step.outcome = "changed"
            step.changes = quota_diff(None if before is None else before.last, outcome.update)
            step.version = outcome.update.version
        elif (
            outcome.state is not None
            and before is not None
            and (
                outcome.state.used != before.used
                or outcome.state.feature_used != before.feature_used
            )
        ):
            # Usage below the next publishing threshold: counted, not yet published.
            step.outcome = "counted"
            step.changes = {"used": [before.used, outcome.state.used]}
            if outcome.state.feature_used != before.feature_used:
                step.changes["feature_used"] = [before.feature_used, outcome.state.feature_used]
        else:
            step.outcome = "unchanged"


async def explain(
    settings: AdminSettings,
    tenant: Tenant,
    customer: str,
    *,
    thresholds: Sequence[float] | None = None,
    progress: Tracker | None = None,
) -> Explanation:
    """Replays the tenant's inputs locally; the steps of `customer` (Stripe id or alias)."""
    if thresholds is None:
        thresholds = settings.usage_thresholds or None
    replayer = Replayer(tenant, QuotaPolicy(grace_seconds=settings.grace_seconds), thresholds)
    pending: dict[str, list[Step]] = {}
    async for item in tenant_inputs(settings, tenant.id, progress):
        for touched, step in replayer.apply(item):
            pending.setdefault(touched, []).append(step)
    stripe_id: str | None = next(
        (k for k, s in replayer.states.items() if customer in (k, s.alias)),
        customer if customer in pending else None,
    )
    state = replayer.states.get(stripe_id) if stripe_id is not None else None
    published_id = customer if state is None else state.published_customer_id
    published = (await current_quotas(settings, tenant.id, published_id)).get(
        f"{tenant.id}/{published_id}"
    )
    return Explanation(
        tenant=tenant.id,
        customer=customer,
        stripe_customer_id=stripe_id,
        steps=pending.get(stripe_id or "", []),
        final=None if state is None else state.last,
        published=published,
    )
