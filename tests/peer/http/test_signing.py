"""Signed calls and grants: what verifies, each reason a request or grant is refused, replays."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.keyring import Keyring, generate_key
from peer.http.signing import (
    HEADERS,
    KEY,
    NONCE,
    PEER,
    SIGNATURE,
    TIME,
    Grant,
    GrantError,
    GrantSigner,
    GrantVerifier,
    SignatureError,
    Signer,
    Verifier,
    header_map,
)

T = 1_700_000_000.0
RING = Keyring([bytes(range(32))])


def signer(name: str = "mm-1", ring: Keyring = RING) -> Signer:
    counter = iter(range(1, 10**9))
    return Signer(ring, name, clock=lambda: T, nonces=lambda: next(counter))


def reason(exc: pytest.ExceptionInfo) -> str:
    return exc.value.reason


def test_a_signed_request_verifies_and_names_its_signer():
    headers = signer().sign("POST", "/authority/AAPL/claim", b'{"epoch":1}', T, 7)
    assert set(headers) == set(HEADERS)
    assert Verifier(RING).verify("POST", "/authority/AAPL/claim", headers, b'{"epoch":1}', T + 29) == "mm-1"


@pytest.mark.parametrize("change", ["method", "target", "body", "peer", "time", "nonce"])
def test_any_change_to_what_was_signed_breaks_the_signature(change):
    headers = signer().sign("POST", "/fills?x=1", b"{}", T, 7)
    method, target, body = "POST", "/fills?x=1", b"{}"
    if change == "method":
        method = "PUT"
    elif change == "target":
        target = "/fills?x=2"
    elif change == "body":
        body = b"{ }"
    elif change == "peer":
        headers[PEER] = "exchange"
    elif change == "time":
        headers[TIME] = str(int(headers[TIME]) + 1)
    else:
        headers[NONCE] = "00000000000000ff"
    with pytest.raises(SignatureError) as exc:
        Verifier(RING).verify(method, target, headers, body, T)
    assert reason(exc) == "bad_signature"


def test_an_unsigned_request_is_missing_its_signature():
    with pytest.raises(SignatureError) as exc:
        Verifier(RING).verify("POST", "/fills", {PEER: "x"}, b"", T)
    assert reason(exc) == "missing"


@pytest.mark.parametrize("header,value", [(TIME, "-5"), (TIME, "1e9"), (NONCE, "xyz"), (KEY, "ABCDEF01"),
                                          (SIGNATURE, "00"), (PEER, "a b"), (PEER, "")])
def test_a_malformed_header_is_refused_as_malformed(header, value):
    headers = signer().sign("POST", "/fills", b"", T, 1)
    headers[header] = value
    with pytest.raises(SignatureError) as exc:
        Verifier(RING).verify("POST", "/fills", headers, b"", T)
    assert reason(exc) == "malformed"


def test_a_key_outside_the_keyring_is_unknown():
    other = Keyring([generate_key()])
    headers = signer(ring=other).sign("POST", "/fills", b"", T, 1)
    with pytest.raises(SignatureError) as exc:
        Verifier(RING).verify("POST", "/fills", headers, b"", T)
    assert reason(exc) == "unknown_key"


def test_a_forged_signature_under_a_known_key_id_is_refused():
    headers = signer().sign("POST", "/fills", b"", T, 1)
    headers[SIGNATURE] = "0" * 64
    with pytest.raises(SignatureError) as exc:
        Verifier(RING).verify("POST", "/fills", headers, b"", T)
    assert reason(exc) == "bad_signature"


@pytest.mark.parametrize("skew", [-30.5, 30.5, -3600.0])
def test_a_request_signed_outside_the_window_has_expired(skew):
    headers = signer().sign("POST", "/fills", b"", T + skew, 1)
    with pytest.raises(SignatureError) as exc:
        Verifier(RING).verify("POST", "/fills", headers, b"", T)
    assert reason(exc) == "expired"


def test_a_replayed_request_is_refused_within_the_window_and_expired_after_it():
    verifier = Verifier(RING)
    headers = signer().sign("POST", "/fills", b"", T, 1)
    verifier.verify("POST", "/fills", headers, b"", T)
    with pytest.raises(SignatureError) as exc:
        verifier.verify("POST", "/fills", headers, b"", T + 10)
    assert reason(exc) == "replayed"
    with pytest.raises(SignatureError) as exc:
        verifier.verify("POST", "/fills", headers, b"", T + 31)
    assert reason(exc) == "expired"


def test_nonces_are_forgotten_once_their_requests_would_have_expired():
    verifier = Verifier(RING)
    s = signer()
    for i in range(100):
        verifier.verify("POST", "/fills", s.sign("POST", "/fills", b"", T, i), b"", T)
    assert len(verifier) == 100
    verifier.verify("POST", "/fills", s.sign("POST", "/fills", b"", T + 31, 1000), b"", T + 31)
    assert len(verifier) == 1


def test_a_full_nonce_memory_refuses_instead_of_forgetting_early():
    verifier = Verifier(RING, max_nonces=2)
    s = signer()
    for i in range(2):
        verifier.verify("POST", "/fills", s.sign("POST", "/fills", b"", T, i), b"", T)
    with pytest.raises(SignatureError) as exc:
        verifier.verify("POST", "/fills", s.sign("POST", "/fills", b"", T, 9), b"", T)
    assert reason(exc) == "busy"


def test_a_forged_request_does_not_use_up_nonce_memory():
    verifier = Verifier(RING)
    headers = signer().sign("POST", "/fills", b"", T, 1)
    headers[SIGNATURE] = "1" * 64
    with pytest.raises(SignatureError):
        verifier.verify("POST", "/fills", headers, b"", T)
    assert len(verifier) == 0


def test_after_a_rotation_both_keys_verify_and_the_new_primary_signs():
    ring = Keyring([bytes(range(32))])
    old = signer(ring=ring).sign("POST", "/fills", b"", T, 1)
    new_id = ring.install(bytes(range(1, 33)))
    ring.use(new_id)
    new = signer(ring=ring).sign("POST", "/fills", b"", T, 2)
    assert new[KEY] == new_id != old[KEY]
    verifier = Verifier(ring)
    assert verifier.verify("POST", "/fills", old, b"", T) == "mm-1"
    assert verifier.verify("POST", "/fills", new, b"", T) == "mm-1"


def test_header_map_refuses_a_signing_header_given_twice():
    with pytest.raises(SignatureError) as exc:
        header_map([(b"x-murmur-nonce", b"1"), (b"x-murmur-nonce", b"2")])
    assert reason(exc) == "malformed"
    assert header_map([(b"host", b"x"), (b"x-murmur-peer", b"mm-1")]) == {PEER: "mm-1"}


text = st.one_of(st.text(max_size=80), st.sampled_from(["0", "00000000", "0" * 16, "0" * 64, "mm-1"]))


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.sampled_from(HEADERS), text), method=st.text(max_size=10),
       target=st.text(max_size=40), body=st.binary(max_size=64), now=st.floats(allow_nan=True))
def test_any_header_values_raise_only_signature_error(values, method, target, body, now):
    try:
        Verifier(RING).verify(method, target, values, body, now)
    except SignatureError as exc:
        assert exc.reason in ("missing", "malformed", "unknown_key", "expired", "bad_signature")
    else:
        raise AssertionError("an unsigned request verified")


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=8))
def test_header_map_of_any_bytes_raises_only_signature_error(raw):
    try:
        header_map(raw + [(b"x-murmur-key", b"\xff")])
    except SignatureError:
        pass


# --- grants ---------------------------------------------------------------------------------------

TERMS = Grant("R1-1", "q-1", "mm-1", "AAPL", 10, 5, T + 31.5)


def test_a_grant_verifies_to_its_terms():
    grant = GrantSigner(RING).sign(TERMS)
    assert GrantVerifier(RING).verify(grant) == TERMS


@pytest.mark.parametrize("field,value", [("bid_quantity", 1_000_000), ("expires_at", T + 999.5),
                                         ("holder", "mm-2"), ("quote_id", "q-2"), ("reservation_id", "R1-2"),
                                         ("symbol", "MSFT")])
def test_a_grant_with_any_term_changed_is_refused(field, value):
    grant = {**GrantSigner(RING).sign(TERMS), field: value}
    with pytest.raises(GrantError) as exc:
        GrantVerifier(RING).verify(grant)
    assert reason(exc) == "bad_grant"


def test_a_grant_under_another_key_or_missing_is_refused():
    other = GrantSigner(Keyring([generate_key()])).sign(TERMS)
    with pytest.raises(GrantError) as exc:
        GrantVerifier(RING).verify(other)
    assert reason(exc) == "unknown_key"
    with pytest.raises(GrantError) as exc:
        GrantVerifier(RING).verify(None)
    assert reason(exc) == "grant-missing"


def test_a_request_signature_is_not_a_grant():
    # Different derived keys: a MAC made for one purpose never verifies for the other.
    grant = GrantSigner(RING).sign(TERMS)
    headers = signer().sign("POST", "/fills", b"", T, 1)
    with pytest.raises(GrantError):
        GrantVerifier(RING).verify({**grant, "mac": headers[SIGNATURE]})


@settings(max_examples=300, deadline=None)
@given(grant=st.one_of(
    st.none(), st.integers(), st.text(max_size=10),
    st.dictionaries(st.sampled_from([*TERMS.to_json(), "key", "mac", "extra"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)))))
def test_any_grant_value_raises_only_grant_error(grant):
    with pytest.raises(GrantError):
        GrantVerifier(RING).verify(grant)
