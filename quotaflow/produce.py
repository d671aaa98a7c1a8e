"""The operator tools' producer: acks=all and idempotent, like the ingress, with a rate cap.

Sends are pipelined (many in flight) and every one is awaited with a deadline before the
command reports success, so "done" means "durably in Kafka".
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

from aiokafka import AIOKafkaProducer
from aiolimiter import AsyncLimiter

from quotaflow.settings import KafkaGroup

MAX_IN_FLIGHT = 500


class OpsProducer:
    """`async with OpsProducer(settings, rate=N)`; `send()` then `flush()` before trusting."""

    def __init__(self, settings: KafkaGroup, *, rate: float | None = None, timeout: float = 30.0):
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=int(timeout * 1000),
        )
        self._limiter = None if rate is None else AsyncLimiter(max_rate=rate, time_period=1.0)
        self._timeout = timeout
        self._pending: list[asyncio.Future[object]] = []

    async def __aenter__(self) -> OpsProducer:
        async with asyncio.timeout(self._timeout):
            await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        partition: int | None = None,
    ) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()
        async with asyncio.timeout(self._timeout):
            future = await self._producer.send(
                topic, value, key=key, headers=list(headers), partition=partition
            )
        self._pending.append(future)
        if len(self._pending) >= MAX_IN_FLIGHT:
            await self.flush()

    async def flush(self) -> None:
        """Waits for the broker's acknowledgement of everything sent so far."""
        pending, self._pending = self._pending, []
        if pending:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*pending)
