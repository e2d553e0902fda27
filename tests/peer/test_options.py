"""Every setting's default is written once (`peer/options.py`): the services, the market
maker's cores and `murmur launch` agree with the option dataclasses."""

from __future__ import annotations

import dataclasses
import inspect

from peer.exchange.service import ExchangeService
from peer.ledger.service import LedgerService
from peer.market_maker.authority import AuthorityConfig
from peer.market_maker.quoting import PlannerConfig, QuoteConfig
from peer.options import (
    ExchangeOptions,
    LedgerOptions,
    MarketMakerOptions,
    PeerOptions,
    flag_of,
    groups_of,
    launch_defaults,
    passed_values,
)
from peer.tools.launcher import LaunchOptions


def defaults_of(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items()}


def test_the_services_defaults_are_the_options_defaults():
    exchange, service = ExchangeOptions(), defaults_of(ExchangeService)
    names = ("seed", "flow_rate", "quote_ttl", "lease_duration")
    assert tuple(service[n] for n in names) == (
        exchange.market_seed, exchange.flow_rate, exchange.quote_ttl, exchange.lease)
    assert defaults_of(LedgerService)["exposure_limit"] == LedgerOptions().exposure_limit


def test_a_market_maker_defaults_to_the_exchanges_lease_and_quote_ttl_and_its_own_quote_terms():
    exchange, mm = ExchangeOptions(), MarketMakerOptions()
    assert AuthorityConfig().lease_duration == exchange.lease
    assert PlannerConfig().quote_ttl == exchange.quote_ttl
    assert (QuoteConfig().half_spread, QuoteConfig().size) == (mm.half_spread, mm.quote_size)


def test_launch_differs_from_a_peer_only_where_a_flag_says_so_with_a_reason():
    launch, peer = LaunchOptions(), PeerOptions(role="exchange")
    assert launch.exchange.flow_rate == 20 and peer.exchange.flow_rate == 0
    assert launch.profile == "local" and peer.profile == "lan"
    fields = {f.name: f for f in dataclasses.fields(PeerOptions)}
    for name, value in passed_values(launch).items():
        if name in groups_of(PeerOptions):
            assert value == launch_defaults(groups_of(PeerOptions)[name])
            pairs = [(f, getattr(value, f.name), getattr(getattr(peer, name), f.name))
                     for f in dataclasses.fields(value)]
        else:
            pairs = [(fields[name], value, getattr(peer, name))]
        for f, at_launch, at_peer in pairs:
            launched = flag_of(f).launch
            if at_launch != at_peer:
                assert launched and launched[1], f"{f.name}: launch's own default needs its reason"


def test_every_role_group_of_a_peer_is_passed_on_by_launch():
    assert groups_of(LaunchOptions) == groups_of(PeerOptions)


def test_a_peers_http_api_listens_on_loopback_unless_an_address_is_given():
    """docs/security.md, "What binds where": reads are open to whoever reaches the address, so
    the default reaches nobody else; `murmur launch` (one machine) keeps it."""
    fields = {f.name: f for f in dataclasses.fields(PeerOptions)}
    assert fields["http"].default[0] == "127.0.0.1"
    assert fields["bind"].default[0] == "127.0.0.1"
