"""A light HTTP/1.1 face for the hot routes, on the same port as aiohttp.

Why: at 2,000 requests/s aiohttp spends ~130 µs of CPU on each request before the
sidecar's own few microseconds (its request and response objects, router, middleware
chain, payload stream, a task per connection), which kept `POST /v1/consume` and forward
auth over their 1 ms p99 targets on a 2-core node. Here an `asyncio.Protocol` frames
requests itself, parses each head with llhttp (`httptools`, as uvicorn uses) and answers
`POST /v1/consume`, `POST /v1/check` and `/v1/authorize…` inline from the cache, through
the same functions as aiohttp's handlers (`edge/answers.py`), writing the answer bytes
straight to the transport.

Everything else is aiohttp's, unchanged: the first time a connection carries a request
this face does not answer itself, the connection is handed to aiohttp's own protocol
(the `RequestHandler` of the same `web.Server`) with every byte of that request and those
behind it, and stays there. "Not answered here" is deliberately wide, so that every
unusual case keeps aiohttp's exact behaviour without a second implementation of it:
any other route or method (405s, 404s, HEAD), HTTP/1.0 (and anything not 1.1), a
missing or repeated `Host` or other singleton header, `Transfer-Encoding` (chunked
bodies), `Content-Encoding` (415), `Expect` (100-continue), `Upgrade`, a body over the
route's limit (413), a body on forward auth, a head over 8,190 bytes or with more than
100 headers (400), a forward-auth target that aiohttp's router would first decode or
normalise (`%`, dot segments, `//`) or an absolute-form one, bytes pipelined after a
request that ends the connection (`Connection: close`: 400), and a request llhttp
refuses (400).

What this face does itself, as aiohttp would: keep-alive, pipelining (answers in order,
written together), `Connection: close`, a body split over several packets (held until
complete, under the route's read timeout: 408 `body_timeout`), the idle keep-alive
timeout, write back-pressure (reading pauses while the transport's buffer is full), and
graceful shutdown (the runner's `pre_shutdown`/`shutdown` close these connections too,
after answering a request whose body is arriving). An error inside an answer (a bug) is a
500 that ends that connection. `tests/edge/test_fastpath.py` sends the same bytes to this
face and to plain aiohttp and compares the answers; the one difference it allows is when
a 408 closes the connection (here at once; aiohttp says `Connection: close` too, but
keeps the socket open a while).
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive

from edge import answers
from edge.answers import Answer
from edge.authorize import PREFIX as AUTHORIZE_PREFIX
from edge.identify import HeaderGetter

if TYPE_CHECKING:
    from edge.server import EdgeState

__all__ = ["EdgeRunner", "FastProtocol", "FastServer"]

log = logging.getLogger(__name__)

# aiohttp's own limits (RequestHandler's max_line_size and max_field_size): a head this
# face answers is one aiohttp would have accepted; a longer one is aiohttp's to refuse.
MAX_HEAD = 8190
MAX_HEADERS = 100
# aiohttp rejects a repeated one of these (RFC 9110 singletons): handed over, it does.
_SINGLETONS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)
# Present in a request, each makes it aiohttp's (see the module docstring).
_HANDED_OVER = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade"})
_AUTHORIZE_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONSUME, _CHECK, _AUTHORIZE = "consume", "check", "authorize"
_SERVER = b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
_CLOSE = b"Connection: close\r\n"
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


class _Date:
    """The `Date` header line, formatted once a second (as aiohttp caches it)."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def __call__(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


_date = _Date()
_INTERNAL_ERROR = Answer(500, b"500 Internal Server Error", "text/plain; charset=utf-8", close=True)


def _route(method: str, target: str) -> str | None:
    """Which hot route answers `method target`, or None (aiohttp's request)."""
    path, _, _query = target.partition("?")
    if path == "/v1/consume":
        return _CONSUME if method == "POST" else None
    if path == "/v1/check":
        return _CHECK if method == "POST" else None
    if method not in _AUTHORIZE_METHODS:
        return None
    if path == AUTHORIZE_PREFIX:
        return _AUTHORIZE
    if (
        path.startswith(AUTHORIZE_PREFIX + "/")
        # aiohttp's router matches the decoded, normalised path: anything that decoding
        # or normalising could change is left to it, so both faces agree on the route.
        and "%" not in path
        and "/." not in path
        and "//" not in path
        and "#" not in target
    ):
        return _AUTHORIZE
    return None


def _encode(answer: Answer, close: bool) -> bytes:
    """The answer on the wire, with the headers aiohttp would write."""
    head = [_STATUS[answer.status]]
    if answer.content_type is not None:
        head.append(b"Content-Type: " + answer.content_type.encode() + b"\r\n")
    for name, value in answer.headers:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    head.append(b"Content-Length: %d\r\n" % len(answer.body))
    head.append(_date())
    head.append(_SERVER)
    if close:
        head.append(_CLOSE)
    head.append(b"\r\n")
    head.append(answer.body)
    return b"".join(head)


class _Head:
    """What llhttp gave for the request being parsed (httptools' callback object)."""

    __slots__ = ("complete", "count", "headers", "repeated", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.count = 0
        self.repeated = False
        self.complete = False

    def reset(self) -> None:
        self.url = b""
        self.headers = {}
        self.count = 0
        self.repeated = False
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Decoded as aiohttp decodes them; the first of a repeated header wins, as
        # aiohttp's `headers.get` gives it.
        key = name.decode("utf-8", "surrogateescape").lower()
        self.count += 1
        if key in self.headers:
            if key in _SINGLETONS:
                self.repeated = True
            return
        self.headers[key] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        self.complete = True


class _Pending:
    """A hot request whose head is parsed and whose body is still arriving."""

    __slots__ = ("app", "end", "head_end", "headers", "keep_alive", "route", "timer")

    def __init__(
        self,
        route: str,
        app: str,
        headers: dict[str, str],
        head_end: int,
        end: int,
        keep_alive: bool,
        timer: asyncio.TimerHandle | None,
    ) -> None:
        self.route = route
        self.app = app
        self.headers = headers
        self.head_end = head_end
        self.end = end
        self.keep_alive = keep_alive
        self.timer = timer


class FastProtocol(asyncio.Protocol):
    """One connection: hot requests answered here, the rest handed to aiohttp."""

    def __init__(self, server: FastServer, state: EdgeState) -> None:
        self._server = server
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # Received bytes not yet answered, from `_pos` on: requests are taken by moving
        # `_pos` (slicing the buffer per pipelined request would copy it quadratically),
        # and the buffer is compacted once per `data_received`.
        self._buf = b""
        self._pos = 0
        self._head = _Head()
        self._parser = httptools.HttpRequestParser(self._head)
        self._pending: _Pending | None = None
        self._closing = False
        self._eof = False
        self._write_paused = False
        self._peer: str | None = None
        self._peer_known = False
        self._last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is one without being asyncio.Transport's subclass).
        self._transport = cast(asyncio.Transport, transport)
        if self._server.tcp_keepalive:
            tcp_keepalive(self._transport)
        self._server.fast_connections.add(self)
        self._last_active = self._loop.time()
        if self._server.keepalive_timeout > 0:
            self._idle = self._loop.call_at(
                self._last_active + self._server.keepalive_timeout, self._check_idle
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing and self._pending is None:
            return  # answered its last request: nothing more is read
        self._last_active = self._loop.time()
        self._buf = self._buf + data if self._buf else data
        self._process()

    def eof_received(self) -> bool | None:
        # The client sent all it will (it may still read): the requests buffered behind
        # a full write buffer are answered, then the connection closes; an incomplete
        # request left in the buffer can never complete.
        self._eof = True
        self._process()
        if self._transport is None:
            return None  # handed over: aiohttp's answer to an EOF (it closes), as before
        return True  # the transport stays open for the answers; _process closes it

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            if self._buf:
                self._process()

    # -- shutdown, as aiohttp's Server asks its connections ------------------------

    def close(self) -> None:
        """Stop after the request in progress; an idle connection closes now."""
        if self._pending is None:
            self._close()
        else:
            self._closing = True

    async def shutdown(self, timeout: float | None) -> None:
        """Gives a request whose body is arriving until `timeout`, then closes."""
        if self._pending is not None and timeout:
            deadline = self._loop.time() + timeout
            while self._pending is not None and self._transport is not None:
                if self._loop.time() >= deadline:
                    break
                await asyncio.sleep(0.05)
        self._close()

    # -- the requests ----------------------------------------------------------------

    def _process(self) -> None:
        out: list[bytes] = []
        try:
            while self._pos < len(self._buf) and not self._write_paused:
                if self._pending is not None:
                    if not self._finish(out):
                        return
                    continue
                if self._closing:  # shutting down: no new request is started
                    return
                if not self._start(out):
                    return
        except Exception:
            # A bug, not a request's fault: said as aiohttp says it (500), logged with its
            # traceback, and the connection ends (its state is not to be trusted).
            log.exception("error answering a request on the light face")
            self._pending = None
            out.append(_encode(_INTERNAL_ERROR, close=True))
            self._closing = True
            self._buf, self._pos = b"", 0
        finally:
            self._compact()
            if out and self._transport is not None:
                self._transport.write(b"".join(out) if len(out) > 1 else out[0])
            done = self._closing and self._pending is None
            if (done or (self._eof and not self._write_paused)) and self._transport is not None:
                self._close()

    def _start(self, out: list[bytes]) -> bool:
        """Takes the next request's head from the buffer; False when it cannot go on
        (head incomplete, handed over, connection closing)."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            # Bare-LF line ends, or a head too long: aiohttp's to accept or refuse.
            if len(buf) - pos > MAX_HEAD or buf.find(b"\n\n", pos) >= 0:
                self._hand_over(out)
            return False
        head_end = end + 4
        if head_end - pos > MAX_HEAD or buf.find(b"\n\n", pos, head_end) >= 0:
            self._hand_over(out)
            return False
        head = self._head
        try:
            self._parser.feed_data(buf[pos:head_end])
        except httptools.HttpParserError:
            self._hand_over(out)
            return False
        if not head.complete:  # llhttp saw no end of head where we did (cannot be sure)
            self._hand_over(out)
            return False
        headers = head.headers
        try:
            target = head.url.decode("ascii")
        except UnicodeDecodeError:
            self._hand_over(out)
            return False
        method = self._parser.get_method().decode("ascii")
        route = _route(method, target)
        if (
            route is None
            or head.repeated
            or head.count > MAX_HEADERS
            or self._parser.get_http_version() != "1.1"
            or "host" not in headers
            or not _HANDED_OVER.isdisjoint(headers)
        ):
            self._hand_over(out)
            return False
        length = int(headers.get("content-length", "0"))
        if length > (0 if route == _AUTHORIZE else self._state.limits.consume):
            self._hand_over(out)  # aiohttp refuses it (413), or reads and drops it
            return False
        keep_alive = self._parser.should_keep_alive()
        if not keep_alive and len(buf) > head_end + length:
            self._hand_over(out)  # aiohttp refuses bytes after `Connection: close` (400)
            return False
        # The caller is authenticated before its body is read, as aiohttp's handlers do.
        app = answers.authenticate(self._state, route, headers.get("authorization"), self._remote)
        if isinstance(app, Answer):
            self._reply(out, app, keep_alive)
            return False
        if route == _AUTHORIZE:
            self._consumed(head_end)
            answer = answers.authorize(self._state, app, method, target, _getter(headers))
            return self._reply(out, answer, keep_alive)
        timer = None
        if len(buf) < head_end + length:
            timer = self._loop.call_later(self._state.limits.timeout, self._body_timeout)
        self._pending = _Pending(
            route, app, headers, head_end, head_end + length, keep_alive, timer
        )
        return True

    def _finish(self, out: list[bytes]) -> bool:
        """Answers the pending request once its body is all here; False until then."""
        p = self._pending
        assert p is not None
        if len(self._buf) < p.end:
            return False
        if p.timer is not None:
            p.timer.cancel()
        self._pending = None
        if not p.keep_alive and len(self._buf) > p.end:
            self._hand_over(out)  # bytes after `Connection: close`: as in _start
            return False
        body = self._buf[p.head_end : p.end]
        self._consumed(p.end, body)
        if p.route == _CONSUME:
            answer = answers.consume(self._state, p.app, body, p.headers.get("idempotency-key"))
        else:
            answer = answers.check(self._state, p.app, body)
        return self._reply(out, answer, p.keep_alive)

    def _consumed(self, end: int, body: bytes = b"") -> None:
        """The current request is taken from the buffer; llhttp reads its body too, so
        it stands at the next request."""
        if body:
            self._parser.feed_data(body)
        self._pos = end
        self._head.reset()

    def _compact(self) -> None:
        """Drops the answered bytes; a pending request's offsets move with its bytes."""
        pos = self._pos
        if not pos:
            return
        self._buf = self._buf[pos:]
        self._pos = 0
        p = self._pending
        if p is not None:
            p.head_end -= pos
            p.end -= pos

    def _reply(self, out: list[bytes], answer: Answer, keep_alive: bool) -> bool:
        """Queues the answer; False (stop reading) when the connection ends with it."""
        close = answer.close or not keep_alive or self._closing
        out.append(_encode(answer, close))
        self._server.answered += 1
        if close:
            self._closing = True
            self._buf, self._pos = b"", 0
            return False
        return True

    def _body_timeout(self) -> None:
        p = self._pending
        if p is None or self._transport is None:
            return
        self._pending = None
        s = self._state
        s.metrics.body_refusals.labels(route=p.route, reason="body_timeout").inc()
        out: list[bytes] = []
        self._reply(out, Answer(408, b'{"error":{"reason":"body_timeout"}}', close=True), False)
        self._transport.write(out[0])
        self._transport.close()

    def _remote(self) -> str | None:
        """The peer's address, as aiohttp's `request.remote` gives it."""
        if not self._peer_known and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            if isinstance(peer, list | tuple) and peer:
                self._peer = str(peer[0])
            self._peer_known = True
        return self._peer

    # -- handing over ----------------------------------------------------------------

    def _hand_over(self, out: list[bytes]) -> None:
        """Gives the connection, with the current request's bytes and all after them, to
        aiohttp's protocol for good (answers already queued are written first)."""
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(b"".join(out))
            out.clear()
        rest = self._buf[self._pos :]
        self._buf, self._pos = b"", 0
        self._forget()
        self._server.handed_over += 1
        handler = self._server.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._write_paused:
            handler.pause_writing()  # it learns of the full buffer as we did
            transport.resume_reading()  # its own flow control takes over
        if rest:
            handler.data_received(rest)
        self._transport = None

    def _forget(self) -> None:
        self._server.fast_connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._pending is not None and self._pending.timer is not None:
            self._pending.timer.cancel()

    def _check_idle(self) -> None:
        """Closes a connection idle for the keep-alive timeout (aiohttp's, 3,630 s)."""
        self._idle = None
        if self._transport is None:
            return
        due = self._last_active + self._server.keepalive_timeout
        now = self._loop.time()
        if now >= due and self._pending is None:
            self._close()
        else:
            self._idle = self._loop.call_at(max(due, now + 1.0), self._check_idle)

    def _close(self) -> None:
        self._closing = True
        self._forget()
        if self._transport is not None:
            self._transport.close()


def _getter(headers: dict[str, str]) -> HeaderGetter:
    def get(name: str) -> str | None:
        return headers.get(name.lower())

    return get


class FastServer(web.Server):
    """aiohttp's `web.Server` whose connections start on the light face.

    `EdgeRunner` turns the application's own server into one (same handler, request
    factory and settings), so every site started from the runner (TCPSite, SockSite,
    aiohttp's TestServer) serves through it."""

    state: EdgeState
    fast_connections: set[FastProtocol]
    # Requests answered on the light face, and connections handed over to aiohttp.
    answered: int
    handed_over: int
    keepalive_timeout: float
    tcp_keepalive: bool

    def __call__(self) -> Any:  # a FastProtocol; typed as aiohttp's factory is
        return FastProtocol(self, self.state)

    def aiohttp_handler(self) -> asyncio.Protocol:
        """A fresh aiohttp protocol for a connection handed over."""
        handler: asyncio.Protocol = super().__call__()
        return handler

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for conn in list(self.fast_connections):
            conn.close()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(
            *(conn.shutdown(timeout) for conn in list(self.fast_connections)),
            super().shutdown(timeout),
        )
        self.fast_connections.clear()


class EdgeRunner(web.AppRunner):
    """`web.AppRunner` for the sidecar's application: its sites serve the hot routes on
    the light face (`edge/server.py` `build_app` makes the application)."""

    async def _make_server(self) -> web.Server:
        from edge.server import STATE_KEY  # the server module builds on this one

        server = await super()._make_server()
        # The application's own server, same handler and settings, with connections that
        # start here: its class is swapped rather than the server rebuilt, because
        # rebuilding it would copy aiohttp's private construction arguments.
        server.__class__ = FastServer
        assert isinstance(server, FastServer)
        server.state = self.app[STATE_KEY]
        server.fast_connections = set()
        server.answered = server.handed_over = 0
        settings = self._kwargs
        server.keepalive_timeout = float(settings.get("keepalive_timeout", 3630.0))
        server.tcp_keepalive = bool(settings.get("tcp_keepalive", True))
        return server
