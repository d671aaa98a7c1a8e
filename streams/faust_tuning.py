"""Two corrections to Faust that quotaflow cannot make through its configuration.

1. The fetch wait. Faust builds its worker consumer with `fetch_max_wait_ms=1500`
   hard-coded (`faust/transport/drivers/aiokafka.py`). aiokafka keeps one fetch in flight
   per broker and leaves out partitions whose records are still buffered, so that fetch
   often covers only idle partitions and the broker holds it the full 1.5 s while events
   wait on the busy ones: measured end to end, p50 1.6 s before and 66 ms after
   (BENCHMARKS.md). We wrap the driver's consumer factory to set aiokafka's own attribute
   before `start()` reads it.

2. Records lost after a rebalance. At the end of recovery Faust resumes the stream
   partitions, seeks them to their committed offsets, and only then resumes its flow
   control, which empties every stream queue. When recovery had changelog records to
   restore, or when a running worker rebalances, the fetcher is already running in
   between, so records fetched during the seek sit in a queue when it is emptied; the
   consumer's read offset has moved past them, so they are never delivered. An agent
   that held the first of them (waiting for its readiness) then processes it and nothing
   more, and the partition's commit stalls behind the gap: the "restarted worker that is
   ready and processes nothing" (RELIABILITY.md). We stop the consumer's flow for the
   duration of that last step (a rebalance stops it the same way): nothing reaches a
   stream queue until the step has emptied them and resumed the flow itself. An earlier
   version of this correction sought the committed offsets again afterwards; aiokafka
   seeks only offsets above 0, so a partition with nothing committed yet (a new worker,
   or one killed before its first commit) was never rewound and its records stayed lost
   (tests/streams/test_recovery_race.py).

3. Table writes outside the stream's own iteration. A Faust table write goes to the
   changelog partition (and, with RocksDB, the store partition) of "the current event",
   a context variable the stream sets for the task that iterates it. The billing
   pipeline applies events in its own task, after their Stripe reads, so it names the
   event whose partition a write belongs to (`event_context`); without it a write would
   land in whatever partition the stream last yielded, or raise.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event
from faust.tables.recovery import Recovery
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


RecoveryStep = Callable[..., Awaitable[None]]


def _flow_held_during(step: RecoveryStep) -> RecoveryStep:
    async def step_with_flow_held(self: Recovery, generation_id: int = 0) -> None:
        # The step resumes the flow once it has emptied the stream queues; if it returns
        # early (a newer rebalance began), that rebalance's recovery resumes it.
        self.app.consumer.stop_flow()
        await step(self, generation_id=generation_id)

    step_with_flow_held.__wrapped__ = step  # type: ignore[attr-defined]
    return step_with_flow_held


def hold_flow_through_recovery_end() -> None:
    """Installs correction 2 once per process; both ends of recovery get it."""
    for name in ("on_recovery_completed", "_resume_streams"):
        step = getattr(Recovery, name)
        if not hasattr(step, "__wrapped__"):
            setattr(Recovery, name, _flow_held_during(step))


@contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Table writes inside this block belong to `event`'s partition (correction 3)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
