"""`murmur members`: the membership table as one peer sees it, serf style or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from peer.commands._common import add_target_arguments, target_urls

NAME = "members"
HELP = "print the membership table as one peer sees it"
DESCRIPTION = """\
Print the members one peer knows, one a line, in columns like `serf members`:

  name  addr  role  state  incarnation

state is alive, suspect (missed probes; it has a suspicion timeout to refute), dead (declared
failed) or left (stopped gracefully); `,aside` is added for a market maker that says, in its
gossip meta, that it cannot reach the exchange (it owns no symbol until it can). incarnation rises when a peer refutes a suspicion or
restarts. With --cluster (or ./data/cluster.json) the first reachable peer is asked; which one
answered is printed on stderr.

examples:
  murmur members
  murmur members --peer http://127.0.0.1:8080
  murmur members --cluster data/cluster.json --json | jq '.[] | select(.state != "alive")'
"""

COLUMNS = ("name", "addr", "role", "state", "incarnation")
# Per-request bound: a stopped (SIGSTOP) peer accepts the connection but never answers.
REQUEST_TIMEOUT = 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target_arguments(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the /members rows as a JSON list (name, role, addr, state, incarnation, "
        "http, changed_at, meta)",
    )


class Unreachable(Exception):
    pass


def fetch_members(urls: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """GET /members from the first peer that answers; raises Unreachable listing every failure."""
    failures = []
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        for url in urls:
            try:
                response = client.get(f"{url}/members")
                response.raise_for_status()
                rows = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                failures.append(f"{url}: {describe_error(exc)}")
                continue
            if not isinstance(rows, list):
                failures.append(f"{url}: /members did not return a list")
                continue
            return url, rows
    raise Unreachable("; ".join(failures))


def describe_error(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (is the peer running?)"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time (is the peer stopped?)"
    return str(exc) or type(exc).__name__


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    text = str(value) if value is not None else "-"
    meta = row.get("meta")
    if column == "state" and isinstance(meta, dict) and meta.get("aside"):
        text += ",aside"  # one word, so the column stays one field for awk and cut
    return text


def format_serf(rows: list[dict[str, Any]]) -> str:
    table = [[_cell(row, c) for c in COLUMNS] for row in rows]
    if not table:
        return ""
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    urls, cluster_file = target_urls(args)
    try:
        url, rows = fetch_members(urls)
    except Unreachable as exc:
        print(f"murmur members: no peer answered: {exc}", file=sys.stderr)
        return 1
    if cluster_file is not None:
        print(f"(as seen by {url})", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_serf(rows))
    return 0
