"""The README's configuration table is the contract: it must name exactly our settings, and
which components read each; each component's settings type holds exactly its groups, and
each `quotaflow <verb>` builds its own type."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
import orjson
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from edge.settings import EdgeNodeGroup, EdgeSettings
from quotaflow import settings as qs
from quotaflow.commands.cli import COMPONENT_SETTINGS
from quotaflow.commands.cli import main as cli
from quotaflow.settings import CommonSettings, RemovedSetting, Settings
from wire import Kind, Signer, generate_keypair

README = Path(__file__).resolve().parents[2] / "README.md"
EVERY_FIELD = Settings.model_fields.keys() | EdgeSettings.model_fields.keys()
ROW = re.compile(r"^\| `QUOTAFLOW_([A-Z_]+)` \| (?:[^|`]|`[^`]*`)* \| ([a-z, ]+) \|", re.M)


def test_readme_documents_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `(QUOTAFLOW_[A-Z_]+)` \|", README.read_text(), re.M))
    declared = {f"QUOTAFLOW_{name.upper()}" for name in EVERY_FIELD}
    assert documented == declared


def _readers(field: str) -> str:
    return ", ".join(
        verb for verb, kind in COMPONENT_SETTINGS.items() if field in kind.model_fields
    )


def test_readme_names_the_components_reading_each_variable() -> None:
    """The "read by" column is what the classes say, for every variable."""
    documented = {name.lower(): readers for name, readers in ROW.findall(README.read_text())}
    assert documented.keys() == EVERY_FIELD
    expected = {field: _readers(field) for field in EVERY_FIELD}
    wrong = {f: (documented[f], want) for f, want in expected.items() if documented[f] != want}
    assert not wrong, f"README 'read by' (documented, derived): {wrong}"
    assert all(expected.values()), "a variable no component reads"


def test_the_foundations_settings_import_no_face() -> None:
    """The edge-only parsing lives in `edge/settings.py`: `quotaflow.settings`, which every
    face builds on, reaches no face, not even through another module."""
    roots = ("quotaflow", "edge", "ingress", "streams", "tables", "wire")
    graph = grimp.build_graph(*roots, cache_dir=None)
    for face in ("edge", "ingress", "streams"):
        assert not graph.chain_exists("quotaflow.settings", face, as_packages=True), face
    assert graph.chain_exists("edge.settings", "quotaflow.settings")  # the check can fail


# Each process type's groups, spelled out: adding a group to a process is a decision this
# test makes visible. `CommonSettings` (log level, removed variables) is in every one.
GROUPS: dict[str, set[type[CommonSettings]]] = {
    "ingress": {
        qs.IngressGroup,
        qs.UsageReportGroup,
        qs.SignedMessagesGroup,
        qs.EdgeVerifyGroup,
        qs.KeyringGroup,
        qs.TenantsGroup,
        qs.KafkaGroup,
    },
    "worker": {
        qs.WorkerGroup,
        qs.PolicyGroup,
        qs.StripeGroup,
        qs.StripeFetchGroup,
        qs.MeterGroup,
        qs.KeyringGroup,
        qs.TenantsGroup,
        qs.KafkaGroup,
    },
    "push": {
        qs.SignedMessagesGroup,
        qs.EdgeVerifyGroup,
        qs.RegionGroup,
        qs.EdgeDirectoryGroup,
        qs.PushSigningGroup,
        qs.PusherGroup,
        qs.TenantsGroup,
        qs.KafkaGroup,
    },
    "edge": {
        qs.UsageReportGroup,
        qs.SignedMessagesGroup,
        qs.RegionGroup,
        qs.PushVerifyGroup,
        EdgeNodeGroup,
    },
    "notifier": {
        qs.NotifierGroup,
        qs.EndpointGuardGroup,
        qs.KeyringGroup,
        qs.TenantsGroup,
        qs.KafkaGroup,
    },
    "admin": {
        qs.EdgeVerifyGroup,
        qs.PolicyGroup,
        qs.StripeGroup,
        qs.RegionGroup,
        qs.EdgeDirectoryGroup,
        qs.PushSigningGroup,
        qs.PushVerifyGroup,
        qs.EndpointGuardGroup,
        qs.AdminGroup,
        qs.KeyringGroup,
        qs.TenantSigningGroup,
        qs.TenantsGroup,
        qs.KafkaGroup,
    },
}
# Secrets and knobs a component must never even parse.
NEVER: dict[str, set[str]] = {
    "ingress": {"admin_tokens", "tenant_signing_keys", "push_signing_keys", "stripe_api_base"},
    "worker": {"admin_tokens", "tenant_signing_keys", "push_signing_keys", "edge_signing_keys"},
    "push": {"keyring", "admin_tokens", "tenant_signing_keys", "stripe_api_base"},
    "edge": {
        "keyring",
        "admin_tokens",
        "tenant_signing_keys",
        "push_signing_keys",
        "connect_webhook_secrets",
        "console_edge_token",
        "stripe_api_base",
        "stripe_fetch",
        "meter_enabled",
        "kafka_bootstrap",
    },
    "notifier": {"admin_tokens", "tenant_signing_keys", "push_signing_keys", "stripe_api_base"},
    "admin": {"connect_webhook_secrets", "edge_signing_keys", "edge_app_tokens"},
}


def _groups(kind: type[CommonSettings]) -> set[type[CommonSettings]]:
    return {
        c
        for c in kind.__mro__
        if isinstance(c, type)
        and issubclass(c, CommonSettings)
        and c.__name__.endswith("Group")
        and c is not kind
    }


@pytest.mark.parametrize("verb", sorted(GROUPS))
def test_each_component_type_has_exactly_its_groups(verb: str) -> None:
    kind = COMPONENT_SETTINGS[verb]
    assert _groups(kind) == GROUPS[verb]
    declared = {f for group in GROUPS[verb] for f in group.model_fields}
    assert kind.model_fields.keys() == declared
    assert not NEVER[verb] & kind.model_fields.keys()
    assert NEVER[verb] <= EVERY_FIELD  # the names are real, so the check above means something


def test_the_operators_settings_are_every_group_but_the_edge_nodes() -> None:
    groups = {
        c
        for c in vars(qs).values()
        if isinstance(c, type) and issubclass(c, CommonSettings) and c.__name__.endswith("Group")
    }
    assert _groups(Settings) == groups
    edge_only = EdgeNodeGroup.model_fields.keys() - CommonSettings.model_fields.keys()
    assert Settings.model_fields.keys() == EVERY_FIELD - edge_only
    assert COMPONENT_SETTINGS.keys() == GROUPS.keys()
    for kind in COMPONENT_SETTINGS.values():
        assert kind is EdgeSettings or issubclass(Settings, kind)


# A value no field but a plain string takes: a JSON string (so list and dict fields parse it
# as JSON and then refuse a string) that is no number, boolean, key or id. The two tables
# refused as `InvalidSetting` (before validation, stopping it) are left out.
NOT_A_VALUE = '"x!"'
STOPS_VALIDATION = {"edge_app_tokens", "edge_api_keys"}


def _refusable(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Sets every variable to NOT_A_VALUE; returns the fields that refuse it."""
    refused: set[str] = set()
    fields = sorted(EVERY_FIELD - STOPS_VALIDATION)
    for field in fields:  # one at a time
        kind = EdgeSettings if field in EdgeSettings.model_fields else Settings
        with monkeypatch.context() as alone:
            alone.setenv(f"QUOTAFLOW_{field.upper()}", NOT_A_VALUE)
            try:
                kind()
            except ValidationError:
                refused.add(field)
    for field in fields:
        monkeypatch.setenv(f"QUOTAFLOW_{field.upper()}", NOT_A_VALUE)
    return refused


@pytest.mark.parametrize(
    ("argv", "kind"),
    [([verb], kind) for verb, kind in COMPONENT_SETTINGS.items()]
    + [(["topics"], qs.KafkaGroup), (["lag"], Settings)],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_each_verb_builds_its_own_settings_type(
    argv: list[str], kind: type[CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as an operator would with every variable malformed: the verb stops at its
    settings, naming exactly the variables of its own type, none of another's. (Nothing
    starts: settings are the first thing each verb builds.)"""
    refusable = _refusable(monkeypatch)
    assert len(refusable) > 60  # most variables can be malformed, so the check has teeth
    result = CliRunner().invoke(cli, argv)
    assert isinstance(result.exception, ValidationError), result.output
    named = {str(error["loc"][0]) for error in result.exception.errors()}
    assert named == refusable & kind.model_fields.keys()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_PARTITIONS", "12")
    monkeypatch.setenv("QUOTAFLOW_EDGE_NODES", '{"eu": ["http://127.0.0.1:9101"]}')
    (new, _), (_, old_public) = generate_keypair(), generate_keypair()
    monkeypatch.setenv("QUOTAFLOW_PUSH_SIGNING_KEYS", orjson.dumps({"eu": [new]}).decode())
    monkeypatch.setenv("QUOTAFLOW_EDGE_SIGNING_KEYS", orjson.dumps([new]).decode())
    monkeypatch.setenv("QUOTAFLOW_PUSH_VERIFY_KEYS", orjson.dumps({"eu": [old_public]}).decode())
    settings, edge = Settings(), EdgeSettings()
    assert settings.partitions == 12
    assert settings.edge_nodes == {"eu": ["http://127.0.0.1:9101"]}
    assert settings.push_signing_keys["eu"][0].get_secret_value() == new
    assert edge.edge_signing_keys[0].get_secret_value() == new
    assert settings.push_verify_keys == edge.push_verify_keys == {"eu": [old_public]}
    for each in (settings, edge):
        assert new not in repr(each)
        assert new not in str(each.model_dump())
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
    kinds: list[type[CommonSettings]] = [Settings, *COMPONENT_SETTINGS.values()]
    for kind in kinds:
        with pytest.raises(RemovedSetting, match=name) as info:
            kind()
        assert "old-shared-hmac-secret" not in str(info.value)
        assert "an-admin-token" not in str(info.value)
