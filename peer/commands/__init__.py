"""One module a `murmur` subcommand (celery's `celery/bin/`, rq's `rq/cli/` style).

Each module exposes `NAME`, `HELP`, `DESCRIPTION`, `add_arguments(parser)` and `run(args) -> int`;
`peer.cli` builds the parser from `COMMANDS` and dispatches. Commands are thin: they turn flags
into library calls and print results; they never hold protocol or cluster logic.
"""

from __future__ import annotations

COMMANDS = (
    "peer", "launch", "members", "top", "sim", "tape", "flow", "check",
    "partition", "heal", "freeze", "thaw", "kill", "restart", "keygen", "keys",
)
