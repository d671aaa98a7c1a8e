"""Push signatures: what the edge accepts and every way it refuses."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from edge.exceptions import SignatureError
from edge.signing import PushSigner, PushVerifier, compute_signature, key_id, parse_header

NOW = 1_700_000_000.0
BODY = b'{"region":"eu","updates":[]}'


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reason_of(verifier: PushVerifier, header: str | None, body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.verify(header, body)
    return info.value.reason


def test_a_signed_body_verifies_and_names_the_key() -> None:
    clock = Clock()
    signer = PushSigner([SecretStr("k-new")], clock=clock)
    verifier = PushVerifier(["k-new"], clock=clock)
    assert verifier.verify(signer.header(BODY), BODY) == key_id(b"k-new")


def test_the_header_names_the_key_without_revealing_it() -> None:
    header = PushSigner(["super-secret-key"], clock=Clock()).header(BODY)
    assert "super-secret-key" not in header
    assert f"k={key_id(b'super-secret-key')}" in header
    assert "super-secret-key" not in repr(PushSigner(["super-secret-key"]).__dict__)


def test_a_wrong_key_is_refused() -> None:
    clock = Clock()
    header = PushSigner(["attacker"], clock=clock).header(BODY)
    assert reason_of(PushVerifier(["k"], clock=clock), header) == "unknown_key"
    unnamed = header.split(",k=")[0] + ",v1=" + header.split("v1=")[1]
    assert reason_of(PushVerifier(["k"], clock=clock), unnamed) == "bad_signature"


def test_a_tampered_body_is_refused() -> None:
    clock = Clock()
    header = PushSigner(["k"], clock=clock).header(BODY)
    assert reason_of(PushVerifier(["k"], clock=clock), header, BODY + b" ") == "bad_signature"


def test_an_old_timestamp_is_stale() -> None:
    header = PushSigner(["k"], clock=Clock(NOW - 31)).header(BODY)
    assert reason_of(PushVerifier(["k"], tolerance=30, clock=Clock()), header) == "stale"


def test_a_future_timestamp_is_refused() -> None:
    header = PushSigner(["k"], clock=Clock(NOW + 31)).header(BODY)
    assert reason_of(PushVerifier(["k"], tolerance=30, clock=Clock()), header) == "future"


def test_timestamps_inside_the_window_pass_both_ways() -> None:
    verifier = PushVerifier(["k"], tolerance=30, clock=Clock())
    for skew in (-29, 29):
        verifier.verify(PushSigner(["k"], clock=Clock(NOW + skew)).header(BODY), BODY)


def test_a_replayed_body_is_refused() -> None:
    clock = Clock()
    verifier = PushVerifier(["k"], clock=clock)
    header = PushSigner(["k"], clock=clock).header(BODY)
    verifier.verify(header, BODY)
    assert reason_of(verifier, header) == "replayed"
    clock.now += 31  # out of the window, the replay is now simply stale
    assert reason_of(verifier, header) == "stale"


def test_replay_cache_forgets_expired_signatures() -> None:
    clock = Clock()
    verifier = PushVerifier(["k"], tolerance=30, clock=clock)
    for i in range(50):
        clock.now = NOW + i
        body = b"%d" % i
        verifier.verify(PushSigner(["k"], clock=clock).header(body), body)
    assert len(verifier._replays) <= 32


def test_both_keys_verify_during_a_rotation() -> None:
    clock = Clock()
    verifier = PushVerifier(["k-new", "k-old"], clock=clock)
    old = PushSigner(["k-old"], clock=clock).header(BODY)
    new = PushSigner(["k-new", "k-old"], clock=clock).header(BODY)
    assert verifier.verify(old, BODY) == key_id(b"k-old")
    assert verifier.verify(new, BODY) == key_id(b"k-new")


def test_the_newest_key_signs() -> None:
    assert PushSigner(["k-new", "k-old"]).key_id == key_id(b"k-new")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("garbage", "malformed_signature"),
        ("t=abc,v1=" + "0" * 64, "malformed_signature"),
        ("t=1,t=2,v1=" + "0" * 64, "malformed_signature"),
        ("t=1,v1=xyz", "malformed_signature"),
        ("v1=" + "0" * 64, "malformed_signature"),
        ("t=1," + "x" * 600, "malformed_signature"),
    ],
)
def test_malformed_headers_are_refused(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_header(header)
    assert info.value.reason == reason


def test_upper_case_hex_and_spaces_are_accepted() -> None:
    t = int(NOW)
    mac = compute_signature(b"k", t, BODY).upper()
    verifier = PushVerifier(["k"], clock=Clock())
    assert verifier.verify(f" t={t} , v1={mac} ", BODY) == key_id(b"k")


def test_a_verifier_without_keys_refuses_everything() -> None:
    header = PushSigner(["k"], clock=Clock()).header(BODY)
    assert reason_of(PushVerifier([], clock=Clock()), header) == "no_keys"
