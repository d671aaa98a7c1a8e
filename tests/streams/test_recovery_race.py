"""No record is lost at the end of a recovery that restored changelog records (correction
2 of `streams.faust_tuning`), on a real broker and a real Faust worker process.

The worker restores its table (a changelog record is there before it starts), so its
fetcher runs before the stream partitions are resumed; its agent holds the first record
while it gets ready, and the records fetched meanwhile wait in the stream's queue, which
Faust empties when it resumes its flow. Nothing has been committed yet (a new worker, or
one killed before its first commit), so seeking the committed offsets again would not
bring them back. The worker must still be given every record, in order.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from quotaflow.testing.processes import stop_process

pytestmark = pytest.mark.kafka

RECORDS = 200


async def _fill(bootstrap: str, topic: str, changelog: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (topic, changelog)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        # The table's state, so that the worker has something to restore at start.
        await producer.send_and_wait(changelog, key=b'"seen"', value=b"0")
        for i in range(RECORDS):
            await producer.send(topic, key=b"k", value=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.streams.recovery_race_app", "worker", "-l", "info"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
        )


async def test_records_fetched_while_recovery_ends_are_all_delivered(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    app_id, topic = unique("race-app"), unique("race-src")
    await _fill(kafka_bootstrap, topic, f"{app_id}-counts-changelog")
    out = tmp_path / "offsets"
    out.touch()
    env = {
        **os.environ,
        "RACE_BOOTSTRAP": kafka_bootstrap,
        "RACE_APP_ID": app_id,
        "RACE_TOPIC": topic,
        "RACE_OUT": str(out),
        "RACE_SEEK_DELAY": "1.0",
        "RACE_DATA": str(tmp_path / "data"),
    }
    proc = _start(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60.0
        seen: list[int] = []
        while time.monotonic() < deadline:
            seen = [int(line) for line in out.read_text().split()]
            if len(seen) >= RECORDS or proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        assert seen[:RECORDS] == list(range(RECORDS)), (
            f"{len(seen)} records delivered; missing {sorted(set(range(RECORDS)) - set(seen))[:10]}"
        )
    finally:
        stop_process(proc)
