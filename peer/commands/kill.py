"""`murmur kill NAME`: kill one peer at once (SIGKILL): no leave, no flush."""

from __future__ import annotations

from peer.commands._one_peer import one_peer_command

NAME = "kill"
HELP = "kill one peer at once (SIGKILL): no leave, no flush"
_EPILOG, add_arguments, run = one_peer_command(NAME, "kill")
DESCRIPTION = """\
Kill one peer with SIGKILL: it does not leave the cluster, finish a write or release
anything; the others notice by gossip. `murmur restart NAME` starts it again.
""" + _EPILOG
