"""`murmur restart NAME`: start one peer again, at the same addresses and data directory."""

from __future__ import annotations

from peer.commands._one_peer import one_peer_command

NAME = "restart"
HELP = "start one peer again, at the same addresses and data directory"
_EPILOG, add_arguments, run = one_peer_command(NAME, "restart")
DESCRIPTION = """\
Ask the launcher that owns the cluster to start the peer again (stopping it first if it
still runs), with the same name, addresses and data directory, so it comes back with its
durable state and a higher incarnation. Link rules of partitions still active are given to it
as soon as it answers.
""" + _EPILOG
