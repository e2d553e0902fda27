"""peer/http/inputs.py, and every request parser behind it: hostile input only ever raises the
parser's own validation error, naming where the problem is."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from book.exchange import CommandError, ExchangeCore
from ledger.exposure import InvalidInput, parse_request, parse_side, seconds, whole
from ledger.store import validate_fill
from peer.exchange.api import _ORDER_FIELDS, parse_body
from peer.http import inputs
from peer.http.inputs import MAX_DEPTH, BodyError
from peer.ledger.api import parse_apply_fill, parse_fills, parse_release, parse_renew


def refused(raw, field: str) -> BodyError:
    with pytest.raises(BodyError) as exc:
        inputs.loads(raw)
    assert exc.value.field == field, exc.value
    assert len(str(exc.value)) < 400
    return exc.value


def test_ordinary_json_comes_back_as_it_is():
    body = {"a": [1, 2.5, "x", None, True, {"b": -3}], "c": 10**15, "d": 1e300}
    assert inputs.loads(json.dumps(body).encode()) == body


def test_nesting_1000_deep_is_refused_as_the_body():
    refused(b"[" * 1000 + b"]" * 1000, "body")
    refused(b'{"a":' * 1000 + b"1" + b"}" * 1000, "body")


def test_nesting_below_the_recursion_limit_but_above_the_bound_is_refused_with_its_path():
    # Python's decoder takes 40 (and 900) levels: the explicit walk must refuse them.
    error = refused(json.dumps({"symbol": _nest(40)}).encode(), "symbol" + "[0]" * (MAX_DEPTH - 1))
    assert "deeper" in str(error)
    refused(("[" * 900 + "]" * 900).encode(), "body" + "[0]" * MAX_DEPTH)
    assert inputs.loads(json.dumps(_nest(MAX_DEPTH)).encode()) == _nest(MAX_DEPTH)


def _nest(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 4000,
                                     "1" + "0" * 5000, "0." + "1" * 4000])
def test_numbers_no_field_takes_are_refused_naming_the_field(literal):
    error = refused(f'{{"fills": [{{"created_at": {literal}}}]}}'.encode(), "fills[0].created_at")
    assert "not a number this API accepts" in str(error)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe{}", b'{"a": 1} x', b"{'a': 1}", b'"\xed\xa0\x80"',
                                 "{}".encode("utf-16")])
def test_bytes_that_are_not_json_are_refused_as_the_body(raw):
    refused(raw, "body")


@pytest.mark.parametrize("raw, field", [(b'{"order_id": "\\ud800"}', "order_id"), (b'["a", "\\udfff"]', "body[1]"),
                                        (b'{"\\ud800": 1}', "body")])
def test_a_lone_surrogate_is_refused_where_it_is(raw, field):
    refused(raw, field)
    assert inputs.loads(b'{"order_id": "\\ud83d\\ude00"}') == {"order_id": "\U0001f600"}


@pytest.mark.parametrize("raw, value", [(None, 7), ("0", 0), ("12", 12), ("9007199254740991", 2**53 - 1)])
def test_query_whole_numbers(raw, value):
    params = {} if raw is None else {"after": raw}
    assert inputs.query_int(params, "after", 7, 0, 2**53 - 1) == value


@pytest.mark.parametrize("raw", ["-1", "+1", " 1", "1_000", "1.0", "", "x", "١٢", "9" * 4000, "9007199254740992"])
def test_query_whole_numbers_refused(raw):
    with pytest.raises(BodyError) as exc:
        inputs.query_int({"after": raw}, "after", 0, 0, 2**53 - 1)
    assert exc.value.field == "after" and len(str(exc.value)) < 300


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "61", "1e3", "", "5.", "0x10", "9" * 4000])
def test_query_seconds_refused(raw):
    with pytest.raises(BodyError) as exc:
        inputs.query_seconds({"wait": raw}, "wait", 0.0, 60.0)
    assert exc.value.field == "wait"
    assert inputs.query_seconds({"wait": "5.0"}, "wait", 0.0, 60.0) == 5.0


def test_unknown_query_parameters_are_refused_by_name():
    with pytest.raises(BodyError) as exc:
        inputs.known_query({"after": "1", "colour": "red"}, ("after",))
    assert exc.value.field == "colour"


# --- properties: arbitrary JSON in, only the parser's own error out ---------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20), st.integers(min_value=-(10**60), max_value=10**60))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=30)

# Hostile literals that json.dumps never writes: spliced into the text where a marker string is.
RAW_LITERALS = ["NaN", "-Infinity", "1e400", "9" * 4000, "[" * 40 + "]" * 40, "[" * 1000 + "]" * 1000]
MARK = "\u2603raw\u2603"


def _body_text(value, raw: str | None) -> bytes:
    text = json.dumps(value)
    if raw is not None:
        text = text.replace(json.dumps(MARK), raw, 1)
    return text.encode()


def with_marker(values):
    return st.one_of(values, st.just(MARK))


FIELD_NAMES = ["order_id", "symbol", "side", "type", "quantity", "limit_price", "holder", "epoch", "seq",
               "quote_id", "bid_price", "bid_quantity", "ask_price", "ask_quantity", "reservation_id",
               "fill_id", "price", "created_at", "expires_at", "ttl", "replaces", "reason", "fills"]
GOOD = st.sampled_from(["AAPL", "mm-1", "buy", "sell", "limit", "market", "q1", "r1", "o1", 1, 5, 99, 101,
                        1_700_000_000.0, 30, None, 10**6, 10**9])
field_values = with_marker(st.one_of(GOOD, json_values))
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=12),
    st.dictionaries(st.text(max_size=8), field_values, max_size=4),
    st.builds(lambda fills: {"fills": fills}, st.lists(st.dictionaries(st.sampled_from(FIELD_NAMES), field_values,
                                                                       max_size=12), max_size=3)),
    json_values,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, raw=st.one_of(st.none(), st.sampled_from(RAW_LITERALS)))
def test_the_ledgers_parsers_raise_only_invalid_input(body, raw):
    try:
        value = inputs.loads(_body_text(body, raw), error=InvalidInput)
    except InvalidInput:
        return
    for parse in (parse_request, parse_fills, lambda b: parse_apply_fill("R-1", b),
                  lambda b: parse_renew("R-1", b), lambda b: parse_release("R-1", b), validate_fill):
        try:
            parse(value)
        except InvalidInput as exc:
            assert exc.field and len(str(exc)) < 1000
    if isinstance(value, dict):
        for name, v in value.items():
            for check in (parse_side, lambda x, f: whole(x, f), seconds):
                try:
                    check(v, name)
                except InvalidInput:
                    pass


def _exchange_core() -> ExchangeCore:
    core = ExchangeCore(["AAPL", "MSFT"])
    core.claim(now=1.0, symbol="AAPL", holder="mm-1", epoch=1)
    core.put_quote(now=1.0, symbol="AAPL", holder="mm-1", epoch=1, seq=1, quote_id="q0", bid_price=99,
                   bid_quantity=5, ask_price=101, ask_quantity=5)
    return core


# A valid body per command, so that a few hostile fields reach the deeper checks too.
VALID = {
    "submit_order": {"order_id": "o1", "symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 3,
                     "limit_price": 101},
    "cancel_order": {"order_id": "q0/buy"},
    "claim": {"symbol": "MSFT", "holder": "mm-2", "epoch": 1},
    "renew": {"symbol": "AAPL", "holder": "mm-1", "epoch": 1},
    "release": {"symbol": "AAPL", "holder": "mm-1", "epoch": 1},
    "put_quote": {"symbol": "AAPL", "holder": "mm-1", "epoch": 1, "seq": 2, "quote_id": "q1", "bid_price": 100,
                  "bid_quantity": 2, "ask_price": 102, "ask_quantity": 2, "reservation_id": "r1"},
    "cancel_quote": {"symbol": "AAPL", "holder": "mm-1", "epoch": 1, "seq": 2},
    "tick": {},
}
commands = st.sampled_from(ExchangeCore.COMMANDS).flatmap(lambda kind: st.tuples(st.just(kind), st.one_of(
    bodies,
    st.builds(lambda over, drop: {k: v for k, v in {**VALID[kind], **over}.items() if k not in drop},
              st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=3),
              st.sets(st.sampled_from(FIELD_NAMES), max_size=2)),
)))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=commands, raw=st.one_of(st.none(), st.sampled_from(RAW_LITERALS)))
def test_the_exchanges_parser_and_core_raise_only_command_error(command, raw):
    kind, body = command
    core = _exchange_core()
    before = (len(core.orders), len(core.fills), dict(core.active_quotes))
    try:
        args = parse_body(_body_text(body, raw), tuple(body) if isinstance(body, dict) else ())
        answer = core.execute(kind, args, 2.0)
    except CommandError as exc:
        assert exc.field and len(str(exc)) < 1000
        assert (len(core.orders), len(core.fills), dict(core.active_quotes)) == before
        return
    assert isinstance(answer, dict) and isinstance(answer["accepted"], bool)
    core.check_invariants(2.0)
    for f in core.fills:
        validate_fill(f.to_json())  # whatever the exchange accepted, the ledger takes


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_body_error(raw):
    try:
        inputs.loads(raw)
    except BodyError as exc:
        assert exc.field


def test_only_names_a_long_unknown_field_briefly():
    with pytest.raises(CommandError) as exc:
        parse_body(json.dumps({"x" * 10_000: 1}).encode(), _ORDER_FIELDS)
    assert len(exc.value.field) <= 60
