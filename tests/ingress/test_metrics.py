"""Per-tenant signature failures stay a bounded set of series."""

from __future__ import annotations

from prometheus_client import generate_latest

from ingress.metrics import IngressMetrics


def _series(metrics: IngressMetrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in metrics.tenant_signature_failures.collect():
        for sample in family.samples:
            out[(sample.labels["tenant_id"], sample.labels["reason"])] = sample.value
    return out


def test_top_failing_tenants_get_their_own_series_and_the_rest_are_other() -> None:
    metrics = IngressMetrics(top_tenants=2)
    for _ in range(5):
        metrics.count("tenant", "rejected", "bad_signature", 0.001, "noisy")
    for _ in range(3):
        metrics.count("tenant", "rejected", "timestamp_too_old", 0.001, "drifting")
    metrics.count("tenant", "rejected", "bad_signature", 0.001, "quiet")
    metrics.count("tenant", "accepted", "published", 0.001, "healthy")  # not a failure
    series = _series(metrics)
    assert series == {
        ("noisy", "bad_signature"): 5.0,
        ("drifting", "timestamp_too_old"): 3.0,
        ("other", "bad_signature"): 1.0,
    }
    exposed = generate_latest(metrics.registry).decode()
    assert 'signature_failures_total{reason="bad_signature",tenant_id="noisy"} 5.0' in exposed


def test_a_flood_of_tenant_ids_keeps_the_tracked_set_bounded() -> None:
    metrics = IngressMetrics(top_tenants=3)
    for n in range(1000):
        metrics.count("tenant", "rejected", "bad_signature", 0.001, f"t{n}")
    series = _series(metrics)
    assert len(series) <= 4
    assert sum(series.values()) == 1000.0
