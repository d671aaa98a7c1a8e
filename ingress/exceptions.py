"""Every error the ingress raises, on one base class.

    IngressError (status, reason, message)
    ├── SignatureError      400  the Stripe-Signature header does not verify the body
    ├── RequestRejected     4xx  a verified or unverifiable request we refuse (tenant, body)
    ├── Throttled           429  the tenant is over its in-flight or rate limit
    └── PublishUnavailable  503  the broker did not acknowledge in time (retriable)

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
    """The tenant exceeded its own in-flight or rate limit; other tenants are unaffected."""

    status = 429
    retriable = True

    def __init__(self, message: str = "", *, retry_after: float = 1.0) -> None:
        super().__init__("tenant_throttled", message or "tenant is over its request limit")
        self.retry_after = retry_after


class PublishUnavailable(IngressError):
    """The broker is unreachable or did not acknowledge before the deadline: Stripe retries."""

    status = 503
    retriable = True

    def __init__(self, reason: str, message: str = "", *, retry_after: float = 5.0) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after
