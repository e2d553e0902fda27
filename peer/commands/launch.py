"""`murmur launch`: a whole cluster on this machine, one process a peer, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from gossip.config import DEFAULT_CLUSTER
from peer.commands._common import (
    UsageError,
    cluster_name_arg,
    non_negative_float,
    overrides_from,
    port_arg,
    positive_float,
    positive_int_arg,
    profile_arg,
    set_arg,
    single_leaf,
    symbols_arg,
)
from peer.dirlock import DirectoryInUse, lock_directory
from peer.tools.cluster_file import DEFAULT_DATA_DIR

NAME = "launch"
HELP = "start N market makers + an exchange + a ledger on 127.0.0.1"
DESCRIPTION = """\
Start a cluster on this machine: market makers mm-1..mm-N, one `exchange` and one `ledger`,
each its own process (`murmur peer`) on 127.0.0.1 with its own data directory
<data-dir>/<name>. mm-1 is started first and the others join through it; from then on they
find each other by gossip only. When every peer answers /health, the launcher writes
<data-dir>/cluster.json (name, role, pid, gossip address, HTTP URL and restart command of each
peer) and prints where to look.

Ctrl-C (or SIGTERM) makes every peer leave gracefully and stop; peers still running after
--stop-timeout are killed. If the launcher itself is killed, the kernel stops the peers (Linux).
Re-running with the same --data-dir brings the same names back with higher incarnations.

examples:
  murmur launch --peers 5
  murmur launch --peers 20 --data-dir /tmp/murmur --set probe_interval=0.1
  murmur launch --peers 3 --base-port 7946      # gossip on 7946, 7948, ...; HTTP on 7947, ...
"""

MAX_PEERS = 500


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peers",
        type=positive_int_arg,
        default=5,
        metavar="N",
        help="number of market-maker peers (default: 5; plus exchange and ledger)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where cluster.json and each peer's directory go (default: ./{DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--profile",
        type=profile_arg,
        default="local",
        help="protocol timings: local (probe 200 ms) or lan (probe 1 s) (default: local)",
    )
    p.add_argument(
        "--base-port",
        type=port_arg,
        metavar="PORT",
        help="give peer i gossip port PORT+2i and HTTP port PORT+2i+1 "
        "(default: free ports chosen by the OS)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=set_arg,
        action="append",
        metavar="KEY=VALUE",
        help="override a protocol parameter on every peer, e.g. --set probe_interval=0.5",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up if a peer does not answer /health within this (default: 30)",
    )
    p.add_argument("--symbols", type=symbols_arg,
                   help="symbols the exchange lists (default: AAPL,AMZN,GOOG,META,MSFT,NFLX,NVDA,TSLA)")
    p.add_argument("--market-seed", type=int, default=1,
                   help="seed of the exchange's reference prices and external order flow (default: 1)")
    p.add_argument("--flow-rate", type=non_negative_float, default=20.0,
                   help="external orders per second generated inside the exchange (default: 20; 0 for none)")
    p.add_argument("--exposure-limit", type=positive_int_arg, default=100,
                   help="the ledger's global exposure limit, each side (default: 100)")
    p.add_argument("--lease", type=positive_float, default=2.0,
                   help="seconds an authority lease lasts without renewal, at the exchange and in "
                   "every market maker (default: 2)")
    p.add_argument("--cluster", type=cluster_name_arg, default=DEFAULT_CLUSTER,
                   help="the cluster's name: every gossip packet carries it, and peers of another name "
                   f"never merge in (default: {DEFAULT_CLUSTER})")
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on Ctrl-C, kill peers that have not stopped within this (default: 5)",
    )


def run(args: argparse.Namespace) -> int:
    from peer.tools.launcher import Launcher, LaunchError, LaunchOptions

    if args.peers > MAX_PEERS:
        raise UsageError(f"--peers must be at most {MAX_PEERS}, got {args.peers}")
    total = args.peers + 2
    if args.base_port is not None and args.base_port + 2 * total - 1 > 65535:
        raise UsageError(f"--base-port {args.base_port} leaves no room for {total} peers")
    if args.startup_timeout <= 0 or args.stop_timeout <= 0:
        raise UsageError("--startup-timeout and --stop-timeout must be positive")
    opts = LaunchOptions(
        peers=args.peers,
        data_dir=args.data_dir,
        profile=args.profile,
        base_port=args.base_port,
        overrides=overrides_from(args.overrides),
        startup_timeout=args.startup_timeout,
        stop_timeout=args.stop_timeout,
        symbols=args.symbols,
        market_seed=args.market_seed,
        flow_rate=args.flow_rate,
        exposure_limit=args.exposure_limit,
        lease=args.lease,
        cluster=args.cluster,
    )
    console = Console(highlight=False)
    launcher = Launcher(opts, say=lambda text: console.print(text, markup=False))
    try:
        with lock_directory(opts.data_dir, "launcher"):
            console.print(f"starting {total} peers in {opts.data_dir} (profile {opts.profile})...")
            return trio.run(launcher.run, lambda cluster: report(console, opts.data_dir, cluster))
    except (Exception, BaseExceptionGroup) as exc:
        leaf = single_leaf(exc)
        if isinstance(leaf, (LaunchError, OSError, DirectoryInUse)):
            print(f"murmur launch: {leaf}", file=sys.stderr)
            return 1
        raise


def report(console: Console, data_dir: Path, cluster: dict[str, Any]) -> None:
    table = Table(title=f"murmur cluster ({len(cluster['peers'])} peers)", title_justify="left")
    for column in ("name", "role", "pid", "gossip", "http"):
        table.add_column(column.upper(), justify="right" if column == "pid" else "left")
    for p in cluster["peers"]:
        table.add_row(p["name"], p["role"], str(p["pid"]), p["gossip"], p["http"])
    console.print(table)
    cluster_file = data_dir / "cluster.json"
    first = cluster["peers"][0]["http"]
    console.print("where to look:")
    console.print(f"  cluster file   {cluster_file}")
    console.print(f"  logs           {data_dir}/<name>/<name>.log (JSON lines; stderr.log beside)")
    console.print(f"  members        murmur members --peer {first}")
    console.print(f"  live table     murmur top --cluster {cluster_file}")
    console.print(f"  one peer       curl {first}/status")
    console.print("Ctrl-C stops every peer (each leaves the cluster gracefully).")
