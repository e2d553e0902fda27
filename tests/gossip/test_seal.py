"""Sealed frames: round trips, every reason a frame is refused, the replay window, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.keyring import Keyring, generate_key
from gossip.seal import (
    OVERHEAD,
    ReplayGuard,
    SealError,
    frame_nonce,
    open_sealed,
    seal,
)

T = 1_800_000_000.0
KEY = b"k" * 32
OTHER = b"o" * 32
N1 = b"\x01" * 12
N2 = b"\x02" * 12


def ring(*keys: bytes) -> Keyring:
    return Keyring(list(keys or (KEY,)))


def reason(fn, *args, **kw) -> str:
    with pytest.raises(SealError) as info:
        fn(*args, **kw)
    return info.value.reason


def test_a_packet_round_trips_with_its_send_time_key_and_nonce():
    frame = seal(ring(), "c", b"p", b"hello", T, N1)
    assert len(frame) == len(b"hello") + OVERHEAD
    opened = open_sealed(ring(), "c", b"p", frame, T + 1, ReplayGuard())
    assert (opened.payload, opened.nonce, opened.key_id) == (b"hello", N1, ring().primary_id)
    assert opened.sent_at == pytest.approx(T)


def test_the_payload_is_not_in_the_frame_in_clear():
    frame = seal(ring(), "c", b"p", b"dead member market-maker-1", T, N1)
    assert b"market-maker-1" not in frame


def test_any_installed_key_opens_but_only_the_primary_seals():
    old, new = ring(KEY), ring(KEY)
    new.use(new.install(OTHER))
    frame = seal(new, "c", b"p", b"x", T, N1)
    assert frame[2:6].hex() == new.primary_id != old.primary_id
    assert reason(open_sealed, old, "c", b"p", frame, T, None) == "unknown_key"
    old.install(OTHER)
    assert open_sealed(old, "c", b"p", frame, T, None).payload == b"x"


def test_too_short_a_frame_is_short():
    frame = seal(ring(), "c", b"p", b"", T, N1)
    assert reason(open_sealed, ring(), "c", b"p", frame[:-1], T, None) == "short"
    assert reason(open_sealed, ring(), "c", b"p", b"", T, None) == "short"


def test_a_plaintext_gossip_packet_is_bad_version():
    plaintext = b"\x82\x02" + b"\x00" * 60  # a CBOR array, as unsealed gossip starts
    assert reason(open_sealed, ring(), "c", b"p", plaintext, T, None) == "bad_version"


def test_a_key_id_not_in_the_keyring_is_unknown_key():
    frame = seal(ring(OTHER), "c", b"p", b"x", T, N1)
    assert reason(open_sealed, ring(KEY), "c", b"p", frame, T, None) == "unknown_key"


@pytest.mark.parametrize("what", ["flipped byte", "other cluster", "other kind", "other request"])
def test_a_frame_that_does_not_authenticate_is_auth_failed(what):
    frame = seal(ring(), "c", b"r", b"answer", T, N1, bind=N2)
    cluster, kind, bind = "c", b"r", N2
    if what == "flipped byte":
        frame = frame[:-3] + bytes([frame[-3] ^ 1]) + frame[-2:]
    elif what == "other cluster":
        cluster = "d"
    elif what == "other kind":
        frame = seal(ring(), "c", b"q", b"answer", T, N1)
        kind, bind = b"p", b""
    else:
        bind = b"\x03" * 12  # the answer to another request's nonce
    assert reason(open_sealed, ring(), cluster, kind, frame, T, None, bind=bind) == "auth_failed"


@pytest.mark.parametrize("skew", [-30.5, 30.5, -1e6])
def test_a_frame_sent_outside_the_window_is_expired(skew):
    frame = seal(ring(), "c", b"p", b"x", T, N1)
    assert reason(open_sealed, ring(), "c", b"p", frame, T - skew, ReplayGuard(30.0)) == "expired"


def test_a_frame_within_the_window_opens_once_and_its_copy_is_replayed():
    guard = ReplayGuard(30.0)
    frame = seal(ring(), "c", b"p", b"x", T, N1)
    assert open_sealed(ring(), "c", b"p", frame, T + 29, guard).payload == b"x"
    assert reason(open_sealed, ring(), "c", b"p", frame, T + 29.5, guard) == "replayed"
    # After the window the copy is refused as expired, and the guard has forgotten the nonce.
    assert reason(open_sealed, ring(), "c", b"p", frame, T + 31, guard) == "expired"
    assert len(guard) == 0


def test_a_forged_copy_does_not_spend_the_nonce_of_the_real_frame():
    # An attacker who copies a nonce onto garbage must not get the genuine frame refused.
    guard = ReplayGuard()
    frame = seal(ring(), "c", b"p", b"x", T, N1)
    forged = frame[:18] + b"\x00" * (len(frame) - 18)
    assert reason(open_sealed, ring(), "c", b"p", forged, T, guard) == "auth_failed"
    assert open_sealed(ring(), "c", b"p", frame, T, guard).payload == b"x"


def test_a_full_guard_forgets_the_oldest_and_refuses_anything_sent_before_it():
    guard = ReplayGuard(30.0, memory=2)
    for i, nonce in enumerate([N1, N2, b"\x03" * 12]):
        guard.check(nonce, T + i, T + 2)
    assert len(guard) == 2
    # N1 (sent at T) was forgotten: its replay is refused as expired rather than let through.
    with pytest.raises(SealError, match="expired"):
        guard.check(N1, T, T + 2)
    guard.check(b"\x04" * 12, T + 2, T + 2)


def test_response_nonce_binding_uses_the_request_frame_nonce():
    request = seal(ring(), "c", b"q", b"state", T, N1)
    answer = seal(ring(), "c", b"r", b"mine", T, N2, bind=frame_nonce(request))
    assert open_sealed(ring(), "c", b"r", answer, T, None, bind=N1).payload == b"mine"


def test_seal_refuses_misuse():
    with pytest.raises(ValueError):
        seal(ring(), "c", b"p", b"x", T, b"short")
    with pytest.raises(ValueError):
        seal(ring(), "c", b"r", b"x", T, N1)  # a response must bind its request
    with pytest.raises(ValueError):
        seal(ring(), "c", b"x", b"x", T, N1)


def test_error_messages_never_carry_the_key():
    frame = seal(ring(), "c", b"p", b"x", T, N1)
    with pytest.raises(SealError) as info:
        open_sealed(ring(), "d", b"p", frame, T, None)
    assert KEY.hex() not in repr(info.value) and "k" * 8 not in str(info.value)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_RING = Keyring([generate_key()])


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_seal_error(data):
    with pytest.raises(SealError):
        open_sealed(FUZZ_RING, "c", b"p", data, T, ReplayGuard())


@FUZZ
@given(st.binary(max_size=300), st.data())
def test_mutated_sealed_frames_raise_only_seal_error(payload, data):
    frame = bytearray(seal(FUZZ_RING, "c", b"p", payload, T, N1))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if mutation == "flip":
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del frame[data.draw(st.integers(0, len(frame) - 1)):]
    elif mutation == "extend":
        frame += data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = data.draw(st.integers(0, len(frame)))
        frame[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(SealError) as info:
        open_sealed(FUZZ_RING, "c", b"p", bytes(frame), T, ReplayGuard())
    assert info.value.reason in ("short", "bad_version", "unknown_key", "auth_failed")
