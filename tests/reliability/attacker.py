"""The attacker as a process of its own: `python -m tests.reliability.attacker`.

Run apart from the test so that its CPU work (building, signing and sending requests)
does not share an event loop with the bystander whose latency the test measures.

Reads a JSON plan on stdin, sends every target's requests with `concurrency` connections
each, and writes `{"results": [[kind, status, n], ...], "seconds", "cpu_seconds"}` to
stdout. A plan (secrets are test-made and travel over the pipe, never argv):

    {"seed": 1234, "concurrency": 24, "targets": [
      {"fuzzer": "webhook", "port": 8080, "count": 10000, "victim": "victim",
       "secret": "whsec_…", "other_secret": "whsec_…"},
      {"fuzzer": "push", "port": 9101, "count": 2500, "region": "eu", "key": "…",
       "target": ["victim", "cus_victim_0"], "replayable": ["<raw request, latin-1>"]},
      {"fuzzer": "usage", "port": 8080, "count": 2500, "region": "eu", "key": "…",
       "other_region": "us", "other_key": "…", "victim": ["victim", "cus_victim_0"],
       "replayable": ["<raw request, latin-1>"]}]}

`"fuzzer": "healthz"` (only `port` and `count`) sends `GET /healthz` instead: a control
load of the same volume and connection pattern that costs the server nothing else. A
target's optional `"seconds"` spreads its requests evenly over that time.

Flood and slowloris targets (the ingress attacker of scenario 14) run for `"duration"`
seconds instead of a count, from the local addresses in `"sources"` (one group of
`"concurrency"` connections per address, any of 127.0.0.0/8):

    {"fuzzer": "bad_signature", "port": 8080, "victim": "acme", "duration": 20,
     "sources": ["127.0.0.2", "127.0.0.3"], "concurrency": 8}
    {"fuzzer": "slow_body", "port": 8080, "victim": "acme", "duration": 20,
     "sources": ["127.0.0.10"], "concurrency": 100, "drip": 1.0}

`bad_signature` posts well-formed events signed with a random secret as fast as they are
answered; `slow_body` declares a 4 KiB body and sends one byte every `drip` seconds until
the server answers or closes, then opens the next connection.

Requests are built just before they are sent, so fresh signatures stay fresh however
long the run takes.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from tests.reliability.fuzz import Attack, PushFuzzer, WebhookFuzzer, request, send_raw
from tests.reliability.fuzz_usage import UsageFuzzer
from tests.reliability.sender import stripe_signature


def fuzzer_for(target: dict[str, Any], rng: random.Random) -> Callable[[], Attack]:
    kind = target["fuzzer"]
    replayable = [raw.encode("latin-1") for raw in target.get("replayable", [])]
    if kind == "webhook":
        return WebhookFuzzer(rng, target["victim"], target["secret"], target["other_secret"]).next
    if kind == "push":
        push = PushFuzzer(rng, target["region"], target["key"], tuple(target["target"]))
        push.replayable.extend(replayable)
        return push.next
    if kind == "healthz":  # the control: as many requests, harmless, one connection each
        control = Attack("control_healthz", request("GET", "/healthz", []))
        return lambda: control
    if kind == "usage":
        usage = UsageFuzzer(
            rng,
            target["region"],
            target["key"],
            target["other_region"],
            target["other_key"],
            tuple(target["victim"]),
        )
        usage.replayable.extend(replayable)
        return usage.next
    raise ValueError(f"unknown fuzzer {kind!r}")


async def attack(
    port: int,
    make: Callable[[], Attack],
    count: int,
    concurrency: int,
    results: Counter[tuple[str, int]],
    seconds: float | None = None,
) -> None:
    """`count` requests over `concurrency` connections at a time; spread evenly over
    `seconds` when given, else as fast as the server answers."""
    sent = 0
    begun = time.monotonic()

    async def worker() -> None:
        nonlocal sent
        while sent < count:
            sent += 1
            if seconds is not None:
                await asyncio.sleep(max(0.0, begun + sent * seconds / count - time.monotonic()))
            hostile = make()
            results[(hostile.kind, await send_raw(port, hostile))] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _bad_signature(rng: random.Random, victim: str) -> Attack:
    body = orjson.dumps(
        {
            "id": f"evt_attack_{rng.getrandbits(48):x}",
            "object": "event",
            "type": "invoice.paid",
            "livemode": False,
            "created": int(time.time()),
            "data": {"object": {"id": "in_attack", "object": "invoice", "pad": "x" * 2048}},
        }
    )
    secret = f"whsec_{rng.getrandbits(64):x}"
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Stripe-Signature", stripe_signature(body, secret).encode()),
    ]
    return Attack("bad_signature", request("POST", f"/v1/webhooks/stripe/{victim}", headers, body))


async def _slow_body(port: int, victim: str, source: str, drip: float, timeout: float) -> int:
    """One slow connection: headers, then a byte per `drip` s; the server's status (0: none)."""
    head = request(
        "POST",
        f"/v1/webhooks/stripe/{victim}",
        [(b"Content-Type", b"application/json"), (b"Stripe-Signature", b"t=1,v1=00")],
        length=4096,
    )
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
            try:
                writer.write(head)
                await writer.drain()
                answer = asyncio.ensure_future(reader.readline())
                while not answer.done():
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.wait([answer], timeout=drip)
                line = answer.result()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return 0
    parts = line.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


async def flood(
    target: dict[str, Any], rng: random.Random, results: Counter[tuple[str, int]]
) -> None:
    """A `bad_signature` or `slow_body` target for its `duration`, from each of `sources`."""
    until = time.monotonic() + target["duration"]
    kind, port, victim = target["fuzzer"], target["port"], target["victim"]

    async def worker(source: str) -> None:
        while time.monotonic() < until:
            if kind == "slow_body":
                began = time.monotonic()
                status = await _slow_body(
                    port, victim, source, target.get("drip", 1.0), until - began + 15.0
                )
                results[("slow_body", status)] += 1
                if time.monotonic() - began < 0.5:
                    # Refused at once (the source's cap): come back a little later rather
                    # than spin, or the attacker's own loop would eat the shared cores.
                    await asyncio.sleep(0.5)
            else:
                status = await send_raw(port, _bad_signature(rng, victim), source=source)
                results[("bad_signature", status)] += 1

    await asyncio.gather(
        *(worker(src) for src in target["sources"] for _ in range(target["concurrency"]))
    )


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(plan["seed"])
    results: Counter[tuple[str, int]] = Counter()
    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(
        *(
            flood(t, rng, results)
            if t["fuzzer"] in ("bad_signature", "slow_body")
            else attack(
                t["port"],
                fuzzer_for(t, rng),
                t["count"],
                plan["concurrency"],
                results,
                t.get("seconds"),
            )
            for t in plan["targets"]
        )
    )
    return {
        "results": [[kind, status, n] for (kind, status), n in sorted(results.items())],
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu,
    }


def main() -> None:
    plan = orjson.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(orjson.dumps(asyncio.run(run(plan))))


if __name__ == "__main__":
    main()
