"""The deterministic market (`book/market.py`): reference prices and external order flow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book.market import (
    DEFAULT_REGIMES,
    OrderFlow,
    OrderIntent,
    ReferencePrices,
    Regime,
    RegimeSpec,
)
from book.orders import Kind, Side

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
REPO = Path(__file__).resolve().parents[2]

CALM_ONLY = (RegimeSpec(Regime.CALM, rate_multiplier=1.0, mean_duration=30.0, weight=1.0),)


def flow_for(seed: int, **options) -> OrderFlow:
    return OrderFlow(seed, SYMBOLS, ReferencePrices(seed, SYMBOLS), **options)


def as_tuples(intents: list[OrderIntent]) -> list[tuple]:
    return [
        (
            i.at,
            i.order_id,
            i.symbol,
            i.side.value,
            i.kind.value,
            i.quantity,
            i.limit_price,
            i.cancel_of,
        )
        for i in intents
    ]


# What one process computes for a seed: reference prices on a grid and forty seconds of flow.
# The test runs this very text here and in other processes, so both compute the same thing.
TRACE_SCRIPT = """
import hashlib, json, sys
from book.market import OrderFlow, ReferencePrices

def trace_digest(seed):
    symbols = ["AAA", "BBB", "CCC", "DDD"]
    prices = ReferencePrices(seed, symbols)
    flow = OrderFlow(seed, symbols, prices)
    trace = {
        "prices": [prices.snapshot(t / 4) for t in range(0, 400)],
        "flow": [
            [i.at, i.order_id, i.symbol, i.side.value, i.kind.value, i.quantity,
             i.limit_price, i.cancel_of]
            for i in flow.next_batch(40.0)
        ],
    }
    return hashlib.sha256(json.dumps(trace, sort_keys=True).encode()).hexdigest()

if __name__ == "__main__":
    print(trace_digest(int(sys.argv[1])))
"""


def trace_digest_here(seed: int) -> str:
    namespace: dict = {"__name__": "trace"}
    exec(TRACE_SCRIPT, namespace)
    return namespace["trace_digest"](seed)


def trace_digest_in_subprocess(seed: int, hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", TRACE_SCRIPT, str(seed)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


# --------------------------------------------------------------------------- reference prices


def test_same_seed_gives_same_prices():
    a, b = ReferencePrices(11, SYMBOLS), ReferencePrices(11, SYMBOLS)
    assert [a.snapshot(t * 0.37) for t in range(500)] == [b.snapshot(t * 0.37) for t in range(500)]


def test_different_seeds_give_different_prices():
    a, b = ReferencePrices(11, SYMBOLS), ReferencePrices(12, SYMBOLS)
    assert [a.snapshot(t) for t in range(100)] != [b.snapshot(t) for t in range(100)]


def test_symbols_start_at_different_prices_near_the_start_price():
    prices = ReferencePrices(3, SYMBOLS, start_price=10_000, start_spread=2_000)
    starts = prices.snapshot(0.0)
    assert len(set(starts.values())) == len(SYMBOLS)
    assert all(8_000 <= p <= 12_000 for p in starts.values())


def test_a_symbol_walks_the_same_whatever_the_other_symbols():
    alone = ReferencePrices(5, ["BBB"])
    among = ReferencePrices(5, ["DDD", "BBB", "AAA"])
    assert [alone.price("BBB", t) for t in range(200)] == [
        among.price("BBB", t) for t in range(200)
    ]


def test_price_is_constant_within_a_step():
    prices = ReferencePrices(1, SYMBOLS, step=0.5)
    for k in range(50):
        inside = {prices.price("AAA", k * 0.5 + frac) for frac in (0.0, 0.1, 0.25, 0.4999)}
        assert inside == {prices.price_at_step("AAA", k)}


def test_each_step_moves_by_at_most_the_volatility():
    prices = ReferencePrices(2, SYMBOLS, volatility_ticks=3)
    walk = [prices.price_at_step("CCC", k) for k in range(2_000)]
    moves = {b - a for a, b in zip(walk, walk[1:], strict=False)}
    assert moves <= set(range(-3, 4))
    assert len(moves) > 1  # it does walk


def test_price_never_goes_below_the_floor():
    prices = ReferencePrices(
        9, SYMBOLS, start_price=130, start_spread=0, volatility_ticks=20, floor=100
    )
    walk = [prices.price_at_step("AAA", k) for k in range(5_000)]
    assert min(walk) == 100  # it reaches the floor, and stays on or above it
    assert all(p >= 100 for p in walk)


def test_going_back_in_time_gives_the_same_prices():
    forward = ReferencePrices(4, SYMBOLS)
    times = [k * 0.3 for k in range(1_000)]
    expected = {t: forward.snapshot(t) for t in times}
    # The same object asked backwards, and a fresh one asked in a scrambled order.
    assert {t: forward.snapshot(t) for t in reversed(times)} == expected
    scrambled = ReferencePrices(4, SYMBOLS)
    order = sorted(times, key=lambda t: hashlib.sha256(str(t).encode()).digest())
    assert {t: scrambled.snapshot(t) for t in order} == expected


def test_unknown_symbol_and_bad_times_are_clear_errors():
    prices = ReferencePrices(1, SYMBOLS)
    with pytest.raises(KeyError, match="ZZZ"):
        prices.price("ZZZ", 1.0)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            prices.price("AAA", bad)


@pytest.mark.parametrize(
    "options",
    [{"step": 0}, {"floor": 0}, {"start_price": 50, "floor": 100}, {"volatility_ticks": -1}],
)
def test_bad_price_settings_are_refused(options):
    with pytest.raises(ValueError):
        ReferencePrices(1, SYMBOLS, **options)


# --------------------------------------------------------------------------- order flow: determinism


def test_same_seed_gives_same_flow():
    assert as_tuples(flow_for(21).next_batch(120.0)) == as_tuples(flow_for(21).next_batch(120.0))


def test_different_seeds_give_different_flows():
    assert as_tuples(flow_for(21).next_batch(30.0)) != as_tuples(flow_for(22).next_batch(30.0))


def test_order_ids_are_unique_and_name_the_seed():
    intents = flow_for(21, id_prefix="ext").next_batch(60.0)
    ids = [i.order_id for i in intents]
    assert len(set(ids)) == len(ids)
    assert ids[:3] == ["ext-21-0", "ext-21-1", "ext-21-2"]


def test_symbol_order_does_not_change_the_flow():
    prices = ReferencePrices(8, SYMBOLS)
    a = OrderFlow(8, SYMBOLS, prices).next_batch(60.0)
    b = OrderFlow(8, list(reversed(SYMBOLS)), prices).next_batch(60.0)
    assert as_tuples(a) == as_tuples(b)


WHOLE_30S_OF_SEED_33 = as_tuples(flow_for(33).next_batch(30.0))


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.floats(min_value=-1.0, max_value=30.0, allow_nan=False), max_size=12))
def test_how_the_stream_is_batched_does_not_change_it(cuts):
    # Unsorted on purpose: asking for an earlier `until` than before returns nothing new.
    flow = flow_for(33)
    pieces = []
    for until in [*cuts, 30.0]:
        pieces += flow.next_batch(until)
    assert as_tuples(pieces) == WHOLE_30S_OF_SEED_33


def test_intents_between_tiles_the_stream_and_leaves_the_flow_alone():
    flow = flow_for(5)
    whole = as_tuples(flow.next_batch(45.0))
    fresh = flow_for(5)
    windows = [(0.0, 10.0), (10.0, 12.5), (12.5, 45.0)]
    tiled = [as_tuples(fresh.intents_between(t0, t1)) for t0, t1 in windows]
    assert [x for w in tiled for x in w] == [x for x in whole if x[0] > 0.0]
    assert fresh.issued == 0
    assert all(t0 < x[0] <= t1 for (t0, t1), w in zip(windows, tiled, strict=True) for x in w)


@pytest.mark.slow
def test_same_seed_gives_same_prices_and_flow_in_other_processes_whatever_their_hash_seed():
    here = trace_digest_here(1234)
    assert trace_digest_in_subprocess(1234, "0") == here
    assert trace_digest_in_subprocess(1234, "987654321") == here
    assert trace_digest_in_subprocess(1235, "0") != here


# --------------------------------------------------------------------------- order flow: shape


def test_calm_flow_runs_at_the_configured_rate():
    intents = flow_for(17, rate=20.0, regimes=CALM_ONLY).next_batch(1_000.0)
    # 20,000 expected; a Poisson count's standard deviation is about 141.
    assert 19_400 <= len(intents) <= 20_600


def test_bursts_raise_the_rate():
    regimes = (
        RegimeSpec(Regime.CALM, rate_multiplier=1.0, mean_duration=10.0, weight=1.0),
        RegimeSpec(Regime.BURST, rate_multiplier=5.0, mean_duration=10.0, weight=1.0),
    )
    flow = flow_for(
        17, rate=20.0, regimes=regimes, script=[(Regime.CALM, 10.0), (Regime.BURST, 10.0)]
    )
    intents = flow.next_batch(400.0)
    calm = sum(1 for i in intents if flow.regime_at(i.at) is Regime.CALM)
    burst = sum(1 for i in intents if flow.regime_at(i.at) is Regime.BURST)
    # 200 s of each: about 4,000 calm and 20,000 burst intents.
    assert 3_700 <= calm <= 4_300
    assert 4.5 <= burst / calm <= 5.5


def test_a_paused_regime_emits_nothing():
    regimes = (
        *DEFAULT_REGIMES[:1],
        RegimeSpec(Regime.BURST, rate_multiplier=0.0, mean_duration=5.0, weight=1.0),
    )
    flow = flow_for(2, regimes=regimes, script=[(Regime.CALM, 5.0), (Regime.BURST, 5.0)])
    intents = flow.next_batch(100.0)
    assert intents
    assert all(flow.regime_at(i.at) is Regime.CALM for i in intents)


def test_default_schedule_opens_calm_and_switches_regimes():
    flow = flow_for(6)
    segments = flow.segments(600.0)
    assert segments[0].regime is Regime.CALM and segments[0].start == 0.0
    assert {s.regime for s in segments} == set(Regime)
    assert all(
        a.end_us == b.start_us and a.regime is not b.regime
        for a, b in zip(segments, segments[1:], strict=False)
    )
    for s in segments:
        assert 0.5 * s.spec.mean_duration <= s.end - s.start <= 1.5 * s.spec.mean_duration


def test_scripted_schedule_repeats():
    flow = flow_for(6, script=[(Regime.CALM, 3.0), (Regime.CANCEL_STORM, 1.0)])
    got = [(s.regime, s.start, s.end) for s in flow.segments(7.5)]
    assert got == [
        (Regime.CALM, 0.0, 3.0),
        (Regime.CANCEL_STORM, 3.0, 4.0),
        (Regime.CALM, 4.0, 7.0),
        (Regime.CANCEL_STORM, 7.0, 8.0),
    ]


def test_cancels_target_only_earlier_not_yet_cancelled_own_resting_orders():
    flow = flow_for(29)
    placed: dict[str, OrderIntent] = {}
    cancelled: set[str] = set()
    cancels = 0
    for intent in flow.next_batch(600.0):
        if intent.is_cancel:
            cancels += 1
            target = placed[intent.cancel_of]  # earlier, and the flow's own
            assert intent.cancel_of not in cancelled
            assert target.kind is Kind.LIMIT and target.at < intent.at
            assert (intent.symbol, intent.side, intent.limit_price) == (
                target.symbol,
                target.side,
                target.limit_price,
            )
            cancelled.add(intent.cancel_of)
        else:
            placed[intent.order_id] = intent
    assert cancels > 100
    assert set(flow.resting_order_ids()) <= set(placed) - cancelled


def test_cancel_storms_are_mostly_cancels_and_calm_mostly_orders():
    flow = flow_for(29)
    intents = flow.next_batch(900.0)
    storm = [i for i in intents if flow.regime_at(i.at) is Regime.CANCEL_STORM]
    calm = [i for i in intents if flow.regime_at(i.at) is Regime.CALM]
    assert storm and sum(i.is_cancel for i in storm) / len(storm) > 0.6
    assert sum(i.is_cancel for i in calm) / len(calm) < 0.1


def test_a_storm_with_nothing_to_cancel_places_orders_it_can_cancel():
    storm_only = (RegimeSpec(Regime.CANCEL_STORM, 1.0, 10.0, 1.0, cancel_fraction=0.9),)
    intents = flow_for(3, regimes=storm_only).next_batch(60.0)
    assert not intents[0].is_cancel and intents[0].kind is Kind.LIMIT
    assert sum(i.is_cancel for i in intents) / len(intents) > 0.4


def test_outstanding_passive_orders_stay_bounded():
    flow = flow_for(12, max_resting=10, passive_fraction=0.5)
    flow.next_batch(120.0)
    assert len(flow.resting_order_ids()) == 10


def test_most_orders_cross_a_quote_centred_on_the_reference_price():
    prices = ReferencePrices(41, SYMBOLS)
    flow = OrderFlow(41, SYMBOLS, prices)
    orders = [i for i in flow.next_batch(300.0) if not i.is_cancel]
    half_spread = 2

    def crosses(order: OrderIntent) -> bool:
        reference = prices.price(order.symbol, order.at)
        if order.kind is Kind.MARKET:
            return True
        if order.side is Side.BUY:
            return order.limit_price >= reference + half_spread
        return order.limit_price <= reference - half_spread

    share = sum(map(crosses, orders)) / len(orders)
    assert 0.7 <= share < 1.0  # mostly crossing, some resting away from the market


def test_describe_is_a_json_record_of_the_schedule():
    flow = flow_for(6)
    record = json.loads(json.dumps(flow.describe(until=60.0)))
    assert record["seed"] == 6 and record["rate"] == 20.0
    assert [r["regime"] for r in record["regimes"]] == ["calm", "burst", "cancel-storm"]
    assert record["schedule"][0] == {
        "regime": "calm",
        "start": 0.0,
        "end": record["schedule"][1]["start"],
    }
    assert record["schedule"][-1]["start"] <= 60.0 < record["schedule"][-1]["end"]


def test_intents_become_exchange_requests():
    intents = flow_for(7).next_batch(120.0)
    market = next(i for i in intents if i.kind is Kind.MARKET and not i.is_cancel)
    assert market.to_json() == {
        "order_id": market.order_id,
        "symbol": market.symbol,
        "side": market.side.value,
        "type": "market",
        "quantity": market.quantity,
        "limit_price": None,
    }
    cancel = next(i for i in intents if i.is_cancel)
    assert cancel.to_json() == {"order_id": cancel.cancel_of, "symbol": cancel.symbol}


@pytest.mark.parametrize(
    "options",
    [
        {"rate": 0},
        {"quantity": (0, 5)},
        {"market_fraction": 0.6, "passive_fraction": 0.6},
        {"regimes": ()},
        {"script": [(Regime.CALM, 0.0)]},
        {"regimes": CALM_ONLY, "script": [(Regime.BURST, 1.0)]},
        {"max_resting": 0},
    ],
)
def test_bad_flow_settings_are_refused(options):
    with pytest.raises(ValueError):
        flow_for(1, **options)


def test_flow_symbols_need_reference_prices():
    with pytest.raises(ValueError, match="ZZZ"):
        OrderFlow(1, ["AAA", "ZZZ"], ReferencePrices(1, SYMBOLS))


# --------------------------------------------------------------------------- invariants over seeds


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=-(2**63), max_value=2**63),
    rate=st.floats(min_value=1.0, max_value=200.0),
    floor=st.integers(min_value=1, max_value=50),
)
def test_flow_invariants_hold_for_any_seed(seed, rate, floor):
    prices = ReferencePrices(seed, SYMBOLS, start_price=floor + 20, volatility_ticks=5, floor=floor)
    flow = OrderFlow(seed, SYMBOLS, prices, rate=rate)
    intents = flow.next_batch(20.0)
    times = [i.at for i in intents]
    assert times == sorted(times) and all(0.0 < t <= 20.0 for t in times)
    ids = [i.order_id for i in intents]
    assert len(set(ids)) == len(ids)
    seen: set[str] = set()
    for i in intents:
        assert i.symbol in SYMBOLS and i.quantity >= 1 and 1 <= i.quantity <= 5
        if i.kind is Kind.LIMIT:
            assert isinstance(i.limit_price, int) and i.limit_price >= 1
        else:
            assert i.limit_price is None
        if i.is_cancel:
            assert i.cancel_of in seen
        seen.add(i.order_id)
    assert all(p >= floor for t in range(0, 41) for p in prices.snapshot(t / 2).values())
    assert flow.next_batch(20.0) == []
