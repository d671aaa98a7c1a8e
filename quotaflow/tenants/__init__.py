"""Tenants: the registry on the compacted `tenants` topic, onboarding, and per-tenant
secrets under rotating envelope encryption.

Components call `open_registry(settings)`; operators use `quotaflow tenants …`,
`quotaflow keys …`, the admin API (`build_admin_app`) and the console.
"""

from quotaflow.tenants.keyring import KeyEncryptionKeys, LocalKeyring, WrappedKey
from quotaflow.tenants.running import (
    FileTenantRegistry,
    RunningRegistry,
    keyring_from_settings,
    open_registry,
    open_writer,
)
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.tenants.writer import TenantWriter

__all__ = [
    "FileTenantRegistry",
    "KeyEncryptionKeys",
    "LocalKeyring",
    "RunningRegistry",
    "TenantWriter",
    "TopicTenantRegistry",
    "WrappedKey",
    "keyring_from_settings",
    "open_registry",
    "open_writer",
]
