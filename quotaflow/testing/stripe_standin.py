"""A Stripe API stand-in for tests and benchmarks: stateful, slow, throttled or down on demand.

Why it exists: the worker fetches each event's current object from Stripe (design
guarantee 3), so a test of the pipeline with the fetch on needs a Stripe that answers
with *the test's* objects. stripe-mock is stateless (fixed fixtures, unrelated to the
events a test produces); localstripe keeps state but has no Connect accounts and no
control over latency, 429s or outages. This server answers the few routes quotaflow's
worker calls, as Stripe does, and counts what it sees:

- `GET /v1/subscriptions/{id}`, `GET /v1/customers/{id}` (and invoices, prices, products,
  checkout sessions): the object last put for the requesting account, else 404
  `resource_missing` (the official library raises `stripe.InvalidRequestError`, 404).
- `POST /v1/billing/meter_events`: accepted, recorded and counted. A repeated
  `Idempotency-Key` replays the first answer (`Idempotent-Replayed: true`); a repeated
  `identifier` under another key is answered with the event first recorded under it
  (200) and counted as `meter_events_duplicate` (what Stripe answers then is unconfirmed).

The account of a request is its `Stripe-Account` header (Connect) if present, else its
API key (`Authorization: Bearer sk_…|rk_…`, or basic auth). No key, or a malformed one:
401. A key is never logged or echoed: stats and listings name it by `account_label(key)`
(`key_` + 16 hex digits of its SHA-256); an `acct_…` id is its own label.

Per account (or as the default of every account), settable at any time:

- `latency`: seconds added before answering each API request (default 0).
- `rate_limit` (and `burst`, default = rate): a token bucket per account, taken on
  arrival; past it 429 with `Stripe-Rate-Limited-Reason: global-rate`,
  `Stripe-Should-Retry: false` and Stripe's body (`invalid_request_error`, code
  `rate_limit`), which the library raises as `stripe.RateLimitError`.
- `down="error"`: Stripe's outage look, 500 `api_error` (the library retries it when it
  has retries left). `down="hang"`: requests are read and never answered while the mode
  lasts (the client times out; a client that gives up is no longer counted in flight);
  once the mode is cleared, requests still waiting are answered normally.
- `revoke(key)`: every later request with that API key is answered 401
  `api_key_expired`, as Stripe answers a key rolled or deleted in the Dashboard (other
  keys of the same account keep working, so a replaced key is accepted).
- `hold` / `release`: while held, the account's API requests wait unanswered until
  released, so a test can see what is in flight without timing thresholds. `hold(None)`
  holds every account (also those not seen yet); `release(None)` releases everything.

A request is handled as: authenticate → counted in flight → rate-limit token (on
arrival) → wait while held or hanging → latency → outage error, 429 or the answer.

Stats: requests per account per route kind (`subscription`, `customer`, `invoice`, …,
`meter_event`, `other`), answers per status, current and highest in-flight requests
(globally and per account); `reset_stats()` zeroes them (highest in flight restarts from
the current).

Control, for tests and benchmarks in any process, over HTTP under `/_standin/`
(JSON bodies; accounts travel in bodies, never in URLs):

- `GET /_standin/health`: `{"ok": true}`.
- `PUT /_standin/objects` `{"account": A, "objects": [...]}`: stores them in order (the
  last put of an id wins); `DELETE /_standin/objects` `{"account", "object", "id"}`
  forgets one (`{"deleted": bool}`).
- `PUT /_standin/accounts` `{"account": A or null, "latency"?, "rate_limit"?, "burst"?,
  "down"?}`: sets the named fields of A (null: the default of every account); answers
  A's resulting behaviour.
- `POST /_standin/hold`, `POST /_standin/release` `{"account": A or null}`.
- `POST /_standin/revoke` `{"key": K}` (a test key, in a body, never in a URL).
- `GET /_standin/stats`; `POST /_standin/stats/reset`.
- `GET /_standin/meter_events`: recorded meter events per account label.
- `POST /_standin/reset`: forgets objects, settings, holds, revoked keys, stats and meter
  events.

`StandinControl(base_url)` is a small synchronous client of those routes (urllib, short
timeouts). Run the server as a process with `python -m quotaflow.testing.stripe_standin
--port P [--latency S] [--rate-limit R]` (prints its base URL on one line, serves on
127.0.0.1 until SIGTERM or SIGINT; `--port 0` picks a free port), or in-process in a
background thread with its own event loop: `StandinThread(...).start()` / `.stop()`, or
`with run_standin() as url:`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import logging
import re
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, cast

import orjson
from aiohttp import web

__all__ = [
    "UNSET",
    "Behaviour",
    "StandinControl",
    "StandinThread",
    "StripeStandin",
    "account_label",
    "main",
    "run_standin",
]

log = logging.getLogger("quotaflow.stripe_standin")

HOST = "127.0.0.1"
JSON = dict[str, Any]
Down = Literal["error", "hang"]
_KEY_PREFIXES = ("sk_", "rk_")
_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]+$")
# Retrieval routes: path prefix under /v1/ -> Stripe object type.
_COLLECTIONS = {
    "subscriptions": "subscription",
    "customers": "customer",
    "invoices": "invoice",
    "prices": "price",
    "products": "product",
    "checkout/sessions": "checkout.session",
}
_RETRIEVE = re.compile(r"^(?P<collection>[a-z_]+(?:/[a-z_]+)?)/(?P<id>[A-Za-z0-9_\-]+)$")
_DOWN_VALUES = (None, "error", "hang")


def account_label(account: str) -> str:
    """How stats and listings name an account: `acct_…` as is, an API key by a digest."""
    if _ACCOUNT.match(account):
        return account
    if account.startswith(_KEY_PREFIXES):
        return "key_" + hashlib.sha256(account.encode()).hexdigest()[:16]
    raise ValueError("an account is an acct_… id or an sk_/rk_ API key")


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """How the stand-in treats one account's API requests."""

    latency: float = 0.0
    rate_limit: float | None = None
    burst: float | None = None
    down: Down | None = None

    def to_json(self) -> JSON:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(Behaviour)}


def _check_behaviour(changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - _FIELDS
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    latency = changes.get("latency", 0.0)
    if not isinstance(latency, (int, float)) or isinstance(latency, bool) or latency < 0:
        raise ValueError("latency is seconds >= 0")
    for name in ("rate_limit", "burst"):
        value = changes.get(name)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0
        ):
            raise ValueError(f"{name} is a number > 0 or null")
    if changes.get("down") not in _DOWN_VALUES:
        raise ValueError('down is "error", "hang" or null')


class _Bucket:
    """A token bucket: `rate` tokens per second, at most `burst` held."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclasses.dataclass
class _Counts:
    requests: Counter[str] = dataclasses.field(default_factory=Counter)
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    meter_events: int = 0
    meter_events_duplicate: int = 0

    def enter(self, kind: str) -> None:
        self.requests[kind] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.max_in_flight = self.in_flight
        self.meter_events = self.meter_events_duplicate = 0

    def to_json(self) -> JSON:
        return {
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "meter_events": self.meter_events,
            "meter_events_duplicate": self.meter_events_duplicate,
        }


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc), status=status, headers=headers, content_type="application/json"
    )


def _error(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None, **extra: str
) -> web.Response:
    return _json({"error": {"type": kind, "message": message, **extra}}, status, headers)


def _bearer(request: web.Request) -> str | None:
    """The API key of a request, or None; never logged."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    key: str | None = None
    if scheme.lower() == "bearer":
        key = credentials.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    if key is None or not key.startswith(_KEY_PREFIXES) or len(key) < 8 or " " in key:
        return None
    return key


def _form(pairs: Iterable[tuple[str, str]]) -> JSON:
    """Stripe's form encoding (`payload[value]=1`) back into nested dicts."""
    out: JSON = {}
    for name, value in pairs:
        head, _, rest = name.partition("[")
        path = [head] + ([p.rstrip("]") for p in rest.rstrip("]").split("][")] if rest else [])
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return out


class StripeStandin:
    """The stand-in's state and aiohttp application; every method runs on its loop."""

    def __init__(self, *, latency: float = 0.0, rate_limit: float | None = None) -> None:
        self._default = Behaviour(latency=latency, rate_limit=rate_limit)
        _check_behaviour(self._default.to_json())
        self._overrides: dict[str, JSON] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {}
        self._held: set[str] = set()
        self._hold_all = False
        self._changed = asyncio.Condition()
        self._total = _Counts()
        self._accounts: dict[str, _Counts] = {}
        self._unauthorized = 0
        self._revoked: set[str] = set()
        self._meter_events: dict[str, dict[str, JSON]] = {}
        self._idempotent: dict[tuple[str, str], tuple[str, int, bytes]] = {}
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # -- state, for the control routes (and in-process users on this loop) --------------

    def put(self, account: str, obj: Mapping[str, Any]) -> None:
        """Stores `obj` (with `object` and `id`) as the account's current version of it."""
        kind, object_id = obj.get("object"), obj.get("id")
        if not isinstance(kind, str) or not isinstance(object_id, str):
            raise ValueError("an object needs string `object` and `id` fields")
        self._objects.setdefault(account_label(account), {})[(kind, object_id)] = dict(obj)

    def delete(self, account: str, kind: str, object_id: str) -> bool:
        store = self._objects.get(account_label(account), {})
        return store.pop((kind, object_id), None) is not None

    def behaviour(self, account: str | None) -> Behaviour:
        if account is None:
            return self._default
        label = account if account.startswith("key_") else account_label(account)
        return dataclasses.replace(self._default, **self._overrides.get(label, {}))

    async def configure(self, account: str | None, **changes: Any) -> Behaviour:
        """Sets the named fields for one account, or as the default (account None)."""
        _check_behaviour(changes)
        if account is None:
            self._default = dataclasses.replace(self._default, **changes)
            self._buckets.clear()
        else:
            label = account_label(account)
            self._overrides[label] = {**self._overrides.get(label, {}), **changes}
            self._buckets.pop(label, None)
        await self._notify()
        return self.behaviour(account)

    def revoke(self, key: str) -> None:
        """Answers every later request with this API key 401 (`api_key_expired`)."""
        self._revoked.add(account_label(key))

    async def hold(self, account: str | None) -> None:
        if account is None:
            self._hold_all = True
        else:
            self._held.add(account_label(account))

    async def release(self, account: str | None) -> None:
        if account is None:
            self._hold_all = False
            self._held.clear()
        else:
            self._held.discard(account_label(account))
        await self._notify()

    def stats(self) -> JSON:
        return {
            **self._total.to_json(),
            "unauthorized": self._unauthorized,
            "held": sorted(self._held),
            "hold_all": self._hold_all,
            "accounts": {label: c.to_json() for label, c in self._accounts.items()},
        }

    def reset_stats(self) -> None:
        self._total.reset()
        self._unauthorized = 0
        for label, counts in list(self._accounts.items()):
            counts.reset()
            if counts.in_flight == 0:
                del self._accounts[label]

    async def reset(self) -> None:
        """Forgets objects, settings, holds, stats and meter events (not the defaults
        given at start)."""
        self._objects.clear()
        self._overrides.clear()
        self._buckets.clear()
        self._meter_events.clear()
        self._idempotent.clear()
        self._revoked.clear()
        self.reset_stats()
        await self.release(None)

    def meter_events(self) -> dict[str, list[JSON]]:
        return {label: list(events.values()) for label, events in self._meter_events.items()}

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _blocked(self, label: str) -> bool:
        return self._hold_all or label in self._held or self.behaviour(label).down == "hang"

    def _admit(self, label: str, behaviour: Behaviour) -> bool:
        """Takes a token from the account's bucket; False: over its rate limit."""
        if behaviour.rate_limit is None:
            return True
        bucket = self._buckets.get(label)
        burst = behaviour.burst or behaviour.rate_limit
        if bucket is None or (bucket.rate, bucket.burst) != (behaviour.rate_limit, burst):
            bucket = self._buckets[label] = _Bucket(behaviour.rate_limit, max(burst, 1.0))
        return bucket.take()

    # -- the application ----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/v1/{tail:.*}", self._api)
        control = [
            ("GET", "/_standin/health", self._c_health),
            ("PUT", "/_standin/objects", self._c_put),
            ("DELETE", "/_standin/objects", self._c_delete),
            ("PUT", "/_standin/accounts", self._c_configure),
            ("POST", "/_standin/hold", self._c_hold),
            ("POST", "/_standin/release", self._c_release),
            ("POST", "/_standin/revoke", self._c_revoke),
            ("GET", "/_standin/stats", self._c_stats),
            ("POST", "/_standin/stats/reset", self._c_reset_stats),
            ("GET", "/_standin/meter_events", self._c_meter_events),
            ("POST", "/_standin/reset", self._c_reset),
        ]
        for method, path, handler in control:
            app.router.add_route(method, path, handler)
        return app

    async def start(self, port: int = 0) -> str:
        """Serves on 127.0.0.1:`port` (0: a free one) on the running loop; the base URL."""
        # handler_cancellation: a client that gives up stops being counted in flight.
        runner = web.AppRunner(
            self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0][1]
        self.url = f"http://{HOST}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the Stripe API -----------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        key = _bearer(request)
        if key is None:
            self._unauthorized += 1
            self._total.statuses["401"] += 1
            message = (
                "You did not provide an API key."
                if "Authorization" not in request.headers
                else "Invalid API Key provided."
            )
            return _error(
                401,
                "invalid_request_error",
                message,
                {"WWW-Authenticate": 'Bearer realm="Stripe"', "Request-Id": _request_id()},
            )
        if account_label(key) in self._revoked:
            self._unauthorized += 1
            self._total.statuses["401"] += 1
            return _error(
                401,
                "invalid_request_error",
                "Expired API Key provided.",  # Stripe names the key's tail; we name nothing
                {"Request-Id": _request_id()},
                code="api_key_expired",
            )
        account = request.headers.get("Stripe-Account") or key
        if not (account is key or _ACCOUNT.match(account)):
            self._total.statuses["403"] += 1
            return _error(
                403,
                "invalid_request_error",
                "The provided key does not have access to that account.",
                {"Request-Id": _request_id()},
                code="account_invalid",
            )
        label = account_label(account)
        kind, handler = self._route(request)
        counts = self._accounts.setdefault(label, _Counts())
        counts.enter(kind)
        self._total.enter(kind)
        status = "cancelled"
        try:
            behaviour = self.behaviour(label)
            admitted = self._admit(label, behaviour)
            if self._blocked(label):
                async with self._changed:
                    await self._changed.wait_for(lambda: not self._blocked(label))
            behaviour = self.behaviour(label)
            if behaviour.latency > 0:
                await asyncio.sleep(behaviour.latency)
            if behaviour.down == "error":
                response = _error(500, "api_error", "An unknown error occurred.")
            elif not admitted:
                response = _error(
                    429,
                    "invalid_request_error",
                    "Too many requests hit the API too quickly. We recommend an exponential "
                    "backoff of your requests.",
                    {"Stripe-Rate-Limited-Reason": "global-rate", "Stripe-Should-Retry": "false"},
                    code="rate_limit",
                    doc_url="https://stripe.com/docs/error-codes/rate-limit",
                )
            else:
                response = await handler(request, label, key)
            response.headers.setdefault("Request-Id", _request_id())
            status = str(response.status)
            return response
        finally:
            counts.in_flight -= 1
            self._total.in_flight -= 1
            counts.statuses[status] += 1
            self._total.statuses[status] += 1

    def _route(self, request: web.Request) -> tuple[str, Callable[[web.Request, str, str], Any]]:
        tail = request.match_info["tail"].rstrip("/")
        if tail == "billing/meter_events" and request.method == "POST":
            return "meter_event", self._meter_event
        found = _RETRIEVE.match(tail)
        if request.method == "GET" and found and found["collection"] in _COLLECTIONS:
            kind = _COLLECTIONS[found["collection"]]
            object_id = found["id"]

            async def retrieve(_request: web.Request, label: str, _key: str) -> web.Response:
                return self._retrieve(label, kind, object_id)

            return kind, retrieve
        return "other", self._unrecognized

    def _retrieve(self, label: str, kind: str, object_id: str) -> web.Response:
        obj = self._objects.get(label, {}).get((kind, object_id))
        if obj is None:
            return _error(
                404,
                "invalid_request_error",
                f"No such {kind}: '{object_id}'",
                code="resource_missing",
                param="id",
                doc_url="https://stripe.com/docs/error-codes/resource-missing",
            )
        return _json(obj)

    async def _unrecognized(self, request: web.Request, _label: str, _key: str) -> web.Response:
        return _error(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({request.method}: {request.path}). "
            "This stand-in serves only the routes quotaflow calls.",
        )

    async def _meter_event(self, request: web.Request, label: str, key: str) -> web.Response:
        body = await request.read()
        idem = request.headers.get("Idempotency-Key")
        digest = hashlib.sha256(body).hexdigest()
        if idem is not None:
            seen = self._idempotent.get((label, idem))
            if seen is not None:
                if seen[0] != digest:
                    return _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    )
                return web.Response(
                    body=seen[2],
                    status=seen[1],
                    content_type="application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
        form = await request.post()
        params = _form((name, str(value)) for name, value in form.items())
        response = self._record_meter_event(label, key, params)
        if idem is not None and response.status == 200:
            assert isinstance(response.body, bytes)
            self._idempotent[(label, idem)] = (digest, response.status, response.body)
        return response

    def _record_meter_event(self, label: str, key: str, params: JSON) -> web.Response:
        name, payload = params.get("event_name"), params.get("payload")
        for field, value in (("event_name", name), ("payload", payload)):
            if not value:
                return _error(
                    400,
                    "invalid_request_error",
                    f"Missing required param: {field}.",
                    code="parameter_missing",
                    param=field,
                )
        now = int(time.time())
        try:
            timestamp = int(params.get("timestamp", now))
        except ValueError:
            return _error(
                400,
                "invalid_request_error",
                "Invalid integer: timestamp",
                code="parameter_invalid_integer",
                param="timestamp",
            )
        identifier = str(params.get("identifier") or "mev_" + secrets.token_hex(12))
        counts = self._accounts[label]
        events = self._meter_events.setdefault(label, {})
        first = events.get(identifier)
        if first is not None:
            counts.meter_events_duplicate += 1
            self._total.meter_events_duplicate += 1
            return _json(first)
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": name,
            "identifier": identifier,
            "livemode": key.startswith(("sk_live_", "rk_live_")),
            "payload": payload,
            "timestamp": timestamp,
        }
        events[identifier] = event
        counts.meter_events += 1
        self._total.meter_events += 1
        return _json(event)

    # -- control routes -----------------------------------------------------------------

    async def _body(self, request: web.Request) -> JSON:
        raw = await request.read()
        doc = orjson.loads(raw) if raw else {}
        if not isinstance(doc, dict):
            raise web.HTTPBadRequest(text="a JSON object, please")
        return doc

    async def _control(self, request: web.Request, action: Callable[[JSON], Any]) -> web.Response:
        try:
            result = action(await self._body(request))
            if asyncio.iscoroutine(result):
                result = await result
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"error": f"{type(exc).__name__}: {exc}"}, 400)
        return _json(result if result is not None else {"ok": True})

    async def _c_health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def _c_put(self, request: web.Request) -> web.Response:
        def put(doc: JSON) -> JSON:
            objects = doc["objects"]
            if not isinstance(objects, list):
                raise TypeError("objects is a list")
            for obj in objects:
                self.put(str(doc["account"]), obj)
            return {"stored": len(objects)}

        return await self._control(request, put)

    async def _c_delete(self, request: web.Request) -> web.Response:
        return await self._control(
            request,
            lambda d: {"deleted": self.delete(str(d["account"]), str(d["object"]), str(d["id"]))},
        )

    async def _c_configure(self, request: web.Request) -> web.Response:
        async def configure(doc: JSON) -> JSON:
            account = doc.pop("account", None)
            behaviour = await self.configure(None if account is None else str(account), **doc)
            return behaviour.to_json()

        return await self._control(request, configure)

    async def _c_hold(self, request: web.Request) -> web.Response:
        return await self._control(request, lambda d: self.hold(_optional(d.get("account"))))

    async def _c_release(self, request: web.Request) -> web.Response:
        return await self._control(request, lambda d: self.release(_optional(d.get("account"))))

    async def _c_revoke(self, request: web.Request) -> web.Response:
        return await self._control(request, lambda d: self.revoke(str(d["key"])))

    async def _c_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())

    async def _c_reset_stats(self, request: web.Request) -> web.Response:
        return await self._control(request, lambda _d: self.reset_stats())

    async def _c_meter_events(self, request: web.Request) -> web.Response:
        return _json({"accounts": self.meter_events()})

    async def _c_reset(self, request: web.Request) -> web.Response:
        return await self._control(request, lambda _d: self.reset())


def _optional(account: Any) -> str | None:
    return None if account is None else str(account)


def _request_id() -> str:
    return "req_" + secrets.token_hex(7)


# -- control client ---------------------------------------------------------------------


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class StandinControl:
    """A synchronous client of the control routes (urllib, short timeouts).

    Blocking: from a coroutine on the loop that also runs the stand-in, call it through
    `asyncio.to_thread` (a stand-in in its own thread or process does not mind).
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("the stand-in's base URL is http(s)://…")
        self.url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: JSON | None = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300]
            raise RuntimeError(f"stand-in {method} {path}: {exc.code} {detail!r}") from exc

    def health(self) -> bool:
        try:
            return bool(self._call("GET", "/_standin/health").get("ok"))
        except (OSError, RuntimeError):
            return False

    def put(self, account: str, *objects: Mapping[str, Any]) -> None:
        """Stores each object (`object` and `id` set) for the account, in order: the last
        put of an id is what the API answers."""
        if objects:
            self._call("PUT", "/_standin/objects", {"account": account, "objects": list(objects)})

    def delete(self, account: str, kind: str, object_id: str) -> bool:
        doc = self._call(
            "DELETE", "/_standin/objects", {"account": account, "object": kind, "id": object_id}
        )
        return bool(doc["deleted"])

    def configure(
        self,
        account: str | None = None,
        *,
        latency: float = UNSET,
        rate_limit: float | None = UNSET,
        burst: float | None = UNSET,
        down: Down | None = UNSET,
    ) -> Behaviour:
        """Sets the given fields for `account` (None: the default of every account)."""
        given = {"latency": latency, "rate_limit": rate_limit, "burst": burst, "down": down}
        body: JSON = {"account": account, **{k: v for k, v in given.items() if v is not UNSET}}
        return Behaviour(**self._call("PUT", "/_standin/accounts", body))

    def hold(self, account: str | None = None) -> None:
        self._call("POST", "/_standin/hold", {"account": account})

    def release(self, account: str | None = None) -> None:
        self._call("POST", "/_standin/release", {"account": account})

    def revoke(self, key: str) -> None:
        self._call("POST", "/_standin/revoke", {"key": key})

    def stats(self) -> JSON:
        result: JSON = self._call("GET", "/_standin/stats")
        return result

    def account_stats(self, account: str) -> JSON:
        """One account's stats (zeros if it made no request)."""
        found = self.stats()["accounts"].get(account_label(account))
        return cast(JSON, found) if found is not None else _Counts().to_json()

    def reset_stats(self) -> None:
        self._call("POST", "/_standin/stats/reset", {})

    def reset(self) -> None:
        self._call("POST", "/_standin/reset", {})

    def meter_events(self, account: str | None = None) -> list[JSON]:
        """Recorded meter events of one account (or of all), in arrival order."""
        accounts: dict[str, list[JSON]] = self._call("GET", "/_standin/meter_events")["accounts"]
        if account is not None:
            return accounts.get(account_label(account), [])
        return [e for events in accounts.values() for e in events]

    def wait_in_flight(
        self, count: int, account: str | None = None, *, timeout: float = 10.0
    ) -> JSON:
        """Polls until exactly `count` API requests (of `account`) are in flight; the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            now = (
                stats["in_flight"]
                if account is None
                else stats["accounts"].get(account_label(account), {}).get("in_flight", 0)
            )
            if now == count:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"{now} requests in flight, not {count}, after {timeout}s")
            time.sleep(0.02)


# -- running it -------------------------------------------------------------------------


class StandinThread:
    """The stand-in in a background thread with its own event loop."""

    def __init__(
        self, port: int = 0, *, latency: float = 0.0, rate_limit: float | None = None
    ) -> None:
        self._port = port
        self._latency = latency
        self._rate_limit = rate_limit
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.url = ""

    def start(self, timeout: float = 10.0) -> str:
        """Starts serving; the base URL."""
        self._thread = threading.Thread(target=self._run, name="stripe-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the Stripe stand-in did not start")
        if self._failure is not None:
            raise RuntimeError("the Stripe stand-in failed to start") from self._failure
        return self.url

    @property
    def control(self) -> StandinControl:
        return StandinControl(self.url)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        standin = StripeStandin(latency=self._latency, rate_limit=self._rate_limit)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.url = await standin.start(self._port)
        except (OSError, RuntimeError) as exc:  # a taken port, mostly
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await standin.stop()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


@contextlib.contextmanager
def run_standin(
    port: int = 0, *, latency: float = 0.0, rate_limit: float | None = None
) -> Iterator[str]:
    """The stand-in in a background thread for the duration; yields its base URL."""
    thread = StandinThread(port, latency=latency, rate_limit=rate_limit)
    url = thread.start()
    try:
        yield url
    finally:
        thread.stop()


async def _serve_until_signalled(port: int, latency: float, rate_limit: float | None) -> None:
    standin = StripeStandin(latency=latency, rate_limit=rate_limit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await standin.start(port)
    print(url, flush=True)
    try:
        await stop.wait()
    finally:
        await standin.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m quotaflow.testing.stripe_standin",
        description="A Stripe API stand-in on 127.0.0.1 (tests and benchmarks only).",
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per API request")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s per account")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve_until_signalled(args.port, args.latency, args.rate_limit))


if __name__ == "__main__":
    main()
