"""The market maker's readers of other peers' answers: good answers read, anything else is an
AnswerError, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.market_maker import answers as mm_answers
from peer.market_maker.answers import AnswerError

RESERVATION = {"decision": "granted", "duplicate": False, "reservation": {
    "reservation_id": "R1", "reserved_bid_quantity": 5, "reserved_ask_quantity": 4, "state": "active",
    "expires_at": 1000.5}}
FILL = {"fill_id": "F1", "holder": "mm-1", "symbol": "AAPL", "side": "sell", "quantity": 3, "price": 10_001,
        "quote_id": "mm-1.AAPL.e1.q1", "epoch": 1}

BODY_READERS = [mm_answers.reservation_answer, mm_answers.positions, mm_answers.updates, mm_answers.prices,
                mm_answers.authority_rows, mm_answers.fills_total, mm_answers.fills,
                mm_answers.authority_answer, lambda body: mm_answers.verdict(200, body)]


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


def test_well_formed_answers_are_read():
    r = mm_answers.reservation_answer(enc(RESERVATION))
    assert r.reservation.reservation_id == "R1" and r.reservation.reserved_ask_quantity == 4 and r.state == "active"
    rows, last = mm_answers.positions(enc({"positions": [{"symbol": "A", "net_quantity": -3, "position_version": 2}],
                                           "last_seq": 9}))
    assert rows[0].net_quantity == -3 and last == 9
    fills, after = mm_answers.fills(enc({"fills": [FILL], "next_after": 4}))
    assert fills[0].quote_id == "mm-1.AAPL.e1.q1" and after == 4
    assert mm_answers.prices(enc({"prices": {"A": 100}})) == {"A": 100}
    assert mm_answers.verdict(200, enc({"accepted": True, "fills": [1, 2]})).fills == 2
    assert not mm_answers.verdict(409, enc({"accepted": True})).accepted  # only 200 accepts


@pytest.mark.parametrize("body,why", [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b"[" * 5000, "not JSON"),
    (enc({"decision": "granted"}), "lacks 'reservation'"),
    (enc({**RESERVATION, "decision": "maybe"}), "unknown decision"),
    (enc({**RESERVATION, "reservation": {**RESERVATION["reservation"], "reserved_bid_quantity": True}}), "bool"),
    (enc({**RESERVATION, "reservation": {**RESERVATION["reservation"], "reserved_bid_quantity": -1}}), "below"),
    (enc({**RESERVATION, "reservation": {**RESERVATION["reservation"], "reservation_id": ["x"]}}), "list"),
])
def test_a_malformed_reservation_answer_names_the_problem(body, why):
    with pytest.raises(AnswerError, match=why):
        mm_answers.reservation_answer(body)


def test_an_answer_without_its_list_is_malformed():
    # An impostor in the ledger's place once answered /updates without "updates": KeyError.
    with pytest.raises(AnswerError, match="lacks 'updates'"):
        mm_answers.updates(enc({"next_after": 3}))
    with pytest.raises(AnswerError, match="holds a int"):
        mm_answers.fills(enc({"fills": [1], "next_after": 3}))
    with pytest.raises(AnswerError, match="positive integer"):
        mm_answers.prices(enc({"prices": {"A": 1.5}}))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["decision", "reservation", "reservation_id", "reserved_bid_quantity", "state",
                         "reserved_ask_quantity", "expires_at", "positions", "last_seq", "updates", "next_after",
                         "symbol", "net_quantity", "position_version", "prices", "authority", "total", "fills",
                         "fill_id", "holder", "side", "quantity", "price", "quote_id", "epoch", "accepted",
                         "reason"]) | st.text(max_size=4), inner, max_size=6),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_json.map(enc), st.binary(max_size=40)), st.sampled_from(range(len(BODY_READERS))))
def test_any_body_is_read_or_refused_with_answer_error_only(body, which):
    try:
        BODY_READERS[which](body)
    except AnswerError:
        pass
