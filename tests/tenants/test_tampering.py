"""An attacker with write access to the `tenants` topic only (no signing key, no keyring)
produces raw records with aiokafka: a tampered record, a replayed older one, a bare
tombstone, a record signed with its own key. Each is refused and counted, the component is
not ready, the tenant keeps its previous state, and the audit trail covers every version
that was accepted; `quotaflow tenants reseal` (the writer's `reseal`) makes it ready again.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiokafka import AIOKafkaProducer

from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.documents import parse_tenant
from quotaflow.commands.tenants.writer import TenantWriter, tenant_signer
from quotaflow.settings import Settings
from quotaflow.tenants.config import audit_topic
from quotaflow.tenants.exceptions import TenantStateError
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.sealing import (
    LegacyRecord,
    SealedDataKey,
    SealedRecord,
    new_data_key,
    sealed_document,
    sign_record,
)
from tests.ingress.test_unreadable_tenant import _ingress
from tests.kafkautil import read_all
from tests.tenants.conftest import RegistryFactory, tenant_doc
from wire.signing import Kind, Signer, generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


class Attacker:
    """Holds topic write access and nothing else."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer

    async def produce(self, tenant_id: str, value: bytes | None) -> int:
        meta = await self.producer.send_and_wait(
            self.settings.topics.tenants, value, key=tenant_id.encode(), partition=0
        )
        return int(meta.offset)


@pytest.fixture
async def attacker(settings: Settings) -> AsyncIterator[Attacker]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        yield Attacker(settings, producer)
    finally:
        await producer.stop()


def _body(value: bytes) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(orjson.loads(value)["body"])
    return body


def _with_body(value: bytes, body: dict[str, Any]) -> bytes:
    """The same envelope and signature around a changed body."""
    return orjson.dumps({**orjson.loads(value), "body": orjson.dumps(body).decode()})


async def _audited_versions(settings: Settings, tenant_id: str) -> list[int]:
    records = await read_all(settings.kafka_bootstrap, audit_topic(settings))
    return [
        int(orjson.loads(r.value)["version"])
        for r in records
        if r.key == tenant_id.encode() and r.value is not None
    ]


async def test_tampered_record_is_refused_and_the_tenant_keeps_its_plans(
    settings: Settings,
    writer: TenantWriter,
    attacker: Attacker,
    open_topic_registry: RegistryFactory,
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    reader = await open_topic_registry()
    genuine = writer.registry.held_value("acme")
    assert genuine is not None

    body = _body(genuine)
    body["tenant"]["plans"]["pro"] = {"quota": None}  # unlimited, in place
    body["tenant"]["stripe_account"] = "acct_1Attacker"
    body["version"] = 2
    offset = await attacker.produce("acme", _with_body(genuine, body))
    await reader.wait_for(offset)
    await writer.registry.wait_for(offset)

    acme = reader.get("acme")
    assert acme is not None
    assert acme.plans["pro"].quota == 1000
    assert acme.stripe_account == "acct_1Acme"
    assert reader.by_account("acct_1Attacker") is None
    assert reader.unreadable() == {"acme": "bad_signature"}
    assert reader.refused() == {"bad_signature": 1}
    assert writer.registry.refused() == {"bad_signature": 1}
    assert reader.version("acme") == 1

    # A component started after the attack reads the same: genuine record kept, not ready.
    fresh = await open_topic_registry()
    assert fresh.get("acme") == acme
    assert fresh.unreadable() == {"acme": "bad_signature"}

    # The operator's repair: the held version re-signed one up; every reader is ready again.
    done = await writer.reseal("test")
    assert done["re-signed"] == 1
    await reader.wait_for(await _end(writer))
    assert reader.unreadable() == {}
    assert reader.version("acme") == 2
    acme_after = reader.get("acme")
    assert acme_after is not None
    assert acme_after.plans["pro"].quota == 1000
    # Every version readers accepted has its audit record.
    assert await _audited_versions(settings, "acme") == [1, 2]


async def _end(writer: TenantWriter) -> int:
    """The offset of the last record on the tenants topic (the writer's registry is past it)."""
    return writer.registry.position - 1


async def test_replayed_older_record_is_refused(
    settings: Settings,
    writer: TenantWriter,
    attacker: Attacker,
    open_topic_registry: RegistryFactory,
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    v1 = writer.registry.held_value("acme")
    await writer.roll_webhook_secret("acme", "whsec_new_one", actor="test", overlap=0)
    await writer.suspend("acme", actor="test")
    reader = await open_topic_registry()
    assert v1 is not None
    assert reader.version("acme") == 3

    # The old record revives the rolled secret and the active status: refused.
    offset = await attacker.produce("acme", v1)
    await reader.wait_for(offset)
    acme = reader.get("acme")
    assert acme is not None
    assert acme.status == "suspended"
    assert [s.secret.get_secret_value() for s in acme.webhook_secrets] == ["whsec_new_one"]
    assert reader.unreadable() == {"acme": "stale_version"}
    assert await _audited_versions(settings, "acme") == [1, 2, 3]


async def test_forged_tombstone_is_refused_and_a_genuine_delete_cannot_be_undone(
    settings: Settings,
    writer: TenantWriter,
    attacker: Attacker,
    open_topic_registry: RegistryFactory,
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    v1 = writer.registry.held_value("acme")
    reader = await open_topic_registry()

    offset = await attacker.produce("acme", None)  # a bare tombstone
    await reader.wait_for(offset)
    assert reader.get("acme") is not None
    assert reader.unreadable() == {"acme": "unsigned_tombstone"}
    assert await _audited_versions(settings, "acme") == [1]

    # The genuine deletion is a signed record (never a bare tombstone), version 3.
    await writer.reseal("test")  # ready again first
    await writer.delete("acme", actor="test")
    await reader.wait_for(await _end(writer))
    assert reader.get("acme") is None
    assert reader.unreadable() == {}
    records = await read_all(settings.kafka_bootstrap, settings.topics.tenants)
    last = records[-1]
    assert last.value is not None
    assert _body(last.value)["deleted"] is True

    # Replaying the tenant's old live record does not bring it back.
    assert v1 is not None
    offset = await attacker.produce("acme", v1)
    await reader.wait_for(offset)
    assert reader.get("acme") is None
    assert reader.unreadable() == {"acme": "stale_version"}
    assert await _audited_versions(settings, "acme") == [1, 2, 3]

    # Added again: its versions continue above the deletion's (reseal first: it is refused).
    await writer.reseal("test")
    await writer.add(tenant_doc("acme"), actor="test")
    await reader.wait_for(await _end(writer))
    assert reader.get("acme") is not None
    assert reader.version("acme") == 5
    assert reader.unreadable() == {}
    assert await _audited_versions(settings, "acme") == [1, 2, 3, 4, 5]


async def test_record_signed_with_an_unknown_key_is_refused_and_the_ingress_is_not_ready(
    settings: Settings,
    keyring: LocalKeyring,
    writer: TenantWriter,
    attacker: Attacker,
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    genuine = writer.registry.held_value("acme")
    assert genuine is not None
    body = _body(genuine)
    body["version"] = 99
    body["tenant"]["plans"]["pro"] = {"quota": None}
    forger = Signer(Kind.TENANT, [generate_keypair()[0]])
    port = free_port()
    async with _ingress(settings, port, keyring) as base, ClientSession() as http:
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
        offset = await attacker.produce(
            "acme", sign_record(SealedRecord.model_validate(body), forger)
        )
        await writer.registry.wait_for(offset)
        assert writer.registry.unreadable() == {"acme": "unknown_key"}
        for _ in range(50):
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 503:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 503
        async with http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        assert 'quotaflow_tenant_records_refused_total{reason="unknown_key"} 1.0' in metrics
        assert "quotaflow_tenant_records_unreadable 1.0" in metrics
    acme = writer.registry.get("acme")
    assert acme is not None
    assert acme.plans["pro"].quota == 1000
    # The writer refuses to build on a tenant whose latest record it does not accept.
    with pytest.raises(TenantStateError, match="reseal"):
        await writer.update("acme", {"name": "Changed"}, actor="test")


async def test_concurrent_writers_converge_on_one_version(
    settings: Settings,
    keyring: LocalKeyring,
    writer: TenantWriter,
    open_topic_registry: RegistryFactory,
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    other = TenantWriter(settings, keyring, await open_topic_registry())
    await other.start()
    try:
        # Both read version 1; the first write is version 2 everywhere; the second writer's
        # version 2 is refused, and it repairs by re-signing the winner's record as 3.
        held = writer.registry.held_value("acme")
        assert held is not None
        first = await writer.update("acme", {"name": "First"}, actor="a")
        assert first.name == "First"
        # `other` has not seen version 2 yet only if it is slow; force the race by writing
        # from the stale view it had: sign a version-2 record from the held v1 body.
        stale = SealedRecord.model_validate({**_body(held), "version": 2})
        await other.registry.wait_for(writer.registry.position - 1)
        with pytest.raises(TenantStateError, match="concurrently"):
            await other._write(
                "acme", sign_record(stale, tenant_signer(settings)), b"{}", version=2
            )
        reader = await open_topic_registry()
        acme = reader.get("acme")
        assert acme is not None
        assert acme.name == "First"
        assert reader.version("acme") == 3
        assert reader.unreadable() == {}
    finally:
        await other.stop()


async def test_reseal_migrates_unsigned_records_and_old_tombstones(
    settings: Settings,
    keyring: LocalKeyring,
    writer: TenantWriter,
    attacker: Attacker,
    open_topic_registry: RegistryFactory,
) -> None:
    # Records as the previous version wrote them: format 1 (unsigned), a bare tombstone.
    doc = tenant_doc("oldie")
    tenant = parse_tenant(doc)
    key = await new_data_key("oldie", keyring)
    legacy = LegacyRecord(
        data_key=SealedDataKey(
            kek_id=key.wrapped.kek_id, wrapped=base64.b64encode(key.wrapped.blob).decode()
        ),
        tenant=sealed_document(tenant, key),
    )
    await attacker.produce("oldie", orjson.dumps(legacy.model_dump(mode="json")))
    await attacker.produce("gone", b"{}")
    offset = await attacker.produce("gone", None)
    reader = await open_topic_registry()
    await writer.registry.wait_for(offset)
    assert reader.get("oldie") is None
    assert reader.unreadable() == {"oldie": "unsigned_format", "gone": "unsigned_tombstone"}

    done = await writer.reseal("test")
    assert done == {"resealed": 1, "re-signed": 0, "deleted": 1, "unrecoverable": 0}
    await reader.wait_for(await _end(writer))
    assert reader.unreadable() == {}
    oldie = reader.get("oldie")
    assert oldie is not None
    assert oldie.plans == tenant.plans
    assert oldie.stripe_api_key is not None
    assert oldie.stripe_api_key.get_secret_value() == doc["stripe_api_key"]
    assert reader.version("oldie") == 1
    assert reader.version("gone") == 1
    assert await _audited_versions(settings, "oldie") == [1]
    # Idempotent: nothing left to do.
    assert (await writer.reseal("test"))["resealed"] == 0
