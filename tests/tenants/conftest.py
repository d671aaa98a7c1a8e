"""Factories for the tenants tests: keyrings, documents, and a started writer with its
registry on the session broker (fresh topic prefix per test)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from quotaflow.commands.tenants.audit import ensure_audit_topic
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.topics import ensure_topics

REGIONS = frozenset({"eu", "us"})


def kek() -> bytes:
    return os.urandom(32)


def keyring_env(keys: dict[str, bytes]) -> str:
    return (
        "{" + ", ".join(f'"{k}": "{base64.b64encode(v).decode()}"' for k, v in keys.items()) + "}"
    )


def tenant_doc(tenant_id: str = "acme", **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": tenant_id,
        "name": "Acme",
        "mode": "test",
        # One account per tenant: the writer refuses an account another tenant holds.
        "stripe_account": "acct_1" + "".join(c for c in tenant_id.capitalize() if c.isalnum()),
        "webhook_secrets": [{"id": "s1", "secret": f"whsec_{tenant_id}_{os.urandom(8).hex()}"}],
        "stripe_api_key": f"rk_test_{tenant_id}_{os.urandom(8).hex()}",
        "regions": ["eu"],
        "plans": {"pro": {"quota": 1000}, "unlimited": {"quota": None}},
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {"k1": kek()}


@pytest.fixture
def keyring(keys: dict[str, bytes]) -> LocalKeyring:
    return LocalKeyring(keys)


@pytest.fixture
async def settings(settings_factory: Callable[..., Settings]) -> Settings:
    s = settings_factory()
    await ensure_topics(s)
    await ensure_audit_topic(s)
    return s


RegistryFactory = Callable[..., Awaitable[TopicTenantRegistry]]


@pytest.fixture
async def open_topic_registry(
    settings: Settings, keyring: LocalKeyring
) -> AsyncIterator[RegistryFactory]:
    """Starts registries on the test's topics; stops them after the test."""
    started: list[TopicTenantRegistry] = []

    async def make(
        ring: LocalKeyring | None = None, *, background: bool = True
    ) -> TopicTenantRegistry:
        """`background=False`: records are checked on first use only (no check pass);
        otherwise the registry is returned once every record read is checked."""
        registry = TopicTenantRegistry(settings, ring or keyring, check_in_background=background)
        await registry.start()
        started.append(registry)
        if background:
            await registry.wait_checked(10)
        return registry

    yield make
    for registry in started:
        await registry.stop()


@pytest.fixture
async def writer(
    settings: Settings, keyring: LocalKeyring, open_topic_registry: RegistryFactory
) -> AsyncIterator[TenantWriter]:
    w = TenantWriter(settings, keyring, await open_topic_registry(), known_regions=REGIONS)
    await w.start()
    yield w
    await w.stop()
