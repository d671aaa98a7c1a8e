"""`POST /v1/edge/nodes`: edge nodes' announcements into the compacted `edge.nodes` topic.

Request (sent by `edge/announcer.py`): headers `X-Quotaflow-Region` and
`X-Quotaflow-Signature` (`wire/signing.py`, kind `node-announcement`, with an edge key of
the region: verified against the region's public edge keys, `QUOTAFLOW_EDGE_VERIFY_KEYS`),
body a `NodeAnnouncement` (`tables/edge_node.py`). A push key's signature, or a usage
report's, never verifies as an announcement.

Checked before anything is published: the signature (window and replay), the body, and
that its region is the header's. Then: an announcement is published with key
`region/node_id`, value = the body byte for byte and the signature header kept in the
record header `qf-signature`, so pushers verify it again; a departure (`leaving: true`)
becomes a tombstone for that key. 200 `{"status": "accepted"}` once acknowledged (acks=all);
401 signature reasons, 400 `bad_body` / `region_mismatch` / `future_at` (`at` beyond now +
push tolerance), 415, 413, 503 like `/v1/usage`.
"""

from __future__ import annotations

import logging
import re
import time

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from ingress.body import read_json_body
from ingress.exceptions import IngressError, PublishUnavailable, RequestRejected
from ingress.publisher import Publisher
from quotaflow.settings import IngressSettings
from tables.edge_node import SIGNATURE_RECORD_HEADER, NodeAnnouncement
from wire import REGION_HTTP_HEADER, SIGNATURE_HEADER, Kind, SignatureError, Verifier

__all__ = ["NodesEndpoint"]

log = logging.getLogger("quotaflow.ingress.nodes")

MAX_BODY = 4096
_REGION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _error(exc: IngressError) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": {"reason": exc.reason, "message": exc.message}}),
        status=exc.status,
        content_type="application/json",
    )


class NodesEndpoint:
    """The `/v1/edge/nodes` handler; one per ingress app."""

    def __init__(
        self, settings: IngressSettings, publisher: Publisher, metrics_registry: CollectorRegistry
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._topic = settings.topics.edge_nodes
        self._verifiers: dict[str, Verifier] = {}
        self.announcements = Counter(
            "quotaflow_ingress_node_announcements",
            "Edge node announcements by outcome (accepted, rejected, unavailable) and reason.",
            ("outcome", "reason"),
            registry=metrics_registry,
        )

    def _verifier(self, region: str) -> Verifier | None:
        verifier = self._verifiers.get(region)
        if verifier is None:
            keys = self._settings.edge_verify_keys.get(region)
            if not keys:
                return None
            verifier = Verifier(Kind.ANNOUNCEMENT, keys, tolerance=self._settings.push_tolerance)
            self._verifiers[region] = verifier
        return verifier

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/edge/nodes: verify the region's edge signature, then publish."""
        try:
            reason = await self._accept(request)
        except PublishUnavailable as exc:
            self.announcements.labels("unavailable", exc.reason).inc()
            return _error(exc)
        except IngressError as exc:
            self.announcements.labels("rejected", exc.reason).inc()
            log.warning("node announcement refused", extra={"reason": exc.reason})
            return _error(exc)
        self.announcements.labels("accepted", reason).inc()
        return web.json_response({"status": "accepted"})

    async def _accept(self, request: web.Request) -> str:
        region = request.headers.get(REGION_HTTP_HEADER, "")
        if not _REGION.match(region):
            raise RequestRejected("unknown_region", "missing or malformed region", status=401)
        verifier = self._verifier(region)
        if verifier is None:
            raise RequestRejected("unknown_region", "no edge keys for this region", status=401)
        body = await read_json_body(
            request, max_bytes=MAX_BODY, timeout=self._settings.ingress_body_read_timeout
        )
        signature = request.headers.get(SIGNATURE_HEADER)
        try:
            verifier.verify(signature, body)
        except SignatureError as exc:
            raise RequestRejected(
                exc.reason, "announcement signature refused", status=401
            ) from None
        try:
            doc = NodeAnnouncement.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            raise RequestRejected("bad_body", "not a node announcement") from None
        if doc.region != region:
            raise RequestRejected("region_mismatch", "body region differs from the header")
        if doc.at > time.time() + self._settings.push_tolerance:
            # A far-future `at` would keep the node "heard from" long after it fell silent.
            raise RequestRejected("future_at", "announcement time is in the future")
        timeout = self._settings.publish_timeout
        if doc.leaving:
            await self._publisher.publish(self._topic, doc.key.encode(), None, [], timeout)
            return "departed"
        headers = [(SIGNATURE_RECORD_HEADER, (signature or "").encode())]
        await self._publisher.publish(self._topic, doc.key.encode(), body, headers, timeout)
        return "announced"
