"""The sidecar's Prometheus metrics, in their own registry so several sidecars (tests,
benchmarks) can live in one process. Every label set is bounded: regions and application
names come from configuration (`app` is a configured application name or `loopback`,
never anything a caller sends), routes, reasons and outcomes from fixed vocabularies.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics import Counter as CounterChild

from edge.cache import QuotaCache


class EdgeMetrics:
    """Counters the server updates; `render()` refreshes state ages then serialises."""

    def __init__(self, cache: QuotaCache) -> None:
        self._cache = cache
        self.registry = CollectorRegistry(auto_describe=True)
        self.state_age = Gauge(
            "quota_state_age_seconds",
            "Seconds since the region's last accepted push.",
            ["region"],
            registry=self.registry,
        )
        self.pushes = Counter(
            "edge_pushes",
            "Pushes received, by outcome (accepted, rejected, bad_request).",
            ["outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "edge_push_rejections",
            "Pushes refused for their signature, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.updates = Counter(
            "edge_quota_updates",
            "Quota updates in accepted pushes, by result (applied, stale, invalid).",
            ["result"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "edge_consume_decisions",
            "HTTP consume answers, by calling application and reason (idempotent replays "
            "are not counted again).",
            ["app", "reason"],
            registry=self.registry,
        )
        self._decision_children: dict[tuple[str, str], CounterChild] = {}
        self.checks = Counter(
            "edge_check_decisions",
            "HTTP check answers (nothing counted), by calling application and reason.",
            ["app", "reason"],
            registry=self.registry,
        )
        self._check_children: dict[tuple[str, str], CounterChild] = {}
        self.authorizations = Counter(
            "edge_authorize_decisions",
            "Forward-auth (/v1/authorize) answers, by calling application (the gateway) and "
            "reason (ok, a deny reason, or missing_identity, missing_api_key, "
            "unknown_api_key, bad_idempotency_key, idempotency_key_reused).",
            ["app", "reason"],
            registry=self.registry,
        )
        self._authorize_children: dict[tuple[str, str], CounterChild] = {}
        self.quota_reads = Counter(
            "edge_quota_reads",
            "GET /v1/quotas answers, by calling application and outcome (found, unknown).",
            ["app", "outcome"],
            registry=self.registry,
        )
        self.auth_refusals = Counter(
            "edge_auth_refusals",
            "Requests refused 401 for their credential, by route (consume, check, quotas, "
            "authorize) and reason (missing_credential, bad_credential).",
            ["route", "reason"],
            registry=self.registry,
        )
        self.body_refusals = Counter(
            "edge_body_refusals",
            "Requests whose body was refused, by route and reason (body_too_large, "
            "body_timeout, unsupported_encoding, incomplete_body).",
            ["route", "reason"],
            registry=self.registry,
        )
        self.idempotency = Counter(
            "edge_idempotency_keys_seen",
            "Consumes with an Idempotency-Key already held, by calling application and "
            "outcome (replayed: the first answer again, nothing counted; reused: another "
            "request under the same key, refused 422).",
            ["app", "outcome"],
            registry=self.registry,
        )
        self.idempotency_held = Gauge(
            "edge_idempotency_keys",
            "Idempotency keys held (bounded per application by QUOTAFLOW_EDGE_IDEMPOTENCY_*).",
            registry=self.registry,
        )
        self.tenant_changes = Counter(
            "edge_tenant_state_changes",
            "Tenant state changes (suspended, resumed, removed) applied from signed pushes.",
            registry=self.registry,
        )
        self.tenants = Gauge(
            "edge_tenants_denied",
            "Tenants whose customers are all denied here, by state (suspended: reason "
            "tenant_suspended; removed: reason tenant_removed).",
            ["state"],
            registry=self.registry,
        )
        self.keys = Gauge("edge_quota_keys", "Customers held.", registry=self.registry)
        self.snapshot = Gauge(
            "edge_snapshot_complete",
            "1 once this process holds a complete snapshot; until then unknown customers "
            "are denied with reason no_snapshot.",
            registry=self.registry,
        )

    def decision(self, app: str, reason: str) -> CounterChild:
        """The consume counter child for (app, reason), bound once (labels() is costly)."""
        child = self._decision_children.get((app, reason))
        if child is None:
            child = self.decisions.labels(app=app, reason=reason)
            self._decision_children[(app, reason)] = child
        return child

    def check(self, app: str, reason: str) -> CounterChild:
        """The check counter child for (app, reason), bound once."""
        child = self._check_children.get((app, reason))
        if child is None:
            child = self._check_children[(app, reason)] = self.checks.labels(app=app, reason=reason)
        return child

    def authorization(self, app: str, reason: str) -> CounterChild:
        """The forward-auth counter child for (app, reason), bound once."""
        child = self._authorize_children.get((app, reason))
        if child is None:
            child = self.authorizations.labels(app=app, reason=reason)
            self._authorize_children[(app, reason)] = child
        return child

    def render(self) -> bytes:
        for region, age in self._cache.state_age_seconds().items():
            self.state_age.labels(region=region).set(age)
        self.keys.set(len(self._cache))
        for state, count in self._cache.tenant_counts().items():
            self.tenants.labels(state=state).set(count)
        self.snapshot.set(1 if self._cache.complete else 0)
        return generate_latest(self.registry)
