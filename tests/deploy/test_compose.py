"""docker-compose.yml, checked without a Docker engine: against the Compose specification's
JSON Schema (as `docker compose config` does), then references between services, every
QUOTAFLOW_* variable a real setting with a valid value, every command a real CLI
invocation, and the wiring between pushers, edge nodes and Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import orjson
import pytest
import yaml

from edge.auth import AppAuth
from quotaflow.commands.cli import COMPONENT_SETTINGS
from quotaflow.commands.cli import main as cli
from quotaflow.registry import load_tenants_file
from quotaflow.settings import Settings
from tests.deploy.support import DEPLOY, ROOT, setting_names
from wire import public_key_of

COMPOSE = ROOT / "docker-compose.yml"
REGIONS = ("eu", "us")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _quotaflow_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if str(s.get("image", "")).startswith("quotaflow")}


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _listen_port(name: str, service: dict[str, Any]) -> int:
    """The port a quotaflow service serves HTTP on, from its command and environment."""
    command, env = service["command"], _env(service)
    verb = command[0]
    if verb == "ingress":
        return int(_option(command, "--port"))
    if verb == "worker":
        return int(_option(command, "--web-port"))
    if verb == "edge":
        return int(_option(command, "--port"))
    if verb == "push":
        return int(env["QUOTAFLOW_PUSHER_PORT"])
    if verb == "notifier":
        return int(env["QUOTAFLOW_NOTIFIER_PORT"])
    raise AssertionError(f"{name} serves no HTTP")


def _schema_errors(schema: Path, document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(schema.read_text()))
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]


def test_matches_the_compose_specification(compose_spec: Path) -> None:
    assert _schema_errors(compose_spec, yaml.safe_load(COMPOSE.read_text())) == []


def test_the_specification_check_catches_a_misspelt_key(compose_spec: Path) -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    document["services"]["ingress"]["helthcheck"] = document["services"]["ingress"].pop(
        "healthcheck"
    )
    assert _schema_errors(compose_spec, document)


def test_has_every_component_and_the_observability_stack() -> None:
    expected = {"kafka", "topics", "ingress", "worker", "prometheus", "alertmanager", "grafana"}
    expected |= {f"pusher-{r}" for r in REGIONS} | {f"edge-{r}" for r in REGIONS}
    assert expected <= set(_services())


def test_every_service_has_an_image_and_builds_from_the_dockerfile() -> None:
    for name, service in _services().items():
        assert service.get("image"), name
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name


def test_kafka_is_the_official_image_in_kraft_mode_without_auto_topics() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "healthcheck" in kafka


def test_quotaflow_variables_are_real_settings() -> None:
    known = setting_names()
    unknown = {
        f"{name}: {key}"
        for name, service in _quotaflow_services().items()
        for key in _env(service)
        if key.startswith("QUOTAFLOW_") and key not in known
    }
    assert not unknown, f"variables quotaflow.settings.Settings does not read: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(n for n in _quotaflow_services()))
def test_quotaflow_variables_have_valid_values(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env(_quotaflow_services()[name]).items():
        monkeypatch.setenv(key, value)
    # The service's own type (its verb's), and the operator's, which reads the rest: each
    # raises, naming the variable, on a bad value.
    COMPONENT_SETTINGS.get(_quotaflow_services()[name]["command"][0], Settings)()
    Settings()


@pytest.mark.parametrize("name", sorted(n for n in _quotaflow_services()))
def test_commands_are_real_cli_invocations(name: str) -> None:
    command = _quotaflow_services()[name]["command"]
    verb = cli.commands[command[0]]
    verb.make_context(command[0], list(command[1:]))  # raises on an unknown option


def test_depends_on_names_existing_services_with_valid_conditions() -> None:
    services = _services()
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in CONDITIONS, name
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"


def test_host_ports_are_unique_and_well_formed() -> None:
    seen: dict[int, str] = {}
    for name, service in _services().items():
        for mapping in service.get("ports", []):
            host, container = str(mapping).split(":")
            assert 0 < int(container) < 65536
            assert int(host) not in seen, f"{name} and {seen.get(int(host))} share {host}"
            seen[int(host)] = name


def test_bind_mounts_exist_in_the_repository() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_each_region_has_a_pusher_whose_edge_nodes_exist_and_verify_its_key() -> None:
    services = _services()
    for region in REGIONS:
        pusher = services[f"pusher-{region}"]
        assert _option(pusher["command"], "--region") == region
        env = _env(pusher)
        nodes = orjson.loads(env["QUOTAFLOW_EDGE_NODES"])[region]
        signing = orjson.loads(env["QUOTAFLOW_PUSH_SIGNING_KEYS"])
        assert set(signing) == {region}, "a pusher holds its own region's push key only"
        public = public_key_of(signing[region][0])
        assert nodes
        for url in nodes:
            parts = urlsplit(url)
            edge = services[str(parts.hostname)]
            assert edge["command"][0] == "edge"
            assert _option(edge["command"], "--region") == region
            assert _listen_port(str(parts.hostname), edge) == parts.port
            edge_env = _env(edge)
            verify = orjson.loads(edge_env["QUOTAFLOW_PUSH_VERIFY_KEYS"])
            assert public in verify[region], f"{parts.hostname} cannot verify {region} pushes"
            assert "QUOTAFLOW_PUSH_SIGNING_KEYS" not in edge_env
            # Its own edge key is one the ingress and the region's pusher verify.
            edge_public = public_key_of(orjson.loads(edge_env["QUOTAFLOW_EDGE_SIGNING_KEYS"])[0])
            for verifier in (env, _env(services["ingress"])):
                assert edge_public in orjson.loads(verifier["QUOTAFLOW_EDGE_VERIFY_KEYS"])[region]


def test_every_edge_keeps_its_usage_spool_on_a_named_volume_under_a_fixed_node_id() -> None:
    """Issue 20: a spool in the container's own filesystem is lost when the container is
    recreated, and with it the usage the node had not reported; a node id derived from
    the (per-container) hostname would strand the spool under the old id."""
    compose = yaml.safe_load(COMPOSE.read_text())
    edges = {n: s for n, s in _services().items() if s.get("command", [""])[0] == "edge"}
    assert len(edges) == len(REGIONS)
    node_ids = set()
    for name, edge in edges.items():
        env = _env(edge)
        node_ids.add(env["QUOTAFLOW_USAGE_NODE_ID"])
        spool = env["QUOTAFLOW_USAGE_SPOOL_DIR"]
        mounts = dict(str(v).split(":")[1::-1] for v in edge.get("volumes", []))
        mount = next((m for m in mounts if spool.startswith(m.rstrip("/") + "/")), None)
        assert mount is not None, f"{name}: {spool} is not on a volume"
        assert mounts[mount] in compose["volumes"], f"{name}: {mounts[mount]} is not a named volume"
    assert len(node_ids) == len(edges)


def test_private_keys_reach_only_their_signers() -> None:
    for name, service in _services().items():
        env = _env(service)
        if "QUOTAFLOW_PUSH_SIGNING_KEYS" in env:
            assert service["command"][0] == "push", name
        if "QUOTAFLOW_EDGE_SIGNING_KEYS" in env:
            assert service["command"][0] == "edge", name


def test_prometheus_scrapes_every_quotaflow_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        if job["job_name"].startswith("quotaflow-")
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{name}:{_listen_port(name, s)}"
        for name, s in _quotaflow_services().items()
        if s["command"][0] in {"ingress", "worker", "push", "edge", "notifier"}
    }
    assert targets == expected


def test_demo_tenants_file_loads_and_serves_every_region() -> None:
    registry = load_tenants_file(DEPLOY / "compose" / "tenants.json")
    tenant = registry.get("demo")
    assert tenant is not None
    assert set(REGIONS) <= set(tenant.regions)


def test_edge_nodes_accept_the_demo_token_the_header_documents() -> None:
    found = re.search(r"Bearer (qfa_\w+)", COMPOSE.read_text())
    assert found is not None, "the header lost its demo token"
    for region in REGIONS:
        env = _env(_services()[f"edge-{region}"])
        assert "QUOTAFLOW_EDGE_ALLOW_LOOPBACK" not in env
        auth = AppAuth(orjson.loads(env["QUOTAFLOW_EDGE_APP_TOKENS"]))
        assert auth.authenticate(f"Bearer {found.group(1)}", None) == "demo"
