"""`open_registry`: the file registry when a tenants file is set, else the topic registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from quotaflow.commands.tenants.documents import parse_tenant
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.running import FileTenantRegistry, open_registry
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from tests.tenants.conftest import tenant_doc


async def test_file_registry_when_a_file_is_set(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "tenants.json"
    path.write_bytes(dump_tenants([parse_tenant(tenant_doc("acme"))]))
    registry = await open_registry(settings_factory(tenants_file=path))
    assert isinstance(registry, FileTenantRegistry)
    assert registry.get("acme") is not None
    await registry.stop()


async def test_topic_registry_started_with_tenants_loaded(
    settings: Settings, keyring: LocalKeyring, writer: TenantWriter
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    registry = await open_registry(settings, keyring=keyring)
    try:
        assert isinstance(registry, TopicTenantRegistry)
        assert registry.ready
        assert registry.get("acme") is not None
    finally:
        await registry.stop()


async def test_routing_registry_needs_no_keyring_and_holds_no_secret(
    settings: Settings, writer: TenantWriter
) -> None:
    doc = tenant_doc("acme", regions=["eu", "us"])
    await writer.add(doc, actor="test")
    await writer.suspend("acme", actor="test")
    # What a pusher is given: the public tenants keys, no QUOTAFLOW_KEYRING, no signing key.
    routing_settings = settings.model_copy(update={"keyring": {}, "tenant_signing_keys": []})
    registry = await open_registry(routing_settings, routing=True)
    try:
        assert isinstance(registry, TopicTenantRegistry)
        assert registry.routing_only
        acme = registry.get("acme")
        assert acme is not None
        assert (acme.regions, acme.status, acme.mode) == (("eu", "us"), "suspended", "test")
        assert registry.by_account(doc["stripe_account"]) == acme
        assert acme.webhook_secrets == ()
        assert acme.stripe_api_key is None
        assert registry.unreadable() == {}
    finally:
        await registry.stop()
