"""Identification and pricing rules shared by forward auth and the ASGI middleware."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from edge.identify import (
    Ask,
    Identifier,
    IdentifyError,
    Route,
    api_key_digest,
    identifier_from_settings,
    normalise_path,
    parse_routes,
)
from edge.settings import EdgeSettings
from quotaflow.settings import InvalidSetting

ROUTES = [
    {"prefix": "/v1/export", "method": "POST", "feature": "export", "cost": 10},
    {"prefix": "/v1/export", "feature": "export", "cost": 2},
    {"prefix": "/v1", "cost": 1},
    {"prefix": "/v1/free", "cost": 0},
]


def getter(values: dict[str, str]) -> Callable[[str], str | None]:
    return lambda name: values.get(name.lower())


def test_headers_mode_names_tenant_and_customer_and_prices_by_route() -> None:
    ident = Identifier(routes=ROUTES, default_cost=3)
    who = getter({"x-quotaflow-tenant": "t1", "x-quotaflow-customer": "cus_1"})
    assert ident.identify("POST", "/v1/export/now?x=1", who) == Ask("t1", "cus_1", "export", 10)
    assert ident.identify("GET", "/v1/export", who) == Ask("t1", "cus_1", "export", 2)
    assert ident.identify("get", "/v1/other", who) == Ask("t1", "cus_1", None, 1)
    assert ident.identify("GET", "/v1/free/x", who) == Ask("t1", "cus_1", None, 0)
    assert ident.identify("GET", "/elsewhere", who) == Ask("t1", "cus_1", None, 3)
    # A prefix matches whole segments only.
    assert ident.route("POST", "/v1/exports") == (None, 1)


@pytest.mark.parametrize(
    "target",
    ["/v1/%65xport", "/v1/free/../export", "//v1//export", "/v1/./export", "http://h/v1/export"],
)
def test_encoded_or_dotted_paths_cannot_borrow_a_cheaper_route(target: str) -> None:
    assert Identifier(routes=ROUTES).route("POST", target) == ("export", 10)


def test_missing_identity_is_refused() -> None:
    ident = Identifier()
    for values in ({}, {"x-quotaflow-tenant": "t1"}, {"x-quotaflow-customer": "c"}):
        with pytest.raises(IdentifyError) as err:
            ident.identify("GET", "/", getter(values))
        assert err.value.reason == "missing_identity"


def test_api_key_mode_maps_a_key_digest_to_its_customer() -> None:
    key = "sk_live_" + "a" * 40
    ident = Identifier(mode="api_key", api_keys={api_key_digest(key): "t1/cus_9"})
    assert ident.identify("GET", "/", getter({"x-api-key": key})) == Ask("t1", "cus_9", None, 1)
    for values, reason in (
        ({}, "missing_api_key"),
        ({"x-api-key": "sk_live_other"}, "unknown_api_key"),
        ({"x-api-key": "x" * 600}, "unknown_api_key"),
    ):
        with pytest.raises(IdentifyError) as err:
            ident.identify("GET", "/", getter(values))
        assert err.value.reason == reason
        assert key not in str(err.value)
    assert key not in repr(ident)
    assert api_key_digest(key) not in repr(ident)


def test_a_key_instead_of_a_digest_is_refused_without_echoing_it() -> None:
    key = "sk_live_secret_pasted_by_mistake"
    with pytest.raises(ValueError, match="digest") as err:
        Identifier(mode="api_key", api_keys={key: "t1/c1"})
    assert key not in str(err.value)


def test_the_api_key_header_cannot_be_the_gateways_authorization() -> None:
    with pytest.raises(ValueError, match="Authorization"):
        Identifier(mode="api_key", api_key_header="Authorization")


@pytest.mark.parametrize(
    "bad",
    [
        [{"prefix": "v1"}],
        [{"prefix": "/v1", "cost": -1}],
        [{"prefix": "/v1", "cost": 1.5}],
        [{"prefix": "/v1", "method": "GE T"}],
        [{"prefix": "/v1", "colour": "red"}],
        {"prefix": "/v1"},
    ],
)
def test_malformed_routes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="route"):
        parse_routes(bad)


def test_routes_sort_longest_prefix_first_and_method_before_any() -> None:
    ident = Identifier(routes=ROUTES)
    assert ident.routes[0] == Route("/v1/export", "POST", "export", 10)
    assert ident.features == frozenset({"export"})
    assert normalise_path("/a/b/../c?q=/d") == "/a/c"


def test_settings_build_the_identifier_from_env_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key, other = "ck_" + "e" * 40, "ck_" + "f" * 40
    table = tmp_path / "keys.json"
    table.write_bytes(orjson.dumps({api_key_digest(other): "t2/cus_2"}))
    monkeypatch.setenv("QUOTAFLOW_EDGE_IDENTIFY", "api_key")
    monkeypatch.setenv(
        "QUOTAFLOW_EDGE_API_KEYS", orjson.dumps({api_key_digest(key): "t1/c1"}).decode()
    )
    monkeypatch.setenv("QUOTAFLOW_EDGE_API_KEYS_FILE", str(table))
    monkeypatch.setenv("QUOTAFLOW_EDGE_ROUTES", orjson.dumps(ROUTES).decode())
    ident = identifier_from_settings(EdgeSettings())
    assert ident.identify("POST", "/v1/export", getter({"x-api-key": key})) == Ask(
        "t1", "c1", "export", 10
    )
    assert ident.who(getter({"x-api-key": other})) == ("t2", "cus_2")


def test_settings_refuse_a_pasted_key_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "ck_live_pasted_instead_of_its_digest"
    monkeypatch.setenv("QUOTAFLOW_EDGE_API_KEYS", orjson.dumps({key: "t1/c1"}).decode())
    with pytest.raises(InvalidSetting) as err:
        EdgeSettings()
    assert key not in str(err.value)
    monkeypatch.delenv("QUOTAFLOW_EDGE_API_KEYS")
    monkeypatch.setenv("QUOTAFLOW_EDGE_API_KEY_HEADER", "authorization")
    with pytest.raises(ValueError, match="Authorization"):
        EdgeSettings()
    monkeypatch.delenv("QUOTAFLOW_EDGE_API_KEY_HEADER")
    monkeypatch.setenv("QUOTAFLOW_EDGE_ROUTES", '[{"prefix": "no-slash"}]')
    with pytest.raises(ValueError, match="route prefix"):
        EdgeSettings()
