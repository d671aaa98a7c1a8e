"""The worker's own HTTP face: `/healthz`, `/readyz` and `/metrics`, from process start.

Faust's web server (and services added with `app.service`) start only after table
recovery, and its `/table` views would expose tenant data, so the worker runs this small
aiohttp server instead, as a child service of the app: it answers from the first second,
`/readyz` says 503 until table recovery has completed, and `/metrics` serves one
registry of the worker's own (no global state, so several apps can share a process).

Metrics (label values are bounded sets: no tenant, customer or event id ever):
- `quotaflow_worker_events_total{outcome}`: source events processed, by what they did:
  `quota_updated` (a quota update was sent), `dead_lettered`, `unchanged` (duplicate,
  ignored type, or nothing to publish).
- `quotaflow_deadletters_total{reason}`: records sent to `deadletter`, by `qf-dl-reason`.
- `quotaflow_stripe_requests_total{mode, outcome}`: HTTP attempts to Stripe by key mode
  (`live`/`test`) and `ok`, `rate_limited` (429), `not_found`, `client_error`,
  `server_error`, `network_error`.
- `quotaflow_consumer_lag{group, topic, partition}`: records behind on the partitions
  this worker is assigned (high-water mark minus committed offset); changelogs excluded.
- `quotaflow_worker_ready`: 1 once table recovery completed.
- `quotaflow_resume_reconciles_total{outcome}`, `quotaflow_resume_reconcile_events_total`:
  reconciles of resumed tenants' suspended windows (streams/resume.py).
- `faust_*`: Faust's own sensors (messages, events, latency, commits, rebalances).
- `process_*`: CPU, memory, file descriptors.

- `quotaflow_billing_queued_events`, `quotaflow_stripe_reads_in_flight`,
  `quotaflow_billing_paused_partitions`, `quotaflow_stripe_tenants{state=retrying|degraded}`,
  `quotaflow_stripe_fallbacks`: the billing lanes (streams/lanes.py).

- `quotaflow_tenant_records_unreadable`, `quotaflow_meter_parked_tenants{reason}`,
  `quotaflow_meter_parked_jobs`, `quotaflow_meter_parked_oldest_seconds`: what the
  worker holds back (streams/worker_tenants.py); `/readyz` lists them too and is not
  ready while a tenant record is unreadable.

Events and dead letters are counted from each batch's `Effects` once Kafka has taken
them (`observe`); `/readyz` also lists, in `stripe`, the tenants whose reads are
retrying or degraded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import faust
import mode
import stripe
from aiohttp import web
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from quotaflow.settings import WorkerSettings
from streams.lanes import Lanes
from streams.processing.effects import Effects
from streams.stripe_client import StripeReader
from streams.worker_tenants import TenantsCollector, held_back, unreadable_count

log = logging.getLogger("quotaflow.worker.web")

_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
MAX_REASONS = 32
MAX_LISTED = 20  # tenant ids listed per state in /readyz


class WorkerMetrics:
    """The worker's registry and the counters that alert rules and dashboards read."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "quotaflow_worker_events",
            "Source events processed, by outcome",
            ["outcome"],
            registry=r,
        )
        self.deadletters = Counter(
            "quotaflow_deadletters", "Records sent to the deadletter topic", ["reason"], registry=r
        )
        self.stripe_requests = Counter(
            "quotaflow_stripe_requests",
            "HTTP attempts to Stripe's API, by key mode and outcome",
            ["mode", "outcome"],
            registry=r,
        )
        # No labels: a labelled child appears only on its first increment, which
        # `increase()` cannot see, and the first reset is the one that must alert. The
        # worker's log names the region and node.
        self.spool_resets = Counter(
            "quotaflow_usage_spool_resets",
            "Usage batches of a new edge spool incarnation for a node that reported under "
            "another (a spool reset, or a forged incarnation), once per customer",
            registry=r,
        )
        self.ready = Gauge("quotaflow_worker_ready", "1 once table recovery completed", registry=r)
        self.resume_reconciles = Counter(
            "quotaflow_resume_reconciles",
            "Reconciles of a resumed tenant's suspended window with Stripe, by outcome "
            "(ok, failed, no_key).",
            ["outcome"],
            registry=r,
        )
        self.resume_reconcile_events = Counter(
            "quotaflow_resume_reconcile_events",
            "Stripe events those reconciles injected into stripe.events (missed while "
            "the tenant was suspended).",
            registry=r,
        )
        ProcessCollector(registry=r)
        self._reasons: set[str] = set()

    def reason(self, raw: bytes | str | None) -> str:
        """A dead-letter reason as a label: a code-like word, at most MAX_REASONS kinds."""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")
        if not _LABEL.match(text):
            return "other"
        if text not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                return "other"
            self._reasons.add(text)
        return text

    def observe(self, effects: Effects) -> None:
        """Counts what one applied batch did (its events by outcome, its dead letters)."""
        for outcome, n in effects.outcomes.items():
            self.events.labels(outcome).inc(n)
        for letter in effects.deadletters:
            self.deadletters.labels(self.reason(letter.reason)).inc()
        if effects.spool_resets:
            self.spool_resets.inc(len(effects.spool_resets))

    def resume_reconciled(self, outcome: str, injected: int) -> None:
        """Counts one reconcile of a resumed tenant (streams/resume.py)."""
        self.resume_reconciles.labels(outcome).inc()
        self.resume_reconcile_events.inc(injected)

    def stripe_reader(self, settings: WorkerSettings) -> StripeReader | None:
        """The Stripe reader the worker should use (None when fetching is off), counted."""
        if not settings.stripe_fetch:
            return None
        return StripeReader(api_base=settings.stripe_api_base, http_client=CountingHTTPClient(self))


def _mode_of(headers: Mapping[str, str]) -> str:
    auth = headers.get("Authorization", "")
    return "live" if "_live_" in auth else "test"


def _outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status == 404:
        return "not_found"
    return "client_error" if status < 500 else "server_error"


class CountingHTTPClient(stripe.AIOHTTPClient):
    """stripe's aiohttp client, counting every attempt (retries included) by outcome."""

    def __init__(self, metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        mode_label = _mode_of(headers)
        try:
            result: tuple[bytes, int, Mapping[str, str]] = await super().request_async(
                method, url, headers, post_data
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            self._metrics.stripe_requests.labels(mode_label, "network_error").inc()
            raise
        self._metrics.stripe_requests.labels(mode_label, _outcome_of(result[1])).inc()
        return result


class LanesCollector(Collector):
    """The billing lanes: what waits for Stripe, what is paused, which tenants degrade."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lanes = _lanes_of(self._app)
        queued = GaugeMetricFamily(
            "quotaflow_billing_queued_events", "Billing events read ahead, not yet applied"
        )
        in_flight = GaugeMetricFamily(
            "quotaflow_stripe_reads_in_flight", "Stripe reads running now"
        )
        paused = GaugeMetricFamily(
            "quotaflow_billing_paused_partitions",
            "stripe.events partitions paused because a tenant's lane is full",
        )
        tenants = GaugeMetricFamily(
            "quotaflow_stripe_tenants",
            "Tenants whose Stripe reads fail: retrying, or degraded (snapshot fallback)",
            labels=["state"],
        )
        fallbacks = GaugeMetricFamily(
            "quotaflow_stripe_fallbacks",
            "Events applied with their own snapshot because Stripe stayed unreachable",
        )
        if lanes is not None:
            queued.add_metric([], lanes.queued)
            in_flight.add_metric([], lanes.in_flight)
            paused.add_metric([], len(lanes.paused_partitions))
            for state, ids in lanes.tenants_by_state().items():
                tenants.add_metric([state], len(ids))
            fallbacks.add_metric([], lanes.fallbacks)
        yield from (queued, in_flight, paused, tenants, fallbacks)


def _lanes_of(app: faust.App) -> Lanes | None:
    pipeline = getattr(app, "billing", None)
    lanes = getattr(pipeline, "lanes", None)
    return lanes if isinstance(lanes, Lanes) else None


class LagCollector(Collector):
    """`quotaflow_consumer_lag` for this worker's assigned source partitions."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "quotaflow_consumer_lag",
            "Records behind: high-water mark minus committed offset",
            labels=["group", "topic", "partition"],
        )
        for group, topic, partition, lag in self._rows():
            family.add_metric([group, topic, str(partition)], lag)
        yield family

    def _rows(self) -> Iterator[tuple[str, str, int, int]]:
        app = self._app
        try:
            consumer = app.consumer
            assigned = sorted(consumer.assignment())
        except Exception:  # noqa: BLE001 - not started yet or stopping: no rows
            return
        group = app.conf.id
        for tp in assigned:
            if tp.topic.endswith("-changelog"):
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001, S112 - partition not fetched yet
                continue
            # No public getter for the committed offsets Faust keeps.
            committed = getattr(consumer, "_committed_offset", {}).get(tp)
            if high is None or committed is None:
                continue
            yield group, tp.topic, tp.partition, max(int(high) - int(committed), 0)


def is_ready(app: faust.App) -> bool:
    """Ready once table recovery completed (it starts over on each rebalance)."""
    try:
        recovery: Any = getattr(app.tables, "recovery")  # noqa: B009 - not on TableManagerT
        return bool(recovery.completed.is_set())
    except Exception:  # noqa: BLE001 - not finalized yet
        return False


class WorkerWeb(mode.Service):
    """The aiohttp site; started and stopped with the app."""

    def __init__(
        self, app: faust.App, metrics: WorkerMetrics, host: str, port: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._app = app
        self._metrics = metrics
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    def _web_app(self) -> web.Application:
        routes = web.Application()
        routes.router.add_get("/healthz", self._healthz)
        routes.router.add_get("/readyz", self._readyz)
        routes.router.add_get("/metrics", self._metrics_page)
        return routes

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        recovered = is_ready(self._app)
        # A tenant record this keyring cannot open holds that tenant's work back: not
        # ready, so a rollout with an incomplete QUOTAFLOW_KEYRING stops here.
        unreadable = unreadable_count(self._app)
        ready = recovered and unreadable == 0
        self._metrics.ready.set(1 if ready else 0)
        status = "ready" if ready else ("recovering" if not recovered else "not_ready")
        detail: dict[str, Any] = {"status": status}
        if recovered and unreadable:
            detail["reason"] = "tenant_records_unreadable"
        detail.update(held_back(self._app))
        lanes = _lanes_of(self._app)
        if lanes is not None:
            # A tenant whose Stripe is down does not make the worker unready (the other
            # tenants are served), but operators see who and how many.
            by_state = lanes.tenants_by_state()
            detail["stripe"] = {
                "queued_events": lanes.queued,
                "reads_in_flight": lanes.in_flight,
                "paused_partitions": sorted(lanes.paused_partitions),
                **{
                    f"{state}_tenants": {"count": len(ids), "ids": sorted(ids)[:MAX_LISTED]}
                    for state, ids in by_state.items()
                },
            }
        return web.json_response(detail, status=200 if ready else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        self._metrics.ready.set(1 if is_ready(self._app) else 0)
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_start(self) -> None:
        runner = web.AppRunner(self._web_app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("worker web listening", extra={"host": self._host, "port": self._port})

    async def on_stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def attach_worker_web(
    app: faust.App,
    settings: WorkerSettings,
    port: int,
    *,
    metrics: WorkerMetrics | None = None,
    host: str | None = None,
) -> WorkerMetrics:
    """Adds `/healthz`, `/readyz`, `/metrics` on `host:port` and the sensors to `app`.

    Call before the app starts, with Faust's own web server off (`create_app(...,
    web_port=None)`). Pass the `metrics` whose `stripe_reader()` the app was built with
    so Stripe calls are counted on the same registry.
    """
    metrics = metrics if metrics is not None else WorkerMetrics()
    metrics.registry.register(LanesCollector(app))
    metrics.registry.register(TenantsCollector(app))
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(metrics.registry, "faust"))
    metrics.registry.register(LagCollector(app))
    bind = host if host is not None else settings.worker_web_host
    app.add_dependency(WorkerWeb(app, metrics, bind, port))
    return metrics
