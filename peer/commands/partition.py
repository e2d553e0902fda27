"""`murmur partition`: cut (or degrade) the links between groups of a running cluster's peers."""

from __future__ import annotations

import argparse
import time

from peer.commands._common import (
    UsageError,
    add_cluster_file_arguments,
    nemesis_from,
    positive_seconds_arg,
    print_outcome,
)

NAME = "partition"
HELP = "cut or degrade the links between groups of peers (undo with `murmur heal`)"
DESCRIPTION = """\
Cut every link between groups of peers of a cluster started by `murmur launch`: each peer is
told (on its /admin/links endpoint, with the cluster's admin token) to drop what it sends to and
receives from the peers of the other groups -- gossip UDP and TCP, and the HTTP calls between
peers -- so a cut peer neither hears nor is heard. Peers not named are not affected. Operators'
requests (murmur top, check, flow, curl) are never cut.

  --one-way        cut only from the left group to the right (UDP goes the other way; a TCP
                   connection needs both ways, so HTTP and push-pull fail both ways)
  --loss P, --delay MS[±J], --duplicate P
                   degrade the links instead of cutting them
  --for S          the peers heal these links by themselves after S seconds

In a `murmur launch --netns` cluster a full cut also happens in the kernel: every peer of each
group but the last has its veth set down, which cuts it off the whole LAN (the filter still
draws the exact groups); one-way cuts and degraded links stay in the filter. The fault is appended to <data-dir>/faults.jsonl, which
`murmur check` shows beside its verdict.

examples:
  murmur partition 'mm-1,mm-2 | mm-3,mm-4,mm-5,exchange,ledger'
  murmur partition 'mm-1 | exchange' --for 10
  murmur partition 'mm-1 | mm-2' --one-way
  murmur partition 'mm-1,mm-2 | exchange,ledger' --loss 0.2 --delay 50±10
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("groups", metavar="'A,B | C,D'", help="peer names, groups split by '|'")
    p.add_argument("--one-way", action="store_true", help="cut only from the left group to the right")
    p.add_argument("--loss", metavar="P", help="drop each packet with probability P instead of cutting")
    p.add_argument("--delay", metavar="MS[±J]", help="delay each packet by MS milliseconds (± J) instead of cutting")
    p.add_argument("--duplicate", metavar="P", help="send each packet twice with probability P instead of cutting")
    p.add_argument("--for", dest="for_s", type=positive_seconds_arg, metavar="S",
                   help="heal by itself after S seconds")
    add_cluster_file_arguments(p)


def run(args: argparse.Namespace) -> int:
    from peer.faults.nemesis import NemesisError
    from peer.faults.plan import (
        LinkEffect,
        Partition,
        PlanError,
        parse_delay,
        parse_groups,
        parse_probability,
    )

    nemesis = nemesis_from(args)
    try:
        groups = parse_groups(args.groups, nemesis.names())
        effect = LinkEffect()
        if args.loss is not None or args.delay is not None or args.duplicate is not None:
            delay, jitter = parse_delay(args.delay) if args.delay is not None else (0.0, 0.0)
            effect = LinkEffect(
                cut=False,
                loss=parse_probability(args.loss, "loss") if args.loss is not None else 0.0,
                delay_ms=delay,
                jitter_ms=jitter,
                duplicate=parse_probability(args.duplicate, "duplicate") if args.duplicate is not None else 0.0,
            )
        partition = Partition(groups, args.one_way, effect)
        outcome = nemesis.partition(partition, for_s=args.for_s)
    except (PlanError, NemesisError) as exc:
        raise UsageError(str(exc)) from None
    code = print_outcome(NAME, outcome)
    if args.for_s is not None and outcome.lines and "kernel:" in " ".join(outcome.lines):
        # A kernel cut cannot heal itself: this command stays until it is time, then restores it.
        print(f"waiting {args.for_s:g} s to restore the kernel links (Ctrl-C leaves them cut: murmur heal)")
        time.sleep(args.for_s)
        code = max(code, print_outcome("heal", nemesis.heal()))
    return code
