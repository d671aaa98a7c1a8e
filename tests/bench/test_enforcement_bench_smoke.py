"""The enforcement-lag bench (issue 5) still runs end to end through `python -m bench`, so it
cannot rot silently. Sizes are tiny (`--quick`); only the shape of the figures is checked,
plus what must hold at any size: every customer was cut off at every node, and the nodes and
the client agree on what was allowed. (Overshoot against rate x lag is reported, not
asserted: on a loaded machine bunched calls can put a unit or two past it.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def test_quick_enforcement_bench_cuts_every_customer_off_at_every_node(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "enforcement", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "enforcement" in done.stdout  # the table

    entry = json.loads(out.read_text())["benches"]["enforcement"]
    assert entry["returncode"] == 0
    result = entry["result"]
    assert result["bench"] == "enforcement"
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
