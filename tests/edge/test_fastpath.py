"""The light HTTP/1.1 face (`edge/fastpath.py`) against plain aiohttp, over real sockets.

Each scenario sends the same bytes (in the same pieces) to two sidecars built alike, one
served by aiohttp alone and one by `EdgeRunner`, and compares every answer (status line,
headers but `Date`, body) and whether the connection was closed after them. The light
face's counters say whether it answered the requests itself or handed the connection
over, so a scenario meant for the light face cannot pass by falling back to aiohttp.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

from edge.auth import AppAuth, generate_app_token, token_digest
from edge.body import BodyLimits
from edge.cache import QuotaCache
from edge.fastpath import EdgeRunner, FastServer
from edge.identify import Identifier
from edge.server import build_app
from tests.edge.factories import quota_update
from wire import Kind, Verifier, generate_keypair

TOKEN = generate_app_token()
BODY_TIMEOUT = 0.4
PUSH_VERIFIER = Verifier(Kind.PUSH, [generate_keypair()[1]])


def _cache() -> QuotaCache:
    cache = QuotaCache(regions=("eu",))
    cache.apply(quota_update(customer="c1", limit=3), "eu")
    cache.apply(quota_update(customer="big", limit=None), "eu")
    return cache


def _app() -> web.Application:
    cache = _cache()
    app = build_app(
        cache,
        PUSH_VERIFIER,
        region="eu",
        auth=AppAuth({"rating": token_digest(TOKEN)}),
        limits=BodyLimits(consume=256, timeout=BODY_TIMEOUT),
        identifier=Identifier(routes=[{"prefix": "/v1/export", "feature": "export", "cost": 2}]),
    )
    cache.mark_complete()  # build_app waits for a snapshot; these records stand for one
    return app


@asynccontextmanager
async def _serving(runner: web.AppRunner) -> AsyncIterator[int]:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@dataclass
class Servers:
    plain: int
    fast: int
    fast_server: FastServer


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    fast_runner = EdgeRunner(_app(), access_log=None, auto_decompress=False)
    plain_runner = web.AppRunner(_app(), access_log=None, auto_decompress=False)
    async with _serving(plain_runner) as plain, _serving(fast_runner) as fast:
        assert isinstance(fast_runner.server, FastServer)
        yield Servers(plain, fast, fast_runner.server)


Answer = tuple[bytes, tuple[bytes, ...], bytes]  # status line, headers but Date, body


async def _read_answer(reader: asyncio.StreamReader) -> Answer | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise AssertionError(f"a truncated answer: {exc.partial!r}") from None
        return None
    status, *lines = head[:-4].split(b"\r\n")
    length = 0
    for line in lines:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    headers = tuple(sorted(line for line in lines if not line.lower().startswith(b"date:")))
    return status, headers, body


async def _exchange(
    port: int, pieces: Sequence[bytes | float], answers: int
) -> tuple[list[Answer], bool]:
    """Sends `pieces` (a float: wait that long), reads `answers` answers, then whether the
    server closed the connection (within 0.3 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # pieces leave as sent
    try:
        for piece in pieces:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
            else:
                writer.write(piece)
                await writer.drain()
        got: list[Answer] = []
        async with asyncio.timeout(5):
            for _ in range(answers):
                answer = await _read_answer(reader)
                if answer is None:
                    break
                got.append(answer)
        try:
            async with asyncio.timeout(0.3):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False
        return got, closed
    finally:
        writer.close()


async def _same(
    servers: Servers, pieces: Sequence[bytes | float], answers: int
) -> tuple[list[Answer], bool]:
    """Both faces' answers, asserted equal; the light face's."""
    fast = await _exchange(servers.fast, pieces, answers)
    plain = await _exchange(servers.plain, pieces, answers)
    assert fast == plain
    return fast


def consume(body: object, *, extra: bytes = b"", path: bytes = b"/v1/consume") -> bytes:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return (
        b"POST %s HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer %s\r\n%s"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path, TOKEN.encode(), extra, len(raw), raw)
    )


def authorize(customer: str, uri: bytes = b"/v1/search", extra: bytes = b"") -> bytes:
    return (
        b"GET /v1/authorize HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer %s\r\n"
        b"X-Quotaflow-Tenant: t1\r\nX-Quotaflow-Customer: %s\r\nX-Original-URI: %s\r\n%s\r\n"
        % (TOKEN.encode(), customer.encode(), uri, extra)
    )


def chunked(body: object) -> bytes:
    raw = orjson.dumps(body)
    return (
        b"POST /v1/consume HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (TOKEN.encode(), len(raw), raw)
    )


ASK = {"tenant_id": "t1", "customer_id": "c1", "cost": 1}
# aiohttp's route (the boot ids of /healthz differ between the two servers).
QUOTA = b"GET /v1/quotas/t1/c1 HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer %s\r\n\r\n" % (
    TOKEN.encode()
)


def _statuses(answers: list[Answer]) -> list[bytes]:
    return [status for status, _, _ in answers]


async def test_pipelined_hot_requests_are_answered_in_order_on_the_light_face(
    servers: Servers,
) -> None:
    # Four consumes of 1 against a limit of 3, a check and two forward auths in one write.
    pipelined = b"".join(
        [consume(ASK)] * 4
        + [consume(ASK, path=b"/v1/check")]
        + [authorize("c1", b"/v1/export"), authorize("big")]
    )
    answers, closed = await _same(servers, [pipelined], 7)
    assert not closed
    bodies = [orjson.loads(body) for _, _, body in answers[:5]]
    assert [b["remaining"] for b in bodies[:3]] == [2, 1, 0]
    assert bodies[3]["reason"] == "exhausted"
    assert bodies[4]["allowed"] is False
    # The export route names a feature c1's record lacks: 403 no_entitlement.
    assert _statuses(answers[5:]) == [b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 200 OK"]
    assert servers.fast_server.answered == 7
    assert servers.fast_server.handed_over == 0


async def test_a_request_split_over_packets_is_answered_once_whole(servers: Servers) -> None:
    raw = consume(ASK, extra=b"Idempotency-Key: split-1\r\n")
    # Byte by byte through the head, then the body in two pieces with a pause between.
    cut = raw.index(b"\r\n\r\n") + 4
    pieces: list[bytes | float] = [raw[i : i + 1] for i in range(40)]
    pieces += [raw[40:cut], 0.05, raw[cut : cut + 5], 0.05, raw[cut + 5 :], raw]
    answers, closed = await _same(servers, pieces, 2)
    assert not closed
    assert answers[0][2] == answers[1][2]  # the retry under the same key: the first answer
    assert b"Idempotent-Replayed: true" in answers[1][1]
    assert servers.fast_server.answered == 2
    assert servers.fast_server.handed_over == 0


async def test_an_other_route_hands_the_connection_to_aiohttp_mid_connection(
    servers: Servers,
) -> None:
    # Light, then aiohttp's (a quota read, a 405), then a consume that aiohttp now answers.
    wrong_method = b"GET /v1/consume HTTP/1.1\r\nHost: edge\r\n\r\n"
    pieces: list[bytes | float] = [consume(ASK), 0.05, QUOTA + wrong_method + consume(ASK)]
    answers, closed = await _same(servers, pieces, 4)
    assert not closed
    assert _statuses(answers) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 405 Method Not Allowed",
        b"HTTP/1.1 200 OK",
    ]
    assert orjson.loads(answers[3][2])["remaining"] == 1
    assert servers.fast_server.answered == 1
    assert servers.fast_server.handed_over == 1


@pytest.mark.parametrize(
    ("name", "request_bytes", "status"),
    [
        ("malformed", b"POST /v1/consume HTTP/1.1\r\nHost: edge\r\nBad Header\r\n\r\n", 400),
        ("not http", b"GARBAGE\r\n\r\n", 400),
        ("no host", b"POST /v1/consume HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),
        ("two hosts", b"POST /v1/check HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            "head too long",
            b"POST /v1/consume HTTP/1.1\r\nHost: e\r\nX: %s\r\n\r\n" % (b"a" * 9000),
            400,
        ),
        ("body too large", consume(b"x" * 300), 413),
        ("chunked", chunked(ASK), 200),
        ("gzip", consume(ASK, extra=b"Content-Encoding: gzip\r\n"), 415),
        ("no credential", consume(ASK).replace(b"Authorization: Bearer", b"X-Nothing:"), 401),
        ("bad credential", consume(ASK).replace(TOKEN.encode(), b"qfa_nope"), 401),
        ("bad json", consume(b"{"), 400),
        ("bad cost", consume({**ASK, "cost": -1}), 400),
        ("bad key", consume(ASK, extra=b"Idempotency-Key: \x01\r\n"), 400),
        # Not kept alive: what follows is refused (aiohttp's "Data after Connection: close").
        ("http/1.0", consume(ASK).replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
        ("connection close", consume(ASK, extra=b"Connection: close\r\n"), 400),
        ("query", consume(ASK, path=b"/v1/consume?x=1"), 200),
        ("encoded path", authorize("c1").replace(b"/v1/authorize", b"/v1/%61uthorize"), 200),
        ("authorize tail", authorize("c1").replace(b"/v1/authorize", b"/v1/authorize/x?y=1"), 200),
        (
            "dot segments",
            authorize("c1").replace(b"/v1/authorize", b"/v1/authorize/../healthz"),
            200,
        ),
        ("head", authorize("c1").replace(b"GET", b"HEAD"), 200),
        ("unknown customer", authorize("nobody"), 403),
        ("no identity", authorize("c1").replace(b"X-Quotaflow-Tenant: t1\r\n", b""), 401),
        ("absolute form", consume(ASK, path=b"http://edge/v1/consume"), 200),
    ],
)
async def test_every_case_answers_as_aiohttp_does(
    servers: Servers, name: str, request_bytes: bytes, status: int
) -> None:
    # Followed by a consume, answered only if the connection went on.
    answers, _closed = await _same(servers, [request_bytes + consume(ASK)], 2)
    assert answers[0][0].split(b" ")[1] == b"%d" % status, name


async def test_a_body_that_stops_coming_is_refused_408_after_the_read_timeout(
    servers: Servers,
) -> None:
    raw = consume(ASK)
    pieces: list[bytes | float] = [raw[:-10], BODY_TIMEOUT + 0.3]
    answers, closed = await _exchange(servers.fast, pieces, 1)
    assert answers == (await _exchange(servers.plain, pieces, 1))[0]
    assert _statuses(answers) == [b"HTTP/1.1 408 Request Timeout"]
    assert (b"Connection: close") in answers[0][1]
    assert orjson.loads(answers[0][2]) == {"error": {"reason": "body_timeout"}}
    # It says so and does (aiohttp, which says so too, keeps the socket open a while).
    assert closed
    assert servers.fast_server.handed_over == 0


async def test_a_client_that_does_not_read_is_not_read_either(servers: Servers) -> None:
    """Write back-pressure: with its answers unread, the light face stops reading, and
    goes on as they are read."""
    total = 100_000  # ~19 MB of answers: more than the kernel's socket buffers hold
    reader, writer = await asyncio.open_connection("127.0.0.1", servers.fast)
    try:
        writer.write(consume({**ASK, "customer_id": "big"}) * total)
        answered = -1
        while answered != servers.fast_server.answered:  # until it stops
            answered = servers.fast_server.answered
            await asyncio.sleep(0.3)
        assert 0 < answered < total
        async with asyncio.timeout(60):
            for _ in range(total):
                assert await _read_answer(reader) is not None
        assert servers.fast_server.answered == total
        assert servers.fast_server.handed_over == 0
    finally:
        writer.close()


async def test_shutdown_closes_idle_light_connections(servers: Servers) -> None:
    runner = EdgeRunner(_app(), access_log=None)
    async with _serving(runner) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(consume(ASK))
        assert await _read_answer(reader) is not None
        server = runner.server
        assert isinstance(server, FastServer)
        assert len(server.fast_connections) == 1
    # runner.cleanup() ran: the idle keep-alive connection was closed by the server.
    async with asyncio.timeout(2):
        assert await reader.read(1) == b""
    writer.close()


async def test_shutdown_answers_the_request_whose_body_is_arriving_then_closes(
    servers: Servers,
) -> None:
    runner = EdgeRunner(_app(), access_log=None)
    async with _serving(runner) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = consume(ASK)
        writer.write(raw[:-5])
        await writer.drain()
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(runner.cleanup())
        await asyncio.sleep(0.1)
        assert not stopping.done()  # it waits for the request in progress
        writer.write(raw[-5:])
        answer = await _read_answer(reader)
        assert answer is not None
        assert answer[0] == b"HTTP/1.1 200 OK"
        assert b"Connection: close" in answer[1]
        async with asyncio.timeout(2):
            assert await reader.read(1) == b""
            await stopping
        writer.close()


def test_on_uvloop_light_answers_and_the_hand_over_work_alike() -> None:
    """`quotaflow edge` runs on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def scenario() -> tuple[list[Answer], bool, int, int]:
        runner = EdgeRunner(_app(), access_log=None)
        async with _serving(runner) as port:
            server = runner.server
            assert isinstance(server, FastServer)
            pieces: list[bytes | float] = [consume(ASK) * 2, 0.05, QUOTA + consume(ASK)]
            answers, closed = await _exchange(port, pieces, 4)
            return answers, closed, server.answered, server.handed_over

    answers, closed, answered, handed_over = uvloop.run(scenario())
    assert not closed
    assert _statuses(answers) == [b"HTTP/1.1 200 OK"] * 4
    assert [orjson.loads(body)["remaining"] for _, _, body in answers[:2]] == [2, 1]
    assert orjson.loads(answers[2][2])["used"] == 2  # the quota read, by aiohttp
    assert orjson.loads(answers[3][2])["remaining"] == 0
    assert (answered, handed_over) == (2, 1)


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    runner = EdgeRunner(_app(), access_log=None, keepalive_timeout=0.3)
    async with _serving(runner) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(consume(ASK))
        assert await _read_answer(reader) is not None
        async with asyncio.timeout(3):
            assert await reader.read(1) == b""
        writer.close()


async def test_a_failure_inside_an_answer_is_a_500_that_ends_the_connection(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug, not a request's fault: the caller hears 500 (as from aiohttp), the rest of
    its pipelined requests are not taken, and the server keeps serving others."""
    from edge import answers

    def broken(*args: object) -> answers.Answer:
        raise RuntimeError("a bug")

    monkeypatch.setattr(answers, "check", broken)
    broken_then_more = consume(ASK, path=b"/v1/check") + consume(ASK)
    answers_got, closed = await _exchange(servers.fast, [broken_then_more], 2)
    assert _statuses(answers_got) == [b"HTTP/1.1 500 Internal Server Error"]
    assert closed
    # Nothing was consumed by the request behind the failed one; a new connection works.
    answers_got, _ = await _exchange(servers.fast, [consume(ASK)], 1)
    assert orjson.loads(answers_got[0][2])["remaining"] == 2
