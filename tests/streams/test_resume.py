"""When the worker reconciles a resumed tenant's suspended window (streams/resume.py).

The reconcile itself runs against Stripe peers in tests/ops/test_reconcile.py and, on
resume, in a real worker process in tests/streams/test_tenant_lifecycle.py; here `run`
records what it was asked, so each rule of *when* is checked alone, fast."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

import streams.resume
from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings, WorkerSettings
from streams.reconcile import ReconcileReport
from streams.resume import CATCH_UP, SKEW, ResumeReconciler
from tables.tenant import Tenant

NOW = 1_800_000_000.0


def tenant(tenant_id: str, **fields: object) -> Tenant:
    doc: dict[str, object] = {
        "id": tenant_id,
        "regions": ("eu",),
        "stripe_api_key": SecretStr("sk_test_x"),
        **fields,
    }
    return Tenant.model_validate(doc)


class Runs:
    """The reconcile calls made, answered with a report (or an error, `fail` times)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, float]] = []
        self.fail = fail

    async def __call__(self, settings: WorkerSettings, t: Tenant, since: float) -> ReconcileReport:
        self.calls.append((t.id, since))
        if self.fail:
            self.fail -= 1
            raise TimeoutError
        return ReconcileReport(t.id, since, listed=3, injected=2)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def reconciler(
    registry: StaticTenantRegistry,
    runs: Runs,
    outcomes: list[tuple[str, int]],
    holds: dict[str, bool | None] | None = None,
) -> ResumeReconciler:
    held = holds if holds is not None else {}
    return ResumeReconciler(
        Settings(),
        lambda: registry,
        holds=lambda tenant_id: held.get(tenant_id, True),
        on_outcome=lambda outcome, injected: outcomes.append((outcome, injected)),
        run=runs,
        clock=lambda: NOW,
    )


async def test_a_resume_is_reconciled_once_from_when_the_suspension_began() -> None:
    registry = StaticTenantRegistry([tenant("acme"), tenant("calm")])
    runs, outcomes = Runs(), list[tuple[str, int]]()
    r = reconciler(registry, runs, outcomes)
    r.scan()
    registry.put(tenant("acme", status="suspended", suspended_at=NOW + 10))
    r.scan()
    await settle()
    assert runs.calls == []  # suspended, or never suspended: nothing to reconcile
    registry.put(tenant("acme", suspended_at=NOW + 10, resumed_at=NOW + 500))
    r.scan()
    await settle()
    r.scan()
    await settle()
    assert runs.calls == [("acme", NOW + 10 - SKEW)]
    assert outcomes == [("ok", 2)]
    # Suspended and resumed again: a new window, reconciled again.
    registry.put(tenant("acme", suspended_at=NOW + 900, resumed_at=NOW + 950))
    r.scan()
    await settle()
    assert runs.calls[1:] == [("acme", NOW + 900 - SKEW)]


async def test_on_start_only_recent_resumes_are_caught_up() -> None:
    registry = StaticTenantRegistry(
        [
            tenant("recent", suspended_at=NOW - 900, resumed_at=NOW - 60),
            tenant("old", suspended_at=NOW - 2 * CATCH_UP, resumed_at=NOW - CATCH_UP - 1),
            tenant("nokey", suspended_at=NOW - 900, resumed_at=NOW - 60, stripe_api_key=None),
        ]
    )
    runs, outcomes = Runs(), list[tuple[str, int]]()
    reconciler(registry, runs, outcomes).scan()
    await settle()
    assert runs.calls == [("recent", NOW - 900 - SKEW)]
    assert sorted(outcomes) == [("no_key", 0), ("ok", 2)]


async def test_only_the_worker_holding_the_tenants_partition_runs_it() -> None:
    resumed = tenant("acme", suspended_at=NOW - 100, resumed_at=NOW - 10)
    registry = StaticTenantRegistry([resumed, tenant("elsewhere", **_window())])
    runs, outcomes = Runs(), list[tuple[str, int]]()
    holds: dict[str, bool | None] = {"acme": None, "elsewhere": False}
    r = reconciler(registry, runs, outcomes, holds)
    r.scan()
    await settle()
    assert runs.calls == []  # acme: not known yet; elsewhere: another worker's
    holds["acme"] = True
    r.scan()
    await settle()
    assert [call[0] for call in runs.calls] == ["acme"]


async def test_a_failing_reconcile_is_retried_then_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams.resume, "BACKOFF", 0.001)
    registry = StaticTenantRegistry([tenant("acme", **_window())])
    runs, outcomes = Runs(fail=2), list[tuple[str, int]]()
    reconciler(registry, runs, outcomes).scan()
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.01)
    assert len(runs.calls) == 3
    assert outcomes == [("ok", 2)]
    monkeypatch.setattr(streams.resume, "ATTEMPTS", 2)
    registry.put(tenant("beta", **_window()))
    runs.fail, outcomes[:] = 5, []
    reconciler(registry, runs, outcomes).scan()
    for _ in range(100):
        if len(outcomes) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(outcomes) == [("failed", 0), ("failed", 0)]


def _window() -> dict[str, object]:
    return {"suspended_at": NOW - 100, "resumed_at": NOW - 10}
