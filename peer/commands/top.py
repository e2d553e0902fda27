"""`murmur top`: the live cluster dashboard (membership and trading panels) until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import trio

from peer.commands._common import UsageError, add_target_arguments, cluster_urls, target_urls

NAME = "top"
HELP = "live cluster dashboard: membership, authority, quotes, positions, fills (Ctrl-C to quit)"
DESCRIPTION = """\
Show one peer's membership view live, redrawn several times a second: suspect rows are yellow,
dead rows red, left rows dim, and SINCE says how long ago each member last changed state.

Below it, read from the exchange and the ledger that the membership view names: symbol
authority (holder, epoch, lease left), active quotes, positions with their versions, recent
fills, exposure used against the limit, and a line for each authority change as it happens.
An exchange or ledger that is missing from the view or does not answer is shown as such, with
its last data dimmed and its age; top never writes anything.

If the peer stops answering, the last view stays on screen (dimmed) with the reason, and top
keeps retrying; with --cluster (or ./data/cluster.json) it fails over to the next peer of the
cluster file, re-reading the file so a relaunched cluster is picked up.

examples:
  murmur top
  murmur top --cluster data/cluster.json
  murmur top --peer http://127.0.0.1:8080
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target_arguments(p)
    p.add_argument(
        "--interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="seconds between polls of the peer (default: 0.25; the screen redraws 4 times a "
        "second regardless)",
    )


def run(args: argparse.Namespace) -> int:
    if not 0.05 <= args.interval <= 10:
        raise UsageError(f"--interval must be from 0.05 to 10 seconds, got {args.interval}")
    first, cluster_file = target_urls(args)

    def urls() -> list[str]:
        if cluster_file is None:
            return first
        try:
            return cluster_urls(Path(cluster_file))
        except UsageError:
            return first  # the file went away for a moment: keep the last known peers

    trio.run(_main, urls, args.interval)
    return 0


async def _main(urls, interval: float) -> None:
    from viz.top import run_top

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            await run_top(urls, poll_interval=interval)
