"""The notifier's parts in-process: signatures the reference library accepts, the SSRF
guard, the retry schedule and the commit rule."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.exceptions import WebhookVerificationError

from quotaflow.commands.tenants.endpoints import new_endpoint_secret
from quotaflow.egress import DestinationRefused, check_destination
from streams.notifier.delivery import Deliverer
from streams.notifier.endpoint_queue import RetryPolicy
from streams.notifier.offsets import OffsetTracker
from streams.notifier.signing import webhook_headers


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    secret = new_endpoint_secret()
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    body = b'{"id":"msg_1","type":"quota.exhausted","timestamp":"x","data":{}}'
    headers = webhook_headers(secret, "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers)["id"] == "msg_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_endpoint_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"exhausted", b"restored"), headers)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:192.168.0.1]/x",
        "http://0.0.0.0/x",
        "http://100.64.0.1/x",
    ],
)
async def test_private_destinations_are_refused_by_default(url: str) -> None:
    with pytest.raises(DestinationRefused) as refused:
        await check_destination(url, allow_private=False)
    assert refused.value.reason == "private_address"
    assert (await check_destination(url, allow_private=True)).host


async def test_malformed_urls_are_refused() -> None:
    for url in ("ftp://example.com/x", "http:///x", "http://example.com:99999/"):
        with pytest.raises(DestinationRefused):
            await check_destination(url, allow_private=True)


async def test_a_delivery_to_a_private_address_is_refused_at_connect_time() -> None:
    deliverer = Deliverer(timeout=2.0, allow_private=False)
    await deliverer.start()
    try:
        literal = await deliverer.post("http://127.0.0.1:9/x", new_endpoint_secret(), "m", b"{}")
        named = await deliverer.post("http://localhost:9/x", new_endpoint_secret(), "m", b"{}")
    finally:
        await deliverer.stop()
    assert (literal.outcome, named.outcome) == ("refused_address", "refused_address")


def test_backoff_doubles_with_jitter_up_to_its_ceiling_and_honours_retry_after() -> None:
    policy = RetryPolicy(base=1.0, max_delay=60.0, give_up_after=86_400)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (5, 16.0), (30, 60.0)):
        delays = [policy.delay(failures) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len({round(d, 6) for d in delays}) > 1
    assert policy.delay(1, retry_after=30.0) == 30.0


def test_only_the_prefix_of_settled_records_is_committable() -> None:
    tracker = OffsetTracker()
    tracker.read("p0", 10, 2)  # two endpoints owe offset 10
    tracker.read("p0", 11, 0)  # nobody wanted 11
    tracker.read("p0", 12, 1)
    assert tracker.committable() == {"p0": 10}
    tracker.settled("p0", 12)
    tracker.settled("p0", 10)
    assert tracker.committable() == {"p0": 10}
    tracker.settled("p0", 10)
    assert tracker.committable() == {"p0": 13}
