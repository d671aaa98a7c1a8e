"""Reading a request body the ingress will parse: one set of refusals for every route.

The content type and encoding are checked before a byte is read (the server does not
inflate: `auto_decompress` is off, so an encoded body is refused unread rather than
inflated first), the declared length before reading, and the running length while
reading, all under one timeout so a slow client cannot hold a handler.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ingress.exceptions import RequestRejected

JSON = "application/json"


async def read_json_body(request: web.Request, *, max_bytes: int, timeout: float) -> bytes:
    """The whole body, or `RequestRejected` (415, 413 or 408) with a stable reason."""
    if request.content_type != JSON:
        raise RequestRejected(
            "unsupported_media_type", "Content-Type must be application/json", status=415
        )
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise RequestRejected(
            "unsupported_encoding", "Content-Encoding must be identity", status=415
        )
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestRejected("body_too_large", "body exceeds the limit", status=413)
    try:
        async with asyncio.timeout(timeout):
            body = await request.content.read(max_bytes + 1)
            while len(body) <= max_bytes and not request.content.at_eof():
                chunk = await request.content.read(max_bytes + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise RequestRejected("body_timeout", "body not received in time", status=408) from None
    if len(body) > max_bytes:
        raise RequestRejected("body_too_large", "body exceeds the limit", status=413)
    return body
