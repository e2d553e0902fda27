"""`murmur launch`: a whole cluster on this machine, one process a peer, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from peer.commands._common import UsageError, single_leaf
from peer.dirlock import DirectoryInUse, lock_directory
from peer.options import add_flags, from_args

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

Every role flag of `murmur peer` is a flag here too, passed on to the peers of that role (and
--cluster, --profile, --set to every peer); cluster.json's `restart` shows each peer's flags.

With --netns (Linux, as root) each peer runs in a network namespace of its own with a 10.x
address on a bridge -- a LAN on one machine -- and `murmur partition` also cuts in the kernel;
with --discover as well, peers get no seeds and find each other by mDNS across the bridge.

The launcher writes <data-dir>/admin.token (mode 0600): the fault commands (murmur partition,
heal, ...) and the peers' /admin endpoints need it. `murmur restart NAME` asks this launcher to
start a peer again, over <data-dir>/launcher.sock.

examples:
  murmur launch --peers 5
  murmur launch --peers 4 --netns --discover
  murmur launch --peers 20 --data-dir /tmp/murmur --set probe_interval=0.1
  murmur launch --peers 3 --base-port 7946      # gossip on 7946, 7948, ...; HTTP on 7947, ...
"""

MAX_PEERS = 500


def add_arguments(p: argparse.ArgumentParser) -> None:
    from peer.tools.launcher import LaunchOptions

    add_flags(p, LaunchOptions)


def run(args: argparse.Namespace) -> int:
    from peer.tools.launcher import Launcher, LaunchError, LaunchOptions
    from peer.tools.netns import NetnsError

    opts = from_args(LaunchOptions, args)
    if opts.peers > MAX_PEERS:
        raise UsageError(f"--peers must be at most {MAX_PEERS}, got {opts.peers}")
    total = opts.peers + 2
    if opts.base_port is not None and opts.base_port + 2 * total - 1 > 65535:
        raise UsageError(f"--base-port {opts.base_port} leaves no room for {total} peers")
    if opts.netns:
        from peer.tools.netns import NetnsUnavailable, check_netns_available

        if opts.base_port is not None:
            raise UsageError("--netns gives every peer its own address and ports 7946/7947; drop --base-port")
        try:
            check_netns_available()
        except NetnsUnavailable as exc:
            raise UsageError(f"--netns: {exc}") from None
    # soft_wrap: a path longer than the terminal (or than 80 columns, when the output is a file)
    # stays on one line, whole, so that it can be copied; only the table is fitted to the width.
    console = Console(highlight=False, soft_wrap=True)
    launcher = Launcher(opts, say=lambda text: console.print(text, markup=False))
    try:
        with lock_directory(opts.data_dir, "launcher"):
            console.print(f"starting {total} peers in {opts.data_dir} (profile {opts.profile})...")
            return trio.run(launcher.run, lambda cluster: report(console, opts.data_dir, cluster))
    except (Exception, BaseExceptionGroup) as exc:
        leaf = single_leaf(exc)
        if isinstance(leaf, (LaunchError, OSError, DirectoryInUse, NetnsError)):
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
