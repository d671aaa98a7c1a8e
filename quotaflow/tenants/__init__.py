"""Tenants as the components read them: the registry on the compacted `tenants` topic (or
a file), verified and with per-tenant secrets under rotating envelope encryption.

Components call `open_registry(settings)`. The write side (the `TenantWriter`, onboarding,
the admin API, `quotaflow tenants …` and `quotaflow keys …`) is the operator's, in
`quotaflow.commands.tenants`: nothing a component imports can write a tenant.
"""

from quotaflow.tenants.keyring import KeyEncryptionKeys, LocalKeyring, WrappedKey
from quotaflow.tenants.running import (
    FileTenantRegistry,
    RunningRegistry,
    keyring_from_settings,
    open_registry,
)
from quotaflow.tenants.topic_registry import TopicTenantRegistry

__all__ = [
    "FileTenantRegistry",
    "KeyEncryptionKeys",
    "LocalKeyring",
    "RunningRegistry",
    "TopicTenantRegistry",
    "WrappedKey",
    "keyring_from_settings",
    "open_registry",
]
