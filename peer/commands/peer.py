"""`murmur peer`: run one peer in the foreground (for a LAN, or by hand next to a launch)."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from pathlib import Path

import trio

from peer.addresses import format_address
from peer.commands._common import (
    UsageError,
    address_arg,
    address_list_arg,
    cluster_name_arg,
    node_name_arg,
    non_negative_float,
    overrides_from,
    positive_float,
    positive_int_arg,
    profile_arg,
    reachable_address_arg,
    set_arg,
    single_leaf,
    symbols_arg,
)
from peer.runner import ROLES, PeerOptions, run_peer

NAME = "peer"


HELP = "run one peer in the foreground"
DESCRIPTION = """\
Run one peer in the foreground until Ctrl-C (or SIGTERM); it then leaves the cluster gracefully,
so the others record it as `left`, not `dead`.

The peer keeps its name and incarnation in --data-dir, so a restarted peer rejoins under the
same name with a higher incarnation. Logs are JSON lines on stderr and in <data-dir>/<name>.log;
the `peer_started` line says where its gossip and HTTP endpoints are.

A peer that seems stuck: `kill -USR1 <pid>` writes every thread's stack to its stderr.

examples:
  murmur peer --role mm --name mm-1 --bind 127.0.0.1:7946 --http 127.0.0.1:8080
  murmur peer --role mm --name mm-2 --bind 127.0.0.1:7947 --join 127.0.0.1:7946
  murmur peer --role exchange --bind 192.168.1.10:7946 --http 192.168.1.10:8080 --discover
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=ROLES, help="what this peer does")
    p.add_argument(
        "--name",
        type=node_name_arg,
        help="node name, unique in the cluster (default: the one kept in --data-dir, or "
        "<role>-<random> the first time)",
    )
    p.add_argument(
        "--bind",
        type=reachable_address_arg,
        default=("127.0.0.1", 7946),
        metavar="HOST:PORT",
        help="gossip address (UDP packets and TCP push-pull on the same port); other peers "
        "reach this peer there, so use a concrete address, not 0.0.0.0 (default: "
        "127.0.0.1:7946; port 0 picks a free one)",
    )
    p.add_argument(
        "--http",
        type=address_arg,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="HTTP API address: /health /status /members /metrics (default: 127.0.0.1:0, "
        "a free port, logged in peer_started)",
    )
    p.add_argument(
        "--join",
        type=address_list_arg,
        action="extend",
        default=[],
        metavar="HOST:PORT,...",
        help="gossip addresses of peers to join through (any live one is enough; retried "
        "until one answers)",
    )
    p.add_argument(
        "--discover",
        action="store_true",
        help="find peers of the same --cluster on the LAN by zeroconf/mDNS (no --join needed)",
    )
    p.add_argument(
        "--cluster",
        default="murmur",
        type=cluster_name_arg,
        help="cluster name: every gossip packet and push-pull carries it, and those of another "
        "cluster are dropped (counted as dropped_foreign_cluster); --discover finds only peers "
        "of this cluster (default: murmur)",
    )
    p.add_argument(
        "--interfaces",
        default="all",
        metavar="all|default|IP,...",
        help="network interfaces for --discover (default: all)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="where the peer keeps identity.json, its log and peer.json "
        "(default: ./data/<name>, or ./data/<role> without --name)",
    )
    p.add_argument(
        "--profile",
        type=profile_arg,
        default="lan",
        help="protocol timings: lan (memberlist LAN defaults, probe 1 s) or local "
        "(probe 200 ms, for many peers on one machine) (default: lan)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=set_arg,
        action="append",
        metavar="KEY=VALUE",
        help="override one protocol parameter of the profile, e.g. --set probe_interval=0.5 "
        "(repeatable)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="do not copy log lines to stderr (they still go to <data-dir>/<name>.log)",
    )
    p.add_argument("--seed", type=int, help="seed of the protocol's randomness (for replays)")
    ex = p.add_argument_group("exchange role (--role exchange)")
    ex.add_argument("--symbols", type=symbols_arg, help="comma-separated symbols the exchange lists "
                    "(default: AAPL,AMZN,GOOG,META,MSFT,NFLX,NVDA,TSLA); fixed at the first start")
    ex.add_argument("--market-seed", type=int, default=1,
                    help="seed of the reference prices and the external order flow (default: 1)")
    ex.add_argument("--flow-rate", type=non_negative_float, default=0.0,
                    help="external orders per second the exchange generates itself (default: 0, none)")
    ex.add_argument("--quote-ttl", type=positive_float, default=30.0,
                    help="seconds a quote lives after activation or refresh (default: 30); "
                    "market makers need the exchange's value")
    ex.add_argument("--lease", type=positive_float, default=2.0,
                    help="seconds a symbol authority lease lasts without renewal (default: 2); "
                    "market makers need the exchange's value")
    mm = p.add_argument_group("market-maker role (--role mm)")
    mm.add_argument("--half-spread", type=positive_int_arg, default=2,
                    help="ticks from the (position-skewed) reference price to the bid and to the ask (default: 2)")
    mm.add_argument("--quote-size", type=positive_int_arg, default=5,
                    help="quantity quoted on each side while the position leaves room (default: 5)")
    le = p.add_argument_group("ledger role (--role ledger)")
    le.add_argument("--exposure-limit", type=positive_int_arg, default=100,
                    help="global exposure limit, each side: the most the active reservations may hold "
                    "on the bid side, and on the ask side (default: 100)")


def options_from(args: argparse.Namespace) -> PeerOptions:
    return PeerOptions(
        role=args.role,
        name=args.name,
        bind=args.bind,
        http=args.http,
        join=list(args.join),
        discover=args.discover,
        cluster=args.cluster,
        interfaces=args.interfaces,
        data_dir=args.data_dir,
        profile=args.profile,
        overrides=overrides_from(args.overrides),
        log_stderr=not args.quiet,
        seed=args.seed,
        symbols=args.symbols,
        market_seed=args.market_seed,
        flow_rate=args.flow_rate,
        quote_ttl=args.quote_ttl,
        lease=args.lease,
        exposure_limit=args.exposure_limit,
        half_spread=args.half_spread,
        quote_size=args.quote_size,
    )


def _refusals() -> tuple[type[BaseException], ...]:
    from ledger.store import LedgerDamaged
    from peer.exchange.service import TapeDivergence
    from peer.exchange.tape import TapeError

    return (LedgerDamaged, TapeDivergence, TapeError)


def run(args: argparse.Namespace) -> int:
    opts = options_from(args)
    if opts.role == "mm":
        from peer.market_maker.authority import AuthorityConfig

        try:
            AuthorityConfig(lease_duration=opts.lease)
        except ValueError as exc:
            raise UsageError(f"--lease {opts.lease:g} is too short for a market maker: {exc}") from None
    # `kill -USR1 <pid>` dumps every thread's stack to stderr: for a peer that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        trio.run(run_peer, opts)
    except (Exception, BaseExceptionGroup) as exc:
        leaf = single_leaf(exc)
        # The usual ones: the address is taken or not on this host; an unreadable data dir.
        if isinstance(leaf, OSError):
            where = f"gossip {format_address(opts.bind)}, http {format_address(opts.http)}"
            print(f"murmur peer: cannot start ({where}): {leaf}", file=sys.stderr)
            return 1
        if (isinstance(leaf, RuntimeError) and leaf is exc) or isinstance(leaf, _refusals()):
            # An unreadable identity.json; a damaged ledger database, a corrupt tape: the message
            # names the file and the runbook step, a traceback would only hide it.
            print(f"murmur peer: cannot start: {leaf}", file=sys.stderr)
            return 1
        raise
    return 0
