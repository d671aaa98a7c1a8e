"""A tenant's webhook receiver for tests and benches: a real HTTP server that verifies every
delivery with the reference `standardwebhooks` library and records what it accepted.

`down` makes it answer 503 (a receiver being redeployed); deliveries that fail verification
are kept apart (`refused`) and answered 400, so a test sees them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Delivery", "Receiver"]


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    type: str
    data: dict[str, Any]
    received_at: float
    timestamp: str


@dataclass
class Receiver:
    """`async with Receiver(secret) as r:` serves on 127.0.0.1:`r.port`."""

    secret: str
    down: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: int = 0
    refused: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def __aenter__(self) -> Receiver:
        from standardwebhooks import Webhook  # a test dependency only

        verifier = Webhook(self.secret)

        async def hook(request: web.Request) -> web.Response:
            self.attempts += 1
            body = await request.read()
            if self.down:
                return web.Response(status=503)
            try:
                doc = verifier.verify(body, dict(request.headers))
            except Exception as exc:  # noqa: BLE001 - any refusal is recorded as such
                self.refused.append(f"{type(exc).__name__}: {exc}")
                return web.Response(status=400)
            if doc.get("id") != request.headers.get("webhook-id"):
                self.refused.append("body id differs from webhook-id")
                return web.Response(status=400)
            self.deliveries.append(
                Delivery(doc["id"], doc["type"], doc["data"], time.time(), doc["timestamp"])
            )
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hooks", hook)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        return [d.id for d in self.deliveries]

    def of_type(self, event_type: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.type == event_type]

    def summary(self) -> str:
        return orjson.dumps(
            [(d.type, d.data.get("threshold"), d.data.get("used")) for d in self.deliveries]
        ).decode()
