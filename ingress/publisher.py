"""The Kafka producer behind the ingress: acks=all, idempotent, and bounded in time.

`publish` returns only once the broker has acknowledged the record at acks=all; otherwise
it raises `PublishUnavailable`, which the HTTP layer turns into 503 + Retry-After so that
Stripe retries. A record whose ack came too late may still land on the topic: that is a
duplicate the stream worker deduplicates, never a loss.

The producer connects in the background: the ingress starts and answers 503 while the
broker is away, and `connected` (readiness) turns true once it has reached it.

An idempotent producer can fail for good: when the broker comes back after an outage
with a produce request in flight, it may answer `OutOfOrderSequenceNumber`, which ends
aiokafka's sender, and every later send would time out. Such a producer is replaced
(closed in the background, a new one connected): the ingress answers 503 meanwhile, and
a record the old one may still have delivered is a duplicate the worker dedupes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)

from ingress.exceptions import PublishUnavailable

__all__ = ["Publisher"]

log = logging.getLogger("quotaflow.ingress")

_CONNECT_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PROBE_TIMEOUT = 1.0
_BACKOFF_MIN = 0.2
_BACKOFF_MAX = 5.0
# Errors after which aiokafka's idempotent producer cannot send again.
_FATAL = (OutOfOrderSequenceNumber, ProducerFenced, InvalidProducerEpoch, IllegalStateError)


class Publisher:
    """Owns one `AIOKafkaProducer`; `start()` and `stop()` mirror each other."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "quotaflow-ingress",
        linger_ms: int = 1,
        max_request_size: int = 2 * 1_048_576,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self._bootstrap = bootstrap
        self._config: dict[str, object] = {
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            # Bodies are 2-8 KiB: the default 16 KiB batch would hold two of them.
            "max_batch_size": max(256 * 1024, max_request_size),
            "max_request_size": max_request_size,
            "request_timeout_ms": request_timeout_ms,
        }
        self._producer: AIOKafkaProducer | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._healthy = False
        self._stopped = False

    @property
    def connected(self) -> bool:
        """True once the producer reached the broker and the last publish did not fail."""
        return self._producer is not None and self._healthy

    async def probe(self) -> bool:
        """Readiness that recovers without traffic: after a failed publish, ask for metadata."""
        producer = self._producer
        if producer is None:
            return False
        if not self._healthy:
            try:
                async with asyncio.timeout(_PROBE_TIMEOUT):
                    await producer.client.fetch_all_metadata()
            except (TimeoutError, KafkaError, OSError):
                return False
            self._healthy = True
        return True

    async def start(self) -> None:
        """Starts connecting; returns at once if the broker is away (we retry behind)."""
        if self._stopped:
            raise RuntimeError("a stopped Publisher cannot be restarted")
        if self._connect_task is not None or self._producer is not None:
            return
        if not await self._try_connect():
            self._connect_task = asyncio.create_task(self._connect_loop(), name="ingress-connect")
            self._connect_task.add_done_callback(self._connect_done)

    async def stop(self) -> None:
        """Cancels the connect loop, then flushes and closes the producer. Idempotent."""
        self._stopped = True
        task, self._connect_task = self._connect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producer, self._producer = self._producer, None
        self._healthy = False
        if producer is not None:
            await self._close(producer)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await producer.stop()
        except (TimeoutError, KafkaError) as exc:
            log.warning("ingress producer did not stop cleanly: %s", exc)

    async def publish(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timeout: float,
    ) -> None:
        """Returns once the broker acknowledged (acks=all) within `timeout` seconds."""
        producer = self._producer
        if producer is None:
            raise PublishUnavailable("kafka_unavailable", "not connected to the broker")
        try:
            async with asyncio.timeout(timeout):
                ack = await producer.send(topic, value=value, key=key, headers=headers)
                ack.add_done_callback(lambda done: self._check_fatal(producer, done))
                # Shielded: giving up on the ack must not cancel the record's future.
                await asyncio.shield(ack)
        except TimeoutError:
            self._healthy = False
            raise PublishUnavailable(
                "publish_timeout", f"broker did not acknowledge within {timeout:g}s"
            ) from None
        except KafkaError as exc:
            self._healthy = False
            raise PublishUnavailable(
                "kafka_unavailable", f"broker refused the record: {type(exc).__name__}"
            ) from None
        self._healthy = True

    def _check_fatal(self, producer: AIOKafkaProducer, ack: asyncio.Future[object]) -> None:
        """Every ack's outcome is read here, also of a publish that gave up waiting."""
        if ack.cancelled():
            return
        exc = ack.exception()
        if isinstance(exc, _FATAL) and producer is self._producer and not self._stopped:
            log.error(
                "ingress producer failed for good; replacing it",
                extra={"error": type(exc).__name__},
            )
            self._producer = None
            self._healthy = False
            closing = asyncio.get_running_loop().create_task(self._close(producer))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            if self._connect_task is None:
                self._connect_task = asyncio.create_task(
                    self._connect_loop(), name="ingress-connect"
                )
                self._connect_task.add_done_callback(self._connect_done)

    async def _try_connect(self) -> bool:
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._config)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await producer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("ingress producer cannot reach %s: %s", self._bootstrap, exc)
            with contextlib.suppress(TimeoutError, KafkaError, OSError):
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await producer.stop()
            return False
        self._producer = producer
        self._healthy = True
        return True

    async def _connect_loop(self) -> None:
        delay = _BACKOFF_MIN
        while not await self._try_connect():
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, _BACKOFF_MAX)
        log.info("ingress producer connected to %s", self._bootstrap)

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        if task is self._connect_task:
            self._connect_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("ingress producer connect loop died", exc_info=task.exception())
