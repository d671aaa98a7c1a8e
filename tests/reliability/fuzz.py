"""A seeded fuzzer of hostile HTTP requests, sent over raw sockets so that nothing an
HTTP client library would refuse to send (bad header bytes, lying lengths, bombs,
trickled bodies) is out of reach.

Each generator returns `Attack(kind, raw bytes, trickle)`; `send_raw` writes it and
returns the status code of the answer (0 if the server closed without one).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.reliability.sender import stripe_signature


@dataclass(frozen=True)
class Attack:
    kind: str
    raw: bytes
    trickle: bool = False  # send the body a few bytes at a time, slower than any timeout


def request(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(body, 4096)) + b"0\r\n\r\n"
    else:
        head.append(b"Content-Length: %d" % (len(body) if length is None else length))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _junk(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def header_junk(rng: random.Random) -> bytes:
    """Printable-ish junk that still parses as one header line."""
    alphabet = b"tv01=,; \tabcdef0123456789xyz\x80\xff-_"
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 300))).strip()


JSON = [(b"Content-Type", b"application/json")]


class WebhookFuzzer:
    """Hostile requests for the ingress webhook routes of `victim` (secret known)."""

    def __init__(self, rng: random.Random, victim: str, secret: str, other_secret: str) -> None:
        self.rng = rng
        self.victim = victim
        self.secret = secret
        self.other_secret = other_secret
        self.seq = 0

    def body(self) -> bytes:
        self.seq += 1
        doc = {
            "id": f"evt_attack_{self.seq}",
            "object": "event",
            "type": "customer.subscription.updated",
            "livemode": False,
            "created": int(time.time()),
            "data": {"object": {"id": "sub_attack", "customer": f"cus_{self.victim}_0"}},
        }
        return orjson.dumps(doc)

    def path(self) -> str:
        return f"/v1/webhooks/stripe/{self.victim}"

    def signed(self, body: bytes, secret: str | None = None, t: int | None = None) -> bytes:
        return stripe_signature(body, secret or self.secret, t).encode()

    def generators(self) -> list[Callable[[], Attack]]:
        return [
            self.no_signature,
            self.garbage_signature,
            self.wrong_secret,
            self.stale,
            self.future,
            self.other_tenants_secret,
            self.tampered,
            self.signed_not_json,
            self.signed_not_utf8,
            self.signed_no_id,
            self.signed_livemode_mismatch,
            self.wrong_content_type,
            self.oversize,
            self.oversize_chunked,
            self.gzip_bomb,
            self.unknown_tenant,
            self.wrong_method,
            self.connect_route,
            self.v0_only,
            self.huge_header,
            self.lying_length,
        ]

    def next(self) -> Attack:
        return self.rng.choice(self.generators())()

    def post(
        self, kind: str, body: bytes, headers: list[tuple[bytes, bytes]], **kw: object
    ) -> Attack:
        return Attack(kind, request("POST", self.path(), headers, body, **kw))  # type: ignore[arg-type]

    def no_signature(self) -> Attack:
        return self.post("no_signature", self.body(), JSON)

    def garbage_signature(self) -> Attack:
        return self.post(
            "garbage_signature", self.body(), [*JSON, (b"Stripe-Signature", header_junk(self.rng))]
        )

    def wrong_secret(self) -> Attack:
        body = self.body()
        sig = self.signed(body, "whsec_" + _junk(self.rng, 8).hex())
        return self.post("wrong_secret", body, [*JSON, (b"Stripe-Signature", sig)])

    def stale(self) -> Attack:
        body = self.body()
        t = int(time.time()) - self.rng.randint(301, 10**6)
        return self.post("stale", body, [*JSON, (b"Stripe-Signature", self.signed(body, t=t))])

    def future(self) -> Attack:
        body = self.body()
        t = int(time.time()) + self.rng.randint(120, 10**6)
        return self.post("future", body, [*JSON, (b"Stripe-Signature", self.signed(body, t=t))])

    def other_tenants_secret(self) -> Attack:
        body = self.body()
        sig = self.signed(body, self.other_secret)
        return self.post("other_tenants_secret", body, [*JSON, (b"Stripe-Signature", sig)])

    def tampered(self) -> Attack:
        body = bytearray(self.body())
        sig = self.signed(bytes(body))
        body[self.rng.randrange(len(body))] ^= 1 << self.rng.randrange(8)
        return self.post("tampered", bytes(body), [*JSON, (b"Stripe-Signature", sig)])

    def signed_not_json(self) -> Attack:
        body = b"{" + bytes(
            self.rng.choice(b'abc"{}[]:,0 ') for _ in range(self.rng.randint(0, 200))
        )
        return self.post("signed_not_json", body, [*JSON, (b"Stripe-Signature", self.signed(body))])

    def signed_not_utf8(self) -> Attack:
        body = b'{"id":"evt_attack_x\xff\xfe","type":"x","livemode":false}'
        return self.post("signed_not_utf8", body, [*JSON, (b"Stripe-Signature", self.signed(body))])

    def signed_no_id(self) -> Attack:
        doc = orjson.loads(self.body())
        del doc[self.rng.choice(["id", "type", "livemode"])]
        body = orjson.dumps(doc)
        return self.post("signed_no_id", body, [*JSON, (b"Stripe-Signature", self.signed(body))])

    def signed_livemode_mismatch(self) -> Attack:
        doc = orjson.loads(self.body())
        doc["livemode"] = True
        body = orjson.dumps(doc)
        sig = self.signed(body)
        return self.post("signed_livemode_mismatch", body, [*JSON, (b"Stripe-Signature", sig)])

    def wrong_content_type(self) -> Attack:
        body = self.body()
        ctype = self.rng.choice([b"text/plain", b"application/x-www-form-urlencoded", b"", b"\xff"])
        headers = [(b"Content-Type", ctype), (b"Stripe-Signature", self.signed(body))]
        return self.post("wrong_content_type", body, headers)

    def oversize(self) -> Attack:
        body = b'{"id":"evt_attack_big","pad":"' + b"x" * (70 * 1024) + b'"}'
        return self.post("oversize", body, [*JSON, (b"Stripe-Signature", self.signed(body))])

    def oversize_chunked(self) -> Attack:
        body = b'{"id":"evt_attack_big","pad":"' + b"y" * (70 * 1024) + b'"}'
        sig = self.signed(body)
        return self.post(
            "oversize_chunked", body, [*JSON, (b"Stripe-Signature", sig)], chunked=True
        )

    def gzip_bomb(self) -> Attack:
        body = BOMB
        headers = [*JSON, (b"Content-Encoding", b"gzip"), (b"Stripe-Signature", self.signed(body))]
        return self.post("gzip_bomb", body, headers)

    def unknown_tenant(self) -> Attack:
        tenant = self.rng.choice(
            [
                "nobody",
                "a" * 300,
                "%2e%2e%2f" + self.victim,
                "\u00e9t\u00e9".encode().decode("latin-1"),
                self.victim.upper(),
            ]
        )
        body = self.body()
        raw = request(
            "POST",
            f"/v1/webhooks/stripe/{tenant}",
            [*JSON, (b"Stripe-Signature", self.signed(body))],
            body,
        )
        return Attack("unknown_tenant", raw)

    def wrong_method(self) -> Attack:
        method = self.rng.choice(["GET", "PUT", "DELETE", "PATCH"])
        body = self.body()
        raw = request(method, self.path(), [*JSON, (b"Stripe-Signature", self.signed(body))], body)
        return Attack("wrong_method", raw)

    def connect_route(self) -> Attack:
        body = self.body()
        raw = request(
            "POST", "/v1/webhooks/stripe", [*JSON, (b"Stripe-Signature", self.signed(body))], body
        )
        return Attack("connect_route", raw)

    def v0_only(self) -> Attack:
        body = self.body()
        t = int(time.time())
        v0 = hmac.new(self.secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        sig = f"t={t},v0={v0}".encode()
        return self.post("v0_only", body, [*JSON, (b"Stripe-Signature", sig)])

    def huge_header(self) -> Attack:
        body = self.body()
        sig = self.signed(body) + b",v1=" + b"a" * self.rng.randint(5000, 12000)
        return self.post("huge_header", body, [*JSON, (b"Stripe-Signature", sig)])

    def lying_length(self) -> Attack:
        """Announces more body than it sends, then stalls: the body read times out."""
        body = self.body()
        raw = request(
            "POST",
            self.path(),
            [*JSON, (b"Stripe-Signature", self.signed(body))],
            body[:20],
            length=len(body) + 500,
        )
        return Attack("lying_length", raw, trickle=True)


BOMB = gzip.compress(b"0" * (16 * 1024 * 1024), compresslevel=9)


async def send_raw(port: int, attack: Attack, timeout: float = 15.0) -> int:
    """Writes the raw request; returns the answer's status code (0: closed, no answer)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if attack.trickle:
                    head, _, body = attack.raw.partition(b"\r\n\r\n")
                    writer.write(head + b"\r\n\r\n")
                    for i in range(0, len(body), 5):
                        writer.write(body[i : i + 5])
                        await writer.drain()
                        await asyncio.sleep(0.2)
                else:
                    writer.write(attack.raw)
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return 0
    parts = line.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def signature(kind: str, key: str, body: bytes, t: int | None = None) -> bytes:
    """The `X-Quotaflow-Signature` of `kind` with private `key` (base64 of a 32-byte
    Ed25519 seed), computed here from the README's description, independently of `wire`."""
    t = int(time.time()) if t is None else t
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key))
    kid = hashlib.sha256(private.public_key().public_bytes_raw()).hexdigest()[:16]
    signed = private.sign(f"quotaflow/{kind}/v1\n{t}\n".encode() + body)
    encoded = base64.urlsafe_b64encode(signed).rstrip(b"=").decode()
    return f"t={t},k={kid},ed25519={encoded}".encode()


def push_signature(key: str, body: bytes, t: int | None = None) -> bytes:
    """A push's header, signed with private push `key`."""
    return signature("push", key, body, t)


def random_key(rng: random.Random) -> str:
    """A private key nobody configured."""
    return base64.b64encode(_junk(rng, 32)).decode()


class PushFuzzer:
    """Hostile pushes at an edge of `region` whose key is `key` (known, for stale/replay)."""

    def __init__(self, rng: random.Random, region: str, key: str, target: tuple[str, str]) -> None:
        self.rng = rng
        self.region = region
        self.key = key
        self.target = target
        self.replayable: list[bytes] = []

    def body(self) -> bytes:
        tenant, customer = self.rng.choice([self.target, ("attack", "cus_attack")])
        update = {
            "tenant_id": tenant,
            "customer_id": customer,
            "limit": 10**12,
            "used": 0,
            "remaining": 10**12,
            "status": "active",
            "version": 10**9,
            "reason": {"kind": "policy", "id": "attack"},
            "updated_at": time.time(),
        }
        return orjson.dumps({"region": self.region, "updates": [update], "snapshot": None})

    def post(self, kind: str, body: bytes, sig: bytes | None) -> Attack:
        headers = [*JSON] + ([(b"X-Quotaflow-Signature", sig)] if sig is not None else [])
        return Attack(kind, request("POST", "/v1/push", headers, body))

    def generators(self) -> list[Callable[[], Attack]]:
        gens = [
            self.unsigned,
            self.garbage,
            self.wrong_key,
            self.stale,
            self.tampered,
            self.unknown_key_id,
            self.not_json_unsigned,
            self.wrong_method,
            self.gzip_bomb,
        ]
        if self.replayable:
            gens.append(self.replay)
        return gens

    def next(self) -> Attack:
        return self.rng.choice(self.generators())()

    def unsigned(self) -> Attack:
        return self.post("push_unsigned", self.body(), None)

    def garbage(self) -> Attack:
        return self.post("push_garbage", self.body(), header_junk(self.rng))

    def wrong_key(self) -> Attack:
        body = self.body()
        return self.post("push_wrong_key", body, push_signature(random_key(self.rng), body))

    def stale(self) -> Attack:
        body = self.body()
        t = int(time.time()) - self.rng.randint(31, 10**6)
        return self.post("push_stale", body, push_signature(self.key, body, t))

    def tampered(self) -> Attack:
        body = self.body()
        sig = push_signature(self.key, body.replace(b"10000", b"00001"))
        return self.post("push_tampered", body, sig)

    def unknown_key_id(self) -> Attack:
        body = self.body()
        sig = push_signature(self.key, body).replace(b"k=", b"k=0", 1)
        return self.post("push_unknown_key_id", body, sig)

    def not_json_unsigned(self) -> Attack:
        return self.post("push_junk_body", _junk(self.rng, self.rng.randint(0, 4096)), None)

    def wrong_method(self) -> Attack:
        return Attack("push_wrong_method", request("GET", "/v1/push", JSON))

    def gzip_bomb(self) -> Attack:
        headers = [*JSON, (b"Content-Encoding", b"gzip"), (b"X-Quotaflow-Signature", b"t=1,v1=0")]
        return Attack("push_gzip_bomb", request("POST", "/v1/push", headers, BOMB))

    def replay(self) -> Attack:
        return Attack("push_replay", self.rng.choice(self.replayable))
