"""The `murmur` command: parses flags and hands over to one module a subcommand.

What it is for: the entry point (`murmur = peer.cli:main`, or `python -m peer.cli`). Usage
errors are one line on stderr and exit code 2; everything else is the subcommand's business.
It must never hold a subcommand's logic: see `peer/commands/`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from peer.commands import COMMANDS
from peer.commands._common import UsageError

DESCRIPTION = """\
murmur: a market-making cluster with no coordinator. Peers learn who is alive by SWIM gossip.

Try it on one machine:
  murmur launch --peers 5          start 5 market makers + exchange + ledger on 127.0.0.1
  murmur members                   the membership table, as one peer sees it
  murmur top                       the same, live, until Ctrl-C

Run `murmur COMMAND --help` for a command's flags."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one clear line (and a pointer to --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="murmur",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"peer.commands.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args._run(args)
    except UsageError as exc:
        args._parser.error(str(exc))
    except KeyboardInterrupt:
        # Commands handle Ctrl-C themselves; this is a second one during their clean-up.
        return 130


if __name__ == "__main__":
    sys.exit(main())
