"""`murmur thaw NAME`: let a frozen peer run again (SIGCONT)."""

from __future__ import annotations

from peer.commands._one_peer import one_peer_command

NAME = "thaw"
HELP = "let a frozen peer run again (SIGCONT)"
_EPILOG, add_arguments, run = one_peer_command(NAME, "thaw")
DESCRIPTION = """\
Continue a peer stopped by `murmur freeze` (SIGCONT).
""" + _EPILOG
