"""Hostile usage reports for the ingress's `POST /v1/usage` (the edges' route).

A genuine report carries `X-Quotaflow-Region` and `X-Quotaflow-Signature` (Ed25519,
kind `usage`, computed here by `fuzz.signature`, not with `wire`) with the region's edge
key. Every generator makes a request the ingress must refuse with a 4xx and
without publishing: bad or missing auth, stale, future, tampered or replayed signatures,
a tenant outside the signing region, bad JSON, bad unit counts, bad shapes, oversized,
compressed, trickled bodies, wrong content types and methods. The caller needs the
ingress to run with small usage limits (`QUOTAFLOW_USAGE_MAX_BODY_BYTES=65536`,
`QUOTAFLOW_USAGE_MAX_ITEMS=100`) and a 1 s body read timeout.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import orjson

from tests.reliability.fuzz import (
    BOMB,
    JSON,
    Attack,
    header_junk,
    random_key,
    request,
    signature,
)

REGION = b"X-Quotaflow-Region"
SIGNATURE = b"X-Quotaflow-Signature"
# Counts the usage route must refuse (it takes 1 <= units <= 10**9, integers only), as
# JSON text: some do not fit a 64-bit integer.
BAD_UNITS = [b"0", b"-5", b"1000000001", b"1" + b"0" * 30, b"1.5", b'"10"', b"null", b"true"]
MAX_ITEMS = 100  # the ingress's QUOTAFLOW_USAGE_MAX_ITEMS in the adversarial test


def usage_signature(key: str, body: bytes, t: int | None = None) -> bytes:
    return signature("usage", key, body, t)


class UsageFuzzer:
    """Hostile reports signed (when signed at all) with `key` of `region`, naming `victim`.

    `other_region`/`other_key`: a region the victim is not served in, with its real key.
    """

    def __init__(
        self,
        rng: random.Random,
        region: str,
        key: str,
        other_region: str,
        other_key: str,
        victim: tuple[str, str],
    ) -> None:
        self.rng = rng
        self.region = region
        self.key = key
        self.other_region = other_region
        self.other_key = other_key
        self.victim = victim
        self.seq = 0
        self.replayable: list[bytes] = []

    def doc(self, region: str | None = None) -> dict[str, object]:
        self.seq += 1
        tenant, customer = self.victim
        return {
            "batch_id": f"attacker:{self.seq}",
            "node_id": "attacker",
            "region": region or self.region,
            "sent_at": time.time(),
            "items": [{"tenant_id": tenant, "customer_id": customer, "units": 10**6}],
        }

    def body(self, **changes: object) -> bytes:
        doc = self.doc()
        doc.update(changes)
        return orjson.dumps(doc)

    def post(
        self,
        kind: str,
        body: bytes,
        *,
        key: str | None = None,
        region: bytes | None = None,
        sig: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        **kw: object,
    ) -> Attack:
        """`key` signs (default: the region's); `sig` replaces the signature outright."""
        sent = list(JSON if headers is None else headers)
        sent.append((REGION, self.region.encode() if region is None else region))
        if sig is None:
            sig = usage_signature(key or self.key, body)
        if sig:
            sent.append((SIGNATURE, sig))
        raw = request("POST", "/v1/usage", sent, body, **kw)  # type: ignore[arg-type]
        return Attack(kind, raw, trickle=kind == "usage_slow_client")

    def generators(self) -> list[Callable[[], Attack]]:
        gens = [
            self.unsigned,
            self.no_region,
            self.unknown_region,
            self.garbage_signature,
            self.wrong_key,
            self.other_kind,
            self.other_regions_key,
            self.stale,
            self.future,
            self.tampered,
            self.tenant_not_in_region,
            self.region_mismatch,
            self.bad_json,
            self.bad_units,
            self.unknown_tenant,
            self.bad_batch_id,
            self.empty,
            self.duplicate_item,
            self.too_many_items,
            self.wrong_content_type,
            self.oversize,
            self.oversize_chunked,
            self.gzip_bomb,
            self.slow_client,
            self.wrong_method,
            self.huge_header,
        ]
        if self.replayable:
            gens.append(self.replay)
        return gens

    def next(self) -> Attack:
        return self.rng.choice(self.generators())()

    # -- authentication ------------------------------------------------------------------

    def unsigned(self) -> Attack:
        return self.post("usage_unsigned", self.body(), sig=b"")

    def no_region(self) -> Attack:
        body = self.body()
        sent = [*JSON, (SIGNATURE, usage_signature(self.key, body))]
        return Attack("usage_no_region", request("POST", "/v1/usage", sent, body))

    def unknown_region(self) -> Attack:
        region = self.rng.choice([b"mars", b"", b"eu/../us", b"\xff\xfe", b"x" * 65, b"EU"])
        return self.post("usage_unknown_region", self.body(), region=region)

    def garbage_signature(self) -> Attack:
        return self.post("usage_garbage_signature", self.body(), sig=header_junk(self.rng) or b"x")

    def wrong_key(self) -> Attack:
        return self.post("usage_wrong_key", self.body(), key=random_key(self.rng))

    def other_kind(self) -> Attack:
        """The region's own edge key, but as a push or an announcement: never usage."""
        body = self.body()
        kind = self.rng.choice(["push", "node-announcement"])
        return self.post("usage_other_kind", body, sig=signature(kind, self.key, body))

    def other_regions_key(self) -> Attack:
        """The other region's real key, claiming this region."""
        return self.post("usage_other_regions_key", self.body(), key=self.other_key)

    def stale(self) -> Attack:
        body = self.body()
        t = int(time.time()) - self.rng.randint(31, 10**6)
        return self.post("usage_stale", body, sig=usage_signature(self.key, body, t))

    def future(self) -> Attack:
        body = self.body()
        t = int(time.time()) + self.rng.randint(31, 10**6)
        return self.post("usage_future", body, sig=usage_signature(self.key, body, t))

    def tampered(self) -> Attack:
        body = self.body()
        sig = usage_signature(self.key, body)
        return self.post("usage_tampered", body.replace(b"1000000", b"9000000"), sig=sig)

    def replay(self) -> Attack:
        return Attack("usage_replay", self.rng.choice(self.replayable))

    # -- correctly signed, but not acceptable ------------------------------------------

    def tenant_not_in_region(self) -> Attack:
        """Signed by the other region's own key for its own region: the victim is not
        served there."""
        doc = self.doc(self.other_region)
        return self.post(
            "usage_tenant_not_in_region",
            orjson.dumps(doc),
            key=self.other_key,
            region=self.other_region.encode(),
        )

    def region_mismatch(self) -> Attack:
        return self.post("usage_region_mismatch", self.body(region=self.other_region))

    def bad_json(self) -> Attack:
        body = self.rng.choice(
            [
                b"{" + bytes(self.rng.choice(b'abc"{}[]:,0 ') for _ in range(100)),
                b"[]",
                b"null",
                b'{"batch_id":"a:1"}',
                b"\xff\xfe{}",
                self.rng.randbytes(200),
            ]
        )
        return self.post("usage_bad_json", body)

    def bad_units(self) -> Attack:
        tenant, customer = self.victim
        units = self.rng.choice(BAD_UNITS)
        doc = self.doc()
        doc["items"] = []
        head = orjson.dumps(doc)[:-3]  # drops `[]}`: the item is written by hand
        item = b'{"tenant_id":"%s","customer_id":"%s","units":%s}' % (
            tenant.encode(),
            customer.encode(),
            units,
        )
        return self.post("usage_bad_units", head + b"[" + item + b"]}")

    def unknown_tenant(self) -> Attack:
        tenant = self.rng.choice(["nobody", "attack", self.victim[0].upper(), "a" * 64])
        items = [{"tenant_id": tenant, "customer_id": "cus_attack", "units": 10**6}]
        return self.post("usage_unknown_tenant", self.body(items=items))

    def bad_batch_id(self) -> Attack:
        batch = self.rng.choice(["other:1", "attacker", "attacker:-1", "attacker:x", ":1", ""])
        return self.post("usage_bad_batch_id", self.body(batch_id=batch))

    def empty(self) -> Attack:
        return self.post("usage_empty", self.body(items=[]))

    def duplicate_item(self) -> Attack:
        doc = self.doc()
        items = list(doc["items"])  # type: ignore[call-overload]
        return self.post("usage_duplicate_item", self.body(items=items * 2))

    def too_many_items(self) -> Attack:
        tenant = self.victim[0]
        items = [
            {"tenant_id": tenant, "customer_id": f"cus_{n}", "units": 1}
            for n in range(MAX_ITEMS + 1)
        ]
        return self.post("usage_too_many_items", self.body(items=items))

    # -- shape -----------------------------------------------------------------------------

    def wrong_content_type(self) -> Attack:
        ctype = self.rng.choice([b"text/plain", b"application/x-www-form-urlencoded", b"", b"\xff"])
        return self.post(
            "usage_wrong_content_type", self.body(), headers=[(b"Content-Type", ctype)]
        )

    def oversize(self) -> Attack:
        body = self.body(pad="x" * (70 * 1024))
        return self.post("usage_oversize", body)

    def oversize_chunked(self) -> Attack:
        body = self.body(pad="y" * (70 * 1024))
        return self.post("usage_oversize_chunked", body, chunked=True)

    def gzip_bomb(self) -> Attack:
        """Correctly signed over the compressed bytes: only the encoding is wrong."""
        headers = [*JSON, (b"Content-Encoding", b"gzip")]
        return self.post("usage_gzip_bomb", BOMB, headers=headers)

    def slow_client(self) -> Attack:
        """Announces more body than it sends, then trickles: the body read times out."""
        body = self.body()
        return self.post("usage_slow_client", body[:20], length=len(body) + 500)

    def wrong_method(self) -> Attack:
        method = self.rng.choice(["GET", "PUT", "DELETE", "PATCH"])
        raw = request(method, "/v1/usage", [*JSON, (REGION, self.region.encode())], self.body())
        return Attack("usage_wrong_method", raw)

    def huge_header(self) -> Attack:
        body = self.body()
        sig = usage_signature(self.key, body) + b",v0=" + b"a" * self.rng.randint(600, 12000)
        return self.post("usage_huge_header", body, sig=sig)
