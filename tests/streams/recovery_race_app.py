"""A minimal Faust worker for `test_recovery_race.py`, run as its own process.

One table (memory store, so every start restores its changelog, the path on which the
fetcher runs before the stream partitions are resumed) and one agent that, like the
quotaflow worker's agents, waits before its first event (the worker waits for its tenant
registry) and then appends each offset it is given to a file. The corrections of
`streams.faust_tuning` are installed as the worker installs them.

`RACE_SEEK_DELAY` delays Faust's seek to the committed offsets at the end of recovery:
fault injection that widens, to a size a test can rely on, the window in which a record
fetched meanwhile can sit in a stream queue about to be emptied.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import faust
from faust.transport.consumer import Consumer

from streams.faust_tuning import hold_flow_through_recovery_end

# Line-buffered: each offset is on disk (for the test to read) as soon as it is written.
OUT = Path(os.environ["RACE_OUT"]).open("a", buffering=1)  # noqa: SIM115 - the process's life
DELAY = float(os.environ["RACE_SEEK_DELAY"])

hold_flow_through_recovery_end()
_perform_seek = Consumer.perform_seek


async def _slow_seek(self: Consumer) -> None:
    await asyncio.sleep(DELAY)
    await _perform_seek(self)


Consumer.perform_seek = _slow_seek  # type: ignore[method-assign]

app = faust.App(
    os.environ["RACE_APP_ID"],
    broker=f"kafka://{os.environ['RACE_BOOTSTRAP']}",
    store="memory://",
    topic_partitions=1,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    autodiscover=False,
    datadir=os.environ["RACE_DATA"],
)
source = app.topic(os.environ["RACE_TOPIC"], key_type=bytes, value_type=bytes, partitions=1)
counts = app.Table("counts", default=int, partitions=1)


@app.agent(source)
async def record(stream: Any) -> None:
    first = True
    async for event in stream.events():
        if first:
            await asyncio.sleep(1.0)  # not ready yet: what arrives meanwhile is queued
            first = False
        counts["seen"] += 1
        OUT.write(f"{event.message.offset}\n")


if __name__ == "__main__":
    app.main()
