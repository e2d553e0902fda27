"""`murmur freeze NAME`: stop one peer in place (SIGSTOP), as a long pause would."""

from __future__ import annotations

from peer.commands._one_peer import one_peer_command

NAME = "freeze"
HELP = "stop one peer in place (SIGSTOP), as a long pause would"
_EPILOG, add_arguments, run = one_peer_command(NAME, "freeze")
DESCRIPTION = """\
Stop one peer with SIGSTOP: it keeps its sockets and state but answers nothing, like a
process in a long garbage-collection pause or a suspended VM. `murmur thaw NAME` (or `murmur
heal`) lets it run again; it wakes up believing no time passed.
""" + _EPILOG
