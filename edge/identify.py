"""Who a request is for and what it costs: the rules shared by the forward-auth route
(`POST|GET|… /v1/authorize`, for gateways) and the ASGI middleware (`edge/asgi.py`).

A request becomes an `Ask(tenant, customer, feature, cost)`:
- tenant and customer come either from two headers the gateway sets after it has
  authenticated the caller (`headers` mode: `X-Quotaflow-Tenant`, `X-Quotaflow-Customer`
  by default; the gateway must set or strip them, or a caller could name anyone), or from
  an API key the caller presents (`api_key` mode: `X-Api-Key` by default), looked up by
  its SHA-256 digest in a table `{"<sha256 hex>": "tenant_id/customer_id"}`.
- feature and cost come from the first route rule that matches the method and the path
  (the longest prefix wins; a rule for the method wins over a `*` rule of the same
  prefix); an unmatched request costs `default_cost` and names no feature.

API keys: the table holds digests only, and a presented key is hashed at once and never
kept, logged or echoed (refusals name a reason, never the key). A dict lookup by digest
is safe against timing: what it could leak is about a digest, from which no key can be
recovered. Keys must be high-entropy random strings, like the edge's application tokens.

Paths are matched after percent-decoding and removing dot segments and repeated slashes,
the way an upstream resolves them, so `/v1/%65xport` or `/v1/free/../export` cannot
borrow a cheaper rule than the path the upstream will serve.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

import orjson

from edge.exceptions import EdgeError

if TYPE_CHECKING:
    from edge.settings import EdgeSettings

__all__ = [
    "DEFAULT_API_KEY_HEADER",
    "DEFAULT_CUSTOMER_HEADER",
    "DEFAULT_TENANT_HEADER",
    "Ask",
    "Identifier",
    "IdentifyError",
    "Route",
    "api_key_digest",
    "identifier_from_settings",
    "normalise_api_keys",
    "normalise_path",
    "parse_routes",
]

DEFAULT_TENANT_HEADER = "X-Quotaflow-Tenant"
DEFAULT_CUSTOMER_HEADER = "X-Quotaflow-Customer"
DEFAULT_API_KEY_HEADER = "X-Api-Key"
MISSING_IDENTITY = "missing_identity"
MISSING_API_KEY = "missing_api_key"
UNKNOWN_API_KEY = "unknown_api_key"
MAX_COST = 1_000_000_000
_MAX_ID = 255
_MAX_KEY = 512  # longer than any key worth issuing; a longer header is refused unhashed
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_METHOD = re.compile(r"^(\*|[A-Z]{1,16})$")

Mode = Literal["headers", "api_key"]
# How a face reads a request header: case-insensitive name → value, or None if absent.
HeaderGetter = Callable[[str], "str | None"]


class IdentifyError(EdgeError):
    """The request names no customer this node can look up; `reason` goes in the 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request asks of the cache."""

    tenant: str
    customer: str
    feature: str | None
    cost: int


@dataclass(frozen=True, slots=True)
class Route:
    """A rule: requests with `method` (`*`: any) under `prefix` use `feature` and `cost`."""

    prefix: str
    method: str = "*"
    feature: str | None = None
    cost: int = 1

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method != method:
            return False
        base = self.prefix.rstrip("/")
        return path == base or path.startswith(base + "/") or base == ""


def api_key_digest(key: str) -> str:
    """What the table holds for an API key: SHA-256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


_SLASHES = re.compile("/+")


def normalise_path(raw: str) -> str:
    """The path of a request target as the upstream will resolve it (no query, decoded,
    no dot segments, no repeated slashes), always starting with `/`."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # an absolute-form target: keep its path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    path = unquote(path)
    normal = posixpath.normpath("/" + path.lstrip("/"))
    normal = _SLASHES.sub("/", normal)
    return normal if normal.startswith("/") else "/" + normal


def parse_routes(value: object) -> tuple[Route, ...]:
    """`[{"prefix": "/v1/export", "method": "POST", "feature": "export", "cost": 10}]` →
    routes, checked (ValueError names what is wrong)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError('routes: a JSON list of {"prefix", "method"?, "feature"?, "cost"?}')
    routes: list[Route] = []
    for item in value:
        if isinstance(item, Route):
            routes.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ValueError("each route is a JSON object")
        unknown = set(item) - {"prefix", "method", "feature", "cost"}
        if unknown:
            raise ValueError(f"unknown route fields: {sorted(unknown)}")
        prefix, method = item.get("prefix"), str(item.get("method", "*")).upper()
        feature, cost = item.get("feature"), item.get("cost", 1)
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"route prefix must start with '/': {prefix!r}")
        if not _METHOD.match(method):
            raise ValueError(f"route method must be an HTTP method or '*': {method!r}")
        if feature is not None and not (isinstance(feature, str) and 0 < len(feature) <= 256):
            raise ValueError(f"route feature must be a non-empty string: {feature!r}")
        if type(cost) is not int or not 0 <= cost <= MAX_COST:
            raise ValueError(f"route cost must be an integer in [0, {MAX_COST}]: {cost!r}")
        routes.append(Route(normalise_path(prefix), method, feature, cost))
    return tuple(routes)


def normalise_api_keys(value: object) -> dict[str, tuple[str, str]]:
    """`{"<sha256 hex>": "tenant_id/customer_id"}` → digest → (tenant, customer), checked.

    Digests only: a value that is not 64 hex characters is refused without being echoed
    (it may be a key pasted by mistake)."""
    if not isinstance(value, Mapping):
        raise ValueError('expected a JSON object {"<sha256 hex of the key>": "tenant/customer"}')
    out: dict[str, tuple[str, str]] = {}
    for digest, owner in value.items():
        if not isinstance(digest, str) or not _DIGEST.match(digest.strip().lower()):
            raise ValueError(
                "an API key entry is keyed by the key's SHA-256 hex digest (64 characters); "
                "never put the key itself here"
            )
        if not isinstance(owner, str):
            raise ValueError("an API key maps to 'tenant_id/customer_id'")
        tenant, _, customer = owner.partition("/")
        if not _TENANT.match(tenant) or not 0 < len(customer) <= _MAX_ID:
            raise ValueError(f"an API key maps to 'tenant_id/customer_id', not {owner!r}")
        out[digest.strip().lower()] = (tenant, customer)
    return out


class Identifier:
    """Turns a request's method, target and headers into an `Ask`, or `IdentifyError`."""

    def __init__(
        self,
        *,
        mode: Mode = "headers",
        tenant_header: str = DEFAULT_TENANT_HEADER,
        customer_header: str = DEFAULT_CUSTOMER_HEADER,
        api_key_header: str = DEFAULT_API_KEY_HEADER,
        api_keys: Mapping[str, str] | None = None,
        routes: Sequence[Route | Mapping[str, object]] = (),
        default_cost: int = 1,
    ) -> None:
        if mode not in ("headers", "api_key"):
            raise ValueError(f"mode must be 'headers' or 'api_key', not {mode!r}")
        if api_key_header.lower() == "authorization":
            # The gateway authenticates to the edge with Authorization; a caller's key in
            # the same header would be judged as the gateway's credential.
            raise ValueError("the API key header cannot be Authorization")
        if type(default_cost) is not int or not 0 <= default_cost <= MAX_COST:
            raise ValueError("default_cost must be an integer in [0, 1e9]")
        self.mode: Mode = mode
        self.tenant_header = tenant_header
        self.customer_header = customer_header
        self.api_key_header = api_key_header
        self._keys = normalise_api_keys(dict(api_keys or {}))
        parsed = parse_routes(list(routes))
        # Longest prefix first; at equal prefixes a method rule before a `*` rule.
        self.routes = tuple(sorted(parsed, key=lambda r: (-len(r.prefix), r.method == "*")))
        self.default_cost = default_cost

    def __repr__(self) -> str:  # the key table is digests, but say nothing of it anyway
        return f"Identifier(mode={self.mode!r}, routes={len(self.routes)}, keys={len(self._keys)})"

    @property
    def features(self) -> frozenset[str]:
        """Every feature a route names (to warn when the cache cannot gate on features)."""
        return frozenset(r.feature for r in self.routes if r.feature is not None)

    def route(self, method: str, target: str) -> tuple[str | None, int]:
        """(feature, cost) for a request method and target (path, query allowed)."""
        if not self.routes:  # every request costs the default: no path to work out
            return None, self.default_cost
        path = normalise_path(target)
        method = method.upper()
        for rule in self.routes:
            if rule.matches(method, path):
                return rule.feature, rule.cost
        return None, self.default_cost

    def who(self, header: HeaderGetter) -> tuple[str, str]:
        """(tenant, customer) from the request's headers, or `IdentifyError`."""
        if self.mode == "api_key":
            key = header(self.api_key_header)
            if key is None or not key.strip():
                raise IdentifyError(MISSING_API_KEY)
            key = key.strip()
            if len(key) > _MAX_KEY:
                raise IdentifyError(UNKNOWN_API_KEY)
            found = self._keys.get(api_key_digest(key))
            del key  # nothing holds the key past this line
            if found is None:
                raise IdentifyError(UNKNOWN_API_KEY)
            return found
        tenant, customer = header(self.tenant_header), header(self.customer_header)
        if not tenant or not customer:
            raise IdentifyError(MISSING_IDENTITY)
        tenant, customer = tenant.strip(), customer.strip()
        if not (0 < len(tenant) <= _MAX_ID and 0 < len(customer) <= _MAX_ID):
            raise IdentifyError(MISSING_IDENTITY)
        return tenant, customer

    def identify(self, method: str, target: str, header: HeaderGetter) -> Ask:
        """The whole `Ask` of a request; `IdentifyError` if it names no customer."""
        tenant, customer = self.who(header)
        feature, cost = self.route(method, target)
        return Ask(tenant, customer, feature, cost)


def identifier_from_settings(settings: EdgeSettings) -> Identifier:
    """The identification rules of `QUOTAFLOW_EDGE_IDENTIFY`, `…_ROUTES` and the rest.

    The API key table is `QUOTAFLOW_EDGE_API_KEYS` plus `QUOTAFLOW_EDGE_API_KEYS_FILE`."""
    keys = dict(settings.edge_api_keys)
    if settings.edge_api_keys_file is not None:
        try:
            table = orjson.loads(settings.edge_api_keys_file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(
                f"QUOTAFLOW_EDGE_API_KEYS_FILE: not a readable JSON file: {exc}"
            ) from None
        keys.update({d: "/".join(o) for d, o in normalise_api_keys(table).items()})
    return Identifier(
        mode=settings.edge_identify,
        tenant_header=settings.edge_tenant_header,
        customer_header=settings.edge_customer_header,
        api_key_header=settings.edge_api_key_header,
        api_keys=keys,
        routes=settings.edge_routes,
        default_cost=settings.edge_default_cost,
    )
