"""Quotas for Python services: a pure ASGI middleware (Starlette, FastAPI, any ASGI app)
over the in-process `QuotaCache`, with the forward-auth route's rules and answers.

    from edge.asgi import QuotaMiddleware
    from edge.identify import Identifier

    app = Starlette(routes=..., middleware=[Middleware(
        QuotaMiddleware, cache=cache, identifier=Identifier(routes=[...]))])

Each HTTP request is identified and priced by `edge/identify.py` and consumed before the
app sees it: an allowed request reaches the app, and its response gains
`X-Quota-Remaining`/`RateLimit-Remaining`; a denied one never reaches it and is answered
as `edge/verdict.py` says (401/403/429/503, JSON reason, `Retry-After`). Paths under an
`exempt` prefix (health checks, metrics) pass unmetered; websocket and lifespan scopes
pass untouched.

No await happens between the decision and the count (they are one synchronous call), and
the middleware itself awaits nothing but the app and `send`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from edge.cache import QuotaCache
from edge.identify import Identifier, IdentifyError, normalise_path
from edge.verdict import Gate, Verdict, identify_refusal, verdict

__all__ = ["QuotaMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class QuotaMiddleware:
    """Consumes each HTTP request's cost from `cache` before `app` answers it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: QuotaCache,
        identifier: Identifier | None = None,
        exempt: Sequence[str] = (),
        retry_after: float = 1.0,
    ) -> None:
        self.app = app
        self.cache = cache
        self.gate = Gate(cache)
        self.identifier = identifier if identifier is not None else Identifier()
        self.exempt = tuple(normalise_path(p).rstrip("/") for p in exempt)
        self.retry_after = retry_after

    def _exempt(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path")
        target = raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"]
        if self.exempt and self._exempt(normalise_path(target)):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]

        def header(name: str) -> str | None:
            wanted = name.lower().encode("latin-1")
            for key, value in headers:
                if key == wanted:
                    return value.decode("latin-1")
            return None

        try:
            ask = self.identifier.identify(scope["method"], target, header)
        except IdentifyError as exc:
            await _answer(send, identify_refusal(exc.reason))
            return
        answer = verdict(
            self.gate.consume(ask), ask, self.cache, unavailable_retry_after=self.retry_after
        )
        if not answer.allowed:
            await _answer(send, answer)
            return
        if not answer.headers:
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_quota)


async def _answer(send: Send, v: Verdict) -> None:
    headers = [(k.lower().encode("latin-1"), val.encode("latin-1")) for k, val in v.headers]
    headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(v.body)).encode()))
    await send({"type": "http.response.start", "status": v.status, "headers": headers})
    await send({"type": "http.response.body", "body": v.body})
