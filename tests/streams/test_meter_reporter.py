"""The Stripe meter reporter: request shapes (stripe-mock), 429 storms, restarts, no duplicate."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from quotaflow.registry import StaticTenantRegistry
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from streams.meter_client import MeterClient, MeterJob
from streams.meter_reporter import MeterReporter
from streams.usage_agent import meter_identifier, meter_topic
from tables.tenant import Tenant
from tests.kafkautil import produce
from tests.tables.factories import make_tenant

pytestmark = [pytest.mark.timeout(120)]


def _tenant() -> Tenant:
    return make_tenant().model_copy(
        update={"stripe_api_key": SecretStr("sk_test_123"), "stripe_account": "acct_1Acme"}
    )


def _job(customer: str, batch: int, value: int = 3) -> MeterJob:
    batch_id = f"node-1:{batch}"
    return MeterJob(
        tenant_id="acme",
        stripe_customer_id=customer,
        event_name="api_calls",
        value=value,
        identifier=meter_identifier("acme", customer, "api_calls", batch_id),
        timestamp=int(time.time()),
        batch_id=batch_id,
    )


async def test_meter_event_request_has_the_shape_stripe_expects(stripe_mock: str) -> None:
    client = MeterClient(api_base=stripe_mock, max_attempts=3)
    try:
        assert await client.send(_tenant(), _job("cus_1", 1)) == "sent"
    finally:
        await client.close()


async def test_tenant_without_api_key_is_reported_not_retried(stripe_mock: str) -> None:
    client = MeterClient(api_base=stripe_mock)
    try:
        assert await client.send(make_tenant(), _job("cus_1", 1)) == "no_api_key"
    finally:
        await client.close()


@dataclass
class FlakyStripe:
    """A local Stripe stand-in: answers 429 (Stripe-Should-Retry: true) half the time and
    records every request, the identifiers it accepted, and concurrency per customer."""

    rng: random.Random = field(default_factory=lambda: random.Random(5))
    attempts: list[float] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight_per_customer: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_accepted(self, count: int) -> None:
        while len(self.accepted) < count:
            self.changed.clear()
            await self.changed.wait()

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        customer = str(form["payload[stripe_customer_id]"])
        identifier = str(form["identifier"])
        self.attempts.append(time.monotonic())
        self.in_flight[customer] = self.in_flight.get(customer, 0) + 1
        self.max_in_flight_per_customer = max(
            self.max_in_flight_per_customer, self.in_flight[customer]
        )
        try:
            await asyncio.sleep(0.005)
            if self.rng.random() < 0.5:
                return web.Response(
                    status=429,
                    body=orjson.dumps(
                        {"error": {"type": "invalid_request_error", "message": "Too many"}}
                    ),
                    content_type="application/json",
                    headers={
                        "Stripe-Should-Retry": "true",
                        "Stripe-Rate-Limited-Reason": "global-rate",
                    },
                )
            if identifier in self.accepted:
                self.accepted[identifier] += 1  # Stripe would drop it; we count it as a bug
            else:
                self.accepted[identifier] = 1
                self.values[identifier] = int(str(form["payload[value]"]))
                self.changed.set()
            body = {
                "object": "billing.meter_event",
                "event_name": form["event_name"],
                "identifier": identifier,
                "livemode": False,
                "created": int(time.time()),
                "timestamp": int(str(form["timestamp"])),
                "payload": {"stripe_customer_id": customer, "value": form["payload[value]"]},
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        finally:
            self.in_flight[customer] -= 1


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyStripe, str]]:
    fake = FlakyStripe()
    app = web.Application()
    app.router.add_post("/v1/billing/meter_events", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.kafka
async def test_429_storm_delivers_every_job_once_within_the_bucket_across_a_restart(
    settings_factory: Callable[..., Settings], flaky: tuple[FlakyStripe, str]
) -> None:
    fake, url = flaky
    settings = settings_factory()
    await ensure_topics(settings)
    jobs = [_job(f"cus_{c}", b, value=c + b) for b in range(1, 9) for c in range(6)]
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (
            f"acme/{j.stripe_customer_id}/api_calls".encode(),
            orjson.dumps(
                {
                    "tenant_id": j.tenant_id,
                    "stripe_customer_id": j.stripe_customer_id,
                    "event_name": j.event_name,
                    "value": j.value,
                    "identifier": j.identifier,
                    "timestamp": j.timestamp,
                    "batch_id": j.batch_id,
                }
            ),
            [],
        )
        for j in jobs
    ]
    await produce(settings.kafka_bootstrap, meter_topic(settings), records)
    registry = StaticTenantRegistry([_tenant()])
    rate = 40.0

    def reporter() -> MeterReporter:
        return MeterReporter(
            bootstrap=settings.kafka_bootstrap,
            topic=meter_topic(settings),
            group_id=f"{settings.app_id}-meter",
            registry=lambda: registry,
            client=MeterClient(
                api_base=url, rates={"test": rate}, base_backoff=0.05, max_backoff=0.5
            ),
            max_in_flight=8,
        )

    first = reporter()
    await first.start()
    async with asyncio.timeout(60):
        await fake.until_accepted(len(jobs) // 3)
    await first.stop()  # a restart in the middle of the stream
    second = reporter()
    await second.start()
    try:
        async with asyncio.timeout(60):
            await fake.until_accepted(len(jobs))
    finally:
        await second.stop()

    expected = {j.identifier: j.value for j in jobs}
    assert fake.values == expected  # every job delivered, with its value
    assert set(fake.accepted.values()) == {1}  # none twice
    assert fake.max_in_flight_per_customer == 1
    # The bucket: burst rate/20, refilled at `rate` per second. Measured where Stripe would
    # (at the server) over 2 s windows, with 10 % for requests bunched up in transit;
    # slowness only lowers counts.
    burst = max(1.0, rate / 20)
    assert _max_in_window(fake.attempts, 2.0) <= 2 * rate + burst + 0.1 * rate
    assert len(fake.attempts) > len(jobs)  # the 429s were really retried
