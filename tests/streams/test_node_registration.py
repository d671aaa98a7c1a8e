"""Edge nodes registering themselves with their region's pusher: every component a real
process (`quotaflow ingress`, `push`, `edge`) on the real broker, no configured nodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from unittest.mock import ANY

import orjson
import pytest
import urllib3
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from edge.reporter import REGION_HTTP_HEADER
from quotaflow.commands.localkafka import free_port
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from quotaflow.testing.harness import wait_until
from quotaflow.topics import ensure_topics
from tables.edge_node import SIGNATURE_RECORD_HEADER
from tables.quota import QuotaUpdate, Reason
from tables.tenant import Tenant, WebhookSecret
from tests.processes import EDGE_AUTH, Component, components, edge_auth_env, start
from wire import SIGNATURE_HEADER, Kind, Signer, generate_keypair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

HTTP = urllib3.PoolManager()


def update(customer: str, version: int) -> QuotaUpdate:
    return QuotaUpdate(
        tenant_id="euco",
        customer_id=customer,
        limit=100 * version,
        used=0,
        remaining=100 * version,
        status="active",
        version=version,
        reason=Reason(kind="policy", id=f"v{version}"),
        updated_at=time.time(),
    )


async def _produce(
    settings: Settings,
    records: Iterable[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for topic, key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def produce_quotas(settings: Settings, updates: Iterable[QuotaUpdate]) -> None:
    topic = settings.topics.quota_updates
    asyncio.run(_produce(settings, [(topic, u.key.encode(), u.to_json(), []) for u in updates]))


def eventually(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    wait_until(check, timeout=within, what=what)


def metric(port: int, name: str, **labels: str) -> float | None:
    """The sum of the samples of `name` whose labels include `labels` (None if none)."""
    body = HTTP.request("GET", f"http://127.0.0.1:{port}/metrics", timeout=2.0).data.decode()
    found = None
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found = (found or 0.0) + sample.value
    return found


def edge_version(port: int, customer: str) -> int | None:
    try:
        resp = HTTP.request(
            "GET",
            f"http://127.0.0.1:{port}/v1/quotas/euco/{customer}",
            headers=EDGE_AUTH,
            timeout=2.0,
        )
    except urllib3.exceptions.HTTPError:
        return None
    if resp.status != 200:
        return None
    version: int = orjson.loads(resp.data)["version"]
    return version


class Stack:
    """Ingress and the eu pusher, running; edges can be started into it."""

    def __init__(
        self,
        settings: Settings,
        env: dict[str, str],
        started: list[Component],
        logs: Path,
        *,
        push_key: str,
        edge_key: str,
    ) -> None:
        self.settings = settings
        self.env = env  # public keys only; each process adds its own private key
        self.push_key = push_key  # the eu pushers' private push key
        self.edge_key = edge_key  # the eu edge nodes' private edge key
        self.started = started
        self.logs = logs
        self.ingress_port = int(env["QUOTAFLOW_INGRESS_PORT"])
        self.pusher_port = int(env["QUOTAFLOW_PUSHER_PORT"])

    def edge(self, port: int, node_id: str | None = None) -> Component:
        """Starts an edge process; its node id (the pushers' metric label) `node-<port>`."""
        env = {
            **self.env,
            "QUOTAFLOW_USAGE_NODE_ID": node_id or f"node-{port}",
            "QUOTAFLOW_EDGE_SIGNING_KEYS": orjson.dumps([self.edge_key]).decode(),
        }
        edge = start(self.started, ["edge", "--region", "eu", "--port", str(port)], env, self.logs)
        edge.wait_port(port)
        return edge

    def pusher_metric(self, name: str, **labels: str) -> float | None:
        return metric(self.pusher_port, name, **{"region": "eu", **labels})

    def wait_heartbeats(self, node: str, count: int) -> None:
        """Waits until the pusher had `count` more pushes to `node` answered 200 (an idle
        node gets a heartbeat a second)."""
        ok = "quotaflow_push_batches_total"
        start = self.pusher_metric(ok, node=node, outcome="ok") or 0
        eventually(
            lambda: (self.pusher_metric(ok, node=node, outcome="ok") or 0) >= start + count,
            f"{count} more pushes to {node} answered",
        )


@pytest.fixture
def stack(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[Stack]:
    push_key, push_public = generate_keypair()
    edge_key, edge_public = generate_keypair()
    settings = settings_factory(
        push_signing_keys={"eu": [SecretStr(push_key)]}, edge_announce_interval=1.0
    )
    asyncio.run(ensure_topics(settings))
    tenants_file = tmp_path / "tenants.json"
    tenant = Tenant(
        id="euco",
        webhook_secrets=(WebhookSecret(id="w1", secret=SecretStr("whsec_t")),),
        regions=("eu",),
    )
    tenants_file.write_bytes(dump_tenants([tenant]))
    ingress_port, pusher_port = free_port(), free_port()
    env = {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
        "QUOTAFLOW_APP_ID": settings.app_id,
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
        "QUOTAFLOW_PUSH_VERIFY_KEYS": orjson.dumps({"eu": [push_public]}).decode(),
        "QUOTAFLOW_EDGE_VERIFY_KEYS": orjson.dumps({"eu": [edge_public]}).decode(),
        "QUOTAFLOW_EDGE_ANNOUNCE_INTERVAL": "1",
        "QUOTAFLOW_EDGE_URL_ALLOW": orjson.dumps({"eu": ["127.0.0.0/8"]}).decode(),
        "QUOTAFLOW_INGRESS_PORT": str(ingress_port),
        "QUOTAFLOW_USAGE_INGRESS_URL": f"http://127.0.0.1:{ingress_port}",
        "QUOTAFLOW_USAGE_SPOOL_DIR": str(tmp_path / "spool"),
        "QUOTAFLOW_PUSHER_PORT": str(pusher_port),
        **edge_auth_env(),
    }
    env.pop("QUOTAFLOW_EDGE_NODES", None)
    with components(env, tmp_path) as started:
        ingress = start(started, ["ingress", "--workers", "1"], env, tmp_path)
        pusher_env = {
            **env,
            "QUOTAFLOW_PUSH_SIGNING_KEYS": orjson.dumps({"eu": [push_key]}).decode(),
        }
        pusher = start(started, ["push", "--region", "eu"], pusher_env, tmp_path)
        ingress.wait_port(ingress_port)
        pusher.wait_port(pusher_port)
        eventually(
            lambda: HTTP.request("GET", f"http://127.0.0.1:{pusher_port}/readyz").status == 200,
            "pusher ready",
        )
        yield Stack(settings, env, started, tmp_path, push_key=push_key, edge_key=edge_key)


def test_an_announced_node_gets_a_snapshot_then_deltas_and_leaving_stops_delivery(
    stack: Stack,
) -> None:
    before = [update(f"c{c}", v) for v in (1, 2) for c in range(6)]
    produce_quotas(stack.settings, before)
    assert stack.pusher_metric("quotaflow_push_nodes") == 0

    port = free_port()
    node = f"node-{port}"
    edge = stack.edge(port)
    # (a) snapshot, then live deltas, with no configured node: purely by announcement.
    eventually(lambda: all(edge_version(port, f"c{c}") == 2 for c in range(6)), "snapshot arrives")
    # Labelled by node id, never by the announced URL.
    assert (stack.pusher_metric("quotaflow_push_snapshots_total", node=node) or 0) >= 1
    produce_quotas(stack.settings, [update("c0", 3), update("c9", 1)])
    eventually(
        lambda: edge_version(port, "c0") == 3 and edge_version(port, "c9") == 1, "deltas arrive"
    )
    assert stack.pusher_metric("quotaflow_push_nodes") == 1

    # (d) the lag gauge covers both quota.updates partitions and is 0 once caught up.
    topic = stack.settings.topics.quota_updates
    group = f"{stack.settings.app_id}-push-eu"

    def lag_rows() -> list[float]:
        rows = []
        for p in range(stack.settings.partitions):
            value = metric(
                stack.pusher_port,
                "quotaflow_consumer_lag",
                group=group,
                topic=topic,
                partition=str(p),
            )
            if value is not None:
                rows.append(value)
        return rows

    eventually(lambda: lag_rows() == [0.0] * stack.settings.partitions, "lag 0 on every partition")

    # (b) a graceful stop announces the departure; the pusher stops delivering to it.
    assert edge.stop() == 0
    eventually(lambda: stack.pusher_metric("quotaflow_push_nodes") == 0, "node dropped")
    assert (
        stack.pusher_metric("quotaflow_pusher_announcements_total", outcome="departed") or 0
    ) >= 1
    # A departed node's series are removed (node ids churn; the label set stays bounded),
    # and a sender still running would bring them back with its heartbeats.
    time.sleep(2.5)  # two pusher heartbeats would have gone out to a node still served
    assert stack.pusher_metric("quotaflow_push_batches_total", node=node) is None
    assert stack.pusher_metric("quotaflow_push_node_up", node=node) is None


def test_a_forged_announcement_adds_no_node(stack: Stack) -> None:
    produce_quotas(stack.settings, [update("c0", 1)])
    attacker = f"http://127.0.0.1:{free_port()}"
    doc = {"region": "eu", "node_id": "evil", "url": attacker, "at": time.time(), "leaving": False}
    body = orjson.dumps(doc)

    # Through the ingress, signed with a key that is not the region's: refused.
    forged = Signer(Kind.ANNOUNCEMENT, [generate_keypair()[0]]).headers(body)
    resp = HTTP.request(
        "POST",
        f"http://127.0.0.1:{stack.ingress_port}/v1/edge/nodes",
        body=body,
        headers={**forged, REGION_HTTP_HEADER: "eu", "Content-Type": "application/json"},
    )
    assert resp.status == 401, resp.data
    unsigned = HTTP.request(
        "POST",
        f"http://127.0.0.1:{stack.ingress_port}/v1/edge/nodes",
        body=body,
        headers={REGION_HTTP_HEADER: "eu", "Content-Type": "application/json"},
    )
    assert unsigned.status == 401, unsigned.data
    assert (
        metric(stack.ingress_port, "quotaflow_ingress_node_announcements_total", outcome="rejected")
        == 2
    )

    # Straight into the topic, forged and unsigned: the pusher ignores and counts both.
    topic = stack.settings.topics.edge_nodes
    asyncio.run(
        _produce(
            stack.settings,
            [
                (
                    topic,
                    b"eu/evil",
                    body,
                    [(SIGNATURE_RECORD_HEADER, forged[SIGNATURE_HEADER].encode())],
                ),
                (topic, b"eu/evil2", body.replace(b"evil", b"evil2"), []),
            ],
        )
    )
    eventually(
        lambda: (
            (stack.pusher_metric("quotaflow_pusher_announcements_total", outcome="forged") or 0)
            >= 2
        ),
        "forgeries counted",
    )
    time.sleep(1.5)  # node watcher runs twice a second
    assert stack.pusher_metric("quotaflow_push_nodes") == 0
    assert stack.pusher_metric("quotaflow_push_batches_total", node=attacker) is None
    assert stack.pusher_metric("quotaflow_pusher_announcements_total", outcome="announced") is None


def test_a_silent_node_is_dropped_after_three_intervals(stack: Stack) -> None:
    produce_quotas(stack.settings, [update("c0", 1)])
    port = free_port()
    edge = stack.edge(port)
    eventually(lambda: edge_version(port, "c0") == 1, "snapshot arrives")
    edge.kill()  # no departure: only silence tells
    killed = time.monotonic()
    eventually(lambda: stack.pusher_metric("quotaflow_push_nodes") == 0, "silent node dropped")
    assert time.monotonic() - killed >= 1.0  # not before its announcements lapse (3 x 1 s)
    assert stack.pusher_metric("quotaflow_pusher_announcements_total", outcome="departed") is None
    assert stack.pusher_metric("quotaflow_push_node_up", node=f"node-{port}") is None


def test_an_edge_sigkilled_and_restarted_at_once_serves_every_customer_within_2s(
    stack: Stack,
) -> None:
    """Hole 5: the new process answers the pusher's heartbeats with 200 and holds nothing.
    Its answers (and its first announcement) carry a new boot id, so the pusher re-joins
    it with a snapshot; nothing changes upstream meanwhile."""
    customers = [update(f"c{c}", 1 + c % 3) for c in range(20)]
    produce_quotas(stack.settings, customers)
    port = free_port()
    edge = stack.edge(port, node_id="eu-restarted")

    def served() -> bool:
        return all(edge_version(port, u.customer_id) == u.version for u in customers)

    eventually(served, "the first process serves every customer")
    # Live for a while: heartbeats acknowledged by the first process.
    stack.wait_heartbeats("eu-restarted", 2)
    edge.kill()
    spawned = time.monotonic()
    restarted = stack.edge(port, node_id="eu-restarted")  # wait_port polls every 0.1 s
    listening = time.monotonic()
    eventually(served, "the restarted process serves every customer", within=30.0)
    serving = time.monotonic()
    figures = {
        "customers": len(customers),
        "spawn_to_listening_s": round(listening - spawned, 3),
        "listening_to_serving_all_s": round(serving - listening, 3),
        "spawn_to_serving_all_s": round(serving - spawned, 3),
        "rejoins": {
            reason: stack.pusher_metric(
                "quotaflow_push_rejoins_total", node="eu-restarted", reason=reason
            )
            for reason in ("new_boot", "no_snapshot", "announced")
        },
    }
    print(f"\nfigures: {orjson.dumps(figures).decode()}")
    assert serving - listening <= 2.0, figures
    assert restarted.proc.poll() is None


def test_an_announcement_outside_the_allow_list_or_far_ahead_changes_nothing(
    stack: Stack,
) -> None:
    """Hole 1: a holder of the announcing key points the pushers elsewhere (data out,
    SSRF), or pins a node with an `at` far in the future. Both are signed correctly."""
    produce_quotas(stack.settings, [update("c0", 1)])
    signer = Signer(Kind.ANNOUNCEMENT, [stack.edge_key])
    listening = f"http://127.0.0.1:{free_port()}"
    now = time.time()
    docs = {
        "outside": {"node_id": "outside", "url": "http://10.99.0.7:9101", "at": now},
        "named": {"node_id": "named", "url": "http://metadata.internal:80", "at": now},
        "userinfo": {"node_id": "userinfo", "url": "http://user:pw@127.0.0.1:9/", "at": now},
        "ahead": {"node_id": "ahead", "url": listening, "at": now + 3600},
    }
    bodies = {
        name: orjson.dumps({"region": "eu", **doc, "leaving": False}) for name, doc in docs.items()
    }
    # Through the ingress: the far-future one is refused; the others are relayed (the
    # ingress does not hold the pushers' allow-list) and must change nothing there.
    answers = {}
    for name, body in bodies.items():
        resp = HTTP.request(
            "POST",
            f"http://127.0.0.1:{stack.ingress_port}/v1/edge/nodes",
            body=body,
            headers={
                **signer.headers(body),
                REGION_HTTP_HEADER: "eu",
                "Content-Type": "application/json",
            },
        )
        answers[name] = (resp.status, orjson.loads(resp.data))
    assert answers["ahead"] == (400, {"error": {"reason": "future_at", "message": ANY}})
    assert {answers[n][0] for n in ("outside", "named", "userinfo")} == {200}
    # Straight into the topic, the far-future one too: the pusher ignores it.
    body = bodies["ahead"]
    asyncio.run(
        _produce(
            stack.settings,
            [
                (
                    stack.settings.topics.edge_nodes,
                    b"eu/ahead",
                    body,
                    [(SIGNATURE_RECORD_HEADER, signer.header(body).encode())],
                )
            ],
        )
    )

    def counted(outcome: str) -> float:
        return stack.pusher_metric("quotaflow_pusher_announcements_total", outcome=outcome) or 0

    eventually(lambda: counted("outside_allow_list") >= 3 and counted("future_at") >= 1, "all read")
    time.sleep(1.5)  # the node watcher runs twice a second
    assert stack.pusher_metric("quotaflow_push_nodes") == 0
    assert counted("announced") == 0
    for name in docs:
        assert stack.pusher_metric("quotaflow_push_batches_total", node=name) is None


def test_no_credential_signs_another_kind_of_message(stack: Stack) -> None:
    """Issue 20, hole 1: an edge node's credential cannot sign a push (a compromised
    Rating pod cannot push `limit: null` to its peers), and the pushers' key signs neither
    announcements nor usage. Each refusal comes from the real process that verifies."""
    produce_quotas(stack.settings, [update("c0", 1)])
    port = free_port()
    stack.edge(port)
    eventually(lambda: edge_version(port, "c0") == 1, "snapshot arrives")

    evil = QuotaUpdate.model_validate({**update("c0", 10**9).model_dump(), "limit": None})
    push = orjson.dumps(
        {"region": "eu", "updates": [evil.model_dump(mode="json")], "snapshot": None}
    )
    edge_signed = {
        "push kind, edge key": Signer(Kind.PUSH, [stack.edge_key]),
        "announcement kind, edge key": Signer(Kind.ANNOUNCEMENT, [stack.edge_key]),
        "usage kind, edge key": Signer(Kind.USAGE, [stack.edge_key]),
        "announcement kind, push key": Signer(Kind.ANNOUNCEMENT, [stack.push_key]),
    }
    refused = {}
    for name, signer in edge_signed.items():
        resp = HTTP.request(
            "POST",
            f"http://127.0.0.1:{port}/v1/push",
            body=push,
            headers={**signer.headers(push), "Content-Type": "application/json"},
        )
        refused[name] = (resp.status, orjson.loads(resp.data)["error"]["reason"])
    assert refused == {
        "push kind, edge key": (401, "unknown_key"),
        "announcement kind, edge key": (401, "unknown_key"),
        "usage kind, edge key": (401, "unknown_key"),
        "announcement kind, push key": (401, "bad_signature"),
    }
    stack.wait_heartbeats(f"node-{port}", 2)  # they go on; the forged version never lands
    assert edge_version(port, "c0") == 1

    def ingress(path: str, body: bytes, signer: Signer) -> tuple[int, str]:
        resp = HTTP.request(
            "POST",
            f"http://127.0.0.1:{stack.ingress_port}{path}",
            body=body,
            headers={
                **signer.headers(body),
                REGION_HTTP_HEADER: "eu",
                "Content-Type": "application/json",
            },
        )
        return resp.status, orjson.loads(resp.data)["error"]["reason"]

    announcement = orjson.dumps(
        {
            "region": "eu",
            "node_id": "pushkey",
            "url": f"http://127.0.0.1:{free_port()}",
            "at": time.time(),
            "leaving": False,
        }
    )
    assert ingress("/v1/edge/nodes", announcement, Signer(Kind.ANNOUNCEMENT, [stack.push_key])) == (
        401,
        "unknown_key",
    )
    assert ingress("/v1/edge/nodes", announcement, Signer(Kind.PUSH, [stack.push_key])) == (
        401,
        "unknown_key",
    )
    assert ingress("/v1/edge/nodes", announcement, Signer(Kind.USAGE, [stack.edge_key])) == (
        401,
        "bad_signature",
    )
    usage = orjson.dumps(
        {
            "batch_id": "pushkey:1",
            "node_id": "pushkey",
            "region": "eu",
            "sent_at": time.time(),
            "items": [{"tenant_id": "euco", "customer_id": "c0", "units": 1}],
        }
    )
    assert ingress("/v1/usage", usage, Signer(Kind.USAGE, [stack.push_key])) == (
        401,
        "unknown_key",
    )
    assert ingress("/v1/usage", usage, Signer(Kind.PUSH, [stack.push_key])) == (
        401,
        "unknown_key",
    )
    assert ingress("/v1/usage", usage, Signer(Kind.ANNOUNCEMENT, [stack.edge_key])) == (
        401,
        "bad_signature",
    )
    time.sleep(1.5)  # the node watcher runs twice a second
    assert stack.pusher_metric("quotaflow_push_nodes") == 1  # the real edge only
    assert stack.pusher_metric("quotaflow_push_batches_total", node="pushkey") is None
