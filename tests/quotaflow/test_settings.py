"""The README's configuration table is the contract: it must name exactly our settings."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from quotaflow.settings import RemovedSetting, Settings
from wire import Kind, Signer, generate_keypair

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `(QUOTAFLOW_[A-Z_]+)` \|", README.read_text(), re.M))
    declared = {f"QUOTAFLOW_{name.upper()}" for name in Settings.model_fields}
    assert documented == declared


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_PARTITIONS", "12")
    monkeypatch.setenv("QUOTAFLOW_EDGE_NODES", '{"eu": ["http://127.0.0.1:9101"]}')
    (new, _), (_, old_public) = generate_keypair(), generate_keypair()
    monkeypatch.setenv("QUOTAFLOW_PUSH_SIGNING_KEYS", orjson.dumps({"eu": [new]}).decode())
    monkeypatch.setenv("QUOTAFLOW_EDGE_SIGNING_KEYS", orjson.dumps([new]).decode())
    monkeypatch.setenv("QUOTAFLOW_PUSH_VERIFY_KEYS", orjson.dumps({"eu": [old_public]}).decode())
    settings = Settings()
    assert settings.partitions == 12
    assert settings.edge_nodes == {"eu": ["http://127.0.0.1:9101"]}
    assert settings.push_signing_keys["eu"][0].get_secret_value() == new
    assert settings.edge_signing_keys[0].get_secret_value() == new
    assert settings.push_verify_keys == {"eu": [old_public]}
    assert new not in repr(settings)
    assert new not in str(settings.model_dump())
    assert settings.topics.quota_updates == "quota.updates"


def test_bad_setting_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_PARTITIONS", "0")
    with pytest.raises(ValueError, match="partitions"):
        Settings()


def test_a_malformed_verify_key_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUOTAFLOW_EDGE_VERIFY_KEYS", '{"eu": ["not-a-key"]}')
    with pytest.raises(ValueError, match="edge_verify_keys"):
        Settings()


def test_a_malformed_private_key_fails_at_start_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "almost-a-key-but-secret"
    monkeypatch.setenv("QUOTAFLOW_PUSH_SIGNING_KEYS", orjson.dumps({"eu": [secret]}).decode())
    settings = Settings()  # private keys are checked when their signer is built
    with pytest.raises(ValueError, match="base64 of 32 bytes") as info:
        Signer(Kind.PUSH, settings.push_signing_keys["eu"])
    assert secret not in str(info.value)
    assert secret not in repr(settings)


@pytest.mark.parametrize("name", ["QUOTAFLOW_PUSH_KEYS", "QUOTAFLOW_USAGE_KEYS"])
def test_a_removed_hmac_key_variable_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, '{"eu": ["old-shared-hmac-secret"]}')
    monkeypatch.setenv("QUOTAFLOW_ADMIN_TOKENS", '{"ops": "an-admin-token"}')
    with pytest.raises(RemovedSetting, match=name) as info:
        Settings()
    assert "old-shared-hmac-secret" not in str(info.value)
    assert "an-admin-token" not in str(info.value)
