"""Soak: a steady webhook stream for QUOTAFLOW_SOAK_SECONDS (default 1800) at
QUOTAFLOW_SOAK_RATE webhooks/s through the whole pipeline (RocksDB store). After a
warm-up fifth: every component's RSS grows less than 5%, the worker's and pushers'
consumer lag stays flat, and no component logs an error.

Runs only with QUOTAFLOW_SOAK=1 (see conftest.py); `make soak` style:
`QUOTAFLOW_SOAK=1 QUOTAFLOW_SOAK_SECONDS=180 pytest tests/reliability/test_soak.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.reliability.conftest import StackFactory
from tests.reliability.model import PERIOD, WINDOW_START, Delivery, build
from tests.reliability.sender import StripeLikeSender, percentile
from tests.reliability.stack import Stack, group_lag
from tests.tables.factories import BASIC, PRO, event, subscription

SECONDS = float(os.environ.get("QUOTAFLOW_SOAK_SECONDS", "1800"))
RATE = float(os.environ.get("QUOTAFLOW_SOAK_RATE", "150"))
CUSTOMERS = 500
SAMPLE_EVERY = 10.0

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(int(SECONDS) + 600)]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _stream(secrets_tenant: str, start: int, count: int) -> list[Delivery]:
    """Subscription updates cycling over the customers, each a new event and a new quota."""
    out = []
    for n in range(start, start + count):
        cus = n % CUSTOMERS
        qty = 1 + (n // CUSTOMERS) % 7
        obj = subscription(
            f"sub_stream_{cus}",
            f"cus_stream_{cus}",
            "active",
            [(BASIC, qty), (PRO, 1)],
            period=PERIOD,
        )
        body = event(
            "customer.subscription.updated", obj, created=WINDOW_START + n, event_id=f"evt_soak_{n}"
        )
        out.append(Delivery(secrets_tenant, str(body["id"]), orjson.dumps(body)))
    return out


async def _lags(stack: Stack) -> dict[str, int]:
    s = stack.settings
    return {
        "worker": await group_lag(s.kafka_bootstrap, s.app_id, [s.topics.stripe_events]),
        "push-eu": await group_lag(
            s.kafka_bootstrap, f"{s.app_id}-push-eu", [s.topics.quota_updates]
        ),
    }


async def test_soak_holds_memory_lag_and_logs_steady(
    make_stack: StackFactory, figures: dict[str, Any]
) -> None:
    workload = build(["soak"], 20, seed=41)
    stack = make_stack(workload, {"eu": 2}, env={"QUOTAFLOW_STORE": "rocksdb://"})
    await stack.start_all()
    sender = StripeLikeSender(stack.ingress_url, workload.secrets, concurrency=64)
    # The reference customers first; the stream below never touches them.
    await sender.send_all(workload.deliveries(), rate=RATE)
    began = time.monotonic()
    samples: list[dict[str, Any]] = []
    sent = 0

    async def feed() -> None:
        nonlocal sent
        while time.monotonic() - began < SECONDS:
            batch = _stream("soak", sent, int(RATE * SAMPLE_EVERY))
            sent += len(batch)
            await sender.send_all(batch, rate=RATE)

    feeding = asyncio.create_task(feed())
    while not feeding.done():
        await asyncio.sleep(SAMPLE_EVERY)
        rss = {name: _rss_kib(c.proc.pid) for name, c in stack.procs.items()}
        samples.append(
            {"t": round(time.monotonic() - began), "rss_kib": rss, "lag": await _lags(stack)}
        )
    await feeding

    warm = samples[len(samples) // 5]
    last = samples[-1]
    growth = {
        name: round(100.0 * (last["rss_kib"][name] - kib) / kib, 2)
        for name, kib in warm["rss_kib"].items()
    }
    third = max(1, len(samples) // 3)
    lag_first = {k: max(s["lag"][k] for s in samples[:third]) for k in last["lag"]}
    lag_last = {k: max(s["lag"][k] for s in samples[-third:]) for k in last["lag"]}
    errors = [
        line[:300]
        for log in stack.logs()
        for line in log.read_text(errors="replace").splitlines()
        if '"level":"error"' in line or '"level":"critical"' in line
    ]
    figures.update(
        seconds=SECONDS,
        rate_per_s=RATE,
        webhooks=len(sender.report.accepted),
        statuses={str(k): v for k, v in sender.report.statuses.items()},
        ingress_p50_ms=round(percentile(sender.report.latencies, 0.5) * 1000, 2),
        ingress_p99_ms=round(percentile(sender.report.latencies, 0.99) * 1000, 2),
        rss_growth_pct=growth,
        rss_kib_warm=warm["rss_kib"],
        rss_kib_end=last["rss_kib"],
        lag_max_first_third=lag_first,
        lag_max_last_third=lag_last,
        error_lines=len(errors),
        samples=samples,
    )
    assert not sender.report.given_up
    await stack.converge()
    assert not errors, errors[:5]
    assert all(g < 5.0 for g in growth.values()), growth
    # Flat: the last third never lags further behind than the first third did (+ 1 s of load).
    assert all(lag_last[k] <= lag_first[k] + RATE for k in lag_last), (lag_first, lag_last)
