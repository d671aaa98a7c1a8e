"""The registry at scale checks records on first use and in a background pass: the trust
model must hold before the pass reaches a record. An attacker with write access to the
`tenants` topic produces before the reader starts; the reader is started without the
check pass (`background=False`), so every check below happens on first use, or with it,
and nothing of the forged records is ever served."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import ClientSession

from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.writer import TenantWriter
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from quotaflow.tenants.sealing import SealedRecord, sign_record
from quotaflow.tenants.topic_registry import TopicTenantRegistry
from tests.ingress.test_unreadable_tenant import _ingress
from tests.tenants.conftest import RegistryFactory, kek, tenant_doc
from tests.tenants.test_tampering import Attacker, _body, _with_body, attacker
from wire.signing import Kind, Signer, generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

__all__ = ["attacker"]  # the fixture, imported for these tests


def _checked(registry: TopicTenantRegistry) -> bool:
    return registry.checked  # a call: mypy would narrow the property across the asserts


async def _tamper(writer: TenantWriter, attacker: Attacker, tenant_id: str, **doc: object) -> int:
    """Produces the tenant's genuine record with its document changed, version up."""
    genuine = writer.registry.held_value(tenant_id)
    assert genuine is not None
    body = _body(genuine)
    body["tenant"].update(doc)
    body["version"] += 1
    return await attacker.produce(tenant_id, _with_body(genuine, body))


async def test_a_forged_record_is_refused_on_first_use_before_any_check_pass(
    writer: TenantWriter, attacker: Attacker, open_topic_registry: RegistryFactory
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    await _tamper(
        writer, attacker, "acme", plans={"pro": {"quota": None}}, stripe_account="acct_1Evil"
    )
    reader = await open_topic_registry(background=False)

    # Loaded, not checked: nothing about acme is served from the unchecked records.
    assert reader.ready
    assert not _checked(reader)
    assert list(reader.summaries()) == []
    assert reader.refused() == {}

    acme = reader.get("acme")  # first use: both records checked, in topic order, now
    assert acme is not None
    assert acme.plans["pro"].quota == 1000
    assert acme.stripe_account == "acct_1Acme"
    assert reader.unreadable() == {"acme": "bad_signature"}
    assert reader.refused() == {"bad_signature": 1}
    assert reader.version("acme") == 1
    assert _checked(reader)
    assert [s.id for s in reader.summaries()] == ["acme"]


async def test_an_account_lookup_checks_every_tenant_that_claims_the_account(
    writer: TenantWriter, attacker: Attacker, open_topic_registry: RegistryFactory
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    await writer.add(tenant_doc("beta"), actor="test")
    # beta's record, forged to claim acme's Connect account: were it believed, acme's
    # Connect events would be held as a conflict (or routed to beta).
    await _tamper(writer, attacker, "beta", stripe_account="acct_1Acme")
    reader = await open_topic_registry(background=False)

    acme = reader.by_account("acct_1Acme")
    assert acme is not None
    assert acme.id == "acme"
    assert reader.account_holders("acct_1Acme") == ["acme"]
    assert reader.unreadable() == {"beta": "bad_signature"}
    beta = reader.get("beta")
    assert beta is not None
    assert beta.stripe_account == "acct_1Beta"


async def test_a_replay_read_at_start_is_refused_on_first_use(
    writer: TenantWriter, attacker: Attacker, open_topic_registry: RegistryFactory
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    v1 = writer.registry.held_value("acme")
    await writer.suspend("acme", actor="test")
    assert v1 is not None
    await attacker.produce("acme", v1)  # revives "active"
    reader = await open_topic_registry(background=False)

    summary = reader.summary("acme")
    assert summary is not None
    assert summary.status == "suspended"
    assert reader.unreadable() == {"acme": "stale_version"}


async def test_the_check_pass_finds_a_forged_record_nobody_used_and_the_ingress_is_not_ready(
    settings: Settings, keyring: LocalKeyring, writer: TenantWriter, attacker: Attacker
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    await writer.add(tenant_doc("quiet"), actor="test")
    genuine = writer.registry.held_value("quiet")
    assert genuine is not None
    body = _body(genuine)
    body["version"] = 7
    forger = Signer(Kind.TENANT, [generate_keypair()[0]])
    await attacker.produce("quiet", sign_record(SealedRecord.model_validate(body), forger))

    async with _ingress(settings, free_port(), keyring) as base, ClientSession() as http:
        # No request names "quiet": only the check pass can find its record.
        for _ in range(100):
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 503:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 503
        async with http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
    assert 'quotaflow_tenant_records_refused_total{reason="unknown_key"} 1.0' in metrics
    assert "quotaflow_tenant_records_unreadable 1.0" in metrics


async def test_the_check_pass_finds_a_record_the_keyring_cannot_open(
    writer: TenantWriter, open_topic_registry: RegistryFactory
) -> None:
    await writer.add(tenant_doc("acme"), actor="test")
    reader = await open_topic_registry(LocalKeyring({"other": kek()}))  # waits for the pass
    assert reader.checked
    assert reader.unreadable() == {"acme": "data_key"}
    assert reader.get("acme") is None


async def test_documents_are_built_on_use_and_kept_in_a_bounded_cache(
    settings: Settings, keyring: LocalKeyring, writer: TenantWriter
) -> None:
    docs = {t: tenant_doc(t) for t in ("acme", "beta")}
    for doc in docs.values():
        await writer.add(doc, actor="test")
    reader = TopicTenantRegistry(settings, keyring, cache_size=1)
    await reader.start()
    try:
        await reader.wait_checked(10)
        acme = reader.get("acme")
        assert acme is not None
        assert reader.get("acme") is acme  # cached
        beta = reader.get("beta")  # evicts acme
        assert beta is not None
        again = reader.get("acme")  # built again from its packed record: the same tenant
        assert again is not acme
        assert again == acme
        assert acme.stripe_api_key is not None
        assert acme.stripe_api_key.get_secret_value() == docs["acme"]["stripe_api_key"]
        # A change is in effect at once, through the cache.
        await writer.update("acme", {"name": "Renamed"}, actor="test")
        await reader.wait_for(writer.registry.position - 1)
        renamed = reader.get("acme")
        assert renamed is not None
        assert renamed.name == "Renamed"
    finally:
        await reader.stop()


def test_packed_records_round_trip_and_compare_equal_exactly_when_the_records_do() -> None:
    from quotaflow.tenants.packing import RecordPacker

    records = [orjson.dumps({"tenant": f"t{i}", "plans": {"pro": {"quota": i}}}) for i in range(9)]
    packer = RecordPacker(records[:2])
    packed = [packer.pack(r) for r in records]
    assert [packer.unpack(p) for p in packed] == records
    assert [packer.clone().unpack(p) for p in packed] == records
    assert packer.pack(records[3]) == packed[3]
    assert len(set(packed)) == len(records)
    assert sum(map(len, packed)) < sum(map(len, records))


async def test_a_pusher_sends_no_tenant_list_and_is_not_ready_until_every_record_is_checked(
    settings: Settings, writer: TenantWriter, open_topic_registry: RegistryFactory
) -> None:
    from streams.pusher import Pusher

    for tenant_id in ("acme", "beta"):
        await writer.add(tenant_doc(tenant_id), actor="test")
    registry = await open_topic_registry(None, background=False)
    pusher = Pusher(settings.model_copy(update={"region": "eu"}), registry)

    # A list without beta would make every node remove it: none until beta is checked.
    assert pusher.serves("acme")
    assert pusher.tenant_list() is None
    assert pusher.readiness() == {"reason": "tenant_records_unchecked"}
    assert registry.summary("beta") is not None
    assert pusher.tenant_list() == {"acme": "active", "beta": "active"}
    assert pusher.readiness() == {}
