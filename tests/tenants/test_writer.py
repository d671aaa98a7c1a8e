"""Writer scenarios on the real broker: rolls, key rotation, purge, audit and a secret scan."""

from __future__ import annotations

import time
from unittest.mock import ANY

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from quotaflow.tenants.exceptions import (
    AccountInUse,
    InvalidTenant,
    TenantExists,
    TenantStateError,
)
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from quotaflow.testing.harness import eventually
from tests.tenants.conftest import REGIONS, RegistryFactory, kek, tenant_doc
from tests.tenants.topicdump import audit_records, topic_bytes


async def test_invalid_add_writes_nothing(writer: TenantWriter, settings: Settings) -> None:
    with pytest.raises(InvalidTenant) as caught:
        await writer.add(tenant_doc("acme", regions=["mars"]), actor="test")
    assert caught.value.field == "regions.0"
    assert await topic_bytes(settings.kafka_bootstrap, settings.topics.tenants) == []
    assert await topic_bytes(settings.kafka_bootstrap, audit_topic(settings)) == []


async def test_duplicate_add_is_refused(writer: TenantWriter) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    with pytest.raises(TenantExists):
        await writer.add(tenant_doc("acme"), actor="test")


async def test_roll_keeps_both_secrets_during_the_overlap(writer: TenantWriter) -> None:
    added = await writer.add(tenant_doc("acme"), actor="test")
    old = added.webhook_secrets[0].secret.get_secret_value()
    rolled = await writer.roll_webhook_secret("acme", "whsec_new_one", "test", overlap=3600)
    now = time.time()
    active = [s.secret.get_secret_value() for s in rolled.active_secrets(now)]
    assert active == ["whsec_new_one", old]
    assert [s.secret.get_secret_value() for s in rolled.active_secrets(now + 3601)] == [
        "whsec_new_one"
    ]
    again = await writer.roll_webhook_secret("acme", "whsec_third", "test", overlap=0)
    assert [s.secret.get_secret_value() for s in again.webhook_secrets] == ["whsec_third"]
    with pytest.raises(TenantStateError):
        await writer.roll_webhook_secret("acme", "whsec_third", "test")


async def test_purge_needs_delete_and_tombstones_quota_keys(
    writer: TenantWriter, settings: Settings
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for customer in ("cus_1", "cus_2"):
            await producer.send_and_wait(
                settings.topics.quota_updates, b"{}", key=f"acme/{customer}".encode(), partition=1
            )
        await producer.send_and_wait(
            settings.topics.quota_updates, b"{}", key=b"acmex/cus_1", partition=1
        )
    finally:
        await producer.stop()
    with pytest.raises(TenantStateError, match="delete it"):
        await writer.purge("acme", "test")
    await writer.delete("acme", "test")
    assert await writer.purge("acme", "test") == 2

    # Already tombstoned. Kafka writes a transaction's commit markers to the partitions
    # after the commit returns, so a read-committed scan at once may still see the keys
    # live (a second purge then tombstones them again, harmlessly): wait for it.
    async def nothing_left() -> bool:
        return await writer.purge("acme", "test") == 0

    await eventually(nothing_left, timeout=10.0, what="a second purge finds nothing left")


async def test_key_rotation_while_running_then_old_key_dropped(
    settings: Settings,
    keys: dict[str, bytes],
    writer: TenantWriter,
    open_topic_registry: RegistryFactory,
) -> None:
    for tenant_id in ("acme", "beta"):
        await writer.add(tenant_doc(tenant_id, stripe_account=None), actor="test")
    follower = await open_topic_registry()  # a running component with the old ring

    k2 = kek()
    both = LocalKeyring({"k2": k2, **keys})
    rotator = TenantWriter(settings, both, await open_topic_registry(both), known_regions=REGIONS)
    await rotator.start()
    try:
        assert await rotator.rotate_keys("test") == 2
        assert await rotator.rotate_keys("test") == 0
    finally:
        await rotator.stop()

    only_new = LocalKeyring({"k2": k2})
    fresh = await open_topic_registry(only_new)
    assert sorted(t.id for t in fresh) == ["acme", "beta"]
    assert fresh.undecryptable == {}
    assert {r.data_key.kek_id for r in fresh.sealed_records().values() if r.data_key} == {"k2"}
    # The running component that only has k1 keeps its last good view rather than failing.
    await follower.wait_for(rotator.registry.position - 1, 10)
    assert sorted(t.id for t in follower) == ["acme", "beta"]
    assert set(follower.undecryptable) == {"acme", "beta"}


async def test_scenario_leaves_no_plaintext_secret_in_any_topic(
    settings: Settings,
    keys: dict[str, bytes],
    writer: TenantWriter,
    open_topic_registry: RegistryFactory,
) -> None:
    secrets: list[str] = []
    for tenant_id in ("acme", "beta"):
        doc = tenant_doc(tenant_id, stripe_account=None)
        secrets += [doc["stripe_api_key"], doc["webhook_secrets"][0]["secret"]]
        await writer.add(doc, actor="test")
    secrets.append("whsec_rolled_" + kek().hex())
    await writer.roll_webhook_secret("acme", secrets[-1], "test", overlap=60)
    secrets.append("rk_test_rotated_" + kek().hex())
    await writer.update("beta", {"stripe_api_key": secrets[-1]}, "test")
    await writer.suspend("beta", "test")
    k2 = kek()
    both = LocalKeyring({"k2": k2, **keys})
    rotator = TenantWriter(settings, both, await open_topic_registry(both), known_regions=REGIONS)
    await rotator.start()
    try:
        await rotator.rotate_keys("test")
    finally:
        await rotator.stop()
    await writer.delete("acme", "test")

    dumped = b"".join(
        await topic_bytes(settings.kafka_bootstrap, settings.topics.tenants)
        + await topic_bytes(settings.kafka_bootstrap, audit_topic(settings))
    )
    assert dumped
    for secret in secrets:
        assert secret.encode() not in dumped, "a plaintext secret is on a topic"
    for raw in (keys["k1"], k2):
        assert raw not in dumped

    audit = await audit_records(settings.kafka_bootstrap, audit_topic(settings))
    assert [a["action"] for a in audit] == [
        "add",
        "add",
        "roll-webhook-secret",
        "update",
        "suspend",
        "rotate-key",
        "rotate-key",
        "delete",
    ]
    assert all(a["actor"] == "test" and isinstance(a["ts"], float) for a in audit)
    suspend = audit[4]
    # The suspended window opens with the status (the worker reconciles it on resume).
    assert suspend["changes"] == [
        {"field": "status", "from": "active", "to": "suspended"},
        {"field": "suspended_at", "from": None, "to": ANY},
    ]
    assert orjson.dumps(audit).count(b"**********") > 0


async def test_registry_ready_only_after_load(
    settings: Settings, keyring: LocalKeyring, writer: TenantWriter
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    registry = TopicTenantRegistry(settings, keyring)
    states = [registry.ready]
    await registry.start()
    try:
        states.append(registry.ready)
        assert states == [False, True]
        assert registry.get("acme") is not None
    finally:
        await registry.stop()


async def test_suspend_and_resume_record_the_suspended_window(writer: TenantWriter) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    before = time.time()
    suspended = await writer.suspend("acme", "test")
    assert suspended.suspended_at is not None
    assert suspended.suspended_at >= before
    assert suspended.resumed_at is None
    resumed = await writer.update("acme", {"status": "active"}, "test")  # the admin API's way
    assert resumed.suspended_at == suspended.suspended_at
    assert resumed.resumed_at is not None
    assert resumed.resumed_at >= suspended.suspended_at
    # The window follows the status, never a client's say.
    for field in ("suspended_at", "resumed_at"):
        with pytest.raises(InvalidTenant):
            await writer.update("acme", {field: 0.0}, "test")


async def test_an_account_another_tenant_holds_is_refused_and_nothing_is_written(
    writer: TenantWriter, settings: Settings
) -> None:
    await writer.add(tenant_doc("acme", stripe_account="acct_1Shared"), actor="test")
    await writer.add(tenant_doc("globex", stripe_account="acct_1Globex"), actor="test")
    written = len(await topic_bytes(settings.kafka_bootstrap, settings.topics.tenants))
    with pytest.raises(AccountInUse) as caught:
        await writer.add(tenant_doc("initech", stripe_account="acct_1Shared"), actor="test")
    assert caught.value.holder == "acme"
    with pytest.raises(AccountInUse):
        await writer.update("globex", {"stripe_account": "acct_1Shared"}, actor="test")
    assert len(await topic_bytes(settings.kafka_bootstrap, settings.topics.tenants)) == written
    assert writer.registry.by_account("acct_1Shared").id == "acme"  # type: ignore[union-attr]
    # Letting go frees the account for another tenant.
    await writer.update("acme", {"stripe_account": None}, actor="test")
    moved = await writer.update("globex", {"stripe_account": "acct_1Shared"}, actor="test")
    assert moved.stripe_account == "acct_1Shared"
