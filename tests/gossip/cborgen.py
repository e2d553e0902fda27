"""Hypothesis strategies for arbitrary CBOR items of every shape, encoded by hand.

cbor2 can only encode what Python can hold, so it never produces a map whose key is an array or a
map, a tag around the wrong content, a simple value outside the usual four, or an
indefinite-length item. A hostile peer can send all of these. Here an item is a small tree
(`("array", [...])`, `("map", [(key, value), ...])`, `("tag", n, item)`, ...) and `encode` turns
it into bytes, so the decoders are fed exactly what the wire can carry.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError("too large for a CBOR head")


def encode(item) -> bytes:
    kind = item[0]
    if kind == "int":
        n = item[1]
        if 0 <= n < 2**64:
            return _head(_UINT, n)
        if -(2**64) <= n < 0:
            return _head(_NINT, -1 - n)
        # A bignum: tag 2 (positive) or 3 (negative) around a byte string.
        tag, mag = (2, n) if n >= 0 else (3, -1 - n)
        raw = mag.to_bytes((mag.bit_length() + 7) // 8, "big")
        return _head(_TAG, tag) + _head(_BYTES, len(raw)) + raw
    if kind == "bytes":
        return _head(_BYTES, len(item[1])) + item[1]
    if kind == "text":
        raw = item[1].encode("utf-8", "surrogatepass")
        return _head(_TEXT, len(raw)) + raw
    if kind == "float":
        return bytes([0xFB]) + struct.pack(">d", item[1])
    if kind == "float16":
        return bytes([0xF9]) + item[1]
    if kind == "simple":
        n = item[1]
        return bytes([0xE0 | n]) if n < 24 else bytes([0xF8, n])
    if kind == "array":
        body = b"".join(encode(x) for x in item[1])
        if item[2]:  # indefinite length
            return bytes([0x9F]) + body + b"\xff"
        return _head(_ARRAY, len(item[1])) + body
    if kind == "map":
        body = b"".join(encode(k) + encode(v) for k, v in item[1])
        if item[2]:
            return bytes([0xBF]) + body + b"\xff"
        return _head(_MAP, len(item[1])) + body
    if kind == "tag":
        return _head(_TAG, item[1]) + encode(item[2])
    if kind == "raw":
        return item[1]
    raise ValueError(kind)


def text(s: str) -> tuple:
    return ("text", s)


def integer(n: int) -> tuple:
    return ("int", n)


def array(*items) -> tuple:
    return ("array", list(items), False)


ints = st.one_of(
    st.integers(min_value=-30, max_value=30),
    st.integers(),
    st.sampled_from([2**31, 2**53 - 1, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**64) - 1,
                     10**30, -(10**30)]),
    # More digits than Python will turn into a string (str() and repr() raise), built lazily so
    # that hypothesis never has to print the number itself.
    st.sampled_from([5000, -5000]).map(lambda e: 10**e if e > 0 else -(10**-e)),
).map(integer)

leaves = st.one_of(
    ints,
    st.binary(max_size=12).map(lambda b: ("bytes", b)),
    st.text(max_size=12).map(text),
    st.sampled_from(["mm-1", "", "pp", "murmur", "127.0.0.1", "x" * 300]).map(text),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: ("float", f)),
    st.binary(min_size=2, max_size=2).map(lambda b: ("float16", b)),
    # false, true, null, undefined, and the other simple values (some of them reserved).
    st.sampled_from([20, 21, 22, 23, 0, 16, 19, 24, 31, 32, 255]).map(lambda n: ("simple", n)),
    # A few raw byte strings that are not one well-formed item: a bare break, a truncated head.
    st.sampled_from([b"\xff", b"\x18", b"\x5f\x41a\xff", b"\x7f\x61a\xff", b"\x1c"]).map(lambda b: ("raw", b)),
)

# Tags: the semantic ones cbor2 interprets (datetime, bignum, decimal, fraction, regexp, mime,
# uuid, sets, shared references, ipaddress, ...), and arbitrary numbers.
tag_numbers = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 55799, 256, 258, 260, 261, 1004]),
    st.integers(min_value=0, max_value=2**64 - 1),
)


def _compound(inner):
    return st.one_of(
        st.tuples(st.just("array"), st.lists(inner, max_size=6), st.booleans()),
        st.tuples(st.just("map"), st.lists(st.tuples(inner, inner), max_size=4), st.booleans()),
        st.tuples(st.just("tag"), tag_numbers, inner),
    )


items = st.recursive(leaves, _compound, max_leaves=24)


def _near(valid: tuple):
    """Either the valid field or anything at all: most of a shape stays right, so the decoder is
    pushed past its first checks into every branch."""
    return st.one_of(st.just(valid), items)


def _message():
    codes = st.integers(min_value=0, max_value=7)
    fields = st.lists(
        st.one_of(_near(integer(1)), _near(text("mm-1")), _near(text("127.0.0.1")), _near(integer(7946)),
                  _near(("map", [], False))),
        max_size=6,
    )
    return st.one_of(items, st.tuples(codes, fields).map(lambda t: array(integer(t[0]), *t[1])))


def _entry():
    return st.tuples(
        _near(text("mm-1")), _near(integer(3)), _near(text("127.0.0.1")), _near(integer(7946)),
        st.one_of(st.integers(min_value=0, max_value=4).map(integer), items), _near(("map", [], False)),
    ).map(lambda t: array(*t))


def packets(version: int, cluster: str = "murmur") -> st.SearchStrategy[bytes]:
    """Arbitrary items, and packets of the right outline holding arbitrary messages."""
    shaped = st.tuples(_near(text(cluster)), st.lists(_message(), max_size=4)).map(
        lambda t: array(integer(version), t[0], array(*t[1]))
    )
    return st.one_of(items, shaped, st.lists(items, max_size=3).map(lambda xs: array(*xs))).map(encode)


def states(version: int, cluster: str = "murmur") -> st.SearchStrategy[bytes]:
    """Arbitrary items, and push-pull states of the right outline holding arbitrary entries."""
    shaped = st.tuples(_near(text("pp")), _near(text(cluster)), st.lists(st.one_of(_entry(), items), max_size=4)).map(
        lambda t: array(integer(version), t[0], t[1], array(*t[2]))
    )
    return st.one_of(items, shaped, st.lists(items, max_size=4).map(lambda xs: array(*xs))).map(encode)
