"""`open_registry`: the one call every component makes to get its tenants.

With `QUOTAFLOW_TENANTS_FILE` set, the tenants come from that JSON file (local dev, tests);
otherwise from the `tenants` topic, every record verified with `QUOTAFLOW_TENANT_VERIFY_KEYS`,
secrets decrypted with the keyring from `QUOTAFLOW_KEYRING`, followed in the background.
`routing=True` (the pushers) reads the routing view without any keyring: every field but
the secrets, still verified.

The write side (`open_writer`, the `TenantWriter`) belongs to the operator's commands and
lives with them, in `quotaflow.commands.tenants.writer`: a component only reads.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from quotaflow.registry import StaticTenantRegistry, TenantRegistry, load_tenants_file
from quotaflow.settings import KeyringGroup, TenantsGroup
from quotaflow.tenants.keyring import KeyEncryptionKeys, LocalKeyring
from quotaflow.tenants.topic_registry import TopicTenantRegistry

__all__ = [
    "FileTenantRegistry",
    "RunningRegistry",
    "keyring_from_settings",
    "open_registry",
]


class RunningRegistry(TenantRegistry, Protocol):
    """A started registry; `stop()` releases what it holds and is safe to call twice."""

    def begin_checks(self) -> None:
        """Starts the background check pass if `open_registry` deferred it."""
        ...

    async def stop(self) -> None: ...


class FileTenantRegistry(StaticTenantRegistry):
    """The tenants of a JSON file, fixed for the life of the process."""

    def begin_checks(self) -> None:
        return None  # validated as a whole when the file was read

    async def stop(self) -> None:
        return None


def keyring_from_settings(settings: KeyringGroup) -> LocalKeyring:
    """The keyring `QUOTAFLOW_KEYRING` describes; `KeyringError` if it is empty or malformed."""
    return LocalKeyring.from_secrets(settings.keyring)


async def open_registry(
    settings: TenantsGroup,
    *,
    keyring: KeyEncryptionKeys | None = None,
    routing: bool = False,
    defer_checks: bool = False,
) -> RunningRegistry:
    """The file registry if `settings.tenants_file` is set, else the topic registry, started
    (its initial load complete; records are checked on first use and by a background pass,
    see `topic_registry`). Call `stop()` on it when the component stops. With `routing`,
    no keyring is read: tenants come without their secrets. With `defer_checks` the pass
    waits for `begin_checks()`."""
    if settings.tenants_file is not None:
        # Off the loop: a file of 100,000 tenants takes seconds to validate.
        return FileTenantRegistry(await asyncio.to_thread(load_tenants_file, settings.tenants_file))
    ring = None if routing else (keyring or keyring_from_settings(_with_keyring(settings)))
    registry = TopicTenantRegistry(settings, ring, defer_checks=defer_checks)
    await registry.start()
    return registry


def _with_keyring(settings: TenantsGroup) -> KeyringGroup:
    # A process type without the keyring (the pusher's) opens the routing view only.
    if not isinstance(settings, KeyringGroup):
        raise TypeError(f"{type(settings).__name__} has no keyring: open_registry(routing=True)")
    return settings
