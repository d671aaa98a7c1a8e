"""The edge node's settings: `EdgeSettings`, what `quotaflow edge` / `quotaflow-edge` reads.

Built on the foundation's groups (`quotaflow.settings`: region, signed-message window, push
verify keys, usage report size) plus `EdgeNodeGroup`, the variables only an edge node
reads. The edge-only parsing (application token digests, the API key table, routes) lives
here, beside the edge modules that define those formats, so the foundation never imports
the edge. No keyring, admin token, Stripe or tenant signing field is in this type: an edge
node never parses, nor holds, them (`tests/quotaflow/test_settings.py` checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from edge.auth import normalise_digests
from edge.identify import normalise_api_keys, parse_routes
from quotaflow.settings import (
    CommonSettings,
    InvalidSetting,
    PushVerifyGroup,
    RegionGroup,
    SignedMessagesGroup,
    UsageReportGroup,
)

__all__ = ["EdgeNodeGroup", "EdgeSettings"]


class EdgeNodeGroup(CommonSettings):
    """What only an edge node reads: its listener, keys, applications, limits, how gateway
    requests name customers and features, announcements and the usage reporter."""

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
    edge_signing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Edge nodes only: this node's (or its region's) Ed25519 private edge keys, "
        "newest first (the first signs usage reports and announcements), JSON list.",
    )
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

    @field_validator("edge_api_keys_file", mode="before")
    @classmethod
    def _api_keys_file_empty_is_none(cls, value: object) -> object:
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


class EdgeSettings(
    UsageReportGroup, SignedMessagesGroup, RegionGroup, PushVerifyGroup, EdgeNodeGroup
):
    """`quotaflow edge` / `quotaflow-edge`: an edge sidecar."""
