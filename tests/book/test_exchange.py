"""The exchange core: fencing by epoch/seq/lease, quotes in the book, fills, idempotent retries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book.exchange import CommandError, ExchangeCore

SYM = "AAPL"


def core(**kw) -> ExchangeCore:
    return ExchangeCore(
        [SYM, "MSFT"], quote_ttl=kw.pop("ttl", 30.0), lease_duration=kw.pop("lease", 2.0), **kw
    )


def quote(ex, now, holder="mm-1", epoch=1, seq=1, qid="q1", bp=99, bq=5, ap=101, aq=5, rid="r1"):
    return ex.put_quote(
        now=now,
        symbol=SYM,
        holder=holder,
        epoch=epoch,
        seq=seq,
        quote_id=qid,
        bid_price=bp,
        bid_quantity=bq,
        ask_price=ap,
        ask_quantity=aq,
        reservation_id=rid,
    )


def buy(ex, now, oid, qty, price=200, kind="limit"):
    return ex.submit_order(
        now=now,
        order_id=oid,
        symbol=SYM,
        side="buy",
        type=kind,
        quantity=qty,
        limit_price=price if kind == "limit" else None,
    )


def test_claim_on_a_vacant_symbol_is_accepted_and_epochs_only_grow():
    ex = core()
    assert ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)["reason"] == "claimed"
    assert ex.claim(now=0.5, symbol=SYM, holder="mm-2", epoch=1)["reason"] == "stale-epoch"
    with pytest.raises(CommandError, match="epoch"):
        ex.claim(now=0.5, symbol=SYM, holder="mm-2", epoch=0)


def test_claim_while_held_by_a_live_holder_is_refused():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    answer = ex.claim(now=1.0, symbol=SYM, holder="mm-2", epoch=2, holder_alive=True)
    assert answer["accepted"] is False and answer["reason"] == "held"
    assert ex.authority[SYM].holder == "mm-1"


def test_claim_after_holder_death_is_accepted_and_withdraws_the_old_quote_at_once():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    assert quote(ex, 0.1)["reason"] == "activated"
    answer = ex.claim(now=0.5, symbol=SYM, holder="mm-2", epoch=2, holder_alive=False)
    assert answer["reason"] == "claimed"
    assert [w["quote_id"] for w in answer["withdrawn"]] == ["q1"]
    assert ex.active_quotes.get(SYM) is None
    assert ex.books[SYM].best_bid() is None and ex.books[SYM].best_ask() is None
    ex.check_invariants(0.5)


def test_claim_after_lease_expiry_is_accepted():
    ex = core(lease=2.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    assert ex.claim(now=1.9, symbol=SYM, holder="mm-2", epoch=2)["reason"] == "held"
    assert ex.claim(now=2.0, symbol=SYM, holder="mm-2", epoch=2)["reason"] == "claimed"


def test_retried_claim_returns_the_same_answer_and_changes_nothing():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=3)
    lease = ex.authority[SYM].lease_expires_at
    again = ex.claim(now=0.5, symbol=SYM, holder="mm-1", epoch=3)
    assert again["accepted"] and again["reason"] == "already-held"
    assert ex.authority[SYM].lease_expires_at == lease


def test_renew_extends_only_the_current_holders_live_lease():
    ex = core(lease=2.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    assert ex.renew(now=1.5, symbol=SYM, holder="mm-1", epoch=1)["reason"] == "renewed"
    assert ex.authority[SYM].lease_expires_at == pytest.approx(3.5)
    assert ex.renew(now=1.6, symbol=SYM, holder="mm-2", epoch=1)["reason"] == "not-holder"
    assert ex.renew(now=1.6, symbol=SYM, holder="mm-1", epoch=2)["reason"] == "unknown-epoch"
    assert ex.renew(now=3.5, symbol=SYM, holder="mm-1", epoch=1)["reason"] == "lease-expired"


def test_quote_with_a_stale_epoch_or_seq_or_expired_lease_is_rejected_with_a_reason():
    ex = core(lease=2.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    assert quote(ex, 0.1, seq=5)["accepted"]
    assert quote(ex, 0.2, seq=5, qid="q2")["reason"] == "stale-seq"
    assert quote(ex, 0.2, seq=4, qid="q2")["reason"] == "stale-seq"
    assert quote(ex, 0.2, seq=6, qid="q2", epoch=2)["reason"] == "unknown-epoch"
    assert quote(ex, 0.2, seq=6, qid="q2", holder="mm-9")["reason"] == "not-holder"
    assert quote(ex, 2.5, seq=6, qid="q2")["reason"] == "lease-expired"
    ex.claim(now=3.0, symbol=SYM, holder="mm-2", epoch=2)
    assert quote(ex, 3.1, seq=7, qid="q3", epoch=1)["reason"] == "stale-epoch"


def test_retried_quote_returns_the_same_answer_and_changes_nothing():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    first = quote(ex, 0.1)
    again = quote(ex, 0.2)
    assert again["duplicate"] and again["quote"] == first["quote"]
    assert len(ex.quotes) == 1 and ex.quotes["q1"].expires_at == pytest.approx(30.1)


def test_replace_withdraws_the_old_quote_and_reuse_of_an_id_is_refused():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.1, seq=1, qid="q1")
    answer = quote(ex, 0.2, seq=2, qid="q2", bp=98, ap=102)
    assert answer["reason"] == "activated" and answer["replaced"]["quote_id"] == "q1"
    assert ex.books[SYM].best_bid() == 98
    assert quote(ex, 0.3, seq=3, qid="q1", bp=97)["reason"] == "quote-id-reused"


def test_refresh_extends_ttl_and_keeps_time_priority():
    ex = core(ttl=10.0, lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.0, seq=1, qid="q1", ap=101, aq=5)
    # An external sell at the same price arrives later than the quote's ask leg.
    ex.submit_order(
        now=1.0,
        order_id="x-sell",
        symbol=SYM,
        side="sell",
        type="limit",
        quantity=5,
        limit_price=101,
    )
    assert quote(ex, 2.0, seq=2, qid="q1", ap=101, aq=5)["reason"] == "refreshed"
    assert ex.quotes["q1"].expires_at == pytest.approx(12.0)
    fills = buy(ex, 3.0, "b1", 3, price=101)["fills"]
    assert [f["quote_id"] for f in fills] == ["q1"], (
        "the quote kept its place ahead of the later order"
    )


def test_fill_against_a_quote_records_the_market_makers_side_epoch_and_reservation():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=4)
    quote(ex, 0.1, epoch=4, aq=5, rid="res-9")
    answer = buy(ex, 0.2, "b1", 3)
    (fill,) = answer["fills"]
    assert fill["side"] == "sell" and fill["quantity"] == 3 and fill["price"] == 101
    assert fill["quote_id"] == "q1" and fill["epoch"] == 4 and fill["reservation_id"] == "res-9"
    assert fill["order_id"] == "b1" and fill["holder"] == "mm-1"
    assert ex.quote_view(SYM, 0.2)["ask_remaining"] == 2
    assert len({f.fill_id for f in ex.fills}) == len(ex.fills)


def test_expired_quote_never_executes():
    ex = core(ttl=1.0, lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.0)
    answer = buy(ex, 1.0, "b1", 3)
    assert answer["fills"] == []
    assert ex.active_quotes.get(SYM) is None and ex.quotes["q1"].state.value == "expired"


def test_tick_withdraws_quotes_whose_lease_ran_out():
    ex = core(lease=2.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.1)
    assert ex.next_deadline() == pytest.approx(2.0)
    assert ex.tick(now=1.0)["ended"] == []
    ended = ex.tick(now=2.0)["ended"]
    assert [e["reason"] for e in ended] == ["lease-expired"]
    assert ex.books[SYM].best_ask() is None


def test_release_withdraws_the_quote_and_frees_the_symbol():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.1)
    answer = ex.release(now=0.2, symbol=SYM, holder="mm-1", epoch=1)
    assert answer["reason"] == "released" and answer["withdrawn"][0]["quote_id"] == "q1"
    assert ex.release(now=0.3, symbol=SYM, holder="mm-1", epoch=1)["reason"] == "already-released"
    assert ex.claim(now=0.4, symbol=SYM, holder="mm-2", epoch=2)["reason"] == "claimed"


def test_order_id_retry_is_idempotent_and_a_conflicting_reuse_is_refused():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.1)
    first = buy(ex, 0.2, "b1", 2)
    again = buy(ex, 0.3, "b1", 2)
    assert again["duplicate"] and again["fills"] == first["fills"] and len(ex.fills) == 1
    assert buy(ex, 0.4, "b1", 3)["reason"] == "conflict"


GOOD_ORDER = {"order_id": "o", "symbol": SYM, "side": "buy", "type": "limit", "quantity": 1, "limit_price": 1}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"symbol": "NOPE"}, "symbol"),
        ({"side": "up"}, "side"),
        ({"type": "stop"}, "type"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"limit_price": "1"}, "limit_price"),
        ({"order_id": ""}, "order_id"),
    ],
)
def test_malformed_orders_name_the_field_and_change_nothing(change, field):
    ex = core()
    with pytest.raises(CommandError) as exc:
        ex.submit_order(now=0, **{**GOOD_ORDER, **change})
    assert exc.value.field == field
    assert not ex.orders and all(len(b) == 0 for b in ex.books.values())


def test_a_crossed_or_empty_quote_is_malformed():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    with pytest.raises(CommandError, match="ask_price"):
        quote(ex, 0.1, bp=101, ap=101)
    with pytest.raises(CommandError, match="bid_quantity"):
        quote(ex, 0.1, bq=0, aq=0)
    assert ex.authority[SYM].last_seq == 0


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("claim"),
            st.sampled_from(["mm-1", "mm-2", "mm-3"]),
            st.integers(1, 8),
            st.booleans(),
        ),
        st.tuples(
            st.just("quote"),
            st.sampled_from(["mm-1", "mm-2", "mm-3"]),
            st.integers(1, 8),
            st.integers(1, 20),
        ),
        st.tuples(
            st.just("order"),
            st.sampled_from(["buy", "sell"]),
            st.integers(1, 8),
            st.integers(95, 105),
        ),
        st.tuples(st.just("tick"), st.just(None), st.just(0), st.just(0)),
        st.tuples(
            st.just("release"),
            st.sampled_from(["mm-1", "mm-2", "mm-3"]),
            st.integers(1, 8),
            st.just(0),
        ),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.floats(0.05, 1.0))
def test_quotes_of_at_most_one_epoch_are_ever_live(ops, dt):
    ex = core(ttl=3.0, lease=1.5)
    now, n = 0.0, 0
    for op, who, a, b in ops:
        now += dt
        n += 1
        if op == "claim":
            ex.claim(now=now, symbol=SYM, holder=who, epoch=a, holder_alive=b)
        elif op == "quote":
            ex.put_quote(
                now=now,
                symbol=SYM,
                holder=who,
                epoch=a,
                seq=b + n,
                quote_id=f"q{n}",
                bid_price=99,
                bid_quantity=3,
                ask_price=101,
                ask_quantity=3,
                reservation_id=None,
            )
        elif op == "order":
            ex.submit_order(
                now=now,
                order_id=f"o{n}",
                symbol=SYM,
                side=who,
                type="limit",
                quantity=a,
                limit_price=b,
            )
        elif op == "tick":
            ex.tick(now=now)
        else:
            ex.release(now=now, symbol=SYM, holder=who, epoch=a)
        ex.check_invariants(now)
        for f in ex.fills:
            assert f.epoch <= ex.authority[SYM].epoch


def test_replaying_the_same_commands_reaches_the_same_state():
    log = []
    ex = core()

    def run(kind, now, **args):
        log.append((kind, args, now))
        return ex.execute(kind, args, now)

    run("claim", 0.0, symbol=SYM, holder="mm-1", epoch=1)
    run(
        "put_quote",
        0.1,
        symbol=SYM,
        holder="mm-1",
        epoch=1,
        seq=1,
        quote_id="q1",
        bid_price=99,
        bid_quantity=5,
        ask_price=101,
        ask_quantity=5,
        reservation_id="r",
    )
    run(
        "submit_order",
        0.2,
        order_id="b1",
        symbol=SYM,
        side="buy",
        type="limit",
        quantity=2,
        limit_price=101,
    )
    run(
        "submit_order",
        0.3,
        order_id="s1",
        symbol=SYM,
        side="sell",
        type="market",
        quantity=1,
        limit_price=None,
    )
    run("claim", 2.5, symbol=SYM, holder="mm-2", epoch=2)
    fresh = core()
    for kind, args, now in log:
        fresh.execute(kind, args, now)
    assert [f.to_json() for f in fresh.fills] == [f.to_json() for f in ex.fills]
    assert fresh.authority[SYM].to_json(3.0) == ex.authority[SYM].to_json(3.0)
    assert fresh.books[SYM].depth() == ex.books[SYM].depth()


def test_external_order_ids_cannot_collide_with_quote_legs():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    quote(ex, 0.1)
    with pytest.raises(CommandError) as exc:
        buy(ex, 0.2, "q1/buy", 1)
    assert exc.value.field == "order_id"
    assert ex.quote_view(SYM, 0.2)["bid_remaining"] == 5


def test_a_bid_that_fills_on_arrival_leaves_the_quote_active_with_its_ask():
    ex = core()
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    ex.submit_order(now=0.1, order_id="s1", symbol=SYM, side="sell", type="limit", quantity=5, limit_price=95)
    answer = quote(ex, 0.2, bp=99, bq=5, ap=101, aq=5)
    assert [f["side"] for f in answer["fills"]] == ["buy"]
    assert ex.active_quotes[SYM].quote_id == "q1"
    assert ex.quote_view(SYM, 0.2)["ask_remaining"] == 5
    ex.check_invariants(0.2)


# --- grants: the ledger's verified terms of a quote's reservation ----------------------------------


def grant(qid="q1", rid="r1", holder="mm-1", symbol=SYM, bid=5, ask=5, expires_at=31.0) -> dict:
    return {"reservation_id": rid, "quote_id": qid, "holder": holder, "symbol": symbol,
            "bid_quantity": bid, "ask_quantity": ask, "expires_at": expires_at}


def granted_quote(ex, now, g, *, seq=1, qid="q1", bq=5, aq=5, rid="r1"):
    return ex.execute("put_quote", {"symbol": SYM, "holder": "mm-1", "epoch": 1, "seq": seq, "quote_id": qid,
                                    "bid_price": 99, "bid_quantity": bq, "ask_price": 101, "ask_quantity": aq,
                                    "reservation_id": rid, "grant": g}, now)


def test_a_quote_within_its_grant_is_activated_and_ends_no_later_than_the_grant():
    ex = core(ttl=30.0, lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    assert granted_quote(ex, 0.0, grant(expires_at=12.5))["reason"] == "activated"
    assert ex.quotes["q1"].expires_at == 12.5
    assert all(leg.expires_at == 12.5 for leg in ex.quotes["q1"].legs)
    assert ex.tick(now=12.5)["ended"][0]["quote_id"] == "q1"
    assert SYM not in ex.active_quotes


def test_a_quote_beyond_its_grant_is_refused_and_changes_nothing():
    ex = core(lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    answer = granted_quote(ex, 0.0, grant(bid=5, ask=5), bq=1_000_000, aq=5)
    assert (answer["accepted"], answer["reason"]) == (False, "beyond-grant")
    assert ex.active_quotes == {} and ex.quotes == {}
    assert ex.authority[SYM].last_seq == 0


@pytest.mark.parametrize("field,value", [("quote_id", "q9"), ("reservation_id", "r9"), ("holder", "mm-2"),
                                         ("symbol", "MSFT")])
def test_a_grant_for_another_quote_reservation_holder_or_symbol_does_not_fit(field, value):
    ex = core(lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    answer = granted_quote(ex, 0.0, {**grant(), field: value})
    assert (answer["accepted"], answer["reason"]) == (False, "grant-mismatch")
    assert ex.active_quotes == {}


def test_an_expired_grant_activates_nothing():
    ex = core(lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    assert granted_quote(ex, 5.0, grant(expires_at=5.0))["reason"] == "grant-expired"
    assert ex.active_quotes == {}


def test_a_refresh_extends_the_quote_only_as_far_as_its_renewed_grant():
    ex = core(ttl=30.0, lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    granted_quote(ex, 0.0, grant(expires_at=10.0))
    assert granted_quote(ex, 5.0, grant(expires_at=20.0), seq=2)["reason"] == "refreshed"
    assert ex.quotes["q1"].expires_at == 20.0


@pytest.mark.parametrize("bad", [{"quote_id": "q1"}, "grant", {**grant(), "bid_quantity": True},
                                 {**grant(), "expires_at": float("nan")}, {**grant(), "extra": 1}])
def test_a_malformed_grant_is_a_command_error(bad):
    ex = core(lease=100.0)
    ex.claim(now=0, symbol=SYM, holder="mm-1", epoch=1)
    with pytest.raises(CommandError) as exc:
        granted_quote(ex, 0.0, bad)
    assert exc.value.field.startswith("grant")
    assert ex.active_quotes == {}
