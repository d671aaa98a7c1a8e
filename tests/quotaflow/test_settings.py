"""The README's configuration table is the contract: it must name exactly our settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quotaflow.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `(QUOTAFLOW_[A-Z_]+)` \|", README.read_text(), re.M))
    declared = {f"QUOTAFLOW_{name.upper()}" for name in Settings.model_fields}
    assert documented == declared


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_PARTITIONS", "12")
    monkeypatch.setenv("QUOTAFLOW_EDGE_NODES", '{"eu": ["http://127.0.0.1:9101"]}')
    monkeypatch.setenv("QUOTAFLOW_PUSH_KEYS", '{"eu": ["k-new", "k-old"]}')
    settings = Settings()
    assert settings.partitions == 12
    assert settings.edge_nodes == {"eu": ["http://127.0.0.1:9101"]}
    assert settings.push_keys["eu"][0].get_secret_value() == "k-new"
    assert "k-new" not in repr(settings)
    assert settings.topics.quota_updates == "quota.updates"


def test_bad_setting_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_PARTITIONS", "0")
    with pytest.raises(ValueError, match="partitions"):
        Settings()
