"""Reading an edge request's body: a size limit per route and a time limit on the read.

The declared length is checked before a byte is read (413 `body_too_large`), the running
length while reading (a chunked body declares none), and any wait for the body runs under
one timeout (408 `body_timeout`), so a slow or endless body cannot hold a handler or fill
memory (a body already all received is taken without a wait, so without a timer). An
encoded body is refused unread (415 `unsupported_encoding`): the server does not inflate,
and no caller of the edge compresses.

Each refusal closes the connection: the rest of a refused body is never read, and a
client cannot pipeline past it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from edge.exceptions import EdgeError

__all__ = ["BodyLimits", "BodyRefused", "read_body"]


@dataclass(frozen=True)
class BodyLimits:
    """Per-route body limits (bytes) and the read timeout (seconds); the defaults are the
    settings' (`QUOTAFLOW_EDGE_CONSUME_MAX_BYTES`, `…_PUSH_MAX_BYTES`, `…_BODY_READ_TIMEOUT`).

    consume/check: a few ids and a cost, a few hundred bytes. push: a snapshot batch is
    1,000 records (`streams/push_node.py` `snapshot_batch`) of typically ~0.4 KiB and at
    most ~3.2 KiB (255-character ids and reason, 32 features of 64 characters), so 3.2 MB
    at worst, and the first batch of a snapshot also carries the region's complete tenant
    list: at the design's scale (100,000 tenants) up to 7.8 MB with 63-character ids,
    ~2.5 MB with short ones. 16 MiB holds both worst cases together (a refused batch
    would be dropped, and a refused snapshot retried for ever); tests/edge/
    test_body_limits.py keeps it so.
    """

    consume: int = 4096
    push: int = 16 * 1_048_576
    timeout: float = 5.0


class BodyRefused(EdgeError):
    """The body cannot be accepted; `status` and `reason` make the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request: web.Request, *, max_bytes: int, timeout: float) -> bytes:
    """The whole body, at most `max_bytes`, received within `timeout` seconds."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() != "identity":
        raise BodyRefused(415, "unsupported_encoding")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise BodyRefused(413, "body_too_large")
    content = request.content
    if length is not None and content.is_eof():
        # The usual consume: the whole small body came with the headers and is buffered
        # already, so there is nothing to wait for and no timer to arm (the timeout's
        # timer is a measurable share of a request's cost at thousands per second).
        body = content.read_nowait(length) if length else b""
        if len(body) == length:
            return body
        # Fewer bytes than declared cannot be at EOF in aiohttp's parser; if it ever
        # were, the read below reports it as incomplete.
        raise BodyRefused(400, "incomplete_body")
    try:
        async with asyncio.timeout(timeout):
            if length is not None:
                # The common case: one read of the declared length (at most max_bytes).
                body = await content.readexactly(length) if length else b""
            else:
                body = b""
                while not content.at_eof():
                    chunk = await content.read(max_bytes + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
                    if len(body) > max_bytes:
                        raise BodyRefused(413, "body_too_large")
    except TimeoutError:
        raise BodyRefused(408, "body_timeout") from None
    except asyncio.IncompleteReadError:
        # The client closed before sending what it declared: nobody is left to answer.
        raise BodyRefused(400, "incomplete_body") from None
    return body
