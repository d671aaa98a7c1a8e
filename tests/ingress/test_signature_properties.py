"""Property: whatever the header and body, the verifier answers or raises SignatureError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.exceptions import SignatureError
from ingress.signature import REASONS, sign_header, verify

NOW = 1_750_000_000
SECRETS = [("s1", b"whsec_prop"), ("s2", b"whsec_prop_2")]

_values = st.one_of(
    st.text(max_size=80),
    st.integers(-(10**15), 10**15).map(str),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.just(str(NOW)),
)
_items = st.tuples(
    st.sampled_from(["t", "v1", "v0", "v2", " t", "v1 ", "", "T", "V1"]) | st.text(max_size=5),
    st.sampled_from(["=", "", "=="]),
    _values,
).map(lambda parts: "".join(parts))
_near_headers = st.lists(_items, max_size=12).map(",".join)


def _outcome(header: str | None, body: bytes) -> str:
    try:
        return verify(header, body, SECRETS, NOW, 300, 60)
    except SignatureError as exc:
        reason = exc.reason
    assert reason in REASONS
    return reason


@settings(max_examples=500)
@given(st.one_of(st.none(), st.text(max_size=300), _near_headers), st.binary(max_size=256))
def test_parser_never_raises_anything_but_signature_error(header: str | None, body: bytes) -> None:
    _outcome(header, body)


@given(st.binary(max_size=512), st.integers(NOW - 300, NOW + 60), st.sampled_from(SECRETS))
def test_any_body_signed_in_window_verifies_with_its_secret(
    body: bytes, t: int, secret: tuple[str, bytes]
) -> None:
    assert verify(sign_header(body, secret[1], t), body, SECRETS, NOW, 300, 60) == secret[0]


@given(st.binary(max_size=256), st.binary(min_size=1, max_size=256))
def test_a_changed_body_never_verifies(body: bytes, suffix: bytes) -> None:
    header = sign_header(body, SECRETS[0][1], NOW)
    assert _outcome(header, body + suffix) == "bad_signature"
