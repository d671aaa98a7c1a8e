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


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(plan["seed"])
    results: Counter[tuple[str, int]] = Counter()
    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(
        *(
            attack(
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
