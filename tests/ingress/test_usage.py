"""POST /v1/usage on the real broker: signed batches land per tenant, bad ones publish nothing."""

from __future__ import annotations

import gzip
import time
from functools import cache
from typing import Any

import orjson
import pytest

from ingress.usage import REGION_HTTP_HEADER
from tables.usage import UsageRecord
from tests.ingress.conftest import Ingress, IngressFactory, create_topic, make_tenant, read_topic
from wire import Kind, Signer, generate_keypair, public_key_id

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

KEY = "edge-key-eu"


@cache
def _pair(name: str) -> tuple[str, str]:
    """A (private, public) Ed25519 pair per name, stable within the test run."""
    return generate_keypair()


def _public(*names: str) -> list[str]:
    return [_pair(n)[1] for n in names]


def _signed(name: str, body: bytes, kind: Kind = Kind.USAGE) -> dict[str, str]:
    return Signer(kind, [_pair(name)[0]]).headers(body)


async def _ingress(ingress_factory: IngressFactory, **overrides: Any) -> Ingress:
    tenants = [
        make_tenant("acme"),
        make_tenant("globex"),
        make_tenant("usonly").model_copy(update={"regions": ("us",)}),
        make_tenant("frozen", status="suspended"),
    ]
    overrides.setdefault("edge_verify_keys", {"eu": _public(KEY)})
    ingress = await ingress_factory(tenants, **overrides)
    await create_topic(ingress.settings.kafka_bootstrap, ingress.settings.topics.usage_events, 2)
    return ingress


INCARNATION = "0123456789abcdef"


def _report(items: list[dict[str, Any]], *, seq: int = 1, **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "batch_id": f"node-1:{INCARNATION}:{seq}",
        "node_id": "node-1",
        "region": "eu",
        "sent_at": time.time(),
        "items": items,
    }
    doc.update(fields)
    return orjson.dumps(doc)


async def _post(
    ingress: Ingress,
    body: bytes,
    *,
    key: str = KEY,
    region: str = "eu",
    kind: Kind = Kind.USAGE,
    **headers: str,
) -> tuple[int, dict[str, Any]]:
    sent = {
        **_signed(key, body, kind),
        REGION_HTTP_HEADER: region,
        "Content-Type": "application/json",
    }
    sent.update(headers)
    async with ingress.client.post("/v1/usage", data=body, headers=sent) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_signed_batch_is_published_per_tenant_after_the_ack(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await _ingress(ingress_factory)
    items = [
        {"tenant_id": "acme", "customer_id": "cus_1", "units": 30},
        {"tenant_id": "acme", "customer_id": "rating-7", "units": 2},
        {"tenant_id": "globex", "customer_id": "cus_9", "units": 5},
    ]
    status, doc = await _post(ingress, _report(items))
    assert (status, doc["status"], doc["records"]) == (200, "accepted", 2)
    records = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.usage_events
    )
    by_tenant = {r.key: r for r in records}
    assert set(by_tenant) == {b"acme", b"globex"}
    acme = UsageRecord.model_validate_json(by_tenant[b"acme"].value)
    assert acme.batch_id == f"node-1:{INCARNATION}:1"
    assert acme.key_id == public_key_id(_public(KEY)[0])
    assert [(i.customer_id, i.units) for i in acme.items] == [("cus_1", 30), ("rating-7", 2)]
    headers = dict(by_tenant[b"acme"].headers)
    assert headers["qf-schema"] == b"usage-batch/1"
    assert headers["qf-batch-id"] == f"node-1:{INCARNATION}:1".encode()
    assert headers["qf-key-id"] == acme.key_id.encode()
    assert headers["qf-region"] == b"eu"
    record_headers = b"".join(v for _, v in by_tenant[b"acme"].headers)
    assert _pair(KEY)[0].encode() not in record_headers


async def test_a_features_usage_travels_as_its_own_item(ingress_factory: IngressFactory) -> None:
    """One customer, the default feature and a named one: two items, both published, the
    default one byte-for-byte as before (no `feature` key)."""
    ingress = await _ingress(ingress_factory)
    items = [
        {"tenant_id": "acme", "customer_id": "cus_1", "units": 30},
        {"tenant_id": "acme", "customer_id": "cus_1", "units": 4, "feature": "exports"},
    ]
    status, doc = await _post(ingress, _report(items))
    assert (status, doc["records"]) == (200, 1)
    (record,) = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.usage_events
    )
    raw = orjson.loads(record.value)["items"]
    assert raw == [
        {"customer_id": "cus_1", "units": 30},
        {"customer_id": "cus_1", "units": 4, "feature": "exports"},
    ]
    parsed = UsageRecord.model_validate_json(record.value)
    assert [(i.units, i.feature) for i in parsed.items] == [(30, None), (4, "exports")]


async def test_a_suspended_tenants_usage_is_kept(ingress_factory: IngressFactory) -> None:
    """Usage counted at the edge before the suspension reached it is real consumption:
    published like any other (the worker counts it in `used`), not refused and dropped."""
    ingress = await _ingress(ingress_factory)
    items = [
        {"tenant_id": "frozen", "customer_id": "cus_1", "units": 7},
        {"tenant_id": "acme", "customer_id": "cus_1", "units": 1},
    ]
    status, doc = await _post(ingress, _report(items))
    assert (status, doc["status"], doc["records"]) == (200, "accepted", 2)
    records = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.usage_events
    )
    frozen = [UsageRecord.model_validate_json(r.value) for r in records if r.key == b"frozen"]
    assert [(i.customer_id, i.units) for r in frozen for i in r.items] == [("cus_1", 7)]


async def test_a_legacy_batch_id_is_still_accepted_during_the_upgrade(
    ingress_factory: IngressFactory,
) -> None:
    """An edge that spooled batches before incarnations re-sends them under `node:seq`;
    an old edge would set a 400 aside as malformed, so the default keeps accepting them."""
    ingress = await _ingress(ingress_factory)
    body = _report([{"tenant_id": "acme", "customer_id": "cus_1", "units": 4}], batch_id="node-1:7")
    status, doc = await _post(ingress, body)
    assert (status, doc["batch_id"]) == (200, "node-1:7")
    records = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.usage_events
    )
    assert [UsageRecord.model_validate_json(r.value).batch_id for r in records] == ["node-1:7"]
    async with ingress.client.get("/metrics") as resp:
        text = await resp.text()
    # Counted apart, so an operator sees when the last legacy id went through.
    assert (
        'quotaflow_ingress_usage_reports_total{outcome="accepted",reason="legacy_batch_id"} 1.0'
        in text
    )


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("unsigned", 401, "missing_signature"),
        ("wrong_key", 401, "unknown_key"),
        ("push_key", 401, "unknown_key"),
        ("announcement_kind", 401, "bad_signature"),
        ("push_kind", 401, "bad_signature"),
        ("unknown_region", 401, "unknown_region"),
        ("region_mismatch", 400, "region_mismatch"),
        ("not_json", 400, "bad_body"),
        ("negative_units", 400, "bad_body"),
        ("float_units", 400, "bad_body"),
        ("huge_units", 400, "bad_body"),
        ("bad_batch_id", 400, "bad_body"),
        ("foreign_batch_id", 400, "bad_batch_id"),
        ("bad_incarnation", 400, "bad_body"),
        ("legacy_batch_id_off", 400, "bad_batch_id"),
        ("empty", 400, "empty_batch"),
        ("duplicate", 400, "duplicate_item"),
        ("duplicate_feature", 400, "duplicate_item"),
        ("bad_feature", 400, "bad_body"),
        ("too_many", 400, "too_many_items"),
        ("unknown_tenant", 422, "unknown_tenant"),
        ("other_region", 422, "tenant_not_in_region"),
        ("too_large", 413, "body_too_large"),
        ("text", 415, "unsupported_media_type"),
        ("gzip", 415, "unsupported_encoding"),
    ],
)
async def test_bad_reports_are_refused_with_a_stable_reason_and_nothing_published(
    ingress_factory: IngressFactory, case: str, status: int, reason: str
) -> None:
    ingress = await _ingress(
        ingress_factory,
        usage_max_items=3,
        usage_max_body_bytes=4096,
        usage_legacy_batch_ids=case != "legacy_batch_id_off",
    )
    good = {"tenant_id": "acme", "customer_id": "cus_1", "units": 1}
    body = _report([good])
    extra: dict[str, str] = {}
    key, region, kind = KEY, "eu", Kind.USAGE
    if case == "unsigned":
        async with ingress.client.post(
            "/v1/usage",
            data=body,
            headers={REGION_HTTP_HEADER: "eu", "Content-Type": "application/json"},
        ) as resp:
            got = resp.status, orjson.loads(await resp.read())
    else:
        if case == "wrong_key":
            key = "another-key"
        elif case == "push_key":  # the region's push key: not an edge key, refused
            key, kind = "push-key-eu", Kind.PUSH
        elif case == "announcement_kind":  # the edge's own key, but another kind
            kind = Kind.ANNOUNCEMENT
        elif case == "push_kind":
            kind = Kind.PUSH
        elif case == "unknown_region":
            region = "mars"
        elif case == "region_mismatch":
            body = _report([good], region="us")
        elif case == "not_json":
            body = b"{nope"
        elif case == "negative_units":
            body = _report([{**good, "units": -5}])
        elif case == "float_units":
            body = _report([{**good, "units": 1.5}])
        elif case == "huge_units":
            body = _report([{**good, "units": 10**12}])
        elif case == "bad_batch_id":
            body = _report([good], batch_id="node-1:x")
        elif case == "foreign_batch_id":
            body = _report([good], batch_id=f"node-2:{INCARNATION}:1")
        elif case == "bad_incarnation":
            body = _report([good], batch_id="node-1:boot:1")
        elif case == "legacy_batch_id_off":
            body = _report([good], batch_id="node-1:1")
        elif case == "empty":
            body = _report([])
        elif case == "duplicate":
            body = _report([good, good])
        elif case == "duplicate_feature":
            body = _report([{**good, "feature": "exports"}, {**good, "feature": "exports"}])
        elif case == "bad_feature":
            body = _report([{**good, "feature": "no spaces"}])
        elif case == "too_many":
            body = _report([{**good, "customer_id": f"c{i}"} for i in range(4)])
        elif case == "unknown_tenant":
            body = _report([good, {**good, "tenant_id": "nobody"}])
        elif case == "other_region":
            body = _report([{**good, "tenant_id": "usonly"}])
        elif case == "too_large":
            body = _report([{**good, "customer_id": "x" * 200}] * 1, pad="y" * 5000)
        elif case == "text":
            extra = {"Content-Type": "text/plain"}
        elif case == "gzip":  # signed over the compressed bytes: only the encoding is wrong
            body = gzip.compress(body)
            extra = {"Content-Encoding": "gzip"}
        got = await _post(ingress, body, key=key, region=region, kind=kind, **extra)
    assert got[0] == status
    assert got[1]["error"]["reason"] == reason
    if status == 422:
        assert got[1]["error"]["tenant_id"] in {"nobody", "usonly"}
    records = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.usage_events
    )
    assert records == []


async def test_a_replayed_request_is_refused_and_rotation_keeps_old_keys_valid(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await _ingress(ingress_factory, edge_verify_keys={"eu": _public("new-key", KEY)})
    body = _report([{"tenant_id": "acme", "customer_id": "cus_1", "units": 1}])
    headers = {
        **_signed(KEY, body),
        REGION_HTTP_HEADER: "eu",
        "Content-Type": "application/json",
    }
    async with ingress.client.post("/v1/usage", data=body, headers=headers) as resp:
        assert resp.status == 200
    async with ingress.client.post("/v1/usage", data=body, headers=headers) as resp:
        assert resp.status == 401
        assert orjson.loads(await resp.read())["error"]["reason"] == "replayed"
    status, _ = await _post(
        ingress,
        _report([{"tenant_id": "acme", "customer_id": "c", "units": 1}], seq=2),
        key="new-key",
    )
    assert status == 200


async def test_unreachable_broker_answers_503_with_retry_after(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await _ingress(ingress_factory, bootstrap="127.0.0.1:1", publish_timeout=0.5)
    body = _report([{"tenant_id": "acme", "customer_id": "cus_1", "units": 1}])
    sent = {
        **_signed(KEY, body),
        REGION_HTTP_HEADER: "eu",
        "Content-Type": "application/json",
    }
    async with ingress.client.post("/v1/usage", data=body, headers=sent) as resp:
        assert resp.status == 503
        assert "Retry-After" in resp.headers
        assert orjson.loads(await resp.read())["error"]["reason"] in {
            "kafka_unavailable",
            "publish_timeout",
        }
