"""Reconcile a resumed tenant's suspended window with Stripe (runs in the worker).

While a tenant is suspended the ingress answers its webhooks 403, so Stripe changes made
meanwhile may never have reached `stripe.events` (Stripe retries a failed delivery for up
to three days, but a long suspension, or a disabled endpoint, outlasts that). When the
tenant is resumed, the worker that holds the tenant's `stripe.events` partition runs
`streams.reconcile.reconcile` from `suspended_at` (less a minute of clock skew): the
events Stripe lists that the topic lacks are injected, marked `qf-backfill: reconcile`,
and applied like any other (deduplicated by event id, so events that did arrive change
nothing).

Why the worker: it already holds the tenants' Stripe keys (unwrapped on use) and reads
Stripe; the pushers and the ingress hold no Stripe key, and the admin API/CLI may be gone
by the time Stripe answers.

When: a tenant is reconciled once its record is `active` with a `resumed_at` newer than
the last one this process reconciled for it. On start, resumes of the last
`CATCH_UP` seconds count too, so a worker that restarted (or took the partition over)
around a resume still runs it; a second run injects nothing. A failed run is retried with
backoff `ATTEMPTS` times, then logged and counted; `quotaflow reconcile --tenant T
--since …` does the same by hand. Outcomes: `quotaflow_resume_reconciles_total{outcome=
ok|failed|no_key}`, injected events `quotaflow_resume_reconcile_events_total`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from quotaflow.registry import TenantRegistry
from quotaflow.settings import WorkerSettings
from streams.reconcile import ReconcileReport, reconcile
from tables.tenant import Tenant

__all__ = ["CATCH_UP", "ResumeReconciler"]

log = logging.getLogger("quotaflow.worker.resume")

SCAN_INTERVAL = 1.0
CATCH_UP = 3600.0  # on start, resumes this recent are reconciled (idempotent anyway)
SKEW = 60.0  # Stripe's `created` and our clock may differ; an earlier start costs nothing
STRIPE_EVENTS_KEPT = 30 * 86400.0  # Stripe's Events API lists 30 days
ATTEMPTS = 5
BACKOFF = 2.0

Reconcile = Callable[[WorkerSettings, Tenant, float], Awaitable[ReconcileReport]]


async def _reconcile(settings: WorkerSettings, tenant: Tenant, since: float) -> ReconcileReport:
    return await reconcile(settings, tenant, since)


class ResumeReconciler:
    """Follows the registry; reconciles each resumed tenant whose partition it holds."""

    def __init__(
        self,
        settings: WorkerSettings,
        registry: Callable[[], TenantRegistry | None],
        *,
        holds: Callable[[str], bool | None],
        on_outcome: Callable[[str, int], None] | None = None,
        run: Reconcile = _reconcile,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`holds(tenant_id)`: whether this worker holds the tenant's `stripe.events`
        partition (None: not known yet, ask again later). `on_outcome(outcome, injected)`
        counts each finished run."""
        self._settings = settings
        self._registry = registry
        self._holds = holds
        self._on_outcome = on_outcome
        self._run = run
        self._clock = clock
        self._done: dict[str, float] = {}  # tenant id -> resumed_at reconciled (or running)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = clock()

    async def follow(self) -> None:
        """Scans the registry once a second until cancelled."""
        try:
            while True:
                self.scan()
                await asyncio.sleep(SCAN_INTERVAL)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def scan(self) -> None:
        """Starts a reconcile for every tenant resumed since the last one done for it."""
        registry = self._registry()
        if registry is None:
            return
        for summary in registry.summaries():  # no document built for the others
            resumed = summary.resumed_at
            if summary.status != "active" or resumed is None:
                continue
            if resumed <= self._done.get(summary.id, self._started - CATCH_UP):
                continue
            holds = self._holds(summary.id)
            if holds is None:
                continue  # partitions not assigned yet: the next scan asks again
            tenant = registry.get(summary.id)
            if tenant is None or tenant.resumed_at != resumed:
                continue  # changed meanwhile: the next scan sees its new summary
            self._done[tenant.id] = resumed
            if not holds:
                continue  # another worker holds its partition and reconciles it
            task = asyncio.create_task(self._reconcile(tenant), name=f"resume {tenant.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconcile(self, tenant: Tenant) -> None:
        extra = {"tenant_id": tenant.id}
        if tenant.stripe_api_key is None:
            log.warning("resumed tenant has no Stripe API key: not reconciled", extra=extra)
            self._count("no_key", 0)
            return
        began = tenant.suspended_at if tenant.suspended_at is not None else tenant.created_at
        since = max(began - SKEW, self._clock() - STRIPE_EVENTS_KEPT)
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                report = await self._run(self._settings, tenant, since)
            except Exception as exc:  # noqa: BLE001 - Stripe, Kafka, a timeout: all pass
                log.warning(
                    "resume reconcile failed, retrying",
                    extra={**extra, "attempt": attempt + 1, "error": type(exc).__name__},
                )
                continue
            log.info(
                "resumed tenant reconciled with Stripe",
                extra={
                    **extra,
                    "since": since,
                    "listed": report.listed,
                    "injected": report.injected,
                },
            )
            self._count("ok", report.injected)
            return
        log.error(
            "resume reconcile gave up: run `quotaflow reconcile` for this tenant", extra=extra
        )
        self._count("failed", 0)

    def _count(self, outcome: str, injected: int) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome, injected)
