"""Errors of the tenants package, on one base class; details are fields, never secrets.

QuotaflowError
└── TenantsError
    ├── InvalidTenant        a document or patch is refused (names the field)
    ├── TenantNotFound       no tenant with that id
    ├── TenantExists         `add` of an id that is already registered
    ├── AccountInUse         another tenant already has that Stripe Connect account
    ├── TenantStateError     the operation does not fit the tenant's state
    ├── KeyringError         the keyring is missing, malformed or lacks a key id
    ├── DecryptionError      a ciphertext does not open (wrong key, tenant or field)
    └── WebhookRegistrationError  Stripe refused or answered without a secret
"""

from __future__ import annotations

from quotaflow.exceptions import QuotaflowError


class TenantsError(QuotaflowError):
    """Base of every error the tenants package raises on purpose."""


class InvalidTenant(TenantsError):
    """A tenant document or patch is refused; `field` is a dotted path such as `plans.pro.quota`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class TenantNotFound(TenantsError):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"no tenant {tenant_id!r}")
        self.tenant_id = tenant_id


class TenantExists(TenantsError):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} already exists")
        self.tenant_id = tenant_id


class AccountInUse(TenantsError):
    """Connect events are routed by `stripe_account`: two tenants with one account would
    make them land with whichever was written last."""

    def __init__(self, tenant_id: str, holder: str) -> None:
        super().__init__(f"tenant {holder!r} already has this stripe_account")
        self.tenant_id = tenant_id
        self.holder = holder


class TenantStateError(TenantsError):
    def __init__(self, tenant_id: str, message: str) -> None:
        super().__init__(f"tenant {tenant_id!r}: {message}")
        self.tenant_id = tenant_id


class KeyringError(TenantsError):
    """The keyring cannot serve the request; the message names key ids, never key bytes."""


class DecryptionError(TenantsError):
    """A ciphertext did not authenticate under the given key, tenant and field."""

    def __init__(self, tenant_id: str, field: str) -> None:
        super().__init__(f"cannot decrypt {field} of tenant {tenant_id!r}")
        self.tenant_id = tenant_id
        self.field = field


class WebhookRegistrationError(TenantsError):
    def __init__(self, tenant_id: str, message: str) -> None:
        super().__init__(f"tenant {tenant_id!r}: {message}")
        self.tenant_id = tenant_id
