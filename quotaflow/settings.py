"""Configuration: one validated, frozen object read from `QUOTAFLOW_*` environment variables.

Every field is documented in the README's configuration table; `tests/quotaflow/test_settings.py`
(`test_readme_documents_every_setting_and_nothing_else`) checks that the table and this
class name the same variables, and `tests/test_references.py` that the test cited exists.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.auth import normalise_digests
from edge.identify import normalise_api_keys, parse_routes
from tables.tenant import WebhookSecret
from wire.signing import public_key_id

# Variables that were read once and are refused now, rather than silently ignored: a
# process started with the old configuration says why instead of refusing every message.
REMOVED = {
    "QUOTAFLOW_PUSH_KEYS": "shared HMAC push keys are replaced by Ed25519 keys: "
    "QUOTAFLOW_PUSH_SIGNING_KEYS (pushers), QUOTAFLOW_PUSH_VERIFY_KEYS (edge nodes)",
    "QUOTAFLOW_USAGE_KEYS": "shared HMAC usage keys are replaced by Ed25519 keys: "
    "QUOTAFLOW_EDGE_SIGNING_KEYS (edge nodes), QUOTAFLOW_EDGE_VERIFY_KEYS (ingress, pushers)",
}


class RemovedSetting(RuntimeError):
    """A variable quotaflow no longer reads is set. Not a ValueError, so pydantic does not
    wrap it into a ValidationError that would print every input, secrets included."""


class InvalidSetting(RuntimeError):
    """A setting that may hold a secret by mistake is malformed; the message names what is
    wrong without the value (a ValueError would be wrapped by pydantic, input included)."""


class Settings(BaseSettings):
    """All of quotaflow's knobs. Defaults are safe for a single machine."""

    model_config = SettingsConfigDict(env_prefix="QUOTAFLOW_", frozen=True, extra="ignore")

    def model_post_init(self, context: Any, /) -> None:
        # Not a validator: pydantic would echo the (secret) inputs with its error.
        for name, replacement in REMOVED.items():
            if name in os.environ:
                raise RemovedSetting(
                    f'{name} is no longer read ({replacement}); see README, "Trust model and keys"'
                )

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_prefix: str = Field("", description="Prefix put before every topic name.")
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of every topic we create.")
    replication: int = Field(1, ge=1, le=7, description="Replication factor of created topics.")

    tenants_file: Path | None = Field(
        None, description="JSON file of tenant documents (used until the tenants topic is)."
    )

    ingress_host: str = Field("127.0.0.1", description="Ingress listen address.")
    ingress_port: int = Field(8080, ge=0, le=65535, description="Ingress listen port.")
    signature_tolerance: float = Field(
        300.0, gt=0, description="Oldest accepted Stripe-Signature timestamp, seconds."
    )
    signature_future_skew: float = Field(
        60.0, ge=0, description="Furthest-future accepted signature timestamp, seconds."
    )
    publish_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for the broker's ack before answering 503."
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest accepted webhook body.")
    connect_webhook_secrets: list[WebhookSecret] = Field(
        default_factory=list,
        description='Connect platform endpoint secrets, JSON: [{"id": "p1", "secret": "whsec_…"}].',
    )
    ingress_tenant_rate: float = Field(500.0, gt=0, description="Webhooks/s per tenant.")
    ingress_tenant_burst: float = Field(1000.0, gt=0, description="Burst size per tenant.")
    ingress_tenant_max_in_flight: int = Field(
        256, gt=0, description="Concurrent webhook requests per tenant."
    )
    ingress_body_read_timeout: float = Field(
        10.0, gt=0, description="Seconds to receive a whole request body."
    )
    ingress_retry_after: float = Field(5.0, gt=0, description="Retry-After on 503, seconds.")
    ingress_header_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds a connection may go without a complete request head (idle too).",
    )
    ingress_access_log_sample: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Fraction of 2xx webhooks written to the access log (refusals always).",
    )
    ingress_forwarded_hops: int = Field(
        0,
        ge=0,
        le=8,
        description="Trusted proxies in front of the ingress (source from X-Forwarded-For).",
    )
    ingress_max_in_flight: int = Field(
        1024, gt=0, description="Webhook requests in flight per ingress process (global cap)."
    )
    ingress_max_buffered_bytes: int = Field(
        64 * 1_048_576, gt=0, description="Webhook body bytes buffered per ingress process."
    )
    ingress_unverified_source_rate: float = Field(
        20.0, gt=0, description="Unverified failures/s per source address."
    )
    ingress_unverified_source_burst: float = Field(
        100.0, ge=1, description="Burst of unverified failures per source address."
    )
    ingress_unverified_source_max_in_flight: int = Field(
        64, gt=0, description="Concurrent unverified requests per source address."
    )
    ingress_unverified_tenant_rate: float = Field(
        100.0, gt=0, description="Unverified failures/s per webhook route."
    )
    ingress_unverified_tenant_burst: float = Field(
        500.0, ge=1, description="Burst of unverified failures per webhook route."
    )

    app_id: str = Field("quotaflow", description="Faust application id (consumer group).")
    data_dir: Path = Field(Path(".quotaflow/data"), description="Worker state directory.")
    store: str = Field("rocksdb://", description="Faust table store: rocksdb:// or memory://.")
    worker_id: str | None = Field(
        None,
        description="Static group member id of this worker (e.g. the pod name); a restart "
        "with the same id takes its partitions back without a rebalance.",
    )
    worker_fetch_wait_ms: int = Field(
        10,
        ge=0,
        le=1500,
        description="How long the broker may hold the worker's fetch when no data is ready.",
    )
    commit_interval: float = Field(
        5.0, gt=0, description="Seconds between the worker's offset commits."
    )
    grace_seconds: float = Field(
        3 * 86400.0, ge=0, description="How long past_due keeps a quota in grace."
    )
    grace_check_interval: float = Field(
        60.0, gt=0, description="Seconds between the worker's scans for ended grace periods."
    )
    stripe_fetch: bool = Field(
        True, description="Fetch current objects from Stripe on each event (else use snapshots)."
    )
    stripe_api_base: str | None = Field(
        None, description="Stripe API base URL override (stripe-mock/localstripe in tests)."
    )
    stripe_max_in_flight: int = Field(
        256, ge=1, description="Stripe reads in flight per worker, all tenants together."
    )
    stripe_tenant_max_in_flight: int = Field(
        32, ge=1, description="Stripe reads in flight (or retrying) per tenant."
    )
    stripe_tenant_max_queued: int = Field(
        2000,
        ge=1,
        description="Events of one tenant waiting in the worker; past it its partition pauses.",
    )
    worker_max_queued: int = Field(
        20_000, ge=1, description="Events read ahead by the worker, all tenants together."
    )
    stripe_fallback_after: float = Field(
        60.0,
        ge=0,
        description="Seconds a failing Stripe read is retried before the event's snapshot is "
        "applied instead.",
    )

    worker_web_host: str = Field(
        "127.0.0.1", description="Listen address of the worker's --web-port (metrics, readiness)."
    )
    region: str = Field("local", description="This pusher's or edge node's region.")
    pusher_host: str = Field("127.0.0.1", description="Pusher health/metrics listen address.")
    pusher_port: int = Field(
        0, ge=0, le=65535, description="Pusher /healthz, /readyz, /metrics port (0: any free)."
    )
    edge_host: str = Field("127.0.0.1", description="Edge sidecar listen address.")
    edge_port: int = Field(9101, ge=0, le=65535, description="Edge sidecar listen port.")
    edge_rate_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Fraction of each customer's rate_per_second one edge node enforces "
        "(1.0: every node the full rate, so N nodes of a region allow up to N x rate; 1/N "
        "with N nodes sharing a region's traffic evenly).",
    )
    edge_nodes: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Edge node base URLs per region, JSON: {"eu": ["http://127.0.0.1:9101"]}.',
    )
    push_signing_keys: dict[str, list[SecretStr]] = Field(
        default_factory=dict,
        description="Pushers only: Ed25519 private push keys per region, newest first (the "
        'first signs), base64 of 32 bytes, JSON: {"eu": ["…"]}.',
    )
    push_verify_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Edge nodes: Ed25519 public push keys per region (all verify), base64 of "
        '32 bytes, JSON: {"eu": ["new", "old"]}.',
    )
    edge_signing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Edge nodes only: this node's (or its region's) Ed25519 private edge keys, "
        "newest first (the first signs usage reports and announcements), JSON list.",
    )
    edge_verify_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Ingress and pushers: Ed25519 public edge keys per region (all verify "
        'usage reports and announcements), JSON: {"eu": ["…"]}.',
    )
    push_tolerance: float = Field(30.0, gt=0, description="Push timestamp window, seconds.")
    edge_app_tokens: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Edge nodes: SHA-256 hex digests of the bearer tokens of the applications "
        'that may check, consume and read quotas, JSON: {"rating-api": "<digest>"} or '
        '{"rating-api": ["new", "old"]} while a token rotates. Digests only, never tokens.',
    )
    edge_allow_loopback: bool = Field(
        False,
        description="Edge nodes: let loopback callers (127.0.0.0/8, ::1) check, consume and "
        "read quotas without a token (application name `loopback`).",
    )
    edge_consume_max_bytes: int = Field(
        4096, gt=0, description="Largest consume or check body at the edge, bytes."
    )
    edge_push_max_bytes: int = Field(
        16 * 1_048_576, gt=0, description="Largest push body at the edge, bytes."
    )
    edge_body_read_timeout: float = Field(
        5.0, gt=0, description="Seconds an edge request may take to send its whole body."
    )
    edge_idempotency_ttl: float = Field(
        300.0, gt=0, description="Seconds an edge consume's Idempotency-Key is remembered."
    )
    edge_idempotency_max_keys: int = Field(
        50_000, ge=1, description="Idempotency keys an edge node holds per application."
    )
    edge_identify: Literal["headers", "api_key"] = Field(
        "headers",
        description="Edge forward-auth and ASGI middleware: how a request names its customer: "
        "`headers` (tenant and customer headers set by the gateway) or `api_key` (the "
        "caller's API key, looked up by digest in QUOTAFLOW_EDGE_API_KEYS / _FILE).",
    )
    edge_tenant_header: str = Field(
        "X-Quotaflow-Tenant", min_length=1, description="Header naming the tenant (headers mode)."
    )
    edge_customer_header: str = Field(
        "X-Quotaflow-Customer",
        min_length=1,
        description="Header naming the customer (headers mode).",
    )
    edge_api_key_header: str = Field(
        "X-Api-Key",
        min_length=1,
        description="Header carrying the caller's API key (api_key mode); not Authorization.",
    )
    edge_api_keys: dict[str, str] = Field(
        default_factory=dict,
        description='API key table, JSON: {"<sha256 hex of the key>": "tenant_id/customer_id"}. '
        "Digests only, never keys.",
    )
    edge_api_keys_file: Path | None = Field(
        None,
        description="A JSON file holding more of the API key table (same format), read at start.",
    )
    edge_routes: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Feature and cost per route, JSON: [{"prefix": "/v1/export", "method": '
        '"POST", "feature": "export", "cost": 10}]; the longest matching prefix wins.',
    )
    edge_default_cost: int = Field(
        1, ge=0, le=1_000_000_000, description="Cost of a request no route matches."
    )
    edge_authorize_retry_after: float = Field(
        1.0,
        gt=0,
        description="Retry-After (seconds) of a 503 from forward-auth or the middleware "
        "(no_snapshot, stale_state).",
    )
    edge_url: str | None = Field(
        None,
        description="Base URL this edge node announces for pushes (default: "
        "http://edge_host:edge_port).",
    )
    edge_url_allow: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Hosts or CIDRs per region that announced edge node URLs must be in, "
        'JSON: {"eu": ["10.1.0.0/16", "edge-eu.internal"]}; a region without one accepts '
        "no announced node (configured nodes are always served).",
    )
    edge_announce_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between an edge node's announcements; a pusher drops an "
        "announced node not heard from for three intervals.",
    )

    usage_ingress_url: str = Field(
        "http://127.0.0.1:8080", description="Ingress base URL the edge reports usage to."
    )
    usage_report_interval: float = Field(
        1.0, gt=0, description="Seconds between the edge's usage reports."
    )
    usage_node_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Stable id of this edge node in usage batch ids (default: region-host-port).",
    )
    usage_spool_dir: Path = Field(
        Path(".quotaflow/usage-spool"),
        description="Edge directory where unreported usage batches wait (survives restarts).",
    )
    usage_spool_max_batches: int = Field(
        600, ge=2, description="Unsent batches kept apart; past it new usage merges into the last."
    )
    usage_legacy_batch_ids: bool = Field(
        True,
        description="Ingress: accept legacy `node:seq` batch ids (edges spooled before spool "
        "incarnations); turn off once every edge runs a version that sends incarnations.",
    )
    usage_max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest accepted usage report at the ingress."
    )
    usage_max_items: int = Field(
        5_000, gt=0, description="Most (tenant, customer) items in one usage report."
    )
    usage_thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9, 0.95, 0.99, 1.0],
        description="Fractions of the limit whose crossing by usage publishes a quota update.",
    )
    meter_enabled: bool = Field(
        True, description="Report usage to Stripe Billing meters from the worker."
    )
    meter_rate_live: float = Field(
        80.0, gt=0, description="Meter event calls/s per live Stripe account."
    )
    meter_rate_test: float = Field(
        20.0, gt=0, description="Meter event calls/s per test Stripe account."
    )
    meter_max_in_flight: int = Field(
        64, gt=0, description="Meter event calls in flight per worker."
    )

    keyring: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Key-encryption keys by id, newest first, base64 of 32 bytes, JSON: "
        '{"k2": "…", "k1": "…"}. The first one wraps; all unwrap.',
    )
    tenant_signing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Admin tools only (CLI, admin API): Ed25519 private tenants signing keys, "
        "newest first (the first signs every tenant record), JSON list.",
    )
    tenant_verify_keys: list[str] = Field(
        default_factory=list,
        description="Every component reading the tenants topic: Ed25519 public tenants keys "
        '(all verify), base64 of 32 bytes, JSON: ["new", "old"].',
    )
    tenant_cache_size: int = Field(
        1024,
        ge=1,
        description="Tenant documents (secrets decrypted) each process keeps built; the "
        "others are kept packed and built again on use (~50 us).",
    )
    admin_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Admin API bearer tokens by name (the audit actor), JSON: {"ops": "…"}.',
    )
    admin_host: str = Field("127.0.0.1", description="Tenant admin API listen address.")
    admin_port: int = Field(8090, ge=0, le=65535, description="Tenant admin API listen port.")
    console_enabled: bool = Field(
        True, description="Serve the operator console under /console of the admin server."
    )
    console_session_ttl: float = Field(
        28800.0, gt=0, le=7 * 86400, description="Seconds a console sign-in lasts."
    )
    console_secure_cookie: bool | None = Field(
        None,
        description="Console cookies carry Secure: true, false, or unset = when the request "
        "came over TLS (directly or X-Forwarded-Proto: https).",
    )
    console_edge_token: SecretStr | None = Field(
        None,
        description="An edge application token the console reads customers' quotas at the "
        "edge nodes with (its digest in the nodes' QUOTAFLOW_EDGE_APP_TOKENS).",
    )
    console_ingress_metrics: list[str] = Field(
        default_factory=list,
        description="Ingress /metrics URLs the console samples for the last hour's "
        'outcomes and signature failures, JSON: ["http://ingress:8080/metrics"].',
    )
    console_pusher_metrics: list[str] = Field(
        default_factory=list,
        description="Pusher /metrics URLs the console reads for push latency per region "
        'and deliveries per edge node, JSON: ["http://pusher-eu:9102/metrics"].',
    )
    regions: list[str] = Field(
        default_factory=list,
        description="Regions tenants may be served in, JSON list; empty = those named by "
        "QUOTAFLOW_EDGE_NODES, QUOTAFLOW_PUSH_SIGNING_KEYS, QUOTAFLOW_PUSH_VERIFY_KEYS and "
        "QUOTAFLOW_REGION.",
    )

    notify_allow_private: bool = Field(
        False,
        description="Allow notification endpoints that resolve to loopback, link-local, "
        "private or unspecified addresses (SSRF guard; checked when configured and at each "
        "delivery). Off in production; tests and single-host setups only.",
    )
    notifier_host: str = Field("127.0.0.1", description="Notifier /healthz, /metrics address.")
    notifier_port: int = Field(
        9104, ge=0, le=65535, description="Notifier /healthz, /readyz, /metrics listen port."
    )
    notifier_timeout: float = Field(
        10.0, gt=0, description="Notifier: seconds for one delivery (connect to answer)."
    )
    notifier_retry_base: float = Field(
        5.0, gt=0, description="Notifier: first retry delay, seconds (doubles, full jitter)."
    )
    notifier_retry_max_delay: float = Field(
        3600.0, gt=0, description="Notifier: longest delay between two attempts, seconds."
    )
    notifier_give_up_after: float = Field(
        86_400.0,
        gt=0,
        description="Notifier: an endpoint failing this long (seconds) is disabled (audited, "
        "alerted) and its notifications go to the dead letters.",
    )
    notifier_tenant_rate: float = Field(
        20.0, gt=0, description="Notifier: delivery attempts per second per tenant."
    )
    notifier_endpoint_queue: int = Field(
        1000,
        gt=0,
        description="Notifier: notifications held per endpoint; past it the endpoint's "
        "partition waits (memory stays bounded).",
    )
    notifier_max_pending: int = Field(
        20_000, gt=0, description="Notifier: notifications held in memory in all."
    )
    notifier_group: str = Field(
        "quotaflow-notifier", description="Notifier consumer group (one per deployment)."
    )

    log_level: str = Field("INFO", description="Log level for the JSON logs.")

    @field_validator("tenants_file", "edge_api_keys_file", "console_edge_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("edge_app_tokens", mode="before")
    @classmethod
    def _app_token_digests(cls, value: object) -> object:
        # Raised as RemovedSetting's kin, not ValueError: pydantic would echo the input, and
        # an operator who pasted a token here instead of its digest must not see it logged.
        try:
            return normalise_digests(value)
        except ValueError as exc:
            raise InvalidSetting(f"QUOTAFLOW_EDGE_APP_TOKENS: {exc}") from None

    @field_validator("edge_api_keys", mode="before")
    @classmethod
    def _api_key_digests(cls, value: object) -> object:
        # As for app tokens: a key pasted instead of its digest must not be echoed.
        try:
            return {d: "/".join(owner) for d, owner in normalise_api_keys(value).items()}
        except ValueError as exc:
            raise InvalidSetting(f"QUOTAFLOW_EDGE_API_KEYS: {exc}") from None

    @field_validator("edge_routes", mode="after")
    @classmethod
    def _routes(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parse_routes(value)  # ValueError names the bad route (routes hold no secret)
        return value

    @field_validator("edge_api_key_header", mode="after")
    @classmethod
    def _api_key_header(cls, value: str) -> str:
        if value.strip().lower() == "authorization":
            raise ValueError("the API key header cannot be Authorization (the gateway's)")
        return value

    @field_validator("push_verify_keys", "edge_verify_keys", mode="after")
    @classmethod
    def _public_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        # Public keys only: a private key is checked when its signer is built (at start),
        # never here, where pydantic would echo the value in its error.
        for keys in value.values():
            for key in keys:
                public_key_id(key)
        return value

    @field_validator("tenant_verify_keys", mode="after")
    @classmethod
    def _tenant_public_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            public_key_id(key)
        return value

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


class Topics:
    """Topic names with the configured prefix. Partition counts come from `Settings`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stripe_events = f"{prefix}stripe.events"
        self.usage_events = f"{prefix}usage.events"
        self.tenants = f"{prefix}tenants"
        self.tenants_audit = f"{prefix}tenants.audit"
        self.quota_updates = f"{prefix}quota.updates"
        self.deadletter = f"{prefix}deadletter"
        self.deadletter_redriven = f"{prefix}deadletter.redriven"
        self.meter_jobs = f"{prefix}meter.jobs"
        self.edge_nodes = f"{prefix}edge.nodes"
        self.quota_ticks = f"{prefix}quota.ticks"
        self.notifications = f"{prefix}notifications"
        self.notification_endpoints = f"{prefix}notifications.endpoints"

    def __repr__(self) -> str:
        return f"Topics(prefix={self.prefix!r})"
