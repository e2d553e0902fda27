"""`murmur heal`: undo every partition and thaw every frozen peer of a running cluster."""

from __future__ import annotations

import argparse

from peer.commands._common import (
    UsageError,
    add_cluster_file_arguments,
    nemesis_from,
    print_outcome,
)

NAME = "heal"
HELP = "restore every link `murmur partition` cut or degraded, and thaw frozen peers"
DESCRIPTION = """\
Remove every link rule from every running peer (and, in a --netns cluster, put every peer back
on one bridge), then thaw the peers `murmur freeze` stopped. Killed peers stay down: start them
with `murmur restart NAME`. Appended to <data-dir>/faults.jsonl.

examples:
  murmur heal
  murmur heal --data-dir /tmp/murmur
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cluster_file_arguments(p)


def run(args: argparse.Namespace) -> int:
    from peer.faults.nemesis import NemesisError

    nemesis = nemesis_from(args)
    try:
        return print_outcome(NAME, nemesis.heal())
    except NemesisError as exc:
        raise UsageError(str(exc)) from None
