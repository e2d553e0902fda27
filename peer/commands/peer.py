"""`murmur peer`: run one peer in the foreground (for a LAN, or by hand next to a launch)."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys

import trio

from peer.addresses import format_address
from peer.commands._common import UsageError, single_leaf
from peer.options import PeerOptions, add_flags, from_args
from peer.runner import run_peer

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
    add_flags(p, PeerOptions)


def _refusals() -> tuple[type[BaseException], ...]:
    from ledger.store import LedgerDamaged
    from peer.exchange.service import TapeDivergence
    from peer.exchange.tape import TapeError

    return (LedgerDamaged, TapeDivergence, TapeError)


def run(args: argparse.Namespace) -> int:
    opts = from_args(PeerOptions, args)
    if opts.role == "mm":
        from peer.market_maker.authority import AuthorityConfig

        lease = opts.exchange.lease
        try:
            AuthorityConfig(lease_duration=lease)
        except ValueError as exc:
            raise UsageError(f"--lease {lease:g} is too short for a market maker: {exc}") from None
    from gossip.keyring import Keyring, KeyringError
    from peer.runner import NoKey, key_file_of

    try:
        key_file = key_file_of(opts)
        if key_file is not None:
            Keyring.load(key_file)  # a broken key file is refused here, with its name (never its content)
    except (NoKey, KeyringError) as exc:
        raise UsageError(str(exc)) from None
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
