"""Runs one long-lived component until SIGINT/SIGTERM: a signal only sets the stop event."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Calls `main(stop)` in a fresh loop (from `loop_factory`, else asyncio's); the first
    SIGINT/SIGTERM sets `stop`."""

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run())
