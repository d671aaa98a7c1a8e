"""Real tools for the deployment tests: helm, promtool, amtool and the Compose schema.

`make tools` installs them with scripts/install-deploy-tools.sh into ~/.cache/quotaflow/bin;
QUOTAFLOW_HELM, QUOTAFLOW_PROMTOOL, QUOTAFLOW_AMTOOL and QUOTAFLOW_COMPOSE_SCHEMA point
elsewhere (or QUOTAFLOW_TOOLS_BIN for all of them). A missing tool
fails the test that needs it: nothing here is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.support import compose_schema, tool


@pytest.fixture(scope="session")
def helm() -> Path:
    return tool("QUOTAFLOW_HELM", "helm")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return tool("QUOTAFLOW_PROMTOOL", "promtool")


@pytest.fixture(scope="session")
def amtool() -> Path:
    return tool("QUOTAFLOW_AMTOOL", "amtool")


@pytest.fixture(scope="session")
def compose_spec() -> Path:
    return compose_schema()
