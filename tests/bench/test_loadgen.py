"""openloop (bench/openloop.c) measured through bench/loadgen.py against a real server.

What the edge and gateway figures rest on: every request counted, its latency taken from
the time it was meant to be sent (a stalled server delays the requests queued behind it,
and that wait is counted), and a wrong answer failing the bench instead of being averaged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from bench import loadgen

STALL_AT = 40  # the request the server holds
STALL_S = 0.3


class Server:
    """A keep-alive HTTP/1.1 server on a thread: answers `body` with `status`, and holds
    request number STALL_AT for STALL_S before answering."""

    def __init__(self, status: int = 200, body: bytes = b'{"allowed":true}') -> None:
        self.status, self.body, self.seen = status, body, 0
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        async def main() -> None:
            self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await self.stop.wait()

        asyncio.run(main())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            self.seen += 1
            if self.seen == STALL_AT:
                await asyncio.sleep(STALL_S)
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                % (self.status, len(self.body), self.body)
            )
            await writer.drain()
        writer.close()

    def close(self) -> None:
        assert self.loop is not None
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def _requests(port: int) -> list[loadgen.Request]:
    return [
        loadgen.Request("POST", f"http://127.0.0.1:{port}/v1/consume", {"X-N": str(i)}, b"{}")
        for i in range(7)
    ]


def test_a_stalled_answer_delays_the_requests_queued_behind_it_from_their_intended_time(
    server: Server,
) -> None:
    rate, seconds = 200.0, 1.0
    got = loadgen.attack(_requests(server.port), rate, seconds, connections=1, expect=b"allowed")
    assert len(got.from_intended) == len(got.from_start) == 200 == server.seen
    # One connection: the ~60 requests due during the 300 ms stall waited for it. Counted
    # from their intended times they took up to the stall; counted from their writes
    # (coordinated omission) none of them did.
    waited = [t for t in got.from_intended if t > 0.1]
    assert len(waited) >= 40, len(waited)
    assert max(got.from_intended) >= STALL_S * 0.9
    assert sorted(got.from_start)[-2] < 0.1  # only the held request itself was slow
    # Paced at the rate, not bunched: the whole run lasted about `seconds` plus the stall
    # drained, not the stall on top of an early finish.
    assert seconds * 0.95 <= got.elapsed <= seconds + STALL_S + 0.5


def test_an_answer_that_is_not_the_expected_one_fails_the_attack() -> None:
    refused = Server(status=429)
    try:
        with pytest.raises(RuntimeError, match="unexpected answer to request 0: 429"):
            loadgen.attack(_requests(refused.port), 100.0, 0.2, connections=2)
    finally:
        refused.close()
    denied = Server(body=b'{"allowed":false}')
    try:
        with pytest.raises(RuntimeError, match="unexpected answer"):
            loadgen.attack(_requests(denied.port), 100.0, 0.2, 2, expect=b'"allowed":true')
    finally:
        denied.close()


def test_a_refused_connection_fails_with_the_reason() -> None:
    from quotaflow.commands.localkafka import free_port

    with pytest.raises(RuntimeError, match="connect"):
        loadgen.attack(_requests(free_port()), 100.0, 0.2, connections=2)
