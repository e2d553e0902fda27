"""`murmur keygen`: a new random cluster key (base64), or a new key file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peer.commands._common import UsageError

NAME = "keygen"
HELP = "print a new cluster key, or write a new key file"
DESCRIPTION = """\
Print a new random 32-byte cluster key in base64 on stdout (its key id on stderr). Keep it
secret: anyone holding it is a member. With --key-file, write a new key file instead (mode
0600), which a peer reads with `murmur peer --key-file FILE` (or MURMUR_KEY_FILE).

To rotate a running cluster's key: `murmur keygen > new.key`, then `murmur keys install
new.key`, `murmur keys use <id>`, `murmur keys remove <old id>` (docs/runbook.md).

examples:
  murmur keygen > new.key
  murmur keygen --key-file /etc/murmur/cluster.key
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help="write a new key file (a keyring of one key, mode 0600) instead of printing; "
                        "an existing file is never overwritten")


def run(args: argparse.Namespace) -> int:
    from gossip.keyring import Keyring, encode_key, generate_key, key_id

    key = generate_key()
    if args.key_file is None:
        print(encode_key(key))
        print(f"key id: {key_id(key)}", file=sys.stderr)
        return 0
    if args.key_file.exists():
        raise UsageError(f"{args.key_file} exists: a key file is never overwritten (remove it first)")
    Keyring([key]).save(args.key_file)
    print(f"wrote {args.key_file} (mode 0600), key id {key_id(key)}")
    return 0
