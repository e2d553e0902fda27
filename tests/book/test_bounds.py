"""book/bounds.py: one set of bounds, used by the exchange core and the ledger alike.

At each field's bound an order or a quote is accepted, one past it is refused naming the field,
and every fill the exchange can make at its widest bounds is a fill the ledger records.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book import bounds
from book.bounds import MAX_COUNT, MAX_ID_LENGTH, MAX_PRICE, MAX_QUANTITY
from book.exchange import CommandError, ExchangeCore
from ledger.exposure import InvalidInput, parse_request
from ledger.store import LedgerStore, RecordFills, Refusal, validate_fill

SYM = "AAPL"
T0 = 1_700_000_000.0


def order(**kw) -> dict:
    return {"order_id": "o1", "symbol": SYM, "side": "buy", "type": "limit", "quantity": 1, "limit_price": 100, **kw}


def quote(**kw) -> dict:
    return {"symbol": SYM, "holder": "mm-1", "epoch": 1, "seq": 1, "quote_id": "q1", "bid_price": 99,
            "bid_quantity": 5, "ask_price": 101, "ask_quantity": 5, "reservation_id": "r1", **kw}


# (field, value at the bound, value one past it)
ORDER_BOUNDS = [
    ("limit_price", MAX_PRICE, MAX_PRICE + 1),
    ("limit_price", 1, 0),
    ("quantity", MAX_QUANTITY, MAX_QUANTITY + 1),
    ("quantity", 1, 0),
    ("order_id", "o" * MAX_ID_LENGTH, "o" * (MAX_ID_LENGTH + 1)),
]
QUOTE_BOUNDS = [
    ("ask_price", MAX_PRICE, MAX_PRICE + 1),
    ("bid_price", 1, 0),
    ("bid_quantity", MAX_QUANTITY, MAX_QUANTITY + 1),
    ("ask_quantity", MAX_QUANTITY, MAX_QUANTITY + 1),
    ("ask_quantity", 0, -1),
    ("seq", MAX_COUNT, MAX_COUNT + 1),
    ("quote_id", "q" * MAX_ID_LENGTH, "q" * (MAX_ID_LENGTH + 1)),
    ("reservation_id", "r" * MAX_ID_LENGTH, "r" * (MAX_ID_LENGTH + 1)),
]


@pytest.mark.parametrize("field, at, past", ORDER_BOUNDS)
def test_an_order_at_each_bound_is_accepted_and_one_past_it_is_refused_naming_the_field(field, at, past):
    ex = ExchangeCore([SYM])
    assert ex.submit_order(now=1.0, **order(**{field: at}))["accepted"]
    with pytest.raises(CommandError) as refused:
        ex.submit_order(now=1.0, **order(**{"order_id": "o2", field: past}))
    assert refused.value.field == field
    assert len(ex.orders) == 1


@pytest.mark.parametrize("field, at, past", QUOTE_BOUNDS)
def test_a_quote_at_each_bound_is_accepted_and_one_past_it_is_refused_naming_the_field(field, at, past):
    ex = ExchangeCore([SYM])
    assert ex.claim(now=0.0, symbol=SYM, holder="mm-1", epoch=1)["accepted"]
    terms = {field: at}
    if field == "ask_price":
        terms["bid_price"] = MAX_PRICE - 1
    with pytest.raises(CommandError) as refused:
        ex.put_quote(now=0.5, **quote(**{**terms, field: past}))
    assert refused.value.field == field
    assert ex.active_quotes == {}
    assert ex.put_quote(now=0.5, **quote(**terms))["accepted"]


def test_epochs_go_up_to_the_count_bound_and_no_further():
    ex = ExchangeCore([SYM])
    assert ex.claim(now=0.0, symbol=SYM, holder="h" * MAX_ID_LENGTH, epoch=MAX_COUNT)["accepted"]
    with pytest.raises(CommandError) as refused:
        ex.claim(now=0.0, symbol=SYM, holder="mm-2", epoch=MAX_COUNT + 1)
    assert refused.value.field == "epoch"
    with pytest.raises(CommandError) as refused:
        ex.claim(now=0.0, symbol=SYM, holder="h" * (MAX_ID_LENGTH + 1), epoch=1)
    assert refused.value.field == "holder"


@pytest.mark.parametrize("field, value", [
    ("limit_price", 9007199254740992),  # the price that stopped the fill pipeline
    ("quantity", 2**63), ("quantity", 10**30), ("quantity", 10**3999),
    ("limit_price", True), ("quantity", 1.0), ("quantity", "1"),
    ("symbol", []), ("symbol", {}), ("side", ["buy"]), ("type", {"a": 1}),
])
def test_the_values_reported_in_the_issue_are_refused_by_the_core(field, value):
    ex = ExchangeCore([SYM])
    with pytest.raises(CommandError) as refused:
        ex.submit_order(now=1.0, **order(**{field: value}))
    assert refused.value.field == field
    assert len(str(refused.value)) < 300  # a 4,000-digit number is not echoed back
    assert ex.orders == {}


def test_a_command_with_an_unknown_argument_is_refused_by_name():
    with pytest.raises(CommandError) as refused:
        ExchangeCore([SYM]).execute("submit_order", {**order(), "colour": "red"}, 1.0)
    assert refused.value.field == "colour"


def test_a_symbol_the_ledger_would_refuse_cannot_be_configured():
    with pytest.raises(ValueError, match="symbols"):
        ExchangeCore(["BRK.B"])


# --- the exchange's bounds are not wider than the ledger's ------------------------------------------


def widest_fills(price: int, quantity: int) -> list[dict]:
    """The fills of a quote and two orders with every field at the given values and its bound."""
    ex = ExchangeCore([SYM])
    holder, qid, rid = "h" * MAX_ID_LENGTH, "q" * MAX_ID_LENGTH, "r" * MAX_ID_LENGTH
    assert ex.claim(now=T0, symbol=SYM, holder=holder, epoch=MAX_COUNT)["accepted"]
    assert ex.put_quote(now=T0, symbol=SYM, holder=holder, epoch=MAX_COUNT, seq=MAX_COUNT, quote_id=qid,
                        bid_price=price - 1 if price > 1 else 1, bid_quantity=quantity,
                        ask_price=price if price > 1 else 2, ask_quantity=quantity, reservation_id=rid)["accepted"]
    fills = []
    for side, limit in (("buy", MAX_PRICE), ("sell", 1)):
        answer = ex.submit_order(now=T0 + 1, order_id=side[0] * MAX_ID_LENGTH, symbol=SYM, side=side,
                                 type="limit", quantity=quantity, limit_price=limit)
        fills += answer["fills"]
    assert len(fills) == 2
    return fills


def test_a_fill_at_the_exchanges_widest_bounds_is_recorded_by_the_ledger(tmp_path):
    fills = widest_fills(MAX_PRICE, MAX_QUANTITY)
    assert max(f["price"] for f in fills) == MAX_PRICE and {f["quantity"] for f in fills} == {MAX_QUANTITY}
    assert all(f["price"] * f["quantity"] <= bounds.MAX_NOTIONAL < 2**53 for f in fills)
    store = LedgerStore.open(tmp_path / "ledger.db", now=T0)
    try:
        result = store.apply([RecordFills(tuple(validate_fill(f) for f in fills))], T0 + 2).results[0]
        assert [r["status"] for r in result["results"]] == ["applied", "applied"]
    finally:
        store.close()


@settings(max_examples=60, deadline=None)
@given(price=st.one_of(st.integers(2, MAX_PRICE), st.just(MAX_PRICE)),
       quantity=st.one_of(st.integers(1, MAX_QUANTITY), st.just(MAX_QUANTITY)))
def test_every_fill_the_exchange_makes_passes_the_ledgers_fill_check(price, quantity):
    for f in widest_fills(price, quantity):
        assert validate_fill(f)["price"] == f["price"]


def test_a_reservation_at_the_quantity_bound_is_accepted_and_one_past_it_is_refused():
    body = {"quote_id": "q1", "holder": "mm-1", "symbol": SYM, "bid_quantity": MAX_QUANTITY, "ask_quantity": 0,
            "ttl": 30}
    assert parse_request(body).bid_quantity == MAX_QUANTITY
    with pytest.raises(InvalidInput) as refused:
        parse_request({**body, "bid_quantity": MAX_QUANTITY + 1})
    assert refused.value.field == "bid_quantity"


def test_a_fill_that_would_take_a_position_past_its_bound_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(bounds, "MAX_POSITION", 10)
    store = LedgerStore.open(tmp_path / "ledger.db", now=T0)
    try:
        one = {"fill_id": "F-1", "seq": 1, "order_id": "o1", "symbol": SYM, "side": "buy", "quantity": 6,
               "price": 100, "quote_id": "q1", "created_at": T0}
        assert store.apply([RecordFills((validate_fill(one),))], T0).results[0]["results"][0]["net_quantity"] == 6
        two = validate_fill({**one, "fill_id": "F-2", "seq": 2, "quantity": 5})
        refused = store.apply([RecordFills((two,))], T0).results[0]
        assert isinstance(refused, Refusal) and refused.reason == "position-bound"
        assert store.positions[SYM].net_quantity == 6 and store.last_seq == 1
        down = validate_fill({**one, "fill_id": "F-3", "seq": 3, "side": "sell", "quantity": 6})
        assert store.apply([RecordFills((down,))], T0).results[0]["results"][0]["net_quantity"] == 0
    finally:
        store.close()


@pytest.mark.parametrize("text", ["AAPL,ÄPFEL", "AAPL," + "A" * 17, "BRK.B", "AAPL,AAPL", ""])
def test_the_exchange_command_line_takes_only_symbols_within_the_bound(text):
    from peer.exchange.service import parse_symbols

    with pytest.raises(ValueError, match="symbols"):
        parse_symbols(text)
    assert parse_symbols("aapl, " + "A" * 16) == ["AAPL", "A" * 16]
