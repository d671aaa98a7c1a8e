"""Every error the ingress raises, on one base class.

    IngressError (status, reason, message)
    ├── SignatureError      400  the Stripe-Signature header does not verify the body
    ├── RequestRejected     4xx  a verified or unverifiable request we refuse (tenant, body)
    ├── Throttled           429  a tenant's delivery budget, or an unverified budget, is spent
    ├── Overloaded          503  the global in-flight or buffered-bytes cap is reached
    ├── PublishUnavailable  503  the broker did not acknowledge in time (retriable)
    └── AccountConflict     503  two tenants claim a Connect event's account (retriable)

`reason` is a stable machine-readable string: metrics count by it and clients match on it.
`message` is for humans and never carries a secret or the request body.
"""

from __future__ import annotations


class IngressError(Exception):
    """A request the ingress refuses, with the HTTP status and reason to answer with."""

    status: int = 400
    retriable: bool = False

    def __init__(self, reason: str, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, reason={self.reason!r})"


class SignatureError(IngressError):
    """The Stripe-Signature header is missing, malformed, stale, or matches no secret."""

    status = 400


class RequestRejected(IngressError):
    """The request names no known tenant, or its body is not an acceptable Stripe event."""

    status = 400


class Throttled(IngressError):
    """A budget is spent: the tenant's deliveries (`tenant_throttled`), or the unverified
    failures of a source (`source_throttled`) or a route (`route_throttled`)."""

    status = 429
    retriable = True

    def __init__(
        self, message: str = "", *, retry_after: float = 1.0, reason: str = "tenant_throttled"
    ) -> None:
        super().__init__(reason, message or "tenant is over its request limit")
        self.retry_after = retry_after


class Overloaded(IngressError):
    """The process holds its cap of requests in flight or of buffered body bytes."""

    status = 503
    retriable = True

    def __init__(self, *, retry_after: float = 5.0) -> None:
        super().__init__("ingress_busy", "the ingress is at its in-flight or buffer cap")
        self.retry_after = retry_after


class PublishUnavailable(IngressError):
    """The broker is unreachable or did not acknowledge before the deadline: Stripe retries."""

    status = 503
    retriable = True

    def __init__(self, reason: str, message: str = "", *, retry_after: float = 5.0) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after


class AccountConflict(IngressError):
    """Two tenants claim the Connect event's account: routing it to either could hand one
    tenant's events to the other, so Stripe is told to retry while an operator fixes it."""

    status = 503
    retriable = True

    def __init__(self, *, retry_after: float = 60.0) -> None:
        super().__init__("account_conflict", "more than one tenant has this stripe_account")
        self.retry_after = retry_after
