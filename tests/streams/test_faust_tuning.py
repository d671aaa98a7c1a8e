"""Each correction in `streams.faust_tuning` is in effect once the worker app is built.

They patch Faust and aiokafka internals, so an upgrade can undo one silently (a renamed
attribute is written and never read; a renamed method is wrapped and never called).
These tests need no broker: they check what the patched code paths build and call.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.streams import current_event
from faust.tables.recovery import Recovery

from quotaflow.settings import Settings
from streams.app import create_app
from streams.faust_tuning import _flow_held_during, event_context


def _app(tmp_path: Path, wait_ms: int) -> faust.App:
    return create_app(Settings(worker_fetch_wait_ms=wait_ms, data_dir=tmp_path))


async def test_worker_consumers_get_the_configured_fetch_wait(tmp_path: Path) -> None:
    app = _app(tmp_path, 7)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    try:
        assert isinstance(consumer, AIOKafkaConsumer)
        assert consumer._fetch_max_wait_ms == 7
    finally:
        await consumer.stop()
        # The consumer thread made a loop of its own for its (never started) thread.
        thread_loop = app.consumer._thread.thread_loop  # type: ignore[attr-defined]
        if thread_loop is not None and thread_loop is not asyncio.get_running_loop():
            thread_loop.close()


def test_the_fetch_wait_attribute_is_still_what_aiokafka_reads() -> None:
    # The correction writes a private attribute before start(); if aiokafka stops reading
    # it, the wait silently goes back to Faust's hard-coded 1.5 s.
    assert "self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    from streams.faust_tuning import _ORIGINAL

    # ... and Faust still sets the wait where the correction overrides it.
    assert "fetch_max_wait_ms" in inspect.getsource(_ORIGINAL)


class _Consumer:
    def __init__(self) -> None:
        self.flow_active = True

    def stop_flow(self) -> None:
        self.flow_active = False


async def test_both_ends_of_recovery_run_with_the_consumer_flow_stopped(tmp_path: Path) -> None:
    _app(tmp_path, 10)
    for name in ("on_recovery_completed", "_resume_streams"):
        step = getattr(Recovery, name)
        assert hasattr(step, "__wrapped__"), f"Recovery.{name} is not corrected"
        # Faust must still call the step by this name, or the correction never runs ...
        assert f"self.{name}" in inspect.getsource(Recovery)
        # ... and the step must still resume the flow itself once the queues are emptied.
        source = inspect.getsource(step.__wrapped__)
        assert source.index("flow_control.resume()") < source.index("consumer.resume_flow()")

        flow_during: list[bool] = []
        consumer = _Consumer()
        recovery = type("R", (), {"app": type("A", (), {"consumer": consumer})()})()

        async def original(
            self: Any, generation_id: int = 0, seen: list[bool] = flow_during
        ) -> None:
            seen.append(self.app.consumer.flow_active)

        # The installed step is this wrapper; test its logic around a recording step.
        assert step.__code__ is _flow_held_during(original).__code__
        await _flow_held_during(original)(recovery, generation_id=3)
        assert flow_during == [False]


def test_event_context_sets_the_event_faust_tables_write_under() -> None:
    # Tables find their partition through faust.streams.current_event(); if Faust moves
    # that context variable, writes from the billing applier would lose their partition.
    event = type("Event", (), {})()
    assert current_event() is None
    with event_context(event):
        assert current_event() is event
    assert current_event() is None
