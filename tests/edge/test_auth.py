"""Application tokens at the edge (`edge/auth.py`): pure, no server."""

from __future__ import annotations

import pytest

from edge.auth import (
    BAD_CREDENTIAL,
    LOOPBACK_APP,
    MISSING_CREDENTIAL,
    TOKEN_PREFIX,
    AppAuth,
    AuthError,
    generate_app_token,
    is_loopback,
    normalise_digests,
    token_digest,
)

RATING, GATEWAY, OLD = generate_app_token(), generate_app_token(), generate_app_token()


def auth(*, loopback: bool = False) -> AppAuth:
    return AppAuth(
        {"rating": [token_digest(RATING), token_digest(OLD)], "gateway": token_digest(GATEWAY)},
        allow_loopback=loopback,
    )


def reason(a: AppAuth, header: str | None, remote: str | None = "10.0.0.7") -> str:
    with pytest.raises(AuthError) as caught:
        a.authenticate(header, remote)
    return caught.value.reason


def test_tokens_are_random_prefixed_and_long() -> None:
    tokens = {generate_app_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith(TOKEN_PREFIX) and len(t) >= 40 for t in tokens)
    assert len(token_digest(RATING)) == 64
    assert token_digest(RATING) != token_digest(GATEWAY)


def test_a_token_names_its_application_and_both_tokens_work_during_a_rotation() -> None:
    a = auth()
    assert a.authenticate(f"Bearer {RATING}", None) == "rating"
    assert a.authenticate(f"Bearer {OLD}", None) == "rating"
    assert a.authenticate(f"bearer  {GATEWAY} ", None) == "gateway"
    assert a.apps == ("gateway", "rating")
    assert a.labels == ("gateway", "rating")


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {RATING}x",
        f"Bearer {RATING[:-1]}",
        f"Basic {RATING}",
        RATING,
        "Bearer",
        "Bearer ",
        f"Bearer {token_digest(RATING)}",  # the digest is not a credential
        "Bearer " + "a" * 10_000,
    ],
)
def test_anything_but_a_configured_token_is_a_bad_credential(header: str) -> None:
    assert reason(auth(), header) == BAD_CREDENTIAL


def test_no_header_is_a_missing_credential_unless_loopback_is_allowed() -> None:
    assert reason(auth(), None, "127.0.0.1") == MISSING_CREDENTIAL
    allowed = auth(loopback=True)
    for remote in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
        assert allowed.authenticate(None, remote) == LOOPBACK_APP, remote
    outside: tuple[str | None, ...] = ("10.0.0.7", "::ffff:10.0.0.7", "2001:db8::1", "", None, "x")
    for peer in outside:
        assert reason(allowed, None, peer) == MISSING_CREDENTIAL, peer
    assert allowed.labels == ("gateway", "rating", LOOPBACK_APP)


def test_a_presented_credential_is_judged_even_from_loopback() -> None:
    allowed = auth(loopback=True)
    assert reason(allowed, "Bearer wrong", "127.0.0.1") == BAD_CREDENTIAL
    assert allowed.authenticate(f"Bearer {RATING}", "127.0.0.1") == "rating"


def test_with_nothing_configured_everyone_is_refused() -> None:
    nobody = AppAuth()
    assert nobody.refuses_everyone
    assert reason(nobody, None, "127.0.0.1") == MISSING_CREDENTIAL
    assert reason(nobody, f"Bearer {RATING}") == BAD_CREDENTIAL
    assert not AppAuth(allow_loopback=True).refuses_everyone
    assert not auth().refuses_everyone


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("fe80::1%lo")
    assert not is_loopback("0.0.0.0")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"rating": "qfa_a-token-by-mistake"}, "64 hex"),
        ({"rating": []}, "non-empty"),
        ({"rating": ["ab" * 32], "other": "AB" * 32}, "also listed"),
        ({"loopback": "ab" * 32}, "reserved"),
        ({"bad name": "ab" * 32}, "must match"),
        (["ab" * 32], "JSON object"),
    ],
)
def test_malformed_configurations_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_digests(value)


def test_digests_are_normalised() -> None:
    assert normalise_digests({"a": " " + "AB" * 32}) == {"a": ["ab" * 32]}
