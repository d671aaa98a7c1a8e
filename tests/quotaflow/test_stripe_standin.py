"""The Stripe stand-in, seen through the official `stripe` library as the worker sees Stripe."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import orjson
import pytest
import stripe
from pydantic import SecretStr
from stripe.params.billing import MeterEventCreateParams

from quotaflow.testing.stripe_standin import StandinControl, account_label, run_standin
from streams.stripe_client import Fetched, NotFound, StripeReader
from tests.tables.factories import BASIC, customer, make_tenant, subscription

pytestmark = pytest.mark.timeout(60)

KEY = "sk_test_standin_acme"
OTHER_KEY = "sk_test_standin_globex"
PLATFORM_KEY = "sk_test_standin_platform"
CONNECTED = "acct_1Connected"
PERIOD = (1_767_225_600, 1_769_904_000)


@pytest.fixture
async def http() -> AsyncIterator[stripe.AIOHTTPClient]:
    client = stripe.AIOHTTPClient()
    yield client
    await client.close_async()  # type: ignore[no-untyped-call]


def _client(
    url: str,
    http: stripe.AIOHTTPClient,
    key: str = KEY,
    *,
    account: str | None = None,
    retries: int = 0,
) -> stripe.StripeClient:
    return stripe.StripeClient(
        key,
        stripe_account=account,
        base_addresses={"api": url},
        max_network_retries=retries,
        http_client=http,
    )


def _error_of(exc: stripe.StripeError) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(exc.http_body or "{}")
    error: dict[str, Any] = body["error"]
    return error


def _sub(sub_id: str = "sub_1", cus: str = "cus_1", status: str = "active") -> dict[str, Any]:
    return subscription(sub_id, cus, status, [(BASIC, 2)], period=PERIOD)


async def test_stored_objects_are_retrieved_with_their_account_key(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub(), customer("cus_1", metadata={"rating_id": "r-1"}))
    client = _client(stripe_standin.url, http)
    sub = await client.v1.subscriptions.retrieve_async("sub_1")
    assert sub.to_dict() == _sub()
    assert sub.items.data[0].price.lookup_key == "basic"
    cus = await client.v1.customers.retrieve_async("cus_1")
    assert cus.to_dict()["metadata"] == {"rating_id": "r-1"}
    # The last put wins, as Stripe answers the object's current state.
    stripe_standin.put(KEY, _sub(status="past_due"))
    assert (await client.v1.subscriptions.retrieve_async("sub_1")).status == "past_due"
    counts = stripe_standin.account_stats(KEY)
    assert counts["requests"] == {"subscription": 2, "customer": 1}
    assert counts["statuses"] == {"200": 3}


async def test_the_worker_reader_fetches_from_the_standin(stripe_standin: StandinControl) -> None:
    tenant = make_tenant().model_copy(update={"stripe_api_key": SecretStr(KEY)})
    stripe_standin.put(KEY, _sub())
    reader = StripeReader(api_base=stripe_standin.url)
    try:
        fetched = await reader.fetch(tenant, "subscription", "sub_1")
        missing = await reader.fetch(tenant, "customer", "cus_nobody")
    finally:
        await reader.close()
    assert isinstance(fetched, Fetched)
    assert fetched.object["status"] == "active"
    assert isinstance(missing, NotFound)  # the stand-in's 404 is Stripe's


async def test_another_accounts_object_is_404_resource_missing(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub())
    stripe_standin.put(CONNECTED, _sub("sub_c", "cus_c"))
    other = _client(stripe_standin.url, http, OTHER_KEY)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await other.v1.subscriptions.retrieve_async("sub_1")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.user_message == "No such subscription: 'sub_1'"
    with pytest.raises(stripe.InvalidRequestError) as missing_customer:
        await _client(stripe_standin.url, http).v1.customers.retrieve_async("cus_1")
    assert missing_customer.value.user_message == "No such customer: 'cus_1'"
    # Connect: the connected account's objects answer to the platform key with
    # Stripe-Account, not to the platform key alone.
    connect = _client(stripe_standin.url, http, PLATFORM_KEY, account=CONNECTED)
    assert (await connect.v1.subscriptions.retrieve_async("sub_c")).customer == "cus_c"
    with pytest.raises(stripe.InvalidRequestError):
        await _client(stripe_standin.url, http, PLATFORM_KEY).v1.subscriptions.retrieve_async(
            "sub_c"
        )
    # A deleted object is gone.
    assert stripe_standin.delete(KEY, "subscription", "sub_1")
    with pytest.raises(stripe.InvalidRequestError):
        await _client(stripe_standin.url, http).v1.subscriptions.retrieve_async("sub_1")


async def test_no_or_bad_key_is_401_and_keys_are_never_echoed(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    url = f"{stripe_standin.url}/v1/subscriptions/sub_1"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 401
        body = orjson.loads(await response.read())
    assert body["error"]["type"] == "invalid_request_error"
    with pytest.raises(stripe.AuthenticationError) as caught:
        await _client(stripe_standin.url, http, "sk_test_x y").v1.customers.retrieve_async("c")
    assert caught.value.http_status == 401
    await _client(stripe_standin.url, http).v1.billing.meter_events.create_async(
        params={"event_name": "api_calls", "payload": {"stripe_customer_id": "c", "value": "1"}}
    )
    stats = stripe_standin.stats()
    assert stats["unauthorized"] == 2
    dumped = orjson.dumps([stats, stripe_standin.meter_events()])
    assert KEY.encode() not in dumped
    assert account_label(KEY).encode() in dumped


async def test_latency_is_added_before_each_answer(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub())
    stripe_standin.configure(KEY, latency=0.3)
    client = _client(stripe_standin.url, http)
    started = time.monotonic()
    await client.v1.subscriptions.retrieve_async("sub_1")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    with pytest.raises(stripe.InvalidRequestError):  # a 404 takes its time too
        await client.v1.customers.retrieve_async("cus_nobody")
    assert time.monotonic() - started >= 0.3
    # The default applies to accounts without their own setting.
    stripe_standin.configure(None, latency=0.2)
    stripe_standin.put(OTHER_KEY, _sub())
    started = time.monotonic()
    await _client(stripe_standin.url, http, OTHER_KEY).v1.subscriptions.retrieve_async("sub_1")
    assert time.monotonic() - started >= 0.2


async def test_past_the_rate_limit_stripe_answers_429_that_must_not_be_retried(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub())
    stripe_standin.put(OTHER_KEY, _sub())
    # Three at once, then one token per five seconds.
    stripe_standin.configure(KEY, rate_limit=0.2, burst=3)
    client = _client(stripe_standin.url, http, retries=2)
    for _ in range(3):
        await client.v1.subscriptions.retrieve_async("sub_1")
    with pytest.raises(stripe.RateLimitError) as caught:
        await client.v1.subscriptions.retrieve_async("sub_1")
    assert caught.value.http_status == 429
    headers = caught.value.headers or {}
    assert headers["Stripe-Rate-Limited-Reason"] == "global-rate"
    assert headers["Stripe-Should-Retry"] == "false"
    assert _error_of(caught.value)["code"] == "rate_limit"
    # Stripe-Should-Retry: false: the library did not retry (one request per call).
    assert stripe_standin.account_stats(KEY)["statuses"] == {"200": 3, "429": 1}
    # Another account has its own bucket (no limit set).
    other = _client(stripe_standin.url, http, OTHER_KEY)
    for _ in range(6):
        await other.v1.subscriptions.retrieve_async("sub_1")


async def test_held_requests_wait_in_flight_until_released_other_accounts_do_not(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub())
    stripe_standin.put(OTHER_KEY, _sub())
    stripe_standin.hold(KEY)
    client = _client(stripe_standin.url, http)
    held = [asyncio.create_task(client.v1.subscriptions.retrieve_async("sub_1")) for _ in range(5)]
    stats = await asyncio.to_thread(stripe_standin.wait_in_flight, 5, KEY)
    assert stats["in_flight"] == 5
    assert stats["accounts"][account_label(KEY)]["in_flight"] == 5
    assert stats["held"] == [account_label(KEY)]
    # Another account is answered meanwhile.
    other = await _client(stripe_standin.url, http, OTHER_KEY).v1.subscriptions.retrieve_async(
        "sub_1"
    )
    assert other.id == "sub_1"
    assert not any(task.done() for task in held)
    stripe_standin.release(KEY)
    answers = await asyncio.gather(*held)
    assert [a.id for a in answers] == ["sub_1"] * 5
    after = stripe_standin.stats()
    assert after["in_flight"] == 0
    assert after["accounts"][account_label(KEY)]["max_in_flight"] == 5
    assert after["max_in_flight"] >= 5


async def test_hold_all_and_max_in_flight_per_account_and_reset(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub())
    stripe_standin.put(OTHER_KEY, _sub())
    stripe_standin.hold()
    tasks = [
        asyncio.create_task(
            _client(stripe_standin.url, http, key).v1.subscriptions.retrieve_async("sub_1")
        )
        for key in (KEY, KEY, KEY, OTHER_KEY, OTHER_KEY)
    ]
    stats = await asyncio.to_thread(stripe_standin.wait_in_flight, 5)
    assert stats["hold_all"] is True
    stripe_standin.release()
    await asyncio.gather(*tasks)
    stats = stripe_standin.stats()
    assert (stats["in_flight"], stats["max_in_flight"]) == (0, 5)
    assert stats["accounts"][account_label(KEY)]["max_in_flight"] == 3
    assert stats["accounts"][account_label(OTHER_KEY)]["max_in_flight"] == 2
    stripe_standin.reset_stats()
    stats = stripe_standin.stats()
    assert (stats["max_in_flight"], stats["requests"], stats["accounts"]) == (0, {}, {})
    assert stripe_standin.account_stats(KEY)["requests"] == {}


async def test_outage_answers_500_or_hangs_until_the_client_gives_up(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    stripe_standin.put(KEY, _sub())
    stripe_standin.configure(KEY, down="error")
    client = _client(stripe_standin.url, http, retries=1)
    with pytest.raises(stripe.APIError) as caught:
        await client.v1.subscriptions.retrieve_async("sub_1")
    assert caught.value.http_status == 500
    assert _error_of(caught.value)["type"] == "api_error"
    # The library retried the 500 once.
    assert stripe_standin.account_stats(KEY)["statuses"] == {"500": 2}

    stripe_standin.configure(KEY, down="hang")
    timeout = aiohttp.ClientTimeout(total=0.5)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        with pytest.raises(TimeoutError):
            async with session.get(f"{stripe_standin.url}/v1/subscriptions/sub_1"):
                pass
        # A client that gave up is no longer in flight; one still waiting is answered
        # once the outage ends.
        await asyncio.to_thread(stripe_standin.wait_in_flight, 0, KEY)
        waiting = asyncio.create_task(client.v1.subscriptions.retrieve_async("sub_1"))
        await asyncio.to_thread(stripe_standin.wait_in_flight, 1, KEY)
        stripe_standin.configure(KEY, down=None)
        assert (await waiting).status == "active"


async def test_meter_events_are_recorded_once_per_identifier(
    stripe_standin: StandinControl, http: stripe.AIOHTTPClient
) -> None:
    client = _client(stripe_standin.url, http, account=CONNECTED)
    params: MeterEventCreateParams = {
        "event_name": "api_calls",
        "identifier": "qf_1",
        "timestamp": 1_767_300_000,
        "payload": {"stripe_customer_id": "cus_1", "value": "12"},
    }
    first = await client.v1.billing.meter_events.create_async(
        params=params, options={"idempotency_key": "qf_1"}
    )
    assert first.to_dict() | {"created": 0} == {
        "object": "billing.meter_event",
        "created": 0,
        "event_name": "api_calls",
        "identifier": "qf_1",
        "livemode": False,
        "payload": {"stripe_customer_id": "cus_1", "value": "12"},
        "timestamp": 1_767_300_000,
    }
    # The same idempotency key replays; the same identifier under another key is a duplicate.
    replay = await client.v1.billing.meter_events.create_async(
        params=params, options={"idempotency_key": "qf_1"}
    )
    again = await client.v1.billing.meter_events.create_async(params=params)
    assert replay.identifier == again.identifier == "qf_1"
    await client.v1.billing.meter_events.create_async(params=params | {"identifier": "qf_2"})
    events = stripe_standin.meter_events(CONNECTED)
    assert [e["identifier"] for e in events] == ["qf_1", "qf_2"]
    counts = stripe_standin.account_stats(CONNECTED)
    assert counts["requests"] == {"meter_event": 4}
    assert (counts["meter_events"], counts["meter_events_duplicate"]) == (2, 1)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.billing.meter_events.create_async(
            params=cast(MeterEventCreateParams, {"event_name": "x"})
        )
    assert caught.value.param == "payload"


def test_in_process_runner_serves_and_stops() -> None:
    with run_standin(latency=0.0) as url:
        control = StandinControl(url)
        assert control.health()
        control.put(KEY, _sub())
    assert not StandinControl(url, timeout=1.0).health()


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "quotaflow.testing.stripe_standin", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().decode().strip()
            assert url.startswith("http://127.0.0.1:")
            control = StandinControl(url)
            assert control.health()
            assert control.configure(KEY, rate_limit=5).rate_limit == 5
            proc.terminate()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
