"""Per-client limits (peer/http/limits.py): the token bucket, client keys, the connection count,
the memory bound, and which routes are rate-limited. Time is an argument: no clock here."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Route

from peer.http.limits import (
    ClientLimits,
    LimitsConfig,
    RoutePatterns,
    TokenBucket,
    client_key,
    rate_limited,
)


def limits(**kw) -> ClientLimits:
    return ClientLimits(LimitsConfig(**{"exempt": (), **kw}))


def test_a_bucket_lets_a_burst_through_then_refuses_until_it_refills():
    b = TokenBucket(rate=10.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after() == pytest.approx(0.1)
    assert not b.take(0.05)
    assert b.take(0.1)
    assert b.full(100.0) and b.tokens == 3.0  # never more than the burst


def test_a_clock_that_goes_back_gives_no_tokens():
    b = TokenBucket(rate=10.0, burst=1.0, tokens=0.0, updated=5.0)
    assert not b.take(1.0)
    assert b.updated == 5.0 and b.tokens == 0.0


def test_a_client_over_its_rate_is_told_when_to_retry_and_others_are_untouched():
    lim = limits(rate=2.0, burst=2.0)
    a, b = lim.key("10.0.0.1"), lim.key("10.0.0.2")
    assert lim.allow_request(a, 0.0) is None and lim.allow_request(a, 0.0) is None
    assert lim.allow_request(a, 0.0) == pytest.approx(0.5)
    assert lim.allow_request(b, 0.0) is None
    assert lim.allow_request(a, 0.5) is None
    assert lim.stats["rate_limited"] == 1


def test_loopback_is_exempt_by_default_and_no_address_means_no_limit():
    lim = ClientLimits(LimitsConfig(rate=1.0, burst=1.0, connections=1))
    assert lim.key("127.0.0.1") is None and lim.key("127.9.9.9") is None and lim.key("::1") is None
    assert lim.key("::ffff:127.0.0.1") is None
    assert lim.key(None) is None and lim.key("not an address") is None
    assert lim.key("192.168.1.5") == "192.168.1.5"
    assert all(lim.allow_request(None, 0.0) is None for _ in range(10))
    assert all(lim.open_connection(None) for _ in range(10))


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key(b"10.0.0.1") is None and client_key(42) is None


@given(st.one_of(st.text(max_size=60), st.binary(max_size=20), st.none(), st.integers()))
def test_no_address_a_socket_may_report_makes_the_key_raise(host):
    key = ClientLimits().key(host)
    assert key is None or isinstance(key, str)


def test_connections_are_counted_per_client_and_given_back_on_close():
    lim = limits(connections=2)
    k = lim.key("10.0.0.1")
    assert lim.open_connection(k) and lim.open_connection(k)
    assert not lim.open_connection(k)
    assert lim.open_connection(lim.key("10.0.0.2"))
    assert lim.stats["refused_client_connections"] == 1 and lim.open_connections(k) == 2
    lim.close_connection(k)
    assert lim.open_connection(k)
    for _ in range(3):
        lim.close_connection(k)
    assert lim.open_connections(k) == 0 and k not in lim._open  # nothing kept for a gone client


def test_buckets_are_bounded_full_ones_go_first_then_the_least_recently_used():
    lim = limits(rate=1.0, burst=2.0, max_clients=3)
    for i in range(3):
        lim.allow_request(f"10.0.0.{i}", 0.0)
    lim.allow_request("10.0.0.0", 0.0)  # 10.0.0.0 is now the most recently used, and empty
    lim.allow_request("10.0.0.9", 0.0)  # no bucket is full: the least recently used (.1) goes
    assert lim.clients() == 3 and "10.0.0.1" not in lim._buckets and "10.0.0.0" in lim._buckets
    for i in range(1000):
        lim.allow_request(f"10.1.{i // 256}.{i % 256}", 100.0)
    assert lim.clients() == 3


def test_a_limited_client_is_still_limited_while_others_come_and_go_within_the_bound():
    lim = limits(rate=0.001, burst=1.0, max_clients=8)
    assert lim.allow_request("10.0.0.1", 0.0) is None
    for i in range(5):
        lim.allow_request(f"10.2.0.{i}", 0.0)
        assert lim.allow_request("10.0.0.1", 0.0) is not None


def test_only_routes_marked_rate_limited_match_with_their_methods():
    async def h(request):  # pragma: no cover - never called
        raise AssertionError

    patterns = RoutePatterns.of([
        rate_limited(Route("/orders", h, methods=["POST"])),
        rate_limited(Route("/orders/{order_id}", h, methods=["DELETE"])),
        Route("/quotes/{symbol}", h, methods=["PUT"]),
    ])
    assert patterns.match("POST", "/orders") and patterns.match("DELETE", "/orders/o%2F1")
    assert not patterns.match("GET", "/orders") and not patterns.match("POST", "/orders/x")
    assert not patterns.match("PUT", "/quotes/MSFT") and not patterns.match("DELETE", "/orders/a/b")
    assert not RoutePatterns.of([Route("/x", h)])


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        LimitsConfig(rate=0.0)
    with pytest.raises(ValueError):
        LimitsConfig(connections=0)
