"""charts/quotaflow rendered by the real helm: lint, render, the objects issue 6 asks for,
their wiring (probes, volumes, secrets, monitoring) and the values schema."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from edge.settings import EdgeSettings
from quotaflow.settings import Settings
from tests.deploy.support import (
    CHART,
    DEPLOY,
    KUBE_VERSION,
    ROOT,
    run,
    setting_names,
)
from wire import generate_keypair, public_key_of

Doc = dict[str, Any]
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

KEY = base64.b64encode(bytes(range(32))).decode()
PUSH = {r: generate_keypair() for r in ("eu", "us")}  # (private, public)
EDGE_PUBLIC = {r: [generate_keypair()[1]] for r in ("eu", "us")}
TENANTS = generate_keypair()
FULL_VALUES: dict[str, Any] = {
    "secrets": {
        "keyring": {"k2": KEY, "k1": KEY},
        "pushSigningKeys": {r: [private] for r, (private, _) in PUSH.items()},
        "connectWebhookSecrets": [{"id": "p1", "secret": "whsec_platform_aaaaaaaa"}],
        "adminTokens": {"ops": "admin-token-aaaaaaaaaaaa"},
        "tenantSigningKeys": [TENANTS[0]],
    },
    "publicKeys": {"edge": EDGE_PUBLIC, "tenants": [TENANTS[1]]},
    "pusher": {
        "regions": {
            "eu": {"replicas": 2, "edgeNodes": ["http://10.0.0.5:9101", "http://10.0.0.6:9101"]},
            "us": {"replicas": 1, "edgeNodes": ["http://10.1.0.5:9101"]},
        }
    },
}


def _write(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(helm: Path, *extra: str | Path) -> list[Doc]:
    result = run(helm, "template", "qf", CHART, "--kube-version", KUBE_VERSION, *extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def default_docs(helm: Path) -> list[Doc]:
    return render(helm)


@pytest.fixture(scope="session")
def full_docs(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return render(helm, "-f", _write(tmp_path_factory.mktemp("values"), FULL_VALUES))


def one(docs: list[Doc], kind: str, name_part: str = "") -> Doc:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"{kind} {name_part}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            yield name, container


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def test_lint_passes_strict(helm: Path, tmp_path: Path) -> None:
    full = ["-f", str(_write(tmp_path, {**FULL_VALUES, **EDGE_VALUES}))]
    for extra in ([], full):
        result = run(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, CHART, *extra)
        assert result.returncode == 0, result.stdout + result.stderr


def test_renders_every_kind_the_issue_asks_for(default_docs: list[Doc]) -> None:
    kinds = Counter(doc["kind"] for doc in default_docs)
    # ingress, admin, notifier, a pusher per default region (eu, us)
    assert kinds["Deployment"] == 5
    assert kinds["StatefulSet"] == 1
    assert kinds["PodDisruptionBudget"] == 4  # ingress, worker, pusher-eu, pusher-us
    for kind in ("Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"):
        assert kinds[kind] == 1, kind
    assert kinds["Secret"] == 1  # keyring, push keys, Connect secrets, admin tokens
    assert kinds["ConfigMap"] == 2  # configuration; the dashboard


def test_one_pusher_per_region_with_its_edge_nodes(full_docs: list[Doc]) -> None:
    pushers = {
        d["metadata"]["labels"]["quotaflow.io/region"]: d
        for d in full_docs
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "pusher"
    }
    assert set(pushers) == {"eu", "us"}
    assert pushers["eu"]["spec"]["replicas"] == 2
    for region, deployment in pushers.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["push", "--region", region]
        env = env_of(container)
        assert env["QUOTAFLOW_REGION"]["value"] == region
        nodes = orjson.loads(env["QUOTAFLOW_EDGE_NODES"]["value"])
        assert nodes[region] == FULL_VALUES["pusher"]["regions"][region]["edgeNodes"]


def test_worker_is_a_statefulset_with_rocksdb_volume_and_static_membership(
    default_docs: list[Doc],
) -> None:
    worker = one(default_docs, "StatefulSet", "worker")
    claim = worker["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    data_dir = env["QUOTAFLOW_DATA_DIR"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir
    assert env["QUOTAFLOW_STORE"]["value"] == "rocksdb://"
    assert env["QUOTAFLOW_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == ("metadata.name")
    service = one(default_docs, "Service", "worker")
    assert worker["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"


def test_every_component_is_ready_only_when_its_readyz_says_so(default_docs: list[Doc]) -> None:
    for name, container in containers(default_docs):
        if name.endswith("-admin"):  # no /readyz yet: it listens once its registry is up
            assert container["readinessProbe"]["tcpSocket"]["port"] == "http"
            continue
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/readyz", name
        ports = {p["name"] for p in container["ports"]}
        assert probe["port"] in ports, name


def test_configuration_names_only_real_settings(full_docs: list[Doc]) -> None:
    names = set(one(full_docs, "ConfigMap", "config")["data"])
    for _, container in containers(full_docs):
        names |= set(env_of(container))
    secret = one(full_docs, "Secret", "secrets")
    names |= set(secret["data"])
    unknown = {n for n in names if n.startswith("QUOTAFLOW_")} - setting_names()
    assert not unknown, f"variables quotaflow.settings.Settings does not read: {sorted(unknown)}"


def _settings_of(docs: list[Doc], container: Doc, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container would build from its ConfigMap, env and Secret."""
    config = one(docs, "ConfigMap", "config")["data"]
    secret = one(docs, "Secret", "secrets")["data"]
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    for key, entry in env_of(container).items():
        if "value" in entry:
            monkeypatch.setenv(key, entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]["key"]
            monkeypatch.setenv(key, base64.b64decode(secret[ref]).decode())
        elif "fieldRef" in entry.get("valueFrom", {}):
            monkeypatch.setenv(key, "pod-0")
    return Settings()


@pytest.mark.parametrize(
    "component", ["ingress", "worker", "pusher-eu", "pusher-us", "admin", "notifier"]
)
def test_every_components_environment_is_valid_settings(
    full_docs: list[Doc], monkeypatch: pytest.MonkeyPatch, component: str
) -> None:
    for name, container in containers(full_docs):
        if name.endswith(f"-{component}"):
            settings = _settings_of(full_docs, container, monkeypatch)
            assert settings.regions == ["eu", "us"]
            if component.startswith("pusher"):
                assert settings.keyring == {}  # routes without any tenant secret
            else:
                assert settings.keyring["k2"].get_secret_value() == KEY
            assert settings.tenant_verify_keys == [TENANTS[1]]
            if component == "admin":
                assert public_key_of(settings.tenant_signing_keys[0]) == TENANTS[1]
            else:
                assert not settings.tenant_signing_keys
            assert settings.tenants_file is None  # tenants come from the topic
            if component.startswith("pusher"):
                region = component.removeprefix("pusher-")
                expected = FULL_VALUES["pusher"]["regions"][region]["edgeNodes"]
                assert settings.region == region
                assert settings.edge_nodes[region] == expected
                signing = settings.push_signing_keys[region][0]
                assert public_key_of(signing) == PUSH[region][1]
                assert settings.edge_verify_keys == {region: EDGE_PUBLIC[region]}
            else:
                assert not settings.push_signing_keys
            if component == "ingress":
                assert settings.edge_verify_keys == EDGE_PUBLIC
            return
    raise AssertionError(f"no {component} container")


def _secret_keys(container: Doc) -> set[str]:
    return {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_each_secret_reaches_only_the_components_that_need_it(full_docs: list[Doc]) -> None:
    needs = {
        "ingress": {"QUOTAFLOW_KEYRING", "QUOTAFLOW_CONNECT_WEBHOOK_SECRETS"},
        "worker": {"QUOTAFLOW_KEYRING"},
        # A pusher routes: the public tenants keys, no keyring, no tenants signing key.
        "pusher": {"QUOTAFLOW_PUSH_SIGNING_KEYS"},
        "admin": {
            "QUOTAFLOW_KEYRING",
            "QUOTAFLOW_ADMIN_TOKENS",
            "QUOTAFLOW_TENANT_SIGNING_KEYS",
            "QUOTAFLOW_CONSOLE_EDGE_TOKEN",  # optional: the console's edge reads
        },
        # It signs deliveries with the endpoints' secrets; it never signs a tenant record.
        "notifier": {"QUOTAFLOW_KEYRING"},
    }
    for name, container in containers(full_docs):
        component = next(c for c in needs if f"-{c}" in name)
        assert _secret_keys(container) == needs[component], name
        verify = env_of(container)["QUOTAFLOW_TENANT_VERIFY_KEYS"]["value"]
        assert json.loads(verify) == [TENANTS[1]], name
    assert not [
        c
        for _, c in containers(full_docs)
        if "envFrom" in c and any("secretRef" in source for source in c["envFrom"])
    ]


def test_a_tenants_file_replaces_the_topic_registry(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, "-f", _write(tmp_path, {"tenants": {"json": "[]"}}))
    tenants = one(docs, "Secret", "tenants")
    assert base64.b64decode(tenants["data"]["tenants.json"]) == b"[]"
    for name, spec in pod_specs(docs):
        env = env_of(spec["containers"][0])
        path = Path(env["QUOTAFLOW_TENANTS_FILE"]["value"])
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert str(path.parent) == mounts["tenants"], name
        # the keyring is optional then: a file registry needs none (pushers never get it)
        if "-pusher-" in name:
            assert "QUOTAFLOW_KEYRING" not in env, name
        else:
            assert env["QUOTAFLOW_KEYRING"]["valueFrom"]["secretKeyRef"]["optional"] is True, name


def test_existing_secrets_replace_the_charts_own(helm: Path, tmp_path: Path) -> None:
    values = {
        "secrets": {"existingSecret": "ops-quotaflow"},
        "tenants": {"existingSecret": "ops-tenants"},
    }
    docs = render(helm, "-f", _write(tmp_path, values))
    assert not [d for d in docs if d["kind"] == "Secret"]
    for name, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "QUOTAFLOW_TENANTS_FILE" in env_of(spec["containers"][0]), name
        assert volumes["tenants"]["secret"]["secretName"] == "ops-tenants", name
        for entry in env_of(spec["containers"][0]).values():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "ops-quotaflow", name


def test_public_ingress_has_tls_from_cert_manager_and_exposes_only_webhooks(
    default_docs: list[Doc],
) -> None:
    ingress = one(default_docs, "Ingress")
    assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
    rule = ingress["spec"]["rules"][0]
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    assert [p["path"] for p in rule["http"]["paths"]] == ["/v1/webhooks/stripe"]


def test_hpa_scales_the_ingress_deployment(default_docs: list[Doc]) -> None:
    hpa = one(default_docs, "HorizontalPodAutoscaler")
    deployment = one(default_docs, "Deployment", "ingress")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # the HPA owns it


def test_pods_run_as_the_images_non_root_user(default_docs: list[Doc]) -> None:
    dockerfile_user = next(
        line.split()[1].split(":")[0]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    )
    for name, spec in pod_specs(default_docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert str(spec["securityContext"]["runAsUser"]) == dockerfile_user, name


def test_service_monitor_scrapes_every_component_on_a_metrics_port(
    default_docs: list[Doc],
) -> None:
    monitor = one(default_docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoint_port = monitor["spec"]["endpoints"][0]["port"]
    scraped = [
        d
        for d in default_docs
        if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()
    ]
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in scraped}
    assert components == {"ingress", "worker", "pusher", "notifier"}
    for service in scraped:
        assert endpoint_port in {p["name"] for p in service["spec"]["ports"]}
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        assert job == f"quotaflow-{service['metadata']['labels']['app.kubernetes.io/component']}"


def test_prometheus_rule_and_dashboard_are_the_repositorys(default_docs: list[Doc]) -> None:
    rule = one(default_docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    dashboard = one(default_docs, "ConfigMap", "dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["quotaflow.json"]) == json.loads(
        (DEPLOY / "grafana" / "quotaflow.json").read_text()
    )


def test_monitoring_objects_can_be_left_out_for_clusters_without_the_crds(
    helm: Path, tmp_path: Path
) -> None:
    off = {"enabled": False}
    values = {"monitoring": {"serviceMonitor": off, "prometheusRule": off, "dashboard": off}}
    kinds = {d["kind"] for d in render(helm, "-f", _write(tmp_path, values))}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"worker": {"replicas": "three"}}, "/worker/replicas"),
        ({"workers": {"replicas": 3}}, "workers"),
        ({"pusher": {"regions": {"EU": {"replicas": 1, "edgeNodes": []}}}}, "EU"),
        ({"pusher": {"regions": {"eu": {"replicas": 1, "edgeNodes": ["ftp://x"]}}}}, "edgeNodes"),
        ({"config": {"QUOTAFLOW_PUSH_KEYS": "{}"}}, "QUOTAFLOW_PUSH_KEYS"),
        ({"config": {"QUOTAFLOW_PUSH_SIGNING_KEYS": "{}"}}, "QUOTAFLOW_PUSH_SIGNING_KEYS"),
        ({"config": {"QUOTAFLOW_EDGE_SIGNING_KEYS": "[]"}}, "QUOTAFLOW_EDGE_SIGNING_KEYS"),
        ({"publicKeys": {"edge": {"eu": ["not-a-key"]}}}, "publicKeys"),
        ({"config": {"KAFKA": "x"}}, "KAFKA"),
        ({"ingress": {"ingress": {"paths": ["v1/webhooks"]}}}, "paths"),
        ({"secrets": {"pushSigningKeys": {"eu": ["short"]}}}, "pushSigningKeys"),
        ({"secrets": {"pushKeys": {"eu": [KEY]}}}, "pushKeys"),
        ({"secrets": {"keyring": {"k1": "not-base64-of-32-bytes"}}}, "keyring"),
        ({"secrets": {"adminTokens": ["a-token-without-a-name"]}}, "adminTokens"),
        ({"config": {"QUOTAFLOW_KEYRING": "{}"}}, "QUOTAFLOW_KEYRING"),
    ],
)
def test_schema_rejects_bad_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    result = run(
        helm,
        "template",
        "qf",
        CHART,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        _write(tmp_path, values),
    )
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert complaint in result.stderr


EDGE_VALUES: dict[str, Any] = {
    "edgeSidecar": {
        "enabled": True,
        "regions": {
            "eu": {"replicas": 2, "signingKeysSecret": "quotaflow-edge-eu"},
            "us": {"replicas": 1, "signingKeysSecret": "quotaflow-edge-us"},
        },
        "appContainers": [{"name": "rating-api", "image": "rating-api:1"}],
        "pushVerifyKeys": {r: [public] for r, (_, public) in PUSH.items()},
        "spool": {"size": "2Gi", "storageClassName": "fast"},
    }
}


def test_edge_sidecars_keep_their_usage_spool_on_a_volume_of_their_own(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: a spool lost with its container loses unsent usage; each edge pod gets a
    claim of its own, mounted at the spool directory, and a node id that stays with it."""
    docs = render(helm, "-f", _write(tmp_path, EDGE_VALUES))
    edges = {
        d["metadata"]["labels"]["quotaflow.io/region"]: d
        for d in docs
        if d["kind"] == "StatefulSet"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"
    }
    assert set(edges) == {"eu", "us"}
    assert edges["eu"]["spec"]["replicas"] == 2
    for region, edge in edges.items():
        claim = edge["spec"]["volumeClaimTemplates"][0]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        assert claim["spec"]["storageClassName"] == "fast"
        pod = edge["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["rating-api", "quotaflow-edge"]
        sidecar = pod["containers"][1]
        # The slim image by default, running `quotaflow-edge` (which the full image has too).
        assert sidecar["image"] == f"quotaflow-edge:{APP_VERSION}"
        assert sidecar["command"] == ["quotaflow-edge"]
        assert sidecar["args"] == ["--region", region, "--port", "9101"]
        env = env_of(sidecar)
        mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == env["QUOTAFLOW_USAGE_SPOOL_DIR"]["value"]
        # No emptyDir may stand in for the claim: it would be lost with the pod.
        assert claim["metadata"]["name"] not in {v["name"] for v in pod["volumes"]}
        node_id = env["QUOTAFLOW_USAGE_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert node_id == "metadata.name"
        service = one(docs, "Service", f"edge-{region}")
        assert edge["spec"]["serviceName"] == service["metadata"]["name"]
        # Only its own edge key: no keyring, no push signing key, not the chart's Secret.
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for e in sidecar["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert refs == [{"name": f"quotaflow-edge-{region}", "key": "QUOTAFLOW_EDGE_SIGNING_KEYS"}]
        assert "envFrom" not in sidecar
        for key, entry in env.items():
            if "value" in entry:
                monkeypatch.setenv(key, entry["value"])
        monkeypatch.setenv("QUOTAFLOW_USAGE_NODE_ID", f"qf-quotaflow-edge-{region}-0")
        settings = EdgeSettings()
        assert settings.region == region
        assert settings.usage_ingress_url == "http://qf-quotaflow-ingress:80"
        assert settings.push_verify_keys == {region: [PUSH[region][1]]}
        assert "keyring" not in EdgeSettings.model_fields  # it cannot even read one
    assert not [d for d in render(helm) if "edge" in d["metadata"]["name"]]  # off by default


def test_the_edge_sidecar_image_is_configurable_apart_from_the_full_image(
    helm: Path, tmp_path: Path
) -> None:
    image = {"repository": "registry.example/qf-edge", "tag": "1.2.3", "pullPolicy": "Always"}
    values = {**EDGE_VALUES, "edgeSidecar": {**EDGE_VALUES["edgeSidecar"], "image": image}}
    docs = render(helm, "-f", _write(tmp_path, values))
    sidecars = [
        c
        for d in docs
        if d["kind"] == "StatefulSet"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "quotaflow-edge"
    ]
    assert len(sidecars) == 2
    for sidecar in sidecars:
        assert sidecar["image"] == "registry.example/qf-edge:1.2.3"
        assert sidecar["imagePullPolicy"] == "Always"
    # The other components keep the full image.
    workers = [d for d in docs if d["kind"] == "StatefulSet" and "worker" in d["metadata"]["name"]]
    assert workers
    assert workers[0]["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quotaflow:")


def test_an_edge_region_without_its_signing_key_secret_does_not_render(
    helm: Path, tmp_path: Path
) -> None:
    values = {"edgeSidecar": {"enabled": True, "regions": {"eu": {"replicas": 1}}}}
    result = run(
        helm,
        "template",
        "qf",
        CHART,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        _write(tmp_path, values),
    )
    assert result.returncode != 0
    assert "signingKeysSecret" in result.stderr
