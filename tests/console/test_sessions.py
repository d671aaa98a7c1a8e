"""Console sessions: signed by the admin token that opened them, expiring, revocable."""

from __future__ import annotations

from pydantic import SecretStr

from quotaflow.commands.console.sessions import SessionKeys

TOKENS = {"alice": SecretStr("a" * 40), "bob": SecretStr("b" * 40)}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_verifies_until_it_expires() -> None:
    clock = Clock()
    keys = SessionKeys(TOKENS, ttl=60.0, clock=clock)
    session, cookie = keys.open("alice")
    assert keys.verify(cookie) == session
    assert session.actor == "console:alice"
    assert "a" * 40 not in cookie
    clock.now += 59
    assert keys.verify(cookie) is not None
    clock.now += 2
    assert keys.verify(cookie) is None


def test_a_tampered_or_foreign_cookie_is_refused() -> None:
    keys = SessionKeys(TOKENS, ttl=60.0)
    _, cookie = keys.open("alice")
    payload, mac = cookie.split(".")
    # Naming another token with alice's MAC, or flipping one character, fails.
    _, bob_cookie = keys.open("bob")
    assert keys.verify(f"{bob_cookie.split('.')[0]}.{mac}") is None
    # The first character: the last one of unpadded base64 carries bits a decoder drops,
    # so changing it can leave the MAC's bytes as they were.
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    assert keys.verify(f"{payload}.{flipped}") is None
    for junk in ("", "x", "a.b", "a.b.c", None):
        assert keys.verify(junk) is None
    # Another deployment's tokens (or this token removed) do not accept it.
    assert SessionKeys({"alice": SecretStr("c" * 40)}, ttl=60.0).verify(cookie) is None
    assert SessionKeys({"bob": TOKENS["bob"]}, ttl=60.0).verify(cookie) is None


def test_csrf_tokens_belong_to_one_session() -> None:
    keys = SessionKeys(TOKENS, ttl=60.0)
    first, _ = keys.open("alice")
    second, _ = keys.open("alice")
    token = keys.csrf_token(first)
    assert keys.check_csrf(first, token)
    assert not keys.check_csrf(second, token)
    assert not keys.check_csrf(first, None)
    assert not keys.check_csrf(first, "")
    bound = keys.bind(first, "redrive|acme")
    assert keys.check_bound(first, "redrive|acme", bound)
    assert not keys.check_bound(first, "redrive|other", bound)
    assert not keys.check_bound(second, "redrive|acme", bound)


def test_logout_revokes_the_session() -> None:
    keys = SessionKeys(TOKENS, ttl=60.0)
    session, cookie = keys.open("alice")
    _, other = keys.open("alice")
    keys.revoke(session)
    assert keys.verify(cookie) is None
    assert keys.verify(other) is not None


def test_authenticate_names_the_token() -> None:
    keys = SessionKeys(TOKENS, ttl=60.0)
    assert keys.authenticate("b" * 40) == "bob"
    assert keys.authenticate(" " + "a" * 40 + "\n") == "alice"
    assert keys.authenticate("a" * 39) is None
