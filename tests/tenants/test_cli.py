"""`quotaflow tenants …` and `quotaflow keys …` through click's runner, on the real broker."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from edge.auth import AppAuth, AuthError
from quotaflow.commands.tenants.cli import keys, parse_duration, tenants
from tests.conftest import TENANT_SIGNING_KEY
from wire import Kind, Signer, Verifier, public_key_id, public_key_of
from wire.exceptions import SignatureError


@pytest.fixture
def env(kafka_bootstrap: str) -> dict[str, str]:
    return {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": f"cli-{uuid.uuid4().hex[:10]}.",
        "QUOTAFLOW_PARTITIONS": "2",
        "QUOTAFLOW_TENANTS_FILE": "",
        "QUOTAFLOW_REGIONS": '["eu", "us"]',
        "QUOTAFLOW_KEYRING": orjson.dumps(
            {"k1": base64.b64encode(os.urandom(32)).decode()}
        ).decode(),
        "QUOTAFLOW_TENANT_SIGNING_KEYS": orjson.dumps([TENANT_SIGNING_KEY]).decode(),
    }


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout  # logs go to stderr; the command's answer is stdout alone


def test_add_show_update_suspend_delete(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner(env=env)
    secret, key = "whsec_cli_" + os.urandom(8).hex(), "rk_test_cli_" + os.urandom(8).hex()
    out = _ok(
        runner.invoke(
            tenants,
            [
                "add",
                "--id",
                "acme",
                "--name",
                "Acme",
                "--region",
                "eu",
                "--plan",
                "pro=1000",
                "--plan",
                "max=unlimited",
                "--webhook-secret",
                secret,
                "--stripe-api-key",
                key,
            ],
        )
    )
    shown = orjson.loads(out)
    assert shown["plans"]["max"]["quota"] is None
    assert secret not in out
    assert key not in out

    out = _ok(runner.invoke(tenants, ["show", "acme"]))
    assert orjson.loads(out)["webhook_secrets"][0]["secret"] == "**********"
    assert secret not in out

    patch = tmp_path / "patch.yaml"
    patch.write_text("regions: [eu, us]\n")
    out = _ok(runner.invoke(tenants, ["update", "acme", "--file", str(patch), "--plan", "pro=5"]))
    assert orjson.loads(out)["regions"] == ["eu", "us"]
    _ok(runner.invoke(tenants, ["suspend", "acme"]))
    assert "suspended" in _ok(runner.invoke(tenants, ["list"]))
    _ok(
        runner.invoke(
            tenants, ["roll-webhook-secret", "acme", "--new", "whsec_next", "--overlap", "1h"]
        )
    )
    _ok(runner.invoke(tenants, ["delete", "acme", "--yes"]))
    assert _ok(runner.invoke(tenants, ["list"])) == ""
    assert "0 quota keys" in _ok(runner.invoke(tenants, ["purge", "acme", "--yes"]))


def test_invalid_document_is_refused_naming_the_field(env: dict[str, str], tmp_path: Path) -> None:
    doc = tmp_path / "t.json"
    doc.write_text(
        orjson.dumps({"id": "acme", "regions": ["eu"], "plans": {"pro": {"quota": -3}}}).decode()
    )
    result = CliRunner(env=env).invoke(tenants, ["add", "--file", str(doc)])
    assert result.exit_code == 1
    assert "plans.pro.quota" in result.output
    result = CliRunner(env=env).invoke(tenants, ["add", "--id", "acme", "--region", "mars"])
    assert "regions.0" in result.output
    result = CliRunner(env=env).invoke(tenants, ["show", "nobody"])
    assert result.exit_code == 1
    assert "no tenant 'nobody'" in result.output


def test_keys_rotate_then_old_key_can_go(env: dict[str, str]) -> None:
    runner = CliRunner(env=env)
    _ok(runner.invoke(tenants, ["add", "--id", "acme", "--region", "eu"]))
    new = orjson.loads(_ok(runner.invoke(keys, ["generate", "--id", "k2"])))
    old = orjson.loads(env["QUOTAFLOW_KEYRING"])
    both = {**env, "QUOTAFLOW_KEYRING": orjson.dumps({**new, **old}).decode()}
    assert "k1\t1 tenants" in _ok(CliRunner(env=both).invoke(keys, ["status"]))
    only_new_before = {**env, "QUOTAFLOW_KEYRING": orjson.dumps(new).decode()}
    status = _ok(CliRunner(env=only_new_before).invoke(keys, ["status"]))
    assert "(UNREADABLE)\t1 tenants: acme" in status  # a component with this ring waits
    assert "re-wrapped 1" in _ok(CliRunner(env=both).invoke(keys, ["rotate"]))
    only_new = {**env, "QUOTAFLOW_KEYRING": orjson.dumps(new).decode()}
    assert "k2 (active)\t1 tenants" in _ok(CliRunner(env=only_new).invoke(keys, ["status"]))
    assert "acme" in _ok(CliRunner(env=only_new).invoke(tenants, ["list"]))


def test_missing_keyring_is_a_clear_error(env: dict[str, str]) -> None:
    result = CliRunner(env={**env, "QUOTAFLOW_KEYRING": "{}"}).invoke(tenants, ["list"])
    assert result.exit_code == 1
    assert "QUOTAFLOW_KEYRING" in result.output


def test_every_verb_has_help() -> None:
    for group in (tenants, keys):
        for name in group.commands:
            result = CliRunner().invoke(group, [name, "--help"])
            assert result.exit_code == 0, name


def test_durations() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("30m") == 1800
    assert parse_duration("0") == 0


@pytest.mark.parametrize(
    ("kind", "signing_env", "verify_env"),
    [
        ("push", "QUOTAFLOW_PUSH_SIGNING_KEYS", "QUOTAFLOW_PUSH_VERIFY_KEYS"),
        ("edge", "QUOTAFLOW_EDGE_SIGNING_KEYS", "QUOTAFLOW_EDGE_VERIFY_KEYS"),
    ],
)
def test_generate_signing_prints_a_pair_and_where_each_half_goes(
    kind: str, signing_env: str, verify_env: str
) -> None:
    doc = orjson.loads(
        _ok(CliRunner().invoke(keys, ["generate-signing", "--kind", kind, "--region", "eu"]))
    )
    private, public = doc["private"], doc["public"]
    assert public_key_of(private) == public
    assert doc["key_id"] == public_key_id(public)
    signed_kind = Kind.PUSH if kind == "push" else Kind.USAGE
    header = Signer(signed_kind, [private]).header(b"body")
    assert Verifier(signed_kind, [public]).verify(header, b"body") == doc["key_id"]
    signing = doc["signers"][signing_env]
    assert (signing["eu"] if kind == "push" else signing) == [private]
    assert doc["verifiers"] == {verify_env: {"eu": [public]}}
    again = orjson.loads(_ok(CliRunner().invoke(keys, ["generate-signing", "--kind", kind])))
    assert again["private"] != private


def test_generate_app_token_prints_a_token_once_and_the_digest_the_edge_holds() -> None:
    doc = orjson.loads(_ok(CliRunner().invoke(keys, ["generate-app-token", "rating-api"])))
    token, setting = doc["token"], doc["edge"]["QUOTAFLOW_EDGE_APP_TOKENS"]
    assert token.startswith("qfa_")
    assert token not in orjson.dumps(doc["edge"]).decode()  # the edge never gets the token
    # The printed entry, as the edge reads it, lets exactly that token in as rating-api.
    auth = AppAuth(setting)
    assert auth.authenticate(f"Bearer {token}", None) == "rating-api"
    again = orjson.loads(_ok(CliRunner().invoke(keys, ["generate-app-token", "rating-api"])))
    assert again["token"] != token
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {again['token']}", None)


@pytest.mark.parametrize("name", ["loopback", "has space", "x" * 65])
def test_generate_app_token_refuses_names_the_edge_would_refuse(name: str) -> None:
    result = CliRunner().invoke(keys, ["generate-app-token", name])
    assert result.exit_code == 2
    assert "qfa_" not in result.output


def test_generate_signing_needs_a_known_kind() -> None:
    result = CliRunner().invoke(keys, ["generate-signing", "--kind", "webhook"])
    assert result.exit_code != 0


def test_generate_signing_tenants_key_signs_tenant_records_only() -> None:
    doc = orjson.loads(_ok(CliRunner().invoke(keys, ["generate-signing", "--kind", "tenants"])))
    private, public = doc["private"], doc["public"]
    assert doc["signers"] == {"QUOTAFLOW_TENANT_SIGNING_KEYS": [private]}
    assert doc["verifiers"] == {"QUOTAFLOW_TENANT_VERIFY_KEYS": [public]}
    header = Signer(Kind.TENANT, [private]).header(b"body")
    assert Verifier(Kind.TENANT, [public]).verify_record(header, b"body") == doc["key_id"]
    with pytest.raises(SignatureError):  # not a push, whoever holds the key
        Verifier(Kind.PUSH, [public]).verify_record(header, b"body")


def test_reseal_and_a_missing_signing_key_from_the_cli(env: dict[str, str]) -> None:
    runner = CliRunner(env=env)
    _ok(runner.invoke(tenants, ["add", "--id", "acme", "--region", "eu", "--plan", "pro=10"]))
    assert _ok(runner.invoke(tenants, ["reseal"])).strip() == (
        "resealed=0 re-signed=0 deleted=0 unrecoverable=0"
    )
    assert "re-signed=1" in _ok(runner.invoke(tenants, ["reseal", "--all"]))
    # A process that can verify but not sign (a component's settings) cannot write.
    public = orjson.dumps([public_key_of(TENANT_SIGNING_KEY)]).decode()
    unsigned = CliRunner(
        env={**env, "QUOTAFLOW_TENANT_SIGNING_KEYS": "[]", "QUOTAFLOW_TENANT_VERIFY_KEYS": public}
    )
    result = unsigned.invoke(tenants, ["suspend", "acme"])
    assert result.exit_code == 1
    assert "QUOTAFLOW_TENANT_SIGNING_KEYS is empty" in result.output
