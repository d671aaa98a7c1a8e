"""The Traefik and Envoy snippets in `deploy/gateways/` speak the edge's contract: the
forward-auth path, the headers it reads and the headers it answers with. (NGINX and Caddy
run for real in test_gateways.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edge.authorize import PREFIX
from edge.identify import DEFAULT_API_KEY_HEADER, DEFAULT_CUSTOMER_HEADER, DEFAULT_TENANT_HEADER
from edge.verdict import REASON_HEADER, REMAINING_HEADER

GATEWAYS = Path(__file__).resolve().parents[2] / "deploy" / "gateways"


def _load(name: str) -> Any:
    return yaml.safe_load((GATEWAYS / name).read_text())


def test_traefik_asks_the_authorize_route_with_the_token_and_passes_the_remaining_on() -> None:
    http = _load("traefik.yml")["http"]
    chain = http["routers"]["rating-api"]["middlewares"]
    assert chain == ["quotaflow-token", "quotaflow", "quotaflow-untoken"]
    auth = http["middlewares"]["quotaflow"]["forwardAuth"]
    assert auth["address"].endswith(PREFIX)
    assert auth["trustForwardHeader"] is False  # the caller cannot choose the priced URI
    assert auth["authResponseHeaders"] == [REMAINING_HEADER]
    token = http["middlewares"]["quotaflow-token"]["headers"]["customRequestHeaders"]
    assert token["Authorization"].startswith("Bearer qfa_")
    untoken = http["middlewares"]["quotaflow-untoken"]["headers"]["customRequestHeaders"]
    assert untoken == {"Authorization": ""}


def test_envoy_asks_the_authorize_prefix_and_lets_the_denial_headers_through() -> None:
    doc = _load("envoy.yaml")
    authz = doc["http_filters"][0]["typed_config"]
    assert authz["failure_mode_allow"] is False
    service = authz["http_service"]
    assert service["path_prefix"] == PREFIX
    forwarded = {
        p["exact"] for p in service["authorization_request"]["allowed_headers"]["patterns"]
    }
    expected = {DEFAULT_TENANT_HEADER, DEFAULT_CUSTOMER_HEADER, DEFAULT_API_KEY_HEADER}
    assert {h.lower() for h in expected} <= forwarded
    added = service["authorization_request"]["headers_to_add"]
    assert added[0]["key"] == "authorization"
    assert added[0]["value"].startswith("Bearer qfa_")
    client = {
        p.get("exact")
        for p in service["authorization_response"]["allowed_client_headers"]["patterns"]
    }
    assert {"retry-after", REASON_HEADER.lower(), REMAINING_HEADER.lower()} <= client
    assert service["server_uri"]["cluster"] == doc["clusters"][0]["name"]
