"""What the sink hands back to be confirmed before an event is acknowledged: the changelog
sends of the turn's writes, also when the turn publishes nothing.

A usage batch below every threshold writes a state and publishes nothing; its event must
still wait for that state's changelog record (Faust's commit does not: its producer flush
gives up after 0.1 s without progress). The table here is a dict that records the
changelog futures its writes would make, as `streams.records.TrackedTable` does; no
topic is sent to.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streams.processing.effects import Effects
from streams.sink import Sink


class _Table(dict[bytes, bytes]):
    """Each write makes a changelog future that the test resolves (or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[asyncio.Future[None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.sent.append(asyncio.get_running_loop().create_future())

    def take_sent(self) -> list[asyncio.Future[None]]:
        sent, self.sent = self.sent, []
        return sent


class _Event:
    """What `event_context` needs of a Faust event: something to refer to weakly."""


async def test_a_turn_that_publishes_nothing_is_confirmed_only_with_its_changelog() -> None:
    customers = _Table()
    topic: Any = object()  # never sent to: the effects hold no record to send
    sink = Sink(customers=customers, aliases=_Table(), quota_updates=topic, deadletter=topic)
    effects = Effects(states={b"acme/cus_1": (0, b"{}")})

    sink.write(effects, {0: _Event()})
    futures = await sink.send(effects)

    assert len(futures) == 1  # the state's changelog record, though nothing is published
    confirmed = asyncio.create_task(Sink.confirm(futures))
    await asyncio.sleep(0.05)
    assert not confirmed.done()  # the event may not be acknowledged yet
    changelog = futures[0]
    assert isinstance(changelog, asyncio.Future)
    changelog.set_result(None)
    await asyncio.wait_for(confirmed, 1.0)
    # The next turn starts empty: the futures were handed over once.
    assert await sink.send(Effects()) == []
