"""The ingress app end to end against the real broker: what is published, what is refused."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from ingress.admission import AdmissionLimits
from ingress.app import METRICS_KEY
from ingress.limits import IngressLimits
from quotaflow.envelope import Envelope
from quotaflow.logs import JsonFormatter
from tables.tenant import WebhookSecret
from tests.ingress.conftest import (
    Ingress,
    IngressFactory,
    event_body,
    make_tenant,
    read_topic,
    signed,
)

pytestmark = pytest.mark.kafka

ACME = make_tenant("acme")
GLOBEX = make_tenant("globex", stripe_account="acct_Globex1")
LIVE = make_tenant("livecorp", mode="live")
PICKY = make_tenant("picky", event_types=("invoice.paid",))
SUSPENDED = make_tenant("frozen", status="suspended")
TENANTS = [ACME, GLOBEX, LIVE, PICKY, SUSPENDED]


def secret_of(tenant_id: str) -> str:
    return f"whsec_{tenant_id}_secret"


async def published(ingress: Ingress) -> list[tuple[bytes | None, bytes | None, Envelope]]:
    records = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.stripe_events
    )
    return [(r.key, r.value, Envelope.from_headers(list(r.headers))) for r in records]


async def test_verified_event_is_published_byte_exact_with_envelope_headers(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS)
    # Odd spacing and key order: the value must be these bytes, not a re-encoding.
    body = b'{ "type":"invoice.paid",  "id":"evt_exact", "livemode":false,"x":"\\u00e9\xc3\xa9"}'
    before = time.time()
    status, doc, _ = await ingress.post("/v1/webhooks/stripe/acme", body, secret_of("acme"))
    assert (status, doc) == (200, {"status": "accepted"})

    [(key, value, env)] = await published(ingress)
    assert key == b"acme"
    assert value == body
    assert env == Envelope("acme", "evt_exact", "invoice.paid", False, env.received_at, "acme-1")
    assert before <= env.received_at <= time.time()
    records = await read_topic(
        ingress.settings.kafka_bootstrap, ingress.settings.topics.stripe_events
    )
    assert dict(records[0].headers)["qf-schema"] == b"stripe-event/1"


async def test_tenant_a_secret_never_verifies_on_tenant_b_route(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS)
    status, doc, _ = await ingress.post(
        "/v1/webhooks/stripe/globex", event_body(), secret_of("acme")
    )
    assert (status, doc["error"]["reason"]) == (400, "bad_signature")
    assert await published(ingress) == []


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason"),
    [
        ("acme", event_body(), {"Stripe-Signature": ""}, 400, "missing_signature"),
        ("acme", event_body(), {"Stripe-Signature": "nonsense"}, 400, "malformed_signature"),
        ("acme", event_body(), {"Stripe-Signature": "t=1,v0=00"}, 400, "no_v1_signature"),
        ("nobody", event_body(), {}, 404, "unknown_tenant"),
        ("frozen", event_body(), {}, 403, "tenant_suspended"),
        ("acme", b"not json", {}, 400, "invalid_json"),
        ("acme", b'{"id":"evt_\xff"}', {}, 400, "invalid_utf8"),
        ("acme", b"[1,2]", {}, 400, "invalid_event"),
        ("acme", b'{"type":"x","livemode":false}', {}, 400, "invalid_event"),
        ("acme", b'{"id":"evt_1","livemode":false}', {}, 400, "invalid_event"),
        ("acme", b'{"id":"evt_1","type":"x","livemode":"no"}', {}, 400, "invalid_event"),
        ("acme", event_body(object="v2.core.event"), {}, 400, "unsupported_event"),
        ("acme", event_body(livemode=True), {}, 400, "livemode_mismatch"),
        ("livecorp", event_body(), {}, 400, "livemode_mismatch"),
        ("acme", event_body(account="acct_Other"), {}, 400, "account_mismatch"),
        ("globex", event_body(account="acct_Other"), {}, 400, "account_mismatch"),
        ("acme", event_body(), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ],
)
async def test_bad_input_gets_its_status_and_reason_and_nothing_is_published(
    ingress_factory: IngressFactory,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    ingress = await ingress_factory(TENANTS)
    got, doc, _ = await ingress.post(
        f"/v1/webhooks/stripe/{path}", body, secret_of(path), headers=headers
    )
    assert (got, doc["error"]["reason"]) == (status, reason)
    assert doc["error"]["message"]
    assert await published(ingress) == []


async def test_stale_and_future_signatures_are_refused(ingress_factory: IngressFactory) -> None:
    ingress = await ingress_factory(TENANTS)
    body = event_body()
    for offset, reason in ((-301, "timestamp_too_old"), (61, "timestamp_in_future")):
        headers = signed(body, secret_of("acme"), int(time.time()) + offset)
        status, doc, _ = await ingress.post("/v1/webhooks/stripe/acme", body, None, headers=headers)
        assert (status, doc["error"]["reason"]) == (400, reason)
    assert await published(ingress) == []


async def test_connect_event_is_routed_to_the_tenant_of_its_account(
    ingress_factory: IngressFactory,
) -> None:
    platform = WebhookSecret(id="platform-1", secret="whsec_platform")
    ingress = await ingress_factory(TENANTS, platform_secrets=[platform])
    body = event_body("evt_connect", account="acct_Globex1")
    status, _, _ = await ingress.post("/v1/webhooks/stripe", body, "whsec_platform")
    assert status == 200
    refusals = [
        (event_body(), "whsec_platform", 400, "missing_account"),
        (event_body(account="acct_Nobody"), "whsec_platform", 404, "unknown_account"),
        (event_body(account="acct_Globex1"), secret_of("globex"), 400, "bad_signature"),
    ]
    for bad_body, secret, want_status, reason in refusals:
        got, doc, _ = await ingress.post("/v1/webhooks/stripe", bad_body, secret)
        assert (got, doc["error"]["reason"]) == (want_status, reason)

    [(key, value, env)] = await published(ingress)
    assert (key, value, env.tenant_id, env.secret_id) == (b"globex", body, "globex", "platform-1")


async def test_a_connect_account_two_tenants_claim_is_held_back_with_503(
    ingress_factory: IngressFactory,
) -> None:
    platform = WebhookSecret(id="platform-1", secret="whsec_platform")
    twin = make_tenant("globex-twin", stripe_account="acct_Globex1")
    ingress = await ingress_factory([*TENANTS, twin], platform_secrets=[platform])
    status, doc, headers = await ingress.post(
        "/v1/webhooks/stripe", event_body("evt_twin", account="acct_Globex1"), "whsec_platform"
    )
    assert (status, doc["error"]["reason"]) == (503, "account_conflict")
    assert int(headers["Retry-After"]) >= 1  # Stripe retries: nothing sent is dropped
    assert await published(ingress) == []


async def test_connect_route_without_platform_secret_refuses(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS)
    status, doc, _ = await ingress.post(
        "/v1/webhooks/stripe", event_body(account="acct_Globex1"), "whsec_anything"
    )
    assert (status, doc["error"]["reason"]) == (404, "connect_not_configured")


async def test_event_type_outside_allow_list_is_acknowledged_not_published(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS)
    status, doc, _ = await ingress.post(
        "/v1/webhooks/stripe/picky", event_body(event_type="charge.succeeded"), secret_of("picky")
    )
    assert (status, doc) == (200, {"status": "ignored", "reason": "ignored_event_type"})
    assert await published(ingress) == []
    status, _, _ = await ingress.post("/v1/webhooks/stripe/picky", event_body(), secret_of("picky"))
    assert status == 200
    assert len(await published(ingress)) == 1


async def test_secret_roll_accepts_old_and_new_until_the_old_expires(
    ingress_factory: IngressFactory,
) -> None:
    rolling = make_tenant("rolling").model_copy(
        update={
            "webhook_secrets": (
                WebhookSecret(id="new", secret="whsec_new"),
                WebhookSecret(id="old", secret="whsec_old", expires_at=time.time() + 3600),
            )
        }
    )
    expired = make_tenant("expired").model_copy(
        update={
            "webhook_secrets": (
                WebhookSecret(id="new", secret="whsec_new"),
                WebhookSecret(id="old", secret="whsec_old", expires_at=time.time() - 1),
            )
        }
    )
    ingress = await ingress_factory([rolling, expired])
    assert (await ingress.post("/v1/webhooks/stripe/rolling", event_body("e1"), "whsec_old"))[
        0
    ] == 200
    assert (await ingress.post("/v1/webhooks/stripe/rolling", event_body("e2"), "whsec_new"))[
        0
    ] == 200
    status, doc, _ = await ingress.post("/v1/webhooks/stripe/expired", event_body(), "whsec_old")
    assert (status, doc["error"]["reason"]) == (400, "bad_signature")
    envs = [env for _, _, env in await published(ingress)]
    assert sorted(e.secret_id for e in envs) == ["new", "old"]


async def test_body_over_the_limit_is_refused_by_length_and_while_streaming(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS, max_body_bytes=1024)
    big = event_body(pad="x" * 2000)
    status, doc, _ = await ingress.post("/v1/webhooks/stripe/acme", big, secret_of("acme"))
    assert (status, doc["error"]["reason"]) == (413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 256):
            yield big[i : i + 256]

    sent = signed(big, secret_of("acme"))
    async with ingress.client.post("/v1/webhooks/stripe/acme", data=chunks(), headers=sent) as resp:
        assert resp.headers.get("Content-Length") is not None
        assert resp.status == 413
        assert orjson.loads(await resp.read())["error"]["reason"] == "body_too_large"
    assert await published(ingress) == []


async def test_router_errors_answer_in_the_json_error_shape(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS)
    async with ingress.client.get("/v1/webhooks/stripe/acme") as resp:
        doc = orjson.loads(await resp.read())
        assert (resp.status, doc["error"]["reason"]) == (405, "method_not_allowed")
    async with ingress.client.post("/nowhere", data=b"{}") as resp:
        doc = orjson.loads(await resp.read())
        assert (resp.status, doc["error"]["reason"]) == (404, "not_found")


async def test_broker_unreachable_answers_503_with_retry_after_and_publishes_nothing(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS, bootstrap="127.0.0.1:1")
    status, doc, headers = await ingress.post(
        "/v1/webhooks/stripe/acme", event_body(), secret_of("acme")
    )
    assert (status, doc["error"]["reason"]) == (503, "kafka_unavailable")
    assert int(headers["Retry-After"]) >= 1
    async with ingress.client.get("/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["producer"] is False
    assert await published(ingress) == []


async def test_ack_slower_than_publish_timeout_answers_503(ingress_factory: IngressFactory) -> None:
    ingress = await ingress_factory(TENANTS, publish_timeout=1e-9)
    status, doc, headers = await ingress.post(
        "/v1/webhooks/stripe/acme", event_body(), secret_of("acme")
    )
    assert (status, doc["error"]["reason"]) == (503, "publish_timeout")
    assert "Retry-After" in headers


async def test_only_verified_events_spend_the_tenants_delivery_budget(
    ingress_factory: IngressFactory,
) -> None:
    limits = IngressLimits(tenant_rate=0.001, tenant_burst=3)
    ingress = await ingress_factory(TENANTS, limits=limits)
    statuses = []
    for i in range(8):  # bad signatures spend the source's failures, not acme's deliveries
        secret = secret_of("acme") if i % 2 else "whsec_wrong"
        status, doc, headers = await ingress.post(
            "/v1/webhooks/stripe/acme", event_body(f"evt_{i}"), secret
        )
        statuses.append(status)
        if status == 429:
            assert doc["error"]["reason"] == "tenant_throttled"
            assert int(headers["Retry-After"]) >= 1
    assert statuses == [400, 200, 400, 200, 400, 200, 400, 429]
    status, _, _ = await ingress.post(
        "/v1/webhooks/stripe/globex", event_body(), secret_of("globex")
    )
    assert status == 200


async def test_bad_signatures_throttle_their_source_cheaply_not_a_trusted_sender(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(
        TENANTS, admission_limits=AdmissionLimits(source_burst=3, source_rate=0.001)
    )
    # The (acme, 127.0.0.1) pair delivers once: it is trusted on acme's route from now on.
    status, _, _ = await ingress.post("/v1/webhooks/stripe/acme", event_body(), secret_of("acme"))
    assert status == 200
    for route in ("globex", "globex", "nobody"):
        status, _, _ = await ingress.post(f"/v1/webhooks/stripe/{route}", event_body(), "whsec_x")
        assert status in (400, 404)
    status, doc, headers = await ingress.post(
        "/v1/webhooks/stripe/globex", event_body(), secret_of("globex")
    )
    assert (status, doc["error"]["reason"]) == (429, "source_throttled")
    assert headers.get("Connection", "").lower() == "close"
    status, _, _ = await ingress.post(
        "/v1/webhooks/stripe/acme", event_body("evt_2"), secret_of("acme")
    )
    assert status == 200


async def test_a_slow_body_holds_no_tenant_slot(ingress_factory: IngressFactory) -> None:
    ingress = await ingress_factory(TENANTS, limits=IngressLimits(tenant_max_in_flight=1))
    body = event_body("evt_slow")
    gate = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:10]
        await gate.wait()
        yield body[10:]

    async def slow_post() -> int:
        sent = signed(body, secret_of("acme"))
        async with ingress.client.post(
            "/v1/webhooks/stripe/acme", data=slow_body(), headers=sent
        ) as r:
            return r.status

    slow = asyncio.create_task(slow_post())
    gauge = ingress.app[METRICS_KEY].in_flight
    async with asyncio.timeout(10):
        while gauge._value.get() < 1:  # noqa: ASYNC110 - no event to wait on in the server
            await asyncio.sleep(0.01)
    status, _, _ = await ingress.post(
        "/v1/webhooks/stripe/acme", event_body("e2"), secret_of("acme")
    )
    assert status == 200
    gate.set()
    assert await slow == 200


async def test_a_body_too_slow_is_cut_with_408(ingress_factory: IngressFactory) -> None:
    ingress = await ingress_factory(TENANTS, ingress_body_read_timeout=0.3)
    body = event_body("evt_slow")
    gate = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:10]
        await gate.wait()
        yield body[10:]

    sent = signed(body, secret_of("acme"))
    async with ingress.client.post("/v1/webhooks/stripe/acme", data=slow_body(), headers=sent) as r:
        assert r.status == 408
        assert orjson.loads(await r.read())["error"]["reason"] == "body_timeout"
    gate.set()


async def test_global_in_flight_cap_answers_503_ingress_busy(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(TENANTS, admission_limits=AdmissionLimits(max_in_flight=1))
    body = event_body("evt_slow")
    gate = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:10]
        await gate.wait()
        yield body[10:]

    async def slow_post() -> int:
        sent = signed(body, secret_of("acme"))
        async with ingress.client.post(
            "/v1/webhooks/stripe/acme", data=slow_body(), headers=sent
        ) as r:
            return r.status

    slow = asyncio.create_task(slow_post())
    gauge = ingress.app[METRICS_KEY].in_flight
    async with asyncio.timeout(10):
        while gauge._value.get() < 1:  # noqa: ASYNC110 - no event to wait on in the server
            await asyncio.sleep(0.01)
    status, doc, headers = await ingress.post(
        "/v1/webhooks/stripe/globex", event_body(), secret_of("globex")
    )
    assert (status, doc["error"]["reason"]) == (503, "ingress_busy")
    assert "Retry-After" in headers
    gate.set()
    assert await slow == 200


async def test_health_readiness_and_bounded_metrics(ingress_factory: IngressFactory) -> None:
    ingress = await ingress_factory(TENANTS)
    await ingress.post("/v1/webhooks/stripe/acme", event_body(), secret_of("acme"))
    await ingress.post("/v1/webhooks/stripe/acme", event_body(), "whsec_wrong")
    async with ingress.client.get("/healthz") as resp:
        assert resp.status == 200
    async with ingress.client.get("/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready", "producer": True, "registry": True}
    async with ingress.client.get("/metrics") as resp:
        text = await resp.text()
    assert 'outcome="accepted",reason="published"' in text
    assert 'outcome="rejected",reason="bad_signature"' in text
    # The tenant shows only in the bounded top-N signature-failure series.
    tenant_lines = [line for line in text.splitlines() if "acme" in line]
    assert tenant_lines
    assert all(
        line.startswith("quotaflow_ingress_tenant_signature_failures") for line in tenant_lines
    )


async def test_access_log_is_one_json_line_per_request_without_body_or_secret(
    ingress_factory: IngressFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ingress = await ingress_factory(TENANTS)
    body = event_body("evt_logged", secret_marker="BODY-MARKER")
    with caplog.at_level(logging.INFO, logger="quotaflow.ingress"):
        await ingress.post("/v1/webhooks/stripe/acme", body, secret_of("acme"))
        await ingress.post("/v1/webhooks/stripe/acme", body, "whsec_wrong_one")
    lines = [
        orjson.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.getMessage() == "webhook"
    ]
    assert [(d["outcome"], d["reason"]) for d in lines] == [
        ("accepted", "published"),
        ("rejected", "bad_signature"),
    ]
    first = lines[0]
    assert (first["tenant_id"], first["event_id"], first["event_type"]) == (
        "acme",
        "evt_logged",
        "invoice.paid",
    )
    assert first["latency_ms"] >= 0
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "BODY-MARKER" not in text
    assert "whsec_" not in text


async def test_sampled_access_log_skips_successes_but_never_a_refusal(
    ingress_factory: IngressFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ingress = await ingress_factory(TENANTS, ingress_access_log_sample=0.0)
    with caplog.at_level(logging.INFO, logger="quotaflow.ingress"):
        for i in range(5):
            body = event_body(f"evt_sampled_{i}")
            status, _, _ = await ingress.post("/v1/webhooks/stripe/acme", body, secret_of("acme"))
            assert status == 200
        await ingress.post("/v1/webhooks/stripe/acme", event_body(), "whsec_wrong_one")
    reasons = [r.__dict__["reason"] for r in caplog.records if r.getMessage() == "webhook"]
    assert reasons == ["bad_signature"]


async def test_behind_a_proxy_the_source_is_what_the_proxy_saw(
    ingress_factory: IngressFactory,
) -> None:
    ingress = await ingress_factory(
        TENANTS,
        admission_limits=AdmissionLimits(source_burst=2, source_rate=0.001),
        ingress_forwarded_hops=1,
    )

    async def bad(forwarded: str) -> int:
        headers = {"X-Forwarded-For": forwarded}
        status, _, _ = await ingress.post(
            "/v1/webhooks/stripe/globex", event_body(), "whsec_x", headers=headers
        )
        return status

    # The client's own (leftmost) claims change nothing: the proxy appended 203.0.113.9.
    assert [await bad(f"10.9.9.{i}, 203.0.113.9") for i in range(3)] == [400, 400, 429]
    assert await bad("203.0.113.10") == 400  # another sender, as the proxy saw it
