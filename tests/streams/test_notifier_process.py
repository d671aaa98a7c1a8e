"""`quotaflow notifier` as a process on the real broker, fed notifications straight into its
topic, delivering to a real receiver that verifies with `standardwebhooks`.

With the default settings an endpoint on a private address (the receiver on 127.0.0.1)
is never called. With private addresses allowed, an endpoint that stays down past the
give-up window is disabled (state topic, audit record, metric) and its notifications are
dead-lettered; `quotaflow notifications enable` and `resend` deliver them afterwards, and
`test` sends a test event through the same path.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.endpoints import new_endpoint_secret
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.receiver import Receiver
from quotaflow.topics import ensure_topics
from tables.notification import NOTIFICATION_SCHEMA, Notification, NotificationData, iso_timestamp
from tables.tenant import NotificationEndpoint
from tests.kafkautil import produce
from tests.processes import components, start
from tests.reliability.stack import topic_records
from tests.tables.factories import make_tenant
from wire import SCHEMA_HEADER

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def _notification(n: int) -> Notification:
    return Notification(
        id=f"msg_{n:04d}",
        type="quota.exhausted",
        timestamp=iso_timestamp(time.time()),
        data=NotificationData(
            tenant_id="acme", customer_id=f"cus_{n}", stripe_customer_id=f"cus_{n}", version=n
        ),
    )


def _env(settings: Settings, tmp_path: Path, receiver: Receiver, **extra: str) -> dict[str, str]:
    endpoint = NotificationEndpoint(id="ep_r", url=receiver.url, secret=SecretStr(receiver.secret))
    tenant = make_tenant().model_copy(update={"notification_endpoints": (endpoint,)})
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_bytes(dump_tenants([tenant]))
    return {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
        "QUOTAFLOW_NOTIFIER_GROUP": f"{settings.topic_prefix}notifier",
        **extra,
    }


async def _feed(settings: Settings, notifications: list[Notification]) -> None:
    await produce(
        settings.kafka_bootstrap,
        settings.topics.notifications,
        [(b"acme", n.to_json(), [(SCHEMA_HEADER, NOTIFICATION_SCHEMA)]) for n in notifications],
    )


async def _metric(port: int, sample: str) -> float:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


async def _until(check: Callable[[], object], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "quotaflow.commands.cli", "notifications", *args],
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


async def test_by_default_an_endpoint_on_a_private_address_is_never_called(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    await ensure_topics(settings)
    port = free_port()
    async with Receiver(secret=new_endpoint_secret()) as receiver:
        env = _env(settings, tmp_path, receiver, QUOTAFLOW_NOTIFIER_PORT=str(port))
        with components(env, tmp_path) as started:
            start(started, ["notifier"], env, tmp_path).wait_port(port)
            await _feed(settings, [_notification(1)])
            refused = 'quotaflow_notifier_attempts_total{outcome="refused_address"}'

            async def seen() -> bool:
                return await _metric(port, refused) >= 2  # retried, refused each time

            await _until(seen, "the notifier never tried the endpoint")
        assert receiver.attempts == 0


async def test_a_dead_endpoint_is_disabled_its_notifications_dead_lettered_then_resent(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    await ensure_topics(settings)
    port = free_port()
    async with Receiver(secret=new_endpoint_secret(), down=True) as receiver:
        env = _env(
            settings,
            tmp_path,
            receiver,
            QUOTAFLOW_NOTIFIER_PORT=str(port),
            QUOTAFLOW_NOTIFY_ALLOW_PRIVATE="true",
            QUOTAFLOW_NOTIFIER_GIVE_UP_AFTER="3",
            QUOTAFLOW_NOTIFIER_RETRY_BASE="0.2",
            QUOTAFLOW_NOTIFIER_RETRY_MAX_DELAY="1",
        )
        sent = [_notification(n) for n in range(3)]
        with components(env, tmp_path) as started:
            start(started, ["notifier"], env, tmp_path).wait_port(port)
            await _feed(settings, sent)

            async def dead() -> bool:
                letters = await topic_records(settings.kafka_bootstrap, settings.topics.deadletter)
                return len(letters) >= len(sent)

            await _until(dead, "the notifications were never dead-lettered")
            letters = await topic_records(settings.kafka_bootstrap, settings.topics.deadletter)
            reasons = {dict(r.headers)["qf-dl-reason"] for r in letters}
            assert reasons == {b"endpoint_disabled"}
            assert receiver.attempts >= 2
            assert (
                await _metric(port, 'quotaflow_notifier_endpoints_disabled_total{reason="failing"}')
                == 1.0
            )
            states = await topic_records(
                settings.kafka_bootstrap, settings.topics.notification_endpoints
            )
            assert orjson.loads(states[-1].value)["disabled"] is True
            audit = await topic_records(settings.kafka_bootstrap, settings.topics.tenants_audit)
            assert orjson.loads(audit[-1].value)["action"] == "notification-endpoint-disabled"
            listed = orjson.loads(await asyncio.to_thread(_cli, env, "list", "acme"))
            assert listed["endpoints"][0]["notifier_disabled"] == "failing"
            assert listed["endpoints"][0]["secret"] == "**********"

            # The tenant fixed its receiver; an operator enables and resends.
            receiver.down = False
            await asyncio.to_thread(_cli, env, "enable", "acme", "ep_r")
            for n in sent:
                await asyncio.to_thread(_cli, env, "resend", "acme", n.id)
            test_id = (await asyncio.to_thread(_cli, env, "test", "acme")).strip()

            async def delivered() -> bool:
                return len(receiver.deliveries) >= len(sent) + 1

            await _until(delivered, f"delivered only {receiver.summary()}")
            assert receiver.ids() == [n.id for n in sent] + [test_id]
            assert receiver.refused == []
            shown = orjson.loads(await asyncio.to_thread(_cli, env, "show", "acme", sent[0].id))
            assert [d["reason"] for d in shown["dead_letters"]] == ["endpoint_disabled"]
