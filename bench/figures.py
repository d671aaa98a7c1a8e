"""What each bench's charts show: `bench/charts.py` draws them after `python -m bench` and
from any results file (`python -m bench.charts`).

A bench opts in with one entry in FIGURES, keyed by its name in `bench/__main__.py`, made
of the figure kinds of bench/figure_kinds.py (latency CDFs, ratio bars against a baseline,
figures against keys); each points into the bench's result by paths (syntax there), so the
drawing code knows nothing about any bench.
"""

from __future__ import annotations

from bench.figure_kinds import (
    AgainstKeys,
    Figure,
    LatencyCDF,
    Ratio,
    RatioBars,
    Series,
    Target,
)

P99 = 0.99

FIGURES: dict[str, tuple[Figure, ...]] = {
    "ingress": (
        LatencyCDF(
            "ingress-latency-fixed-rate",
            "Ingress: verified webhook → 200, open loop at a fixed rate",
            (
                Series("quotaflow, 1 worker ({webhooks_per_s:,.0f}/s)", ("ingress_fixed_rate",)),
                Series(
                    "quotaflow, 2 workers ({webhooks_per_s:,.0f}/s)",
                    ("ingress_2_workers_fixed_rate",),
                ),
                Series(
                    "baseline: threaded http.server ({webhooks_per_s:,.0f}/s)",
                    ("baseline_fixed_rate",),
                    baseline=True,
                ),
            ),
            targets=(Target("target p99 ≤ 10 ms", 10, P99),),
        ),
        LatencyCDF(
            "ingress-latency-max",
            "Ingress: latency at maximum throughput (closed loop)",
            (
                Series("webhooks, 1 worker", ("ingress_max",)),
                Series("webhooks, 2 workers", ("ingress_2_workers_max",)),
                Series("usage batches, 1 worker", ("ingress_usage_max",)),
                Series("usage batches, 2 workers", ("ingress_2_workers_usage_max",)),
                Series("baseline: threaded http.server", ("baseline_max",), baseline=True),
            ),
        ),
        RatioBars(
            "ingress-throughput",
            "Ingress: verified webhooks/s against the baseline, same run",
            "webhooks/s",
            (
                Ratio(
                    "1 worker",
                    ("ingress_max", "webhooks_per_s"),
                    ("baseline_max", "webhooks_per_s"),
                ),
                Ratio(
                    "2 workers",
                    ("ingress_2_workers_max", "webhooks_per_s"),
                    ("baseline_max", "webhooks_per_s"),
                ),
            ),
            target_ratio=5.0,
            note="baseline: threaded http.server, stripe.Webhook.construct_event, "
            "produce + flush per request",
        ),
    ),
    "edge": (
        LatencyCDF(
            "edge-check-latency",
            "Edge: in-process check() / consume(), each call timed",
            tuple(
                Series(label, ("check", key), baseline=key.startswith("baseline"))
                for label, key in (
                    ("check()", "quotaflow_check"),
                    ("check(), rate limit + feature", "quotaflow_check_rate_feature"),
                    ("baseline: dict of pydantic models, check", "baseline_pydantic_dict_check"),
                    ("consume()", "quotaflow_consume"),
                    ("consume(), rate limit + feature", "quotaflow_consume_rate_feature"),
                    (
                        "baseline: dict of pydantic models, consume",
                        "baseline_pydantic_dict_consume",
                    ),
                )
            ),
            targets=(Target("target p99 ≤ 5 µs", 5, P99),),
        ),
        LatencyCDF(
            "edge-http-latency",
            "Edge: HTTP POST /v1/consume, open loop (openloop), from the intended send",
            (
                Series("authenticated ({achieved_rps:,}/s)", ("http_consume",)),
                Series("loopback, no token ({achieved_rps:,}/s)", ("http_consume_loopback",)),
                Series(
                    "token + Idempotency-Key ({achieved_rps:,}/s)",
                    ("http_consume_idempotency_key",),
                ),
                Series(
                    "authenticated, aiohttp alone, as before the light face ({achieved_rps:,}/s)",
                    ("http_consume_aiohttp",),
                    baseline=True,
                ),
                # The same load from vegeta, the earlier figures' client (its own CPU, twice
                # the sidecar's, shares the cores).
                Series(
                    "authenticated, from vegeta ({achieved_rps:,}/s)",
                    ("http_consume_vegeta",),
                    baseline=True,
                ),
            ),
            targets=(Target("target p99 ≤ 1 ms", 1, P99),),
        ),
        RatioBars(
            "edge-throughput",
            "Edge: in-process calls/s against a dict of pydantic models",
            "calls/s",
            (
                Ratio(
                    "check()",
                    ("check", "quotaflow_check", "calls_per_second"),
                    ("check", "baseline_pydantic_dict_check", "calls_per_second"),
                ),
                Ratio(
                    "check(), rate limit + feature",
                    ("check", "quotaflow_check_rate_feature", "calls_per_second"),
                    ("check", "baseline_pydantic_dict_check", "calls_per_second"),
                ),
                Ratio(
                    "consume()",
                    ("check", "quotaflow_consume", "calls_per_second"),
                    ("check", "baseline_pydantic_dict_consume", "calls_per_second"),
                ),
                Ratio(
                    "consume(), rate limit + feature",
                    ("check", "quotaflow_consume_rate_feature", "calls_per_second"),
                    ("check", "baseline_pydantic_dict_consume", "calls_per_second"),
                ),
            ),
        ),
    ),
    "gateway": (
        LatencyCDF(
            "gateway-latency",
            "Gateways: static 200, proxy, forward auth through the sidecar and through an "
            "authorizer that costs nothing (openloop; *_vegeta: the earlier client)",
            (Series("{0} {1}", ("gateways", "*", "*")),),
        ),
        RatioBars(
            "gateway-added-p99",
            "Gateways: p99 against the gateway's own static 200, same run",
            "ms at p99",
            (
                Ratio(
                    "{0}: forward auth",
                    ("gateways", "*", "authorized", "p99_ms"),
                    ("gateways", "*", "static", "p99_ms"),
                ),
                Ratio(
                    "{0}: forward auth, an authorizer that costs nothing",
                    ("gateways", "*", "authorized_null_edge", "p99_ms"),
                    ("gateways", "*", "static", "p99_ms"),
                ),
                Ratio(
                    "{0}: proxy only",
                    ("gateways", "*", "proxy", "p99_ms"),
                    ("gateways", "*", "static", "p99_ms"),
                ),
            ),
            higher_is_better=False,
        ),
    ),
    "onboarding": (
        LatencyCDF(
            "onboarding-latency",
            "Onboarding: tenants add returned → first webhook answered 200",
            (Series("{onboardings} tenants", ()),),
            targets=(Target("target p99 ≤ 1 s", 1000, P99),),
        ),
    ),
    "usage": (
        RatioBars(
            "usage-throughput",
            "Usage: the worker against a raw read of its topic, the meter against its bucket",
            "records/s",
            (
                Ratio(
                    "1 count per record",
                    ("usage_agent", "worker_records_per_s"),
                    ("usage_agent", "raw_aiokafka_records_per_s"),
                ),
                Ratio(
                    "20 counts per record",
                    ("usage_agent_packed", "worker_records_per_s"),
                    ("usage_agent_packed", "raw_aiokafka_records_per_s"),
                ),
                Ratio(
                    "meter reporter vs its Stripe bucket",
                    ("meter_reporter", "sustained_calls_per_s"),
                    ("meter_reporter", "bucket_per_s"),
                    unit="calls/s",
                    target=0.95,
                ),
            ),
        ),
    ),
    "worker": (
        RatioBars(
            "worker-throughput",
            "Worker: billing events/s against its ceilings, same run, same topic",
            "events/s",
            (
                Ratio(
                    "{0} vs a raw aiokafka read",
                    ("stores", "*", "throughput", "events_per_s"),
                    ("stores", "0", "raw_consumer", "events_per_s"),
                    name_field="store",
                    target=0.4,
                ),
                Ratio(
                    "{0} vs a Faust agent doing nothing",
                    ("stores", "*", "throughput", "events_per_s"),
                    ("stores", "0", "faust_noop_agent", "events_per_s"),
                    name_field="store",
                    target=0.6,
                ),
            ),
        ),
        LatencyCDF(
            "worker-latency",
            "Worker: event in Kafka → quota update in Kafka, paced",
            (
                Series(
                    "{0}: Kafka → quota update",
                    ("stores", "*", "latency", "kafka_to_quota_updates_ms"),
                    name_field="store",
                ),
                Series(
                    "{0}: send → worker applied",
                    ("stores", "*", "latency", "send_to_worker_apply_ms"),
                    name_field="store",
                ),
            ),
            targets=(Target("target p99 ≤ 10 ms", 10, P99),),
        ),
    ),
    "e2e": (
        LatencyCDF(
            "e2e-latency",
            "End to end: webhook POST → quota applied at all 3 edges, and its hops",
            (
                Series(
                    "webhook → all edges, {0}/s",
                    ("phases", "*", "webhook_to_edge_all_nodes_ms"),
                    name_field="rate_per_s",
                ),
                Series(
                    "hop: ingress ack, {0}/s",
                    ("phases", "*", "hops_ms", "ingress_ack"),
                    name_field="rate_per_s",
                ),
                Series(
                    "hop: due → worker applied, {0}/s",
                    ("phases", "*", "hops_ms", "due_to_worker_apply"),
                    name_field="rate_per_s",
                ),
                Series(
                    "hop: worker applied → edge, {0}/s",
                    ("phases", "*", "hops_ms", "worker_apply_to_edge"),
                    name_field="rate_per_s",
                ),
            ),
            targets=(Target("target p99 ≤ 25 ms at 200/s", 25, P99),),
        ),
    ),
    "enforcement": (
        LatencyCDF(
            "enforcement-lag",
            "Enforcement lag: limit crossed → denied, 3 edge nodes in 2 regions",
            (
                Series("denied at all 3 nodes", ("three_nodes", "crossing_to_denied_all_nodes_ms")),
                Series(
                    "exhausted published by the worker",
                    ("three_nodes", "crossing_to_core_published_exhausted_ms"),
                ),
                Series(
                    "exhausted push applied at all 3 nodes",
                    ("three_nodes", "crossing_to_exhausted_push_applied_all_nodes_ms"),
                ),
                Series(
                    "baseline: all traffic on 1 node, denied",
                    ("baseline_single_node", "crossing_to_denied_all_nodes_ms"),
                    baseline=True,
                ),
            ),
            targets=(Target("target p99 ≤ 2 s", 2000, P99),),
            log_x=False,
            note="Customers at a paced rate, edges reporting usage every 1 s; "
            "one sample per customer.",
        ),
        LatencyCDF(
            "enforcement-overshoot",
            "Enforcement: units allowed past the limit, per customer",
            (
                Series("overshoot, 3 nodes", ("three_nodes", "overshoot_units")),
                Series(
                    "bound: rate x that customer's lag", ("three_nodes", "bound_rate_x_lag_units")
                ),
                Series(
                    "baseline: all traffic on 1 node",
                    ("baseline_single_node", "overshoot_units"),
                    baseline=True,
                ),
            ),
            log_x=False,
            quantity="overshoot",
        ),
    ),
    "fetch": (
        LatencyCDF(
            "fetch-latency",
            "Worker with the Stripe fetch on: webhook → quota at the edge, per scenario",
            (
                Series("idle: one webhook at a time", ("idle", "webhook_to_edge_ms")),
                Series("burst: 6 tenants at once, 250 ms per GET", ("burst", "webhook_to_edge_ms")),
                Series("rate: every tenant at its bucket rate", ("rate", "webhook_to_edge_ms")),
                Series(
                    "isolation: healthy tenant beside a 4-s Stripe",
                    ("isolation", "with_slow", "webhook_to_edge_ms"),
                ),
                Series(
                    "isolation: the slow tenant",
                    ("isolation", "with_slow", "slow_tenant", "webhook_to_edge_ms"),
                ),
                Series(
                    "baseline: healthy tenant alone",
                    ("isolation", "baseline", "webhook_to_edge_ms"),
                    baseline=True,
                ),
            ),
            targets=(Target("idle target p99 ≤ 25 ms", 25, P99),),
        ),
        RatioBars(
            "fetch-isolation",
            "Fetch on: a healthy tenant's p99 beside a slow Stripe, against alone",
            "ms at p99",
            (
                Ratio(
                    "healthy tenant beside the slow one",
                    ("isolation", "with_slow", "webhook_to_edge_ms", "p99"),
                    ("isolation", "baseline", "webhook_to_edge_ms", "p99"),
                ),
            ),
            higher_is_better=False,
            target_ratio=1.5,
        ),
        RatioBars(
            "fetch-rate",
            "Fetch on: quota updates/s against the sum of the tenants' Stripe rates",
            "/s",
            (
                Ratio(
                    "{tenants} tenants at their bucket rate",
                    ("rate", "updates_per_s"),
                    ("rate", "sum_of_rates_per_s"),
                ),
            ),
            target_ratio=0.9,
        ),
    ),
    "scale": (
        AgainstKeys(
            "scale-ready-times",
            "Worker on RocksDB: process start → serving, against the number of keys",
            x=("keys",),
            x_label="keys (tenants x 10 customers)",
            y_label="seconds to the probe's quota update",
            series=(
                Series("restart on its own data dir", ("restart", "ready_s")),
                Series("rebuild from the changelog", ("rebuild", "ready_s")),
                Series("rebuild, tuned fetches", ("rebuild_tuned", "ready_s")),
            ),
            targets=(
                Target("restart target ≤ 10 s", 10, x=1_000_000),
                Target("rebuild target ≤ 60 s", 60, x=1_000_000),
            ),
        ),
        AgainstKeys(
            "scale-rss",
            "Worker on RocksDB: memory against the number of keys",
            x=("keys",),
            x_label="keys (tenants x 10 customers)",
            y_label="RSS (MiB)",
            series=(
                Series("peak RSS, rebuild and restart", ("peak_rss_mib",)),
                Series("settled RSS after restart", ("restart", "rss_mib")),
            ),
            targets=(Target("target ≤ 1.5 GB", 1536, x=1_000_000),),
        ),
        RatioBars(
            "scale-changelog-read",
            "Rebuild: the worker's changelog read against a raw aiokafka read",
            "records/s",
            (
                Ratio(
                    "worker's recovery ({keys:,} keys)",
                    ("changelog_read_in_worker", "records_per_s"),
                    ("raw_changelog_read", "events_per_s"),
                ),
            ),
        ),
    ),
}
