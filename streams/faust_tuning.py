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
   control, which empties every stream queue. The fetcher is already running in between
   (it was resumed to read the changelogs), so a record fetched after the seek can sit in
   a queue when it is emptied; the consumer has already moved its read offset past it, so
   it is never delivered, and the agent's partition stalls behind the unacknowledged
   offset until the next restart. It showed as a restarted worker that took one event and
   then nothing (faust-streaming 0.15.3; the same race as faust-streaming#216 in another
   branch). We seek once more after recovery has finished: nothing empties the queues
   after that point, so whatever was dropped is fetched again. Re-delivering what was
   already processed is harmless here: every table value records what it applied.

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


def _seek_again_after(step: RecoveryStep) -> RecoveryStep:
    async def step_then_seek(self: Recovery, generation_id: int = 0) -> None:
        await step(self, generation_id=generation_id)
        app = self.app
        # A newer rebalance has started: its own recovery will seek.
        if app.consumer_generation_id != generation_id or not app.consumer.assignment():
            return
        await self._wait(app.consumer.perform_seek(), timeout=app.conf.broker_request_timeout)

    step_then_seek.__wrapped__ = step  # type: ignore[attr-defined]
    return step_then_seek


def reseek_after_recovery() -> None:
    """Installs correction 2 once per process; both ends of recovery get it."""
    for name in ("on_recovery_completed", "_resume_streams"):
        step = getattr(Recovery, name)
        if not hasattr(step, "__wrapped__"):
            setattr(Recovery, name, _seek_again_after(step))


@contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Table writes inside this block belong to `event`'s partition (correction 3)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
