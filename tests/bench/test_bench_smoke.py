"""The bench runner and the worker, ingress, edge, gateway, enforcement, scale and fetch
benches still run end to end, so the bench code cannot rot silently. Sizes are tiny
(`--quick`): the figures are not looked at, only their shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`python -m MODULE ARGS`: the JSON document it printed, after checking it exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def quick(name: str, kafka_bootstrap: str, out: Path) -> dict[str, Any]:
    """`python -m bench --quick --only NAME`: its result, after checking the run went well."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", name, "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert name in done.stdout  # the table

    report = json.loads(out.read_text())
    assert set(report) >= {"quick", "machine", "load_start", "load_end", "benches"}
    entry = report["benches"][name]
    assert entry["returncode"] == 0
    result: dict[str, Any] = entry["result"]
    assert result["bench"] == name
    return result


def test_quick_worker_bench_writes_the_expected_figures(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = quick("worker", kafka_bootstrap, tmp_path / "results.json")
    assert len(result["load_start"]) == len(result["load_end"]) == 3
    (store,) = result["stores"]
    assert store["store"] == "memory://"
    assert store["raw_consumer"]["events_per_s"] > 0
    throughput = store["throughput"]
    # A batch publishes a customer's newest version only: at most one record per event.
    assert 0 < throughput["updates"] <= store["events"]
    assert set(throughput) >= {"events_per_s", "fraction_of_raw", "worker_cpu_cores"}
    latency = store["latency"]
    assert latency["matched"] > 0
    assert set(latency["kafka_to_quota_updates_ms"]) >= {"p50", "p99", "max"}


def test_quick_scale_bench_rebuilds_states_written_into_the_changelog(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_bench(
        "bench.scale_bench",
        *("--quick", "--keep", str(tmp_path)),
        env={"QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
    )
    assert result["bench"] == "scale"
    assert (result["keys"], result["tenants"], result["customers_per_tenant"]) == (2000, 200, 10)
    assert result["fill"]["mode"] == "changelog"
    assert result["tenants_fill"]["records"] == 200  # sealed, signed, on the tenants topic
    assert result["changelog_records"] == 2000
    assert result["raw_changelog_read"]["records"] == 2000
    # The worker served states it never wrote: each probe answered with the written
    # state's version + 1.
    assert result["verified"]["ok"] is True
    assert result["verified"]["keys"] > 0
    for phase in ("rebuild", "restart"):
        assert result[phase]["ready_s"] > 0
        assert result[phase]["peak_rss_mib"] > 0
    assert result["peak_rss_mib"] >= result["rebuild"]["peak_rss_mib"]
    assert result["data_dir_mib"] > 0


def test_quick_registry_bench_loads_checks_and_serves_every_tenant(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = run_bench(
        "bench.registry_bench",
        *("--quick", "--modes", "keyring", "file", "--keep", str(tmp_path)),
        env={"QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
    )
    assert result["bench"] == "registry"
    assert result["fill"]["records"] == 2000
    keyring = result["keyring"]
    assert keyring["load"]["seconds"] > 0
    assert keyring["check_pass"]["from_start_s"] >= keyring["load"]["seconds"]
    assert keyring["unreadable"] == 0
    assert keyring["get_1000_first"]["mean_us"] > 0
    assert result["file"]["load"]["rss_mib"] > 0
    assert set(result["ratios_vs_file"]) == {"registry_rss", "ready_s"}


def test_short_ingress_bench_measures_webhooks_and_signed_usage_batches(
    kafka_bootstrap: str,
) -> None:
    result = run_bench(
        "bench.ingress_bench",
        *("--duration", "1", "--workers", "1", "--skip-baseline", "--rate", "200"),
        env={"QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
    )
    for phase in ("ingress_fixed_rate", "ingress_max", "ingress_usage_max"):
        # Every request answered 200: webhooks verified and published, usage batches
        # verified against the edge key and published, none refused as a replay.
        assert set(result[phase]["statuses"]) == {"200"}, (phase, result[phase]["statuses"])
        assert result[phase]["ok"] > 0, phase
    usage = result["ingress_usage_max"]
    assert usage["usage_batches_per_s"] > 0
    assert usage["items_per_batch"] == 20


@pytest.fixture(scope="session")
def vegeta() -> Path:
    """vegeta from `make tools` (QUOTAFLOW_VEGETA elsewhere); missing fails."""
    from tests.deploy.support import tool

    return tool("QUOTAFLOW_VEGETA", "vegeta")


def test_quick_edge_bench_measures_http_consume_with_and_without_authentication(
    vegeta: Path,
) -> None:
    result = run_bench("bench.edge_bench", "--quick", env={"QUOTAFLOW_VEGETA": str(vegeta)})
    assert result["quick"] is True
    # Every request of every mode was answered 200 allowed (the client checks each answer),
    # so the authenticated modes really sent a token the edge accepted.
    modes = (
        "http_consume",
        "http_consume_loopback",
        "http_consume_idempotency_key",
        "http_consume_aiohttp",
    )
    for mode in (*modes, "http_consume_vegeta"):
        # Exactly rate x seconds counted, whichever client (vegeta runs a little longer).
        assert result[mode]["requests"] == 2000, mode
        assert set(result[mode]) >= {"p50_ms", "p99_ms", "from_write_p99_ms", "round_p99_ms"}
        # The sidecar's CPU per request, read from /proc (Linux, where the benches run).
        assert result[mode]["server_cpu_us_per_request"] > 0, mode
        # From the intended send counts the client's lateness on top of the request itself.
        assert result[mode]["p99_ms"] >= result[mode]["from_write_p99_ms"], mode
    for mode in modes:
        assert result[mode]["client"] == "openloop", mode
    vegeta_mode = result["http_consume_vegeta"]
    assert vegeta_mode["client"] == "vegeta v12.13.0"
    # vegeta's own report agrees that every request it sent succeeded.
    assert [r["success"] for r in vegeta_mode["vegeta_report"]] == [1]
    # The machine's wake-up latency, measured beside the figures it bounds.
    wakeup = result["machine_wakeup"]
    assert set(wakeup) == {"same_cpu", "across_cpus"}
    assert 0 < wakeup["same_cpu"]["p50_us"] <= wakeup["same_cpu"]["p99_us"]
    cost = result["http_auth_cost"]
    assert set(cost) >= {"p50_ms_ratio", "p99_ms_ratio", "idempotency_key_p99_ms_ratio"}
    assert all(v is not None and v > 0 for v in cost.values())
    # The light face against the sidecar served by aiohttp alone, same run.
    gain = result["http_light_face_gain"]
    assert set(gain) >= {"p99_ms_ratio", "server_cpu_us_per_request_ratio"}
    assert all(v is not None and v > 0 for v in gain.values())


def test_a_bench_without_vegeta_fails_and_says_how_to_install_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway_bench", "--quick", "--gateways", "nginx"],
        cwd=REPO,
        env={**os.environ, "QUOTAFLOW_VEGETA": str(tmp_path / "vegeta")},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode != 0
    assert f"{tmp_path / 'vegeta'} missing: run `make tools`" in done.stderr
    assert "scripts/install-deploy-tools.sh" in done.stderr


def test_quick_gateway_bench_compares_forward_auth_with_a_static_answer(
    nginx: Path, caddy: Path, vegeta: Path
) -> None:
    result = run_bench(
        "bench.gateway_bench",
        "--quick",
        env={
            "QUOTAFLOW_NGINX": str(nginx),
            "QUOTAFLOW_CADDY": str(caddy),
            "QUOTAFLOW_VEGETA": str(vegeta),
        },
    )
    assert result["quick"] is True
    for gateway in ("nginx", "caddy"):
        figures = result["gateways"][gateway]
        # Every request of every mode was answered 200 (the client checks each answer), so
        # the authorized site really went through the sidecar and was allowed.
        modes = ("static", "proxy", "authorized", "authorized_null_edge", "authorized_aiohttp_edge")
        for mode in modes:
            assert figures[mode]["requests"] == 450, (gateway, mode)
            assert figures[mode]["p99_ms"] > 0
            assert figures[mode]["client"] == "openloop"
        # vegeta, the earlier figures' client, beside them in the same run.
        for mode in ("static_vegeta", "authorized_vegeta"):
            assert figures[mode]["requests"] == 450, (gateway, mode)
            assert figures[mode]["client"] == "vegeta v12.13.0"
        # Each server's CPU per request; an authorized request costs the gateway (NGINX's
        # worker, not its idle master) and the sidecar some.
        cpu = figures["authorized"]["cpu_us_per_request"]
        assert set(cpu) == {"gateway", "edge"}
        assert cpu["gateway"] > 0, (gateway, cpu)
        assert cpu["edge"] > 0, (gateway, cpu)
        # With the null authorizer (NGINX's static 200), that NGINX answered instead.
        assert figures["authorized_null_edge"]["cpu_us_per_request"]["edge"] > 0
        added = figures["added_p99_ms"]
        assert added["authorized_over_static_ratio"] > 0
        assert set(added) >= {
            "authorized_minus_static",
            "authorized_minus_proxy",
            "authorized_minus_null_edge",
            "null_edge_authorized_minus_static",
            "vegeta_authorized_minus_static",
            "aiohttp_edge_authorized_minus_static",
        }
        # The sidecar served by aiohttp alone answered its own gateway's subrequests.
        assert figures["authorized_aiohttp_edge"]["cpu_us_per_request"]["edge"] > 0


def test_quick_enforcement_bench_cuts_every_customer_off_at_every_node(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = quick("enforcement", kafka_bootstrap, tmp_path / "results.json")
    assert result["report_interval_s"] == 1.0
    for name, nodes in (("three_nodes", 3), ("baseline_single_node", 1)):
        phase = result[name]
        assert len(phase["nodes"]) == nodes
        assert phase["measured"] == phase["customers"] > 0, phase
        assert phase["not_enforced"] == 0
        assert phase["client_node_count_mismatch"] == 0
        assert phase["max_units_over_bound"] >= 0
        lag = phase["crossing_to_denied_all_nodes_ms"]
        assert set(lag) >= {"p50", "p99", "max"}
        assert 0 <= lag["p99"] < 30_000
        assert phase["overshoot_units"]["n"] == phase["measured"]
    assert len(result["three_nodes"]["crossing_to_denied_per_node_ms"]) == 3


def test_quick_fetch_bench_runs_every_scenario_against_the_stripe_standin(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = quick("fetch", kafka_bootstrap, tmp_path / "results.json")
    assert result["config"]["worker_defaults_changed"] == "none"
    warm = result["warmup"]
    # The worker fetched every warm-up webhook's subscription from the stand-in.
    assert warm["standin_subscription_gets"] >= warm["webhooks"] > 0
    assert set(result["targets_met"]) == {"idle", "burst", "rate", "isolation"}
    for name in ("idle", "burst", "rate", "isolation"):
        section = result[name]
        assert len(section["load_start"]) == len(section["load_end"]) == 3
        assert section["worker_defaults_changed"] == "none"
        assert isinstance(section["met"], bool)

    idle = result["idle"]
    assert idle["missing"] == 0
    assert idle["webhook_to_edge_ms"]["n"] == idle["webhooks"]
    assert set(idle["hops_ms"]) == {"ingress_200", "sent_to_worker_apply", "worker_apply_to_edge"}

    burst = result["burst"]
    webhooks = burst["tenants"] * burst["webhooks_per_tenant"]
    assert burst["statuses"] == {"200": webhooks}
    assert burst["drained"] is True
    assert burst["last_200_to_last_applied_ms"] > 0
    assert set(burst["webhook_to_edge_ms"]) >= {"first", "p50", "p99"}
    for account in burst["standin"]["accounts"].values():
        assert account["requests"].get("subscription", 0) >= burst["webhooks_per_tenant"]

    rate = result["rate"]
    assert rate["sum_of_rates_per_s"] == rate["tenants"] * rate["rate_per_tenant_per_s"] > 0
    assert rate["statuses"] == {"200": rate["webhooks"]}
    assert rate["updates_per_s"] > 0
    assert 0 < rate["fraction_of_sum_of_rates"] <= 1.2
    assert rate["drained"] is True

    isolation = result["isolation"]
    healthy, slow = isolation["partition"].values()
    assert healthy == slow  # the two tenants share a stripe.events partition
    assert isolation["baseline"]["healthy_all_applied"] is True
    assert isolation["baseline"]["webhook_to_edge_ms"]["n"] > 0
    assert isolation["with_slow"]["slow_webhooks"] > 0
    assert isolation["p99_ratio"] > 0
    assert isolation["drained"] is True


def test_quick_console_bench_times_the_tenants_pages_and_the_baseline(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = quick("console", kafka_bootstrap, tmp_path / "results.json")
    assert result["args"] == {"tenants": 300, "requests": 20}
    latency = result["latency_ms"]
    assert set(latency) == {
        "first_page",
        "middle_page",
        "search_10",
        "search_none",
        "baseline_api_all_tenants",
    }
    for figures in latency.values():
        assert figures["n"] == 20
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]


def test_quick_notify_bench_reports_lag_and_throughput(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = quick("notify", kafka_bootstrap, tmp_path / "results.json")
    lag = result["lag"]
    assert lag["notifications"] == 2 * 3 * 3  # two thresholds per customer, once each
    assert 0 < lag["transition_to_received_ms"]["p50"] <= lag["transition_to_received_ms"]["p99"]
    assert result["throughput"]["notifications"] == 60
    assert result["throughput"]["deliveries_per_s"] > 0
    assert (result["refused_by_receiver"], result["duplicate_ids"]) == (0, 0)
