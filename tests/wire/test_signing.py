"""The signed-message format: what verifies, and every way a message is refused."""

from __future__ import annotations

import ast
import base64
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

import wire
from wire.exceptions import SignatureError
from wire.signing import (
    SIGNATURE_HEADER,
    Kind,
    Signer,
    Verifier,
    generate_keypair,
    key_id,
    parse_header,
    public_key_of,
    signed_message,
)

NOW = 1_700_000_000.0
BODY = b'{"region":"eu","updates":[]}'


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reason_of(verifier: Verifier, header: str | None, body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.verify(header, body)
    return info.value.reason


def test_a_signed_body_verifies_with_the_public_key_and_names_the_key() -> None:
    private, public = generate_keypair()
    clock = Clock()
    header = Signer(Kind.PUSH, [SecretStr(private)], clock=clock).header(BODY)
    expected = key_id(base64.b64decode(public))
    assert Verifier(Kind.PUSH, [public], clock=clock).verify(header, BODY) == expected
    assert public_key_of(private) == public


@pytest.mark.parametrize("signed_as", list(Kind))
@pytest.mark.parametrize("verified_as", list(Kind))
def test_a_signature_of_one_kind_never_verifies_as_another(
    signed_as: Kind, verified_as: Kind
) -> None:
    private, public = generate_keypair()  # even with the very same key pair
    clock = Clock()
    header = Signer(signed_as, [private], clock=clock).header(BODY)
    verifier = Verifier(verified_as, [public], clock=clock)
    if signed_as is verified_as:
        verifier.verify(header, BODY)
    else:
        assert reason_of(verifier, header) == "bad_signature"


def test_the_context_is_part_of_the_signed_bytes() -> None:
    assert signed_message(Kind.PUSH, 5, b"x") == b"quotaflow/push/v1\n5\nx"
    assert signed_message(Kind.USAGE, 5, b"x") != signed_message(Kind.ANNOUNCEMENT, 5, b"x")


def test_a_key_that_only_verifies_cannot_sign() -> None:
    _, public = generate_keypair()
    with pytest.raises(ValueError, match="32 bytes"):
        Signer(Kind.PUSH, [public + "!"])
    # A public key loaded as a private one signs with an unrelated key: it never verifies.
    clock = Clock()
    header = Signer(Kind.PUSH, [public], clock=clock).header(BODY)
    assert reason_of(Verifier(Kind.PUSH, [public], clock=clock), header) == "unknown_key"


def test_another_key_pair_is_refused() -> None:
    clock = Clock()
    attacker, _ = generate_keypair()
    _, public = generate_keypair()
    header = Signer(Kind.PUSH, [attacker], clock=clock).header(BODY)
    assert reason_of(Verifier(Kind.PUSH, [public], clock=clock), header) == "unknown_key"


def test_a_tampered_body_or_timestamp_is_refused() -> None:
    private, public = generate_keypair()
    clock = Clock()
    verifier = Verifier(Kind.PUSH, [public], clock=clock)
    header = Signer(Kind.PUSH, [private], clock=clock).header(BODY)
    assert reason_of(verifier, header, BODY + b" ") == "bad_signature"
    moved = header.replace(f"t={int(NOW)}", f"t={int(NOW) + 1}")
    assert reason_of(verifier, moved) == "bad_signature"


def test_timestamps_outside_the_window_are_stale_or_future() -> None:
    private, public = generate_keypair()
    verifier = Verifier(Kind.USAGE, [public], tolerance=30, clock=Clock())
    old = Signer(Kind.USAGE, [private], clock=Clock(NOW - 31)).header(BODY)
    ahead = Signer(Kind.USAGE, [private], clock=Clock(NOW + 31)).header(BODY)
    assert reason_of(verifier, old) == "stale"
    assert reason_of(verifier, ahead) == "future"
    for skew in (-29, 29):
        verifier.verify(Signer(Kind.USAGE, [private], clock=Clock(NOW + skew)).header(BODY), BODY)


def test_a_replay_is_refused_and_then_simply_stale() -> None:
    private, public = generate_keypair()
    clock = Clock()
    verifier = Verifier(Kind.PUSH, [public], clock=clock)
    header = Signer(Kind.PUSH, [private], clock=clock).header(BODY)
    verifier.verify(header, BODY)
    assert reason_of(verifier, header) == "replayed"
    clock.now += 31
    assert reason_of(verifier, header) == "stale"
    assert verifier.verify_record(header, BODY)  # a re-read record: signature only


def test_rotation_every_listed_key_verifies_and_the_newest_signs() -> None:
    new_private, new_public = generate_keypair()
    old_private, old_public = generate_keypair()
    clock = Clock()
    verifier = Verifier(Kind.PUSH, [new_public, old_public], clock=clock)
    signer = Signer(Kind.PUSH, [new_private, old_private], clock=clock)
    assert signer.key_id == key_id(base64.b64decode(new_public))
    assert verifier.verify(signer.header(BODY), BODY) == signer.key_id
    old = Signer(Kind.PUSH, [old_private], clock=clock).header(BODY)
    assert verifier.verify(old, BODY) == key_id(base64.b64decode(old_public))


def test_no_key_material_in_headers_or_reprs() -> None:
    private, public = generate_keypair()
    signer = Signer(Kind.PUSH, [private])
    verifier = Verifier(Kind.PUSH, [public])
    seen = signer.header(BODY) + repr(signer) + repr(verifier) + repr(signer.__dict__)
    for material in (private, public):
        assert material not in seen
        assert material.rstrip("=") not in seen


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=abc,k=1,ed25519=" + "A" * 86,
        "t=1,t=2,k=1,ed25519=" + "A" * 86,
        "t=1,k=1,ed25519=short",
        "t=1,ed25519=" + "A" * 86,
        "t=1,k=1,v1=" + "0" * 64,  # the old HMAC scheme
        "t=1,k=1,ed25519=" + "A" * 600,
    ],
)
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(SignatureError) as info:
        parse_header(header)
    assert info.value.reason in {"missing_signature", "malformed_signature"}


def test_a_verifier_without_keys_refuses_everything() -> None:
    private, _ = generate_keypair()
    header = Signer(Kind.PUSH, [private], clock=Clock()).header(BODY)
    assert reason_of(Verifier(Kind.PUSH, [], clock=Clock()), header) == "no_keys"


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"x" * 31).decode()])
def test_malformed_keys_are_refused_when_loaded(bad: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Verifier(Kind.PUSH, [bad])
    with pytest.raises(ValueError, match="32 bytes"):
        Signer(Kind.PUSH, [bad])


def test_the_header_name_is_shared() -> None:
    assert Signer(Kind.PUSH, [generate_keypair()[0]]).headers(BODY).keys() == {SIGNATURE_HEADER}


def test_wire_imports_only_the_standard_library_and_cryptography() -> None:
    root = Path(wire.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                allowed = {"wire", "cryptography", "__future__"}
                assert top in sys.stdlib_module_names or top in allowed, (path.name, name)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, wire; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for face in ("quotaflow", "faust", "aiokafka", "tables", "pydantic", "edge", "ingress"):
        assert face not in loaded
