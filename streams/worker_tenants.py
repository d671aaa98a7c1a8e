"""What the worker holds back, for operators: unreadable tenant records, parked meter jobs.

`TenantsCollector` exports (label values bounded: the park reasons, never a tenant id):
- `quotaflow_tenant_records_unreadable`: tenant records this worker's keyring cannot
  open (`TenantRegistry.unreadable()`); the worker is not ready while it is above 0.
- `quotaflow_meter_parked_tenants{reason}`: tenants whose meter jobs are parked
  (`tenant_unreadable`, `no_api_key`, `unauthorized`; streams/meter_parking.py).
- `quotaflow_meter_parked_jobs`: parked jobs held in memory (the rest are re-read).
- `quotaflow_meter_parked_oldest_seconds`: how long the longest-parked tenant has been.

`held_back(app)` is the same, with the first tenant ids, for the worker's `/readyz`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quotaflow.registry import TenantRegistry, refused_family
from streams.meter_reporter import MAX_LISTED, MeterReporter

__all__ = ["TenantsCollector", "held_back", "meter_of", "registry_of", "unreadable_count"]


def registry_of(app: faust.App) -> TenantRegistry | None:
    """The worker's tenant registry once opened (streams/app.py sets `app.tenants_of`)."""
    tenants_of = getattr(app, "tenants_of", None)
    return tenants_of() if callable(tenants_of) else None


def meter_of(app: faust.App) -> MeterReporter | None:
    """The running meter reporter (streams/usage_agent.py sets `app.meter_reporter`)."""
    reporter = getattr(app, "meter_reporter", None)
    return reporter if isinstance(reporter, MeterReporter) else None


def unreadable_count(app: faust.App) -> int:
    registry = registry_of(app)
    return len(registry.unreadable()) if registry is not None else 0


def held_back(app: faust.App) -> dict[str, Any]:
    """Unreadable records (count and first ids: ids are not secrets) and parked tenants."""
    doc: dict[str, Any] = {}
    registry = registry_of(app)
    if registry is not None and registry.unreadable():
        ids = sorted(registry.unreadable())
        doc["unreadable_records"] = {"count": len(ids), "ids": ids[:MAX_LISTED]}
    reporter = meter_of(app)
    if reporter is not None:
        doc["meter"] = reporter.status()
    return doc


class TenantsCollector(Collector):
    """The gauges above, read from the app at scrape time."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        unreadable = GaugeMetricFamily(
            "quotaflow_tenant_records_unreadable",
            "Tenant records this process cannot read (its keyring lacks their key)",
        )
        unreadable.add_metric([], unreadable_count(self._app))
        tenants = GaugeMetricFamily(
            "quotaflow_meter_parked_tenants",
            "Tenants whose meter jobs are parked, by reason",
            labels=["reason"],
        )
        jobs = GaugeMetricFamily("quotaflow_meter_parked_jobs", "Parked meter jobs held in memory")
        oldest = GaugeMetricFamily(
            "quotaflow_meter_parked_oldest_seconds",
            "Seconds the longest-parked tenant has been parked (0: none)",
        )
        reporter = meter_of(self._app)
        if reporter is not None:
            for reason, count in reporter.parking.by_reason().items():
                tenants.add_metric([reason], count)
            jobs.add_metric([], reporter.parking.held_jobs)
            oldest.add_metric([], reporter.parking.oldest_age())
        registry = registry_of(self._app)
        refused = refused_family([registry] if registry is not None else [])
        yield from (unreadable, refused, tenants, jobs, oldest)
