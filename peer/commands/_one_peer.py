"""The shape of the commands that act on one peer by name: freeze, thaw, kill, restart."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from peer.commands._common import (
    UsageError,
    add_cluster_file_arguments,
    nemesis_from,
    print_outcome,
)


def one_peer_command(name: str, what: str) -> tuple[str, Callable, Callable]:
    """(DESCRIPTION's end, add_arguments, run) of `murmur <name> NAME`: `Nemesis.<name>(NAME)`."""
    epilog = f"""
Appended to <data-dir>/faults.jsonl, which `murmur check` shows beside its verdict.

examples:
  murmur {name} mm-1
  murmur {name} exchange --data-dir /tmp/murmur
"""

    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help=f"the peer to {what}, by its name in cluster.json "
                       "(mm-1, exchange, ledger)")
        add_cluster_file_arguments(p)

    def run(args: argparse.Namespace) -> int:
        from peer.faults.nemesis import NemesisError

        nemesis = nemesis_from(args)
        try:
            return print_outcome(name, getattr(nemesis, name)(args.name))
        except NemesisError as exc:
            raise UsageError(str(exc)) from None

    return epilog, add_arguments, run
