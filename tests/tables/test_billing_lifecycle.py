"""One customer's lifecycle delivered in any order, with duplicates and crash replays.

The truth: create, trial, trial ending soon, active, paid, upgrade to a larger quantity,
a top-up, renewal payment failure (past due), recovery, an alias on the customer,
cancellation. Stripe delivers each event late, maybe several times, in any order; the
worker sometimes reprocesses an offset it already applied (a crash before commit).

- signal + fetch: `fetched` is Stripe's current object at delivery time (and some
  fetches fail): the final quota always equals the truth.
- snapshot only (fetch off): a terminal state never regresses, and with distinct
  `created` times the final quota equals the truth too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from quotaflow.schemas import QUOTA_UPDATE_V1, load
from tables.billing import Outcome, Source, fetch_target
from tables.billing_state import CustomerState
from tables.policy import QuotaPolicy, QuotaView, quota_of
from tables.quota import QuotaUpdate
from tables.stripe_objects import read_subscription
from tests.tables.factories import (
    BASE_TIME,
    BASIC,
    DAY,
    TOPUP,
    Feed,
    Shape,
    customer,
    event,
    invoice,
    subscription,
)

P0 = (BASE_TIME, BASE_TIME + 14 * DAY)
P1 = (BASE_TIME + 14 * DAY, BASE_TIME + 44 * DAY)
P2 = (BASE_TIME + 44 * DAY, BASE_TIME + 74 * DAY)


@dataclass(frozen=True)
class Step:
    """One change in Stripe: the event it produced and Stripe's objects right after it."""

    event: dict[str, Any]
    sub: dict[str, Any] | None
    customer: dict[str, Any]


def lifecycle(shape: Shape, ties: list[int] | None = None) -> list[Step]:
    """The true history. `ties`, if given, overrides each step's `created` offset."""
    steps: list[Step] = []
    cus = customer("cus_1", metadata={"rating_id": "u-1"})
    sub: dict[str, Any] | None = None

    def at(n: int, day: float) -> int:
        return BASE_TIME + (ties[n] if ties is not None else int(day * DAY))

    def sub_of(status: str, qty: int, period: tuple[int, int]) -> dict[str, Any]:
        return subscription("sub_1", "cus_1", status, [(BASIC, qty)], period=period, shape=shape)

    def add(event_type: str, obj: Mapping[str, Any], day: float) -> None:
        n = len(steps)
        steps.append(Step(event(event_type, obj, created=at(n, day), shape=shape), sub, cus))

    def inv(inv_id: str, status: str, paid_at: int | None, lines: Any = ()) -> dict[str, Any]:
        sub_id = None if lines else "sub_1"
        return invoice(inv_id, "cus_1", subscription_id=sub_id, status=status, lines=lines,
                       paid_at=paid_at, shape=shape)  # fmt: skip

    add("customer.created", cus, 0)
    sub = sub_of("trialing", 1, P0)
    add("customer.subscription.created", sub, 0.001)
    add("customer.subscription.trial_will_end", sub, 11)
    sub = sub_of("active", 1, P1)
    add("customer.subscription.updated", sub, 14)
    add("invoice.paid", inv("in_1", "paid", P1[0]), 14.001)
    sub = sub_of("active", 3, P1)
    add("customer.subscription.updated", sub, 20)
    sub = sub_of("past_due", 3, P2)
    add("customer.subscription.updated", sub, 44)
    add("invoice.payment_failed", inv("in_2", "open", None), 44.001)
    add("invoice.paid", inv("in_2", "paid", P2[0] + 3 * DAY), 47)
    sub = sub_of("active", 3, P2)
    add("customer.subscription.updated", sub, 47.001)
    paid_top = BASE_TIME + 50 * DAY
    add("invoice.paid", inv("in_top", "paid", paid_top, [(TOPUP, 1)]), 50)
    cus = customer("cus_1", metadata={"rating_id": "u-1", "tier": "gold"})
    add("customer.updated", cus, 55)
    sub = sub_of("canceled", 3, P2)
    add("customer.subscription.deleted", sub, 60)
    return steps


def _sig(sub: Mapping[str, Any] | None) -> tuple[str, int, int] | None:
    if sub is None:
        return None
    view = read_subscription(sub)
    item = view.items[0]
    start = item.period_start if item.period_start is not None else view.period_start
    return view.status, item.quantity, start or 0


def fetched_for(ev: Mapping[str, Any], step: Step) -> dict[str, Any] | None:
    target = fetch_target(ev)
    if target is None:
        return None
    return step.sub if target.kind == "subscription" else step.customer


def observed(state: CustomerState, now: float) -> tuple[QuotaView, dict[str, tuple[str, int]]]:
    subs = {k: (s.status, s.quota or 0) for k, s in state.subscriptions.items()}
    return quota_of(state, now, QuotaPolicy()), subs


@dataclass(frozen=True)
class Delivery:
    step: int
    at: int  # in steps: delivered once Stripe had made this many changes
    fetch_ok: bool


def deliveries(n_steps: int) -> st.SearchStrategy[list[Delivery]]:
    one = st.tuples(st.integers(0, n_steps + 2), st.integers(0, 2), st.booleans())

    def build(spec: list[tuple[int, int, bool]], order: list[int]) -> list[Delivery]:
        out = [
            Delivery(step, step + delay, ok)
            for step, (delay, copies, ok) in enumerate(spec)
            for _ in range(1 + copies)
        ]
        # Sort by delivery time; ties in the order hypothesis chose.
        ranked = sorted(range(len(out)), key=lambda i: (out[i].at, order[i % len(order)], i))
        return [out[i] for i in ranked]

    return st.builds(
        build,
        st.lists(one, min_size=n_steps, max_size=n_steps),
        st.permutations(list(range(3 * n_steps))),
    )


N_STEPS = len(lifecycle("basil"))
MODES = st.sampled_from(["basil", "legacy"])
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(
    shape: Shape, plan: list[Delivery], replays: list[int], *, fetch: bool, steps: list[Step]
) -> tuple[Feed, float, list[Outcome]]:
    feed = Feed()
    last = len(steps) - 1
    sources: list[Source] = []
    dupes: list[Outcome] = []
    terminal_seen = False
    now = 0.0
    # Fetch mode never falls behind what a fetch showed: the stored subscription is the
    # one of some step at or after the latest step a successful fetch saw.
    sigs = [_sig(step.sub) for step in steps]
    fetched_floor = 0
    for k, d in enumerate(plan):
        idx = min(d.at, last)
        now = max(now, steps[idx].event["created"] + 1 + (d.at - idx) * 60 + k * 0.001)
        ev = steps[d.step].event
        fetched = fetched_for(ev, steps[idx]) if fetch and d.fetch_ok else None
        source = feed.next_source()
        feed.apply(ev, fetched=fetched, now=now, source=source)
        if fetched is not None and fetched is steps[idx].sub:
            fetched_floor = max(fetched_floor, idx)
        assert feed.state is not None
        stored = feed.state.subscriptions.get("sub_1")
        if fetched_floor and stored is not None:
            sig = (stored.status, stored.items[0].quantity, stored.latest_start())
            assert sig in sigs[fetched_floor:]
        sources.append(source)
        # A crash before the commit: the worker reprocesses an already applied offset.
        if replays and replays[k % len(replays)] == 0:
            replayed = sources[(k * 7) % len(sources)]
            out = feed.apply(ev, fetched=fetched, now=now, source=replayed)
            assert out.duplicate
            assert out.state is None
            # Re-emits the current quota (None if that offset was itself an id duplicate).
            assert out.update is None or out.update == feed.quota()
            dupes.append(out)
        assert feed.state is not None
        sub = feed.state.subscriptions.get("sub_1")
        if terminal_seen:
            assert sub is not None
            assert sub.status == "canceled"
        terminal_seen = sub is not None and sub.status == "canceled"
    return feed, now, dupes


def truth(
    steps: list[Step], shape: Shape, now: float
) -> tuple[QuotaView, dict[str, tuple[str, int]]]:
    feed = Feed()
    for step in steps:
        feed.apply(step.event, fetched=fetched_for(step.event, step), now=step.event["created"] + 1)
    assert feed.state is not None
    return observed(feed.state, now)


_SCHEMA = Draft202012Validator(load(QUOTA_UPDATE_V1))


def check_common(feed: Feed, dupes: list[Outcome]) -> None:
    for update in feed.updates:  # every emitted record honours the public contract
        record = orjson.loads(update.to_json())
        _SCHEMA.validate(record)
        assert QuotaUpdate.from_json(update.to_json()) == update
    versions = [u.version for u in feed.updates]
    assert versions == list(range(1, len(versions) + 1))
    assert all(out.duplicate for out in dupes)
    assert feed.state is not None
    assert feed.state.last is not None
    assert feed.state.last.version == len(versions)


@SETTINGS
@given(MODES, deliveries(N_STEPS), st.lists(st.integers(0, 3), max_size=8))
def test_signal_and_fetch_always_ends_in_the_true_state(
    shape: Shape, plan: list[Delivery], replays: list[int]
) -> None:
    steps = lifecycle(shape)
    feed, now, dupes = run(shape, plan, replays, fetch=True, steps=steps)
    assert feed.state is not None
    assert observed(feed.state, now) == truth(steps, shape, now)
    check_common(feed, dupes)


@SETTINGS
@given(MODES, deliveries(N_STEPS), st.lists(st.integers(0, 3), max_size=8))
def test_snapshots_with_distinct_times_end_in_the_true_state(
    shape: Shape, plan: list[Delivery], replays: list[int]
) -> None:
    steps = lifecycle(shape)
    feed, now, dupes = run(shape, plan, replays, fetch=False, steps=steps)
    assert feed.state is not None
    assert observed(feed.state, now) == truth(steps, shape, now)
    check_common(feed, dupes)


@SETTINGS
@given(
    MODES,
    deliveries(N_STEPS),
    st.lists(st.sampled_from([0, 0, 0, 1]), min_size=N_STEPS, max_size=N_STEPS),
)
def test_snapshots_with_one_second_ties_never_regress_a_terminal_state(
    shape: Shape, plan: list[Delivery], gaps: list[int]
) -> None:
    created = [sum(gaps[: i + 1]) for i in range(N_STEPS)]
    steps = lifecycle(shape, ties=created)
    feed, _, dupes = run(shape, plan, [], fetch=False, steps=steps)  # asserts terminal holds
    assert feed.state is not None
    assert feed.state.subscriptions["sub_1"].status == "canceled"
    assert feed.state.alias == "u-1"
    check_common(feed, dupes)
