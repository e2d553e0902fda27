"""The one retry rule: growth, cap, jitter bounds, determinism from the caller's Random."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.backoff import Backoff


def test_grows_by_the_factor_up_to_the_cap():
    b = Backoff(first=0.05, cap=2.0)
    assert [b.delay(n) for n in range(1, 9)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert b.attempts_to_cap == 7


def test_factor_one_is_a_fixed_delay():
    b = Backoff(first=0.1, cap=0.1, factor=1)
    assert {b.delay(n) for n in range(1, 50)} == {0.1}
    assert b.attempts_to_cap == 1


def test_a_long_outage_does_not_overflow():
    assert Backoff(first=0.05, cap=2.0).delay(10**9) == 2.0


@given(attempt=st.integers(1, 200), jitter=st.floats(0.01, 1.0), seed=st.integers(0, 2**32))
def test_jitter_stays_within_its_share_of_the_delay(attempt, jitter, seed):
    b = Backoff(first=0.05, cap=2.0, jitter=jitter)
    nominal = Backoff(first=0.05, cap=2.0).delay(attempt)
    d = b.delay(attempt, random.Random(seed))
    assert nominal * (1 - jitter) - 1e-12 <= d <= nominal + 1e-12


def test_the_same_seed_gives_the_same_delays():
    b = Backoff(first=0.05, cap=2.0, jitter=0.5)
    r1, r2 = random.Random(3), random.Random(3)
    assert [b.delay(n, r1) for n in range(1, 20)] == [b.delay(n, r2) for n in range(1, 20)]


@pytest.mark.parametrize(
    "kwargs",
    [dict(first=0, cap=1), dict(first=2, cap=1), dict(first=1, cap=2, factor=0.5),
     dict(first=1, cap=2, jitter=1.5), dict(first=1, cap=2, jitter=-0.1)],
)
def test_nonsense_is_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_attempts_count_from_one_and_jitter_needs_a_random():
    with pytest.raises(ValueError):
        Backoff(first=1, cap=2).delay(0)
    with pytest.raises(ValueError):
        Backoff(first=1, cap=2, jitter=0.5).delay(1)
