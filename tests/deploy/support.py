"""Paths, tool lookup and small helpers shared by the deployment tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edge.settings import EdgeSettings
from quotaflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "charts" / "quotaflow"
TOOLS_BIN = Path(
    os.environ.get("QUOTAFLOW_TOOLS_BIN", Path.home() / ".cache" / "quotaflow" / "bin")
)
# The Kubernetes version charts are rendered for; explicit so that helm's build-time
# default does not decide.
KUBE_VERSION = "1.30.0"


def setting_names() -> frozenset[str]:
    """Every QUOTAFLOW_* variable that `Settings` (the operator's) or `EdgeSettings` reads."""
    fields = Settings.model_fields.keys() | EdgeSettings.model_fields.keys()
    return frozenset(f"QUOTAFLOW_{name.upper()}" for name in fields)


def tool(env: str, name: str) -> Path:
    """The tool's path; fails (never skips) when it is not installed."""
    path = Path(os.environ.get(env, TOOLS_BIN / name))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{name} not found at {path}: run `make tools` "
            f"(scripts/install-deploy-tools.sh) or set {env}",
            pytrace=False,
        )
    return path


def compose_schema() -> Path:
    """The Compose file JSON Schema that the install script takes from compose-go."""
    override = os.environ.get("QUOTAFLOW_COMPOSE_SCHEMA")
    found = [Path(override)] if override else sorted(TOOLS_BIN.glob("compose-spec-*.json"))
    if not found or not found[-1].is_file():
        pytest.fail(
            f"no Compose JSON Schema in {TOOLS_BIN}: run `make tools` "
            "(scripts/install-deploy-tools.sh) or set QUOTAFLOW_COMPOSE_SCHEMA",
            pytrace=False,
        )
    return found[-1]


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Runs a tool; the caller asserts on the return code and output."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
