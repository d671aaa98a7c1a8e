"""The registry on the real `tenants` topic: changes reach a second instance without restart."""

from __future__ import annotations

import asyncio

from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from tests.tenants.conftest import RegistryFactory, tenant_doc


async def _until(registry: TopicTenantRegistry, offset: int) -> None:
    await registry.wait_for(offset, timeout=10)


async def test_second_instance_sees_add_update_suspend_delete(
    writer: TenantWriter, open_topic_registry: RegistryFactory
) -> None:
    other = await open_topic_registry()
    assert other.ready
    assert other.get("acme") is None

    added = await writer.add(tenant_doc("acme"), actor="test")
    await _until(other, writer.registry.position - 1)
    seen = other.get("acme")
    assert seen is not None
    assert seen.webhook_secrets[0].secret == added.webhook_secrets[0].secret
    assert seen.stripe_api_key == added.stripe_api_key
    assert other.by_account("acct_1Acme") == seen

    await writer.update("acme", {"plans": {"pro": {"quota": 5000}}}, actor="test")
    await _until(other, writer.registry.position - 1)
    updated = other.get("acme")
    assert updated is not None
    assert updated.plans["pro"].quota == 5000

    await writer.suspend("acme", actor="test")
    await _until(other, writer.registry.position - 1)
    suspended = other.get("acme")
    assert suspended is not None
    assert suspended.status == "suspended"

    await writer.delete("acme", actor="test")
    await _until(other, writer.registry.position - 1)
    assert other.get("acme") is None
    assert other.by_account("acct_1Acme") is None


async def test_new_instance_loads_current_state_before_it_is_ready(
    writer: TenantWriter, open_topic_registry: RegistryFactory
) -> None:
    await writer.add(tenant_doc("alpha"), actor="test")
    await writer.add(tenant_doc("beta", stripe_account="acct_2Beta"), actor="test")
    await writer.delete("alpha", actor="test")
    fresh = await open_topic_registry()
    assert fresh.ready
    assert [t.id for t in fresh] == ["beta"]


async def test_listener_hears_changes(
    writer: TenantWriter, open_topic_registry: RegistryFactory
) -> None:
    other = await open_topic_registry()
    heard: list[tuple[str, bool]] = []
    other.add_listener(lambda tid, t: heard.append((tid, t is not None)))
    await writer.add(tenant_doc("gamma"), actor="test")
    await writer.delete("gamma", actor="test")
    await _until(other, writer.registry.position - 1)
    assert heard == [("gamma", True), ("gamma", False)]


async def test_stop_is_idempotent(open_topic_registry: RegistryFactory) -> None:
    registry = await open_topic_registry()
    await registry.stop()
    await registry.stop()
    assert not registry.ready
    await asyncio.sleep(0)
