"""Configuration: validated, frozen objects read from `QUOTAFLOW_*` environment variables.

Each concern (Kafka, reading tenants, the keyring, the ingress, the worker, Stripe, …) is a
group: a pydantic-settings class holding that concern's fields and their validators. Each
process composes the groups it reads into its own type (`IngressSettings`,
`WorkerSettings`, `PusherSettings`, `NotifierSettings`, `AdminSettings`; the edge's
`EdgeSettings` is in `edge/settings.py`, with the edge-only parsing), so a process never
parses, nor holds, another's secrets. `Settings` is every group defined here: what the
operator commands (`quotaflow tenants`, `replay`, `dev`, …) read.

A function takes the narrowest group it reads (`ensure_topics(settings: KafkaGroup)`); a
process type, or `Settings`, is a subclass of each of its groups, so it can be passed to
any of them. Every variable is documented in the README's configuration table with the
components reading it; `tests/quotaflow/test_settings.py`
(`test_readme_documents_every_setting_and_nothing_else`,
`test_readme_names_the_components_reading_each_variable`) checks both against the classes.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


def _check_public_keys(keys: list[str]) -> None:
    # Public keys only: a private key is checked when its signer is built (at start),
    # never here, where pydantic would echo the value in its error.
    for key in keys:
        public_key_id(key)


class CommonSettings(BaseSettings):
    """What every process reads (the JSON logs' level), and the one check every process
    makes: no removed variable is set. Every group derives from it.

    Validators of the groups have distinct names: pydantic keys a class's validators by
    name, so two groups' `_check` would hide one another in a type composing both."""

    model_config = SettingsConfigDict(env_prefix="QUOTAFLOW_", frozen=True, extra="ignore")

    def model_post_init(self, context: Any, /) -> None:
        # Not a validator: pydantic would echo the (secret) inputs with its error.
        for name, replacement in REMOVED.items():
            if name in os.environ:
                raise RemovedSetting(
                    f'{name} is no longer read ({replacement}); see README, "Trust model and keys"'
                )

    log_level: str = Field("INFO", description="Log level for the JSON logs.")


class KafkaGroup(CommonSettings):
    """The broker, the topics and the consumer group of the pipeline's Kafka clients."""

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_prefix: str = Field("", description="Prefix put before every topic name.")
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of every topic we create.")
    replication: int = Field(1, ge=1, le=7, description="Replication factor of created topics.")
    app_id: str = Field("quotaflow", description="Faust application id (consumer group).")

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


class TenantsGroup(KafkaGroup):
    """Reading the tenants (file or signed `tenants` topic): every component. Secrets are
    opened only with `KeyringGroup`; tenant records are signed only with
    `TenantSigningGroup`."""

    tenants_file: Path | None = Field(
        None, description="JSON file of tenant documents (used until the tenants topic is)."
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

    @field_validator("tenants_file", mode="before")
    @classmethod
    def _tenants_file_empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("tenant_verify_keys", mode="after")
    @classmethod
    def _tenant_public_keys(cls, value: list[str]) -> list[str]:
        _check_public_keys(value)
        return value


class KeyringGroup(TenantsGroup):
    """The key-encryption keys that open tenants' secrets: the ingress, the worker, the
    notifier and the admin tools; never a pusher or an edge node."""

    keyring: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Key-encryption keys by id, newest first, base64 of 32 bytes, JSON: "
        '{"k2": "…", "k1": "…"}. The first one wraps; all unwrap.',
    )


class TenantSigningGroup(TenantsGroup):
    """The private keys that sign tenant records: the admin tools only."""

    tenant_signing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Admin tools only (CLI, admin API): Ed25519 private tenants signing keys, "
        "newest first (the first signs every tenant record), JSON list.",
    )


class IngressGroup(CommonSettings):
    """The webhook ingress: its listener, Stripe signatures, budgets, and usage reports."""

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
    usage_legacy_batch_ids: bool = Field(
        True,
        description="Ingress: accept legacy `node:seq` batch ids (edges spooled before spool "
        "incarnations); turn off once every edge runs a version that sends incarnations.",
    )
    usage_max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest accepted usage report at the ingress."
    )


class UsageReportGroup(CommonSettings):
    """The size of a usage report: the edge writes within it, the ingress refuses beyond."""

    usage_max_items: int = Field(
        5_000, gt=0, description="Most (tenant, customer) items in one usage report."
    )


class SignedMessagesGroup(CommonSettings):
    """The age window of signed pushes, usage reports and announcements (every verifier)."""

    push_tolerance: float = Field(30.0, gt=0, description="Push timestamp window, seconds.")


class EdgeVerifyGroup(CommonSettings):
    """Edge nodes' public keys: the ingress, the pushers and the console verify what the
    nodes sign (usage reports, announcements)."""

    edge_verify_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Ingress and pushers: Ed25519 public edge keys per region (all verify "
        'usage reports and announcements), JSON: {"eu": ["…"]}.',
    )

    @field_validator("edge_verify_keys", mode="after")
    @classmethod
    def _edge_public_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for keys in value.values():
            _check_public_keys(keys)
        return value


class WorkerGroup(CommonSettings):
    """The stream worker: its Faust app, state, commits, read-ahead and web port."""

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
    grace_check_interval: float = Field(
        60.0, gt=0, description="Seconds between the worker's scans for ended grace periods."
    )
    worker_max_queued: int = Field(
        20_000, ge=1, description="Events read ahead by the worker, all tenants together."
    )
    worker_web_host: str = Field(
        "127.0.0.1", description="Listen address of the worker's --web-port (metrics, readiness)."
    )


class PolicyGroup(CommonSettings):
    """How quotas are computed: the worker applies it, `quota explain` replays it."""

    grace_seconds: float = Field(
        3 * 86400.0, ge=0, description="How long past_due keeps a quota in grace."
    )
    usage_thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9, 0.95, 0.99, 1.0],
        description="Fractions of the limit whose crossing by usage publishes a quota update.",
    )


class StripeGroup(CommonSettings):
    """Where Stripe is: the worker, onboarding and reconcile call it."""

    stripe_api_base: str | None = Field(
        None, description="Stripe API base URL override (stripe-mock/localstripe in tests)."
    )


class StripeFetchGroup(CommonSettings):
    """The worker's Stripe reads: on or off, concurrency, queues and fallback."""

    stripe_fetch: bool = Field(
        True, description="Fetch current objects from Stripe on each event (else use snapshots)."
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
    stripe_fallback_after: float = Field(
        60.0,
        ge=0,
        description="Seconds a failing Stripe read is retried before the event's snapshot is "
        "applied instead.",
    )


class MeterGroup(CommonSettings):
    """The worker's usage reports to Stripe Billing meters."""

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


class RegionGroup(CommonSettings):
    """A region's meeting point: the pusher's or edge node's region, and how often its
    edge nodes announce themselves (the console reads both)."""

    region: str = Field("local", description="This pusher's or edge node's region.")
    edge_announce_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between an edge node's announcements; a pusher drops an "
        "announced node not heard from for three intervals.",
    )


class EdgeDirectoryGroup(CommonSettings):
    """Which edge nodes a region has: configured ones, and where announced ones may be."""

    edge_nodes: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Edge node base URLs per region, JSON: {"eu": ["http://127.0.0.1:9101"]}.',
    )
    edge_url_allow: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Hosts or CIDRs per region that announced edge node URLs must be in, "
        'JSON: {"eu": ["10.1.0.0/16", "edge-eu.internal"]}; a region without one accepts '
        "no announced node (configured nodes are always served).",
    )


class PushSigningGroup(CommonSettings):
    """The pushers' private keys (the admin tools read only their regions)."""

    push_signing_keys: dict[str, list[SecretStr]] = Field(
        default_factory=dict,
        description="Pushers only: Ed25519 private push keys per region, newest first (the "
        'first signs), base64 of 32 bytes, JSON: {"eu": ["…"]}.',
    )


class PushVerifyGroup(CommonSettings):
    """The pushers' public keys: edge nodes verify pushes with them."""

    push_verify_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Edge nodes: Ed25519 public push keys per region (all verify), base64 of "
        '32 bytes, JSON: {"eu": ["new", "old"]}.',
    )

    @field_validator("push_verify_keys", mode="after")
    @classmethod
    def _push_public_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for keys in value.values():
            _check_public_keys(keys)
        return value


class PusherGroup(CommonSettings):
    """The pusher's own web port (health, readiness, metrics)."""

    pusher_host: str = Field("127.0.0.1", description="Pusher health/metrics listen address.")
    pusher_port: int = Field(
        0, ge=0, le=65535, description="Pusher /healthz, /readyz, /metrics port (0: any free)."
    )


class NotifierGroup(CommonSettings):
    """The notifier: its web port, deliveries, retries, budgets and consumer group."""

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


class EndpointGuardGroup(CommonSettings):
    """Where notification endpoints may point: checked when configured (admin) and at
    each delivery (notifier)."""

    notify_allow_private: bool = Field(
        False,
        description="Allow notification endpoints that resolve to loopback, link-local, "
        "private or unspecified addresses (SSRF guard; checked when configured and at each "
        "delivery). Off in production; tests and single-host setups only.",
    )


class AdminGroup(CommonSettings):
    """The tenant admin API and the operator console, and the regions tenants may name."""

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

    @field_validator("console_edge_token", mode="before")
    @classmethod
    def _console_token_empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


# The process types. Each lists its groups in the order they are defined above, the
# tenants groups last, so that `Settings`, which derives from all of them, has a
# consistent method resolution order.


class IngressSettings(
    IngressGroup, UsageReportGroup, SignedMessagesGroup, EdgeVerifyGroup, KeyringGroup
):
    """`quotaflow ingress`: webhooks (tenants' secrets) and the edge nodes' usage reports
    and announcements."""


class WorkerSettings(
    WorkerGroup, PolicyGroup, StripeGroup, StripeFetchGroup, MeterGroup, KeyringGroup
):
    """`quotaflow worker`: Stripe events into quotas, usage into meters."""


class PusherSettings(
    SignedMessagesGroup,
    EdgeVerifyGroup,
    RegionGroup,
    EdgeDirectoryGroup,
    PushSigningGroup,
    PusherGroup,
    TenantsGroup,
):
    """`quotaflow push`: one region's edge nodes, without the keyring."""


class NotifierSettings(NotifierGroup, EndpointGuardGroup, KeyringGroup):
    """`quotaflow notifier`: notifications signed with the endpoints' secrets."""


class AdminSettings(
    EdgeVerifyGroup,
    PolicyGroup,
    StripeGroup,
    RegionGroup,
    EdgeDirectoryGroup,
    PushSigningGroup,
    PushVerifyGroup,
    EndpointGuardGroup,
    AdminGroup,
    KeyringGroup,
    TenantSigningGroup,
):
    """`quotaflow admin`: the admin API and the console, which onboard, explain, re-drive
    and show the pipeline (the regions tenants may name come from the region groups)."""


# The pydantic mypy plugin gives each model a `model_construct` of its own fields, which
# mypy then finds incompatible between the bases; pydantic builds the union correctly.
class Settings(  # type: ignore[misc]
    IngressSettings, WorkerSettings, PusherSettings, NotifierSettings, AdminSettings
):
    """Every group of this module: what the operator commands read (`quotaflow tenants`,
    `keys`, `replay`, `deadletter`, `quota`, `reconcile`, `lag`, `notifications`, `dev`).
    The edge node's own group is not here (`edge/settings.py`): no command reads it."""


class Topics:
    """Topic names with the configured prefix. Partition counts come from `KafkaGroup`."""

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
