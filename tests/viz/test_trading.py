"""The dashboard's trading state (`viz/trading.py`): what is kept, and when an authority change
is logged (a symbol's holder or epoch at the exchange differs from the previous good poll)."""

from __future__ import annotations

import time

from viz.trading import (
    MAX_CHANGES,
    ExchangeSnapshot,
    TradingState,
    authority_changes,
    record_exchange,
    record_failure,
)

T0 = 1_700_000_000.0


def auth(
    symbol: str, holder: str | None, epoch: int, state: str = "held", lease_left: float = 2.0
) -> dict:
    return {
        "symbol": symbol,
        "epoch": epoch,
        "holder": holder,
        "state": state,
        "lease_expires_at": T0 + lease_left if holder else None,
        "lease_left": lease_left,
        "last_seq": 0,
    }


def snapshot(at: float, *authority: dict, exchange_now: float | None = None) -> ExchangeSnapshot:
    return ExchangeSnapshot(
        polled_at=at,
        authority=authority,
        quotes=(),
        prices={},
        fills=(),
        fills_total=0,
        exchange_now=exchange_now,
    )


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def test_the_first_poll_is_the_baseline_not_a_change():
    state = TradingState()
    assert record_exchange(state, snapshot(T0, auth("MSFT", "mm-1", 6))) == []
    assert list(state.changes) == []


def test_a_new_holder_and_epoch_is_logged_with_what_it_replaced():
    state = TradingState()
    record_exchange(state, snapshot(T0, auth("AAPL", "mm-1", 3), auth("MSFT", "mm-1", 6)))
    record_exchange(state, snapshot(T0 + 1, auth("AAPL", "mm-1", 3), auth("MSFT", "mm-2", 7)))
    assert [c.line() for c in state.changes] == [
        f"{clock(T0 + 1)} MSFT mm-2 epoch 7 (was mm-1 epoch 6)"
    ]


def test_the_same_holder_and_epoch_log_nothing_whatever_the_lease_or_state_does():
    state = TradingState()
    record_exchange(state, snapshot(T0, auth("MSFT", "mm-1", 6, lease_left=2.0)))
    record_exchange(state, snapshot(T0 + 1, auth("MSFT", "mm-1", 6, lease_left=1.0)))  # renewed
    record_exchange(state, snapshot(T0 + 2, auth("MSFT", "mm-1", 6, state="expired", lease_left=0)))
    record_exchange(
        state, snapshot(T0 + 3, auth("MSFT", "mm-1", 6, state="released", lease_left=0))
    )
    assert list(state.changes) == []


def test_a_reclaim_by_the_same_holder_with_a_higher_epoch_is_a_change():
    changes = authority_changes([auth("MSFT", "mm-1", 6)], [auth("MSFT", "mm-1", 8)], T0)
    assert [c.line() for c in changes] == [f"{clock(T0)} MSFT mm-1 epoch 8 (was mm-1 epoch 6)"]


def test_a_first_claim_of_a_vacant_symbol_reads_as_from_vacant():
    changes = authority_changes(
        [auth("MSFT", None, 0, state="vacant", lease_left=0)], [auth("MSFT", "mm-3", 1)], T0
    )
    assert [c.line() for c in changes] == [f"{clock(T0)} MSFT mm-3 epoch 1 (was vacant)"]


def test_several_symbols_moving_at_once_are_logged_in_symbol_order():
    before = [auth("TSLA", "mm-1", 2), auth("AAPL", "mm-1", 5), auth("MSFT", "mm-2", 1)]
    after = [auth("TSLA", "mm-3", 3), auth("AAPL", "mm-3", 6), auth("MSFT", "mm-2", 1)]
    assert [c.symbol for c in authority_changes(before, after, T0)] == ["AAPL", "TSLA"]


def test_the_log_keeps_the_last_lines_only():
    state = TradingState()
    record_exchange(state, snapshot(T0, auth("MSFT", "mm-1", 1)))
    for epoch in range(2, MAX_CHANGES + 5):
        record_exchange(state, snapshot(T0 + epoch, auth("MSFT", f"mm-{epoch % 3}", epoch)))
    assert len(state.changes) == MAX_CHANGES
    assert state.changes[-1].epoch == MAX_CHANGES + 4
    assert state.changes[0].epoch == 5


def test_a_failed_poll_keeps_the_last_snapshot_and_the_next_good_one_compares_with_it():
    state = TradingState()
    first = snapshot(T0, auth("MSFT", "mm-1", 6))
    record_exchange(state, first)
    record_failure(state.exchange, "unreachable: connection refused")
    assert state.exchange_data is first
    assert state.exchange.stale_for(T0 + 3) == 3.0
    record_exchange(state, snapshot(T0 + 4, auth("MSFT", "mm-2", 7)))
    assert [c.line() for c in state.changes] == [
        f"{clock(T0 + 4)} MSFT mm-2 epoch 7 (was mm-1 epoch 6)"
    ]
    assert state.exchange.error is None and state.exchange.stale_for(T0 + 5) is None
    assert state.exchange.polls == 3


def test_time_left_counts_down_on_the_exchanges_clock_not_this_machines():
    # The exchange's clock runs 100 s ahead of ours: a deadline 5 s after its "now" is 5 s away.
    snap = snapshot(T0, exchange_now=T0 + 100)
    assert snap.seconds_left(T0 + 105, T0) == 5.0
    assert snap.seconds_left(T0 + 105, T0 + 2) == 3.0  # two seconds after the poll
    assert snap.seconds_left(None, T0) is None
