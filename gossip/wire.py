"""The gossip wire format: CBOR packets with a version, decoded strictly.

What it is for: turning protocol messages into bytes and back. A packet is the CBOR array
``[version, cluster, [message, ...]]``; each message is a CBOR array whose first item is its type
code. Messages are encoded one by one so the sender can pack as many as fit in one datagram, and
a broadcast is encoded once however often it is retransmitted. Push-pull states are
``[version, "pp", cluster, [entry, ...]]``. `cluster` is the cluster's name, as memberlist's
label: peers of two clusters that reach each other never mix.

It must never trust its input: anything that is not exactly a known message of the right shape
raises `WireError` (the caller drops the packet and counts it); an unknown version raises
`VersionError`, another cluster's name `ForeignClusterError` (both are WireErrors). The type codes
are append-only: never renumber one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cbor2

from gossip.config import DEFAULT_CLUSTER, MAX_CLUSTER_NAME, MAX_INCARNATION, PROTOCOL_VERSION
from gossip.types import Address, MemberState

MAX_NAME = 128
MAX_HOST = 255


class WireError(ValueError):
    """A packet or state that is not well-formed."""


class VersionError(WireError):
    """A packet of a protocol version this node does not speak."""


class ForeignClusterError(WireError):
    """A well-formed packet or state of another cluster."""


def check_cluster(name: Any) -> str:
    """The cluster name every packet carries: 1 to MAX_CLUSTER_NAME characters. Raises ValueError."""
    if type(name) is not str or not 0 < len(name) <= MAX_CLUSTER_NAME:
        raise ValueError(f"a cluster name must be 1 to {MAX_CLUSTER_NAME} characters")
    return name


# Type codes (append-only).
PING, ACK, NACK, PING_REQ, ALIVE, SUSPECT, DEAD = range(7)


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # the name the sender believes lives at this address
    source: str


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    target: str
    target_addr: Address
    source: str


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    incarnation: int
    addr: Address
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    source: str  # who suspects


@dataclass(frozen=True, slots=True)
class Dead:
    name: str
    incarnation: int
    source: str  # who declares; source == name means a graceful leave


Message = Ping | Ack | Nack | PingReq | Alive | Suspect | Dead


def encode_message(msg: Message) -> bytes:
    match msg:
        case Ping(seq, target, source):
            item: list[Any] = [PING, seq, target, source]
        case Ack(seq, source):
            item = [ACK, seq, source]
        case Nack(seq):
            item = [NACK, seq]
        case PingReq(seq, target, (host, port), source):
            item = [PING_REQ, seq, target, host, port, source]
        case Alive(name, inc, (host, port), meta):
            item = [ALIVE, name, inc, host, port, meta]
        case Suspect(name, inc, source):
            item = [SUSPECT, name, inc, source]
        case Dead(name, inc, source):
            item = [DEAD, name, inc, source]
        case _:
            raise TypeError(f"not a gossip message: {msg!r}")
    return cbor2.dumps(item)


def _array_header(n: int) -> bytes:
    if n < 24:
        return bytes([0x80 + n])
    if n < 256:
        return bytes([0x98, n])
    return bytes([0x99]) + n.to_bytes(2, "big")


@lru_cache(maxsize=16)
def _packet_prefix(cluster: str) -> bytes:
    return bytes([0x83]) + cbor2.dumps(PROTOCOL_VERSION) + cbor2.dumps(check_cluster(cluster))


def packet_overhead(n_messages: int, cluster: str = DEFAULT_CLUSTER) -> int:
    return len(_packet_prefix(cluster)) + len(_array_header(n_messages))


def encode_packet(encoded_messages: list[bytes], cluster: str = DEFAULT_CLUSTER) -> bytes:
    """Join already-encoded messages into one packet without re-encoding them."""
    return _packet_prefix(cluster) + _array_header(len(encoded_messages)) + b"".join(encoded_messages)


# --- decoding -------------------------------------------------------------------------------
#
# Every check looks at the exact type before it hashes, compares or prints a value: a decoded
# item may be a list or a map (unhashable), a tag object, a float NaN, a cbor2 `undefined`, or an
# integer of thousands of digits (which str() and repr() refuse to print).


def _show(v: Any) -> str:
    """A short description of a hostile value for an error message; never raises."""
    if type(v) is int:
        return str(v) if v.bit_length() <= 64 else f"an integer of {v.bit_length()} bits"
    if type(v) in (str, bytes):
        return repr(v[:40])
    return type(v).__name__


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0 or v >= 2**63:
        raise WireError(f"{what} must be a non-negative integer")
    return v


def _inc(v: Any) -> int:
    # No peer ever sends more: anything above is forged or broken, and the packet is dropped.
    if type(v) is not int or not 0 <= v <= MAX_INCARNATION:
        raise WireError(f"incarnation must be an integer from 0 to {MAX_INCARNATION}")
    return v


def _str(v: Any, what: str, limit: int = MAX_NAME) -> str:
    if type(v) is not str or not v or len(v) > limit:
        raise WireError(f"{what} must be a non-empty string of at most {limit} characters")
    return v


def _addr(host: Any, port: Any) -> Address:
    host = _str(host, "host", MAX_HOST)
    port = _int(port, "port")
    if not 0 < port < 65536:
        raise WireError("port out of range")
    return (host, port)


_META_VALUE_TYPES = (str, int, bool, type(None))


def _meta(v: Any) -> dict[str, Any]:
    # Metadata ends up in HTTP/JSON answers: only short plain values are let through.
    if type(v) is not dict or len(v) > 16:
        raise WireError("meta must be a map of at most 16 entries")
    for k, x in v.items():
        if type(k) is not str or len(k) > 64 or type(x) not in _META_VALUE_TYPES:
            raise WireError("meta entries must be short strings mapped to str, int, bool or null")
        if type(x) is str and len(x) > 255:
            raise WireError("meta values must be at most 255 characters")
        if type(x) is int and not -(2**63) <= x < 2**63:
            raise WireError("meta integers must fit in 64 bits")
    return v


def decode_message(item: Any) -> Message:
    if type(item) is not list or not item or type(item[0]) is not int:
        raise WireError("message must be an array starting with a type code")
    code, args = item[0], item[1:]
    try:
        match code:
            case 0:
                seq, target, source = args
                return Ping(_int(seq, "seq"), _str(target, "target"), _str(source, "source"))
            case 1:
                seq, source = args
                return Ack(_int(seq, "seq"), _str(source, "source"))
            case 2:
                (seq,) = args
                return Nack(_int(seq, "seq"))
            case 3:
                seq, target, host, port, source = args
                return PingReq(
                    _int(seq, "seq"), _str(target, "target"), _addr(host, port), _str(source, "source")
                )
            case 4:
                name, inc, host, port, meta = args
                return Alive(_str(name, "name"), _inc(inc), _addr(host, port), _meta(meta))
            case 5:
                name, inc, source = args
                return Suspect(_str(name, "name"), _inc(inc), _str(source, "source"))
            case 6:
                name, inc, source = args
                return Dead(_str(name, "name"), _inc(inc), _str(source, "source"))
    except WireError as exc:
        raise WireError(f"bad message of type {code}: {exc}") from None
    except ValueError:  # unpacking: the wrong number of fields
        raise WireError(f"message of type {code} has {len(args)} fields") from None
    raise WireError(f"unknown message type {_show(code)}")


def _loads(data: bytes) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage; all mean "malformed"
        raise WireError(f"not CBOR: {exc}") from None


def _check_outline(obj: Any, length: int, what: str, cluster_at: int, cluster: str) -> None:
    # The version first, so that a packet of another version (of another shape) says so.
    if type(obj) is not list or not obj:
        raise WireError(f"{what} must be a non-empty array")
    if type(obj[0]) is not int or obj[0] != PROTOCOL_VERSION:
        raise VersionError(f"unsupported protocol version {_show(obj[0])}")
    if len(obj) != length or type(obj[-1]) is not list or type(obj[cluster_at]) is not str:
        raise WireError(f"{what} is not of the shape of version {PROTOCOL_VERSION}")
    if obj[cluster_at] != cluster:
        raise ForeignClusterError(f"{what} of cluster {_show(obj[cluster_at])}")


def decode_packet(data: bytes, cluster: str = DEFAULT_CLUSTER) -> list[Message]:
    obj = _loads(data)
    _check_outline(obj, 3, "packet", 1, cluster)
    return [decode_message(item) for item in obj[2]]


# --- push-pull state --------------------------------------------------------------------------

_STATE_CODES = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}
_STATES = {v: k for k, v in _STATE_CODES.items()}


@dataclass(frozen=True, slots=True)
class StateEntry:
    name: str
    incarnation: int
    addr: Address
    state: MemberState
    meta: dict[str, Any]


def encode_state(entries: list[StateEntry], cluster: str = DEFAULT_CLUSTER) -> bytes:
    return cbor2.dumps(
        [
            PROTOCOL_VERSION,
            "pp",
            check_cluster(cluster),
            [[e.name, e.incarnation, e.addr[0], e.addr[1], _STATE_CODES[e.state], e.meta] for e in entries],
        ]
    )


def decode_state(data: bytes, cluster: str = DEFAULT_CLUSTER) -> list[StateEntry]:
    obj = _loads(data)
    _check_outline(obj, 4, "push-pull state", 2, cluster)
    if type(obj[1]) is not str or obj[1] != "pp":
        raise WireError("push-pull state must be [version, 'pp', cluster, [entries]]")
    out = []
    seen: set[str] = set()
    for item in obj[3]:
        if type(item) is not list or len(item) != 6:
            raise WireError("state entry must have 6 fields")
        name, inc, host, port, code, meta = item
        # The type first: an array or a map here is unhashable, and `in` would raise TypeError.
        if type(code) is not int or code not in _STATES:
            raise WireError(f"unknown member state code {_show(code)}")
        entry = StateEntry(_str(name, "name"), _inc(inc), _addr(host, port), _STATES[code], _meta(meta))
        if entry.name in seen:
            # A view holds a member once; repeats could walk an incarnation up within one state.
            raise WireError("a member appears twice in one push-pull state")
        seen.add(entry.name)
        out.append(entry)
    return out
