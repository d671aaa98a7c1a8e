"""The one Faust setting quotaflow cannot pass through its configuration: the fetch wait.

Faust builds its worker consumer with `fetch_max_wait_ms=1500` hard-coded
(`faust/transport/drivers/aiokafka.py`). aiokafka keeps one fetch in flight per broker and
leaves out partitions whose records are still buffered, so that fetch often covers only
idle partitions and the broker holds it the full 1.5 s while events wait on the busy
ones: measured end to end, p50 1.6 s before and 66 ms after (BENCHMARKS.md). We wrap the
driver's consumer factory to set aiokafka's own attribute before `start()` reads it.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as driver

_ORIGINAL = driver.AIOKafkaConsumerThread._create_worker_consumer
_wait_ms = 1500


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _ORIGINAL(self, transport)
    consumer._fetch_max_wait_ms = _wait_ms  # read by AIOKafkaConsumer.start()
    return consumer


def set_fetch_max_wait(ms: int) -> None:
    """Applies to every worker consumer created from now on in this process."""
    global _wait_ms
    _wait_ms = ms
    driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
