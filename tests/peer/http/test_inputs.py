"""peer/http/inputs.py, and every request parser behind it: hostile input only ever raises the
parser's own validation error, naming where the problem is; and one table of bad inputs sent to
every endpoint of every API that takes a body or a query, each answered the same way."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from book.exchange import CommandError, ExchangeCore
from ledger.exposure import InvalidInput, parse_request, parse_side, seconds, whole
from ledger.store import validate_fill
from peer.exchange.api import _ORDER_FIELDS, exchange_direct_routes, exchange_routes, parse_body
from peer.exchange.service import ExchangeService
from peer.http import inputs
from peer.http.endpoints import PeerHandle, create_app
from peer.http.inputs import MAX_DEPTH, BodyError
from peer.ledger.api import ledger_routes, parse_apply_fill, parse_fills, parse_release, parse_renew
from peer.ledger.service import LedgerService
from peer.market_maker.api import mm_routes
from tests.conftest import T0
from tests.peer.fakes import FakeNode


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
               "fill_id", "price", "created_at", "expires_at", "ttl", "replaces", "reason", "fills", "grant"]
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


# --- one table of bad inputs, sent to every endpoint that takes a body or a query -----------------
#
# Every API reads its requests through peer/http/inputs.py and checks fields with book/bounds.py,
# so a bad input gets the same answer from every endpoint: 400, `{"error": "<field>: <what>",
# "field": "<field>"}`, and nothing changes. Each row below is sent to every endpoint it fits,
# through the real ASGI app (the exchange's and the ledger's) and the exchange's direct route.
#
# A row is (raw, field, fragment): `fragment` is found (re.search) in the error. `raw` is
# - bytes: the whole body; `field` is the field the answer names;
# - a string starting with "?": a query string, sent to the paged reads; `{after}` stands for
#   the endpoint's cursor parameter (`after`, or `after_version`);
# - another string: a JSON literal put into the endpoint's valid body, at each field of a kind
#   (`field` is WHOLE, ID, SECONDS, SYMBOL or CHOICE: `side`, `type`), at its last
#   field (LAST: the decoder refuses it wherever it is; a path inside the value may follow), or
#   under a field of that name (an unknown field);
# - None: each required field of the endpoint is left out (`field` is REQUIRED).
WHOLE, ID, SECONDS, SYMBOL, CHOICE = "<whole>", "<id>", "<seconds>", "<symbol>", "<choice>"
LAST, REQUIRED = "<last>", "<required>"
NOT_A_NUMBER = "is not a number this API accepts"
BAD = [
    # the strict decoder, wherever the value is
    ("NaN", LAST, NOT_A_NUMBER),
    ("Infinity", LAST, NOT_A_NUMBER),
    ("-Infinity", LAST, NOT_A_NUMBER),
    ("1e400", LAST, NOT_A_NUMBER),
    ("-1e400", LAST, NOT_A_NUMBER),
    ("9" * 4000, LAST, "a number of 4000 characters"),
    ("0." + "1" * 4000, LAST, "a number of 4002 characters"),
    ('"\\ud800"', LAST, "lone UTF-16 surrogate"),
    ("[" * 40 + "]" * 40, LAST + "[0]" * 31, "nested deeper than 32"),  # the first list too deep
    # whole numbers are exact: no float, bool, string, container, or number past the bound
    ("1.0", WHOLE, "must be a whole number"),
    ("true", WHOLE, "must be a whole number"),
    ('"5"', WHOLE, "must be a whole number"),
    ("[]", WHOLE, "must be a whole number"),
    ("-1", WHOLE, "must be a whole number from"),
    (str(2**63), WHOLE, "must be a whole number from .* got 9223372036854775808"),
    (str(10**30), WHOLE, "must be a whole number from .* got a whole number of 100 bits"),
    # ids are non-empty strings of at most 128 characters
    ("7", ID, "must be a non-empty string of at most 128"),
    ('""', ID, "must be a non-empty string of at most 128"),
    ("{}", ID, "must be a non-empty string of at most 128"),
    ("true", ID, "must be a non-empty string of at most 128"),
    ('"' + "x" * 5000 + '"', ID, "must be a non-empty string of at most 128"),
    # a symbol is 1 to 16 letters or digits, one the exchange trades; a choice is one of its words
    ("[]", SYMBOL, "unknown symbol|must be a symbol"),
    ("{}", SYMBOL, "unknown symbol|must be a symbol"),
    ('"A B"', SYMBOL, "unknown symbol|must be a symbol"),
    ('"' + "A" * 5000 + '"', SYMBOL, "unknown symbol|must be a symbol"),
    ("[]", CHOICE, "must be (one of )?'?(buy|limit)"),
    ("{}", CHOICE, "must be (one of )?'?(buy|limit)"),
    ("1", CHOICE, "must be (one of )?'?(buy|limit)"),
    ('"long"', CHOICE, "must be (one of )?'?(buy|limit)"),
    # times are finite numbers of seconds, 0 to 10**11
    ("true", SECONDS, "must be a finite number of seconds"),
    ("-1", SECONDS, "must be a finite number of seconds"),
    ("1e12", SECONDS, "must be a finite number of seconds"),
    # fields: none unknown, none required missing
    ('"red"', "colour", "unknown field; allowed:"),
    (None, REQUIRED, "required"),
    # the body as a whole
    (b"{nope", "body", "is not valid JSON"),
    (b"\xff\xfe{}", "body", "is not valid JSON"),
    (b'{"a": 1} x', "body", "is not valid JSON"),
    (b'"an order"', "body", "must be a JSON object"),
    (b"[1, 2]", "body", "must be a JSON object"),
    (b"[" * 1000 + b"]" * 1000, "body", "nested deeper than 32"),
    (b'{"a":' * 1000 + b"1" + b"}" * 1000, "body", "nested deeper than 32"),
    (b"[" * 40 + b"]" * 40, "body" + "[0]" * 32, "nested deeper than 32"),
    (b"{" + b" " * (1024 * 1024) + b"}", "body", "larger than"),
    # query parameters of the paged reads and long polls
    ("?{after}=-1", "{after}", "must be a whole number"),
    ("?{after}=1.0", "{after}", "must be a whole number"),
    ("?{after}=%2B1", "{after}", "must be a whole number"),
    ("?{after}=" + "9" * 4000, "{after}", "must be a whole number"),
    ("?{after}=9007199254740992", "{after}", "must be from 0 to 9007199254740991"),
    ("?limit=0", "limit", "must be from 1 to 10000"),
    ("?limit=10001", "limit", "must be from 1 to 10000"),
    ("?limit=" + "1" * 30, "limit", "must be a whole number"),
    ("?limit=NaN", "limit", "must be a whole number"),
    ("?wait=nan", "wait", "must be a number of seconds"),
    ("?wait=inf", "wait", "must be a number of seconds"),
    ("?wait=-1", "wait", "must be a number of seconds"),
    ("?wait=1e1", "wait", "must be a number of seconds"),
    ("?wait=61", "wait", "must be from 0 to 60 seconds"),
    ("?wait=" + "1" * 4000, "wait", "must be a number of seconds"),
    ("?colour=red", "colour", "unknown query parameter"),
]

@dataclass(frozen=True)
class Endpoint:
    """An endpoint that takes a body (`body`, a valid one) or a query (`after`, its cursor)."""

    api: str  # "exchange", "exchange-direct" (POST /orders without the app) or "ledger"
    method: str
    path: str  # as routed; {symbol} is AAPL, {reservation_id} the reservation made beforehand
    body: dict | None = None
    whole: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    seconds: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    where: str = ""  # how a field is named: "fills[0]." in a batch of fills
    after: str = "after"

    @property
    def fields(self) -> dict:
        return self.body["fills"][0] if self.where else self.body

    def with_field(self, name: str, value) -> dict:
        fields = {**self.fields, name: value}
        return {"fills": [fields]} if self.where else fields

    def without(self, name: str) -> dict:
        fields = {k: v for k, v in self.fields.items() if k != name}
        return {"fills": [fields]} if self.where else fields


ORDER = {"order_id": "t1", "symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 2, "limit_price": 10_010}
FILL = {"fill_id": "F-7", "seq": 7, "order_id": "o7", "symbol": "AAPL", "side": "buy", "quantity": 2, "price": 10_000,
        "quote_id": "q1", "epoch": 1, "holder": "mm-1", "reservation_id": "r1", "created_at": T0 + 7}
FILL_REQUIRED = ("fill_id", "order_id", "symbol", "side", "quantity", "price", "quote_id", "created_at")
ORDER_SPEC = dict(body=ORDER, whole=("quantity", "limit_price"), ids=("order_id",), symbols=("symbol",),
                  choices=("side", "type"),
                  required=("order_id", "symbol", "side", "quantity"))
ENDPOINTS = [
    Endpoint("exchange", "POST", "/orders", **ORDER_SPEC),
    Endpoint("exchange-direct", "POST", "/orders", **ORDER_SPEC),
    Endpoint("exchange", "PUT", "/quotes/{symbol}",
             {"holder": "mm-1", "epoch": 1, "seq": 2, "quote_id": "q2", "bid_price": 9_990, "bid_quantity": 5,
              "ask_price": 10_010, "ask_quantity": 5, "reservation_id": "r2"},
             whole=("epoch", "seq", "bid_price", "bid_quantity", "ask_price", "ask_quantity"),
             ids=("holder", "quote_id", "reservation_id"),
             required=("holder", "epoch", "seq", "quote_id", "bid_price", "bid_quantity", "ask_price",
                       "ask_quantity")),
    Endpoint("exchange", "DELETE", "/quotes/{symbol}", {"holder": "mm-1", "epoch": 1, "seq": 2},
             whole=("epoch", "seq"), ids=("holder",), required=("holder", "epoch", "seq")),
    *(Endpoint("exchange", "POST", f"/authority/{{symbol}}/{op}", {"holder": holder, "epoch": epoch},
               whole=("epoch",), ids=("holder",), required=("holder", "epoch"))
      for op, holder, epoch in (("claim", "mm-2", 2), ("renew", "mm-1", 1), ("release", "mm-1", 1))),
    Endpoint("exchange", "GET", "/fills"),
    Endpoint("ledger", "POST", "/fills", FILL, whole=("seq", "quantity", "price", "epoch"),
             ids=("fill_id", "order_id", "quote_id", "holder", "reservation_id"), seconds=("created_at",),
             symbols=("symbol",), choices=("side",), required=FILL_REQUIRED),
    Endpoint("ledger", "POST", "/fills", {"fills": [FILL]}, whole=("seq", "quantity", "price", "epoch"),
             ids=("fill_id", "order_id", "quote_id", "holder", "reservation_id"), seconds=("created_at",),
             symbols=("symbol",), choices=("side",), required=FILL_REQUIRED, where="fills[0]."),
    Endpoint("ledger", "POST", "/reservations",
             {"quote_id": "q9", "holder": "mm-1", "symbol": "AAPL", "bid_quantity": 10, "ask_quantity": 10, "ttl": 30},
             whole=("bid_quantity", "ask_quantity"), ids=("quote_id", "holder"), seconds=("ttl",), symbols=("symbol",),
             required=("quote_id", "holder", "symbol", "bid_quantity", "ask_quantity")),
    Endpoint("ledger", "POST", "/reservations/{reservation_id}/apply-fill",
             {"fill_id": "F-x", "side": "buy", "quantity": 1}, whole=("quantity",), ids=("fill_id",), choices=("side",),
             required=("fill_id", "side", "quantity")),
    Endpoint("ledger", "POST", "/reservations/{reservation_id}/renew", {"ttl": 60}, seconds=("ttl",)),
    Endpoint("ledger", "POST", "/reservations/{reservation_id}/release", {"reason": "done"}, ids=("reason",)),
    Endpoint("ledger", "GET", "/fills"),
    Endpoint("ledger", "GET", "/updates"),
    Endpoint("ledger", "GET", "/positions/{symbol}/updates", after="after_version"),
]


def _literal_body(endpoint: Endpoint, name: str, literal: str) -> bytes:
    """The endpoint's valid body as JSON text, with the value of the field `name` as `literal`
    (which json.dumps could not write: NaN, 4,000 digits, a lone surrogate...)."""
    mark = "\u2603raw\u2603"
    text = json.dumps(endpoint.with_field(name, mark))
    return text.replace(json.dumps(mark), literal, 1).encode()


def _requests(endpoint: Endpoint, raw, field: str):
    """(what is sent: a body as bytes or a query string, the field its answer must name), for
    each way the row fits the endpoint: none if it does not."""
    if isinstance(raw, str) and raw.startswith("?"):
        if endpoint.body is None:
            yield raw.format(after=endpoint.after), field.format(after=endpoint.after)
        return
    if endpoint.body is None:
        return
    if isinstance(raw, bytes):
        yield raw, field
    elif raw is None:
        for name in endpoint.required:
            yield json.dumps(endpoint.without(name)).encode(), endpoint.where + name
    else:
        kinds = {WHOLE: endpoint.whole, ID: endpoint.ids, SECONDS: endpoint.seconds, SYMBOL: endpoint.symbols,
                 CHOICE: endpoint.choices, LAST: (list(endpoint.fields)[-1],)}
        kind, bracket, inside = field.partition(">")
        names = kinds.get(kind + bracket)
        if names is None:  # an unknown field, by name
            names, inside = (field,), ""
        if endpoint.where and inside:
            inside = inside[2 * len("[0]"):]  # a batch's fields are two levels deeper (the list, the fill)
        for name in names:
            yield _literal_body(endpoint, name, raw), endpoint.where + name + inside


def _endpoint_id(endpoint: Endpoint) -> str:
    batch = " batch" if endpoint.where else ""
    return f"{endpoint.api} {endpoint.method} {endpoint.path}{batch}"


def table_cases():
    for endpoint in ENDPOINTS:
        for raw, field, fragment in BAD:
            for n, (sent, named) in enumerate(_requests(endpoint, raw, field)):
                label = raw[:12] if isinstance(raw, (str, bytes)) else "missing"
                yield pytest.param(endpoint, sent, named, fragment,
                                   id=f"{_endpoint_id(endpoint)} {named} {label!r} {n}")


class Target:
    """A running exchange or ledger, with a claim and a quote (exchange) or a fill and a
    reservation (ledger) already there, so that each endpoint's valid body is accepted."""

    def __init__(self, api: str, client: httpx.AsyncClient, service, direct=None, reservation_id: str = ""):
        self.api, self.client, self.service, self.direct = api, client, service, direct
        self.reservation_id = reservation_id

    async def send(self, endpoint: Endpoint, sent: bytes | str) -> tuple[int, str, bytes]:
        """(status, content type, body) of the answer."""
        path = endpoint.path.format(symbol="AAPL", reservation_id=self.reservation_id)
        if endpoint.api == "exchange-direct":
            status, content = await self.direct[(endpoint.method, path.encode())](sent)
            return status, "application/json", content  # the server writes the content type
        if isinstance(sent, str):
            r = await self.client.request(endpoint.method, path + sent)
        else:
            r = await self.client.request(endpoint.method, path, content=sent,
                                          headers={"content-type": "application/json"})
        return r.status_code, r.headers["content-type"], r.content

    async def state(self) -> tuple:
        """Everything a request could change."""
        if self.api == "ledger":
            reads = [(await self.client.get(path)).json() for path in ("/positions", "/exposure", "/fills")]
            reservation = (await self.client.get(f"/reservations/{self.reservation_id}")).json()
            return (*reads, reservation, self.service.store.next_reservation, self.service.published_seq)
        service, core = self.service, self.service.core
        return (service.counters["accepted"], service.counters["rejected"], len(core.orders), len(core.fills),
                {s: q.quote_id for s, q in core.active_quotes.items()}, [a.to_json(0) for a in core.authority.all()],
                {s: b.depth(10) for s, b in core.books.items()}, service.tape.stats.records)


@asynccontextmanager
async def running(api: str, tmp_path):
    async with trio.open_nursery() as nursery:
        handle = PeerHandle(role=api, profile="local", node=FakeNode(api))
        if api == "ledger":
            service = LedgerService(tmp_path, clock=lambda: T0)
            await nursery.start(service.run)
            app = create_app(handle, ledger_routes())
            app.state.ledger = service
        else:
            service = ExchangeService(tmp_path, symbols=["AAPL", "MSFT"], lease_duration=5.0)
            await nursery.start(service.run)
            app = create_app(handle, exchange_routes())
            app.state.exchange = service
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{api}") as client:
            target = Target(api, client, service, direct=exchange_direct_routes(service) if api != "ledger" else None)
            if api == "ledger":
                assert (await client.post("/fills", json={**FILL, "fill_id": "F-1", "seq": 1})).status_code == 200
                r = await client.post("/reservations", json={"quote_id": "q0", "holder": "mm-1", "symbol": "AAPL",
                                                             "bid_quantity": 5, "ask_quantity": 5, "ttl": 30})
                assert r.status_code == 201, r.text
                target.reservation_id = r.json()["reservation"]["reservation_id"]
            else:
                assert (await client.post("/authority/AAPL/claim", json={"holder": "mm-1", "epoch": 1})).status_code == 200
                r = await client.put("/quotes/AAPL", json={"holder": "mm-1", "epoch": 1, "seq": 1, "quote_id": "q1",
                                                           "bid_price": 9_990, "bid_quantity": 5, "ask_price": 10_010,
                                                           "ask_quantity": 5, "reservation_id": "r1"})
                assert r.status_code == 200, r.text
            yield target
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("endpoint, sent, field, fragment", list(table_cases()))
async def test_every_endpoint_refuses_each_bad_input_the_same_way_and_changes_nothing(
        tmp_path, endpoint, sent, field, fragment):
    async with running("ledger" if endpoint.api == "ledger" else "exchange", tmp_path) as target:
        before = await target.state()
        status, content_type, content = await target.send(endpoint, sent)
        assert status == inputs.STATUS == 400, content[:300]
        assert content_type == "application/json"
        answer = json.loads(content)
        assert set(answer) == {"error", "field"} and answer["field"] == field, answer
        assert answer["error"].startswith(f"{field}: ") and re.search(fragment, answer["error"]), answer
        assert len(content) < 2000  # a 4,000-digit or 5,000-character value is not echoed back
        assert await target.state() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_endpoint_id)
async def test_each_endpoints_valid_request_is_accepted(tmp_path, endpoint):
    """The table's bodies and queries differ from a valid one only by the bad input: a 400 is
    the input's doing."""
    async with running("ledger" if endpoint.api == "ledger" else "exchange", tmp_path) as target:
        sent = json.dumps(endpoint.body).encode() if endpoint.body is not None else "?limit=5"
        status, _, content = await target.send(endpoint, sent)
        assert status < 400 or (status == 409 and endpoint.path.endswith("claim")), content[:300]


def test_the_table_covers_every_route_that_takes_a_body():
    """Any route other than a read is in ENDPOINTS (or takes nothing but its path): a new endpoint
    that takes a body is added to the table. The market maker's and the common routes are reads."""
    in_table = {(e.method, e.path) for e in ENDPOINTS if e.body is not None}
    takes_only_its_path = {("DELETE", "/orders/{order_id}")}
    app = create_app(PeerHandle(role="any", profile="local"), [*exchange_routes(), *ledger_routes(), *mm_routes()])
    writes = {(method, route.path) for route in app.routes for method in route.methods - {"GET", "HEAD"}}
    assert writes == in_table | takes_only_its_path
    assert set(exchange_direct_routes(None)) == {("POST", b"/orders")}
    assert all(route.methods <= {"GET", "HEAD"} for route in mm_routes())
