"""The tenant document: who a tenant is, how its webhooks are verified, what its plans grant.

The plan catalog maps a Stripe price `lookup_key`, price id or product id to entitlements:
the default metered quota, named metered features and boolean features (`PlanEntry`).
Secrets are `SecretStr`, so `repr`, `str` and logs show them masked.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


FEATURE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
# A feature name in a plan, a quota record, a usage report and a route rule.
FEATURE_MAX_CHARS = 64


class MeteredFeature(BaseModel):
    """One metered feature a catalog entry grants per unit of quantity: its own period
    quota, optional rate limit (calls per second) and optional Stripe meter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quota: int | None = Field(..., ge=0, description="Units per billing period; null = unlimited.")
    rate_per_second: float | None = Field(None, gt=0)
    meter_event_name: str | None = Field(
        None, min_length=1, max_length=100, description="Stripe Billing meter for its usage."
    )


class PlanEntry(BaseModel):
    """What one catalog entry grants per unit of quantity.

    The top-level `quota`, `rate_per_second` and `meter_event_name` are the *default*
    metered feature (what a call naming no feature, or a boolean feature, spends): a
    single-quota plan of before is exactly that. `metered` adds named metered features,
    each counted apart; `features` are boolean features.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    quota: int | None = Field(..., ge=0, description="Units per billing period; null = unlimited.")
    rate_per_second: float | None = Field(None, gt=0)
    features: tuple[str, ...] = ()
    metered: dict[str, MeteredFeature] = Field(
        default_factory=dict, description="Named metered features, each with its own quota."
    )
    topup: bool = Field(False, description="A one-off price whose units add to the period.")
    meter_event_name: str | None = Field(None, description="Stripe Billing meter for usage.")

    @field_validator("metered")
    @classmethod
    def _metered_names(cls, value: dict[str, MeteredFeature]) -> dict[str, MeteredFeature]:
        for name in value:
            if not re.match(FEATURE_PATTERN, name):
                raise ValueError(f"metered feature name {name!r} must match {FEATURE_PATTERN}")
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> PlanEntry:
        both = set(self.features) & set(self.metered)
        if both:
            raise ValueError(f"{sorted(both)} cannot be both boolean and metered")
        if self.topup and self.metered:
            raise ValueError("a top-up grants default units only, not metered features")
        return self


class WebhookSecret(BaseModel):
    """One active webhook signing secret. `id` is what envelopes and logs name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, max_length=64)
    secret: SecretStr
    expires_at: float | None = Field(
        None, description="Unix seconds; set on the old secret of a roll."
    )

    @field_validator("secret")
    @classmethod
    def _whsec_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("whsec_"):
            raise ValueError("a webhook signing secret starts with whsec_")
        return value

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


# The events a tenant can be notified of (tables/notifications.py derives them).
NotificationType = Literal[
    "quota.threshold_crossed",
    "quota.exhausted",
    "quota.restored",
    "customer.grace_started",
    "customer.blocked",
    "customer.unblocked",
]
NOTIFICATION_TYPES: tuple[NotificationType, ...] = get_args(NotificationType)
ENDPOINT_ID_PATTERN = r"^ep_[A-Za-z0-9]{1,40}$"


class NotificationEndpoint(BaseModel):
    """Where a tenant wants its customers' quota events, signed with the endpoint's own
    Standard Webhooks secret (`whsec_` + base64 of 24-64 random bytes), sealed at rest.

    `thresholds` are fractions of the limit for `quota.threshold_crossed`; `feature`, when
    set, makes the endpoint receive the notifications about that named metered feature
    (`data.feature`) and only those; an endpoint without one receives those about the
    customer (`data.feature` null). `disabled_at`/`disabled_reason`
    are set by the notifier when deliveries failed for the configured window.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=ENDPOINT_ID_PATTERN)
    url: str = Field(..., min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")
    event_types: tuple[NotificationType, ...] = Field(
        NOTIFICATION_TYPES, min_length=1, description="Which events this endpoint receives."
    )
    thresholds: tuple[float, ...] = Field(
        (0.8,), max_length=10, description="Fractions of the limit, each in (0, 1]."
    )
    feature: str | None = Field(None, min_length=1, max_length=200)
    secret: SecretStr
    enabled: bool = True
    disabled_at: float | None = None
    disabled_reason: str | None = Field(None, max_length=500)
    created_at: float = Field(default_factory=time.time)

    @field_validator("secret")
    @classmethod
    def _whsec_shape(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.startswith("whsec_"):
            raise ValueError("an endpoint signing secret starts with whsec_")
        try:
            key = base64.b64decode(text[len("whsec_") :], validate=True)
        except ValueError:
            raise ValueError("an endpoint signing secret is whsec_ + base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("an endpoint signing key has 24 to 64 bytes")
        return value

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f <= 1 for f in value):
            raise ValueError("each threshold is a fraction in (0, 1]")
        return tuple(sorted(set(value)))

    def wants(self, event_type: str, threshold: float | None, feature: str | None) -> bool:
        """Whether a notification of `event_type` (at `threshold`, for `feature`) is for
        this endpoint (enabled or not: a disabled endpoint's share goes to dead letters)."""
        if event_type == "notification.test":
            return True  # an operator's test reaches every endpoint it is sent to
        if event_type not in self.event_types:
            return False
        if feature != self.feature:
            return False  # a feature's events to its endpoints, the whole quota's to the rest
        return threshold is None or threshold in self.thresholds


class Tenant(BaseModel):
    """A platform account: its Stripe account, secrets, regions and plan catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=TENANT_ID_PATTERN)
    name: str = Field("", max_length=200)
    mode: Literal["live", "test"] = "test"
    stripe_account: str | None = Field(None, pattern=r"^acct_[A-Za-z0-9]+$")
    webhook_secrets: tuple[WebhookSecret, ...] = Field(
        (), max_length=2, description="None until `register-webhook` stores Stripe's secret."
    )
    stripe_api_key: SecretStr | None = None
    regions: tuple[str, ...] = Field(..., min_length=1)
    plans: dict[str, PlanEntry] = Field(default_factory=dict)
    event_types: tuple[str, ...] | None = Field(
        None, description="If set, only these verified event types are published."
    )
    customer_alias_key: str | None = Field(
        None, description="Customer metadata key whose value replaces the Stripe customer id."
    )
    webhook_endpoint_id: str | None = Field(
        None, pattern=r"^we_[A-Za-z0-9]+$", description="The Stripe webhook endpoint we registered."
    )
    status: Literal["active", "suspended"] = "active"
    suspended_at: float | None = Field(
        None,
        description="Unix seconds the current (or last) suspension began; set by the writer.",
    )
    resumed_at: float | None = Field(
        None,
        description="Unix seconds the last suspension ended; the worker reconciles with "
        "Stripe from `suspended_at` (webhooks were refused meanwhile).",
    )
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    notification_endpoints: tuple[NotificationEndpoint, ...] = Field(
        (), max_length=20, description="Webhook endpoints for quota events (issue 17)."
    )

    @field_validator("stripe_api_key")
    @classmethod
    def _api_key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("a Stripe API key starts with sk_ or rk_")
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _unique_secret_ids(cls, value: tuple[WebhookSecret, ...]) -> tuple[WebhookSecret, ...]:
        if len({s.id for s in value}) != len(value):
            raise ValueError("webhook secret ids must be unique")
        return value

    @field_validator("notification_endpoints")
    @classmethod
    def _unique_endpoint_ids(
        cls, value: tuple[NotificationEndpoint, ...]
    ) -> tuple[NotificationEndpoint, ...]:
        if len({e.id for e in value}) != len(value):
            raise ValueError("notification endpoint ids must be unique")
        return value

    @property
    def notification_thresholds(self) -> tuple[float, ...]:
        """Every threshold an enabled endpoint asks for, ascending."""
        fractions = {f for e in self.notification_endpoints if e.enabled for f in e.thresholds}
        return tuple(sorted(fractions))

    @property
    def notification_features(self) -> frozenset[str]:
        """The metered features an enabled endpoint asks about (each one's own events)."""
        return frozenset(
            e.feature for e in self.notification_endpoints if e.enabled and e.feature is not None
        )

    @property
    def notifies(self) -> bool:
        """Whether any endpoint is enabled (else nothing is derived for this tenant)."""
        return any(e.enabled for e in self.notification_endpoints)

    @property
    def livemode(self) -> bool:
        return self.mode == "live"

    def active_secrets(self, now: float) -> list[WebhookSecret]:
        return [s for s in self.webhook_secrets if s.active(now)]

    def plan_for(self, *candidates: str | None) -> PlanEntry | None:
        """The first catalog entry matching a lookup_key, price id or product id, in that order."""
        for key in candidates:
            if key is not None and key in self.plans:
                return self.plans[key]
        return None
