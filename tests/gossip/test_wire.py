"""The CBOR wire format: round trips for every message, strict rejection of everything else."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip import wire
from gossip.config import MAX_INCARNATION, PROTOCOL_VERSION
from gossip.types import MemberState

from . import cborgen

names = st.text(min_size=1, max_size=wire.MAX_NAME)
incs = st.integers(min_value=0, max_value=MAX_INCARNATION)
seqs = st.integers(min_value=0, max_value=2**63 - 1)
addrs = st.tuples(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=65535))
metas = st.dictionaries(
    st.text(max_size=64),
    st.one_of(st.text(max_size=255), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(), st.none()),
    max_size=16,
)

messages = st.one_of(
    st.builds(wire.Ping, seqs, names, names),
    st.builds(wire.Ack, seqs, names),
    st.builds(wire.Nack, seqs),
    st.builds(wire.PingReq, seqs, names, addrs, names),
    st.builds(wire.Alive, names, incs, addrs, metas),
    st.builds(wire.Suspect, names, incs, names),
    st.builds(wire.Dead, names, incs, names),
)


@given(st.lists(messages, max_size=20))
def test_every_message_round_trips_through_a_packet(msgs):
    packet = wire.encode_packet([wire.encode_message(m) for m in msgs])
    assert wire.decode_packet(packet) == msgs
    assert len(packet) == wire.packet_overhead(len(msgs)) + sum(len(wire.encode_message(m)) for m in msgs)


@given(st.lists(st.builds(wire.StateEntry, names, incs, addrs, st.sampled_from(list(MemberState)), metas), max_size=20,
                unique_by=lambda e: e.name))
def test_push_pull_state_round_trips(entries):
    assert wire.decode_state(wire.encode_state(entries)) == entries


@given(st.binary(max_size=1400))
def test_arbitrary_bytes_never_raise_anything_but_wire_error(data):
    try:
        wire.decode_packet(data)
    except wire.WireError:
        pass
    try:
        wire.decode_state(data)
    except wire.WireError:
        pass


# Well-formed CBOR of the wrong shape: the decoder must reject it, never crash or accept it.
cbor_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10), st.binary(max_size=10), st.floats()),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


@given(st.lists(cbor_values, max_size=5))
def test_wrong_shapes_are_rejected_with_wire_error(items):
    data = cbor2.dumps([PROTOCOL_VERSION, "murmur", items])
    try:
        decoded = wire.decode_packet(data)
    except wire.WireError:
        return
    # Anything accepted must be exactly a list of well-formed messages that re-encode the same.
    assert all(isinstance(m, wire.Message.__args__) for m in decoded)  # type: ignore[attr-defined]


def test_unknown_version_is_a_version_error():
    with pytest.raises(wire.VersionError):
        wire.decode_packet(cbor2.dumps([PROTOCOL_VERSION + 1, "murmur", []]))
    with pytest.raises(wire.VersionError):
        wire.decode_state(cbor2.dumps([PROTOCOL_VERSION + 1, "pp", "murmur", []]))
    # Version 1 had no cluster name: its packets and states are of another version, not malformed.
    with pytest.raises(wire.VersionError):
        wire.decode_packet(cbor2.dumps([1, [[2, 5]]]))
    with pytest.raises(wire.VersionError):
        wire.decode_state(cbor2.dumps([1, "pp", []]))


@pytest.mark.parametrize(
    "item",
    [
        [0, 1, "a"],  # ping missing its source
        [0, -1, "a", "b"],  # negative seq
        [0, 1, "", "b"],  # empty name
        [4, "n", 1, "h", 0, {}],  # port 0
        [4, "n", 1, "h", 70000, {}],  # port out of range
        [4, "n", 1, "h", 1, {"k": [1, 2]}],  # meta value not plain
        [4, "n", 1, "h", 1, {"k": "x" * 300}],  # meta value too long
        [5, "n", True, "s"],  # bool is not an incarnation
        [99, 1],  # unknown type
        [],  # empty
    ],
)
def test_malformed_messages_are_rejected(item):
    with pytest.raises(wire.WireError):
        wire.decode_packet(cbor2.dumps([PROTOCOL_VERSION, "murmur", [item]]))


# Every shape of CBOR a hostile peer can send (maps keyed by arrays, tags, bignums of thousands of
# digits, NaN, undefined, indefinite lengths...), alone and inside packets and states of the
# right outline: only WireError (VersionError is one) may come out, never TypeError & co.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# What each decoder reads: CBOR in the outline it expects (a packet, a push-pull state).
DECODERS = {
    "packet": (cborgen.packets(PROTOCOL_VERSION), wire.decode_packet),
    "state": (cborgen.states(PROTOCOL_VERSION), wire.decode_state),
}


@pytest.mark.parametrize("outline", DECODERS)
@FUZZ
@given(data=st.data())
def test_decoding_raises_only_wire_error_on_any_cbor(outline, data):
    blobs, decode = DECODERS[outline]
    try:
        decode(data.draw(blobs))
    except wire.WireError:
        pass


@FUZZ
@given(cborgen.items)
def test_decode_message_raises_only_wire_error_on_any_item(item):
    try:
        obj = cbor2.loads(cborgen.encode(item))
    except Exception:
        return  # not something cbor2 decodes: decode_message never sees it
    try:
        wire.decode_message(obj)
    except wire.WireError:
        pass


@pytest.mark.parametrize("code", [[0], {"a": 1}, [], 10**5000, None, 1.0, cbor2.undefined, cbor2.CBORTag(99, 1)],
                         ids=["list", "map", "empty", "huge", "null", "float", "undefined", "tag"])
def test_a_state_code_of_any_type_is_a_wire_error(code):
    # Found against a live cluster: a list here raised TypeError (unhashable) and ended the peer.
    data = cbor2.dumps([PROTOCOL_VERSION, "pp", "murmur", [["zz-x", 1, "127.0.0.1", 1, code, {}]]])
    with pytest.raises(wire.WireError):
        wire.decode_state(data)


def test_the_payload_that_stopped_a_cluster_is_a_wire_error():
    with pytest.raises(wire.WireError, match="state code"):
        wire.decode_state(cbor2.dumps([PROTOCOL_VERSION, "pp", "murmur", [["zz-x", 1, "127.0.0.1", 1, [0], {}]]]))
    with pytest.raises(wire.VersionError):  # as it was sent, in version 1
        wire.decode_state(cbor2.dumps([1, "pp", [["zz-x", 1, "127.0.0.1", 1, [0], {}]]]))


def test_numbers_too_long_to_print_are_wire_errors():
    huge = 10**5000
    v = PROTOCOL_VERSION
    for data in (cbor2.dumps([huge, []]), cbor2.dumps([huge, "pp", []]), cbor2.dumps([v, "murmur", [[huge]]]),
                 cbor2.dumps([v, "murmur", [[4, "n", 1, "h", 1, {"k": huge}]]]), cbor2.dumps([v, huge, []]),
                 cbor2.dumps([v, "pp", huge, []])):
        with pytest.raises(wire.WireError):
            wire.decode_packet(data)
        with pytest.raises(wire.WireError):
            wire.decode_state(data)


@pytest.mark.parametrize("inc", [MAX_INCARNATION + 1, 2**63 - 1, 2**63, -1])
def test_an_incarnation_above_the_bound_is_a_wire_error(inc):
    for msg in (wire.Alive("n", inc, ("h", 1), {}), wire.Suspect("n", inc, "s"), wire.Dead("mm-3", inc, "x")):
        with pytest.raises(wire.WireError, match="incarnation"):
            wire.decode_packet(wire.encode_packet([wire.encode_message(msg)]))
    with pytest.raises(wire.WireError, match="incarnation"):
        wire.decode_state(wire.encode_state([wire.StateEntry("n", inc, ("h", 1), MemberState.ALIVE, {})]))


def test_a_member_twice_in_one_state_is_a_wire_error():
    e = wire.StateEntry("n", 1, ("h", 1), MemberState.ALIVE, {})
    with pytest.raises(wire.WireError, match="twice"):
        wire.decode_state(wire.encode_state([e, e]))
