"""The framework's own ceiling: a Faust worker whose agent does nothing with each event.

Run by `bench.worker_bench` beside the raw aiokafka read of the same topic, with the
worker's consumer settings (fetch wait, commit interval, memory store). The quotaflow
worker cannot go faster than this figure, whatever its domain code costs, so it says how
much of a missed target is the per-event cost of Faust itself on this machine.

`python -m bench.faust_noop BOOTSTRAP TOPIC COUNT OUT.json [events|take]`: `events`
iterates `stream.events()` as the billing agent does; `take` takes up to 1,000 events
per 5 ms (`stream.take_events`), the batched shape.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
import orjson

from streams.faust_tuning import hold_flow_through_recovery_end, set_fetch_max_wait


def main() -> None:
    bootstrap, topic, count, out = sys.argv[1:5]
    shape = sys.argv[5] if len(sys.argv) > 5 else "events"
    total = int(count)
    set_fetch_max_wait(10)
    hold_flow_through_recovery_end()
    app = faust.App(
        f"noop-{topic}-{shape}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="qf-noop-"),
        web_enabled=False,
        autodiscover=False,
        broker_commit_interval=5.0,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    seen = 0
    first = 0.0

    def done() -> None:
        seconds = time.perf_counter() - first
        result = {"records": seen, "seconds": round(seconds, 3), "shape": shape}
        result["events_per_s"] = round(seen / seconds, 1)
        Path(out).write_bytes(orjson.dumps(result))
        os._exit(0)  # the figure is written; a clean Faust shutdown only adds seconds

    @app.agent(source, concurrency=1)
    async def noop(stream: Any) -> AsyncIterator[None]:
        nonlocal seen, first
        batches = stream.take_events(1000, within=0.005) if shape == "take" else _single(stream)
        async for events in batches:
            if not first:
                first = time.perf_counter()
            seen += len(events)
            if seen >= total:
                done()
            yield None

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


async def _single(stream: Any) -> AsyncIterator[list[Any]]:
    async for event in stream.events():
        yield [event]


if __name__ == "__main__":
    main()
