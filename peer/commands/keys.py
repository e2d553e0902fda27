"""`murmur keys list|install|use|remove`: rotate a running cluster's key, every peer in turn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from peer.commands._common import UsageError, add_cluster_file_arguments, nemesis_from

NAME = "keys"
HELP = "list, install, switch to or remove cluster keys on every running peer"
DESCRIPTION = """\
Change the keyring of every running peer of a launched cluster, through each peer's /admin/keys
(with the cluster's admin token); each peer writes the change to its key file, so a restart
keeps it. Keys are read from a file or stdin, never from the command line, and only key ids are
printed. A rotation with no downtime is three steps, each run to the end on every peer before
the next (docs/runbook.md):

  murmur keygen > new.key
  murmur keys install new.key        every peer accepts the new key (still sends with the old)
  murmur keys use <new id>           every peer sends with the new key
  murmur keys remove <old id>        no peer accepts the old key any more

Exit 1 if some peer did not take the step (it is named; run the step again).

examples:
  murmur keys list
  murmur keys install new.key --data-dir /tmp/murmur
  murmur keygen | murmur keys install -
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="each peer's key ids and primary")
    install = sub.add_parser("install", help="accept a new key on every peer (read from FILE, or - for stdin)")
    install.add_argument("file", metavar="FILE", help="a file holding the key as `murmur keygen` prints it, or -")
    use = sub.add_parser("use", help="send with key ID on every peer (it must be installed everywhere)")
    use.add_argument("id", metavar="ID")
    remove = sub.add_parser("remove", help="stop accepting key ID on every peer")
    remove.add_argument("id", metavar="ID")
    for q in (listing, install, use, remove):
        add_cluster_file_arguments(q)


def read_key_text(source: str) -> str:
    """The key's base64 text from a file or stdin ('-'); UsageError naming the file if unusable."""
    from gossip.keyring import KeyringError, decode_key, encode_key

    try:
        text = sys.stdin.read(4096) if source == "-" else Path(source).read_text()[:4096]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the key from {source}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        return encode_key(decode_key(lines[0] if len(lines) == 1 else ""))
    except KeyringError as exc:
        raise UsageError(f"{source}: {exc} (one line, as `murmur keygen` prints it)") from None


def run(args: argparse.Namespace) -> int:
    import httpx

    from peer.faults.nemesis import ADMIN_TIMEOUT, NemesisError

    nemesis = nemesis_from(args)
    if args.action == "install":
        method, body = "POST", {"key": read_key_text(args.file)}
    elif args.action == "use":
        method, body = "PUT", {"primary": args.id}
    elif args.action == "remove":
        method, body = "DELETE", {"id": args.id}
    else:
        method, body = "GET", None
    try:
        token = nemesis.token()
    except NemesisError as exc:
        raise UsageError(str(exc)) from None
    ok = True
    with httpx.Client(timeout=ADMIN_TIMEOUT, headers={"authorization": f"Bearer {token}"}) as client:
        for p in nemesis.peers:
            if not nemesis.running(p["name"]):
                print(f"{p['name']}: not running; it reads the key file when restarted")
                continue
            try:
                r = client.request(method, f"{p['http']}/admin/keys", json=body)
                answer: dict[str, Any] = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                ok = False
                print(f"{p['name']}: did not answer ({type(exc).__name__})")
                continue
            if r.status_code != 200:
                ok = False
                print(f"{p['name']}: refused ({r.status_code}): {answer.get('error')}")
                continue
            print(f"{p['name']}: {_line(args.action, answer)}")
    if not ok:
        print(f"murmur keys {args.action}: not every peer took it (see above); run it again", file=sys.stderr)
    return 0 if ok else 1


def _line(action: str, answer: dict[str, Any]) -> str:
    if not answer.get("sealed"):
        return "insecure (no keyring)"
    ids = ", ".join(f"{i}*" if i == answer.get("primary") else i for i in answer.get("ids", []))
    done = {"install": f"installed {answer.get('installed')}; ", "use": f"sends with {answer.get('used')}; ",
            "remove": f"removed {answer.get('removed')}; "}.get(action, "")
    return f"{done}keys {ids} (* primary)"
