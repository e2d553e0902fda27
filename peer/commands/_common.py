"""Flag types and helpers shared by the subcommands.

What it is for: one wording for every usage error (`murmur <cmd>: error: ...`, exit 2) and one
way to find "the peer to ask" (`--peer`, `--cluster`, or ./data/cluster.json). It must never
talk to the network.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from gossip.config import LAN, MAX_CLUSTER_NAME, PROFILES
from gossip.types import Address
from peer.addresses import AddressError, is_unspecified, parse_address, parse_address_list
from peer.tools.cluster_file import (
    ClusterFileError,
    default_cluster_path,
    normalize_url,
    peer_urls,
    read_cluster,
)


class UsageError(Exception):
    """Bad flags or flag combinations: printed as one line, exit code 2."""


def address_arg(text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def reachable_address_arg(text: str) -> Address:
    """A gossip bind: must be an address other peers can send to (it is what we advertise)."""
    addr = address_arg(text)
    if is_unspecified(addr[0]):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot be advertised to other peers; bind a concrete address "
            "such as 127.0.0.1:7946 or this host's LAN address"
        )
    return addr


def address_list_arg(text: str) -> list[Address]:
    try:
        addrs = parse_address_list(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not addrs:
        raise argparse.ArgumentTypeError("expected HOST:PORT[,HOST:PORT...], got nothing")
    return addrs


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < 1e9:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def cluster_name_arg(text: str) -> str:
    if not 0 < len(text) <= MAX_CLUSTER_NAME:
        raise argparse.ArgumentTypeError(f"a cluster name is 1 to {MAX_CLUSTER_NAME} characters")
    return text


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 1 to 65535, got {value}")
    return value


def profile_arg(text: str) -> str:
    if text not in PROFILES:
        raise argparse.ArgumentTypeError(
            f"unknown profile {text!r}; choose one of {', '.join(PROFILES)}"
        )
    return text


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def node_name_arg(text: str) -> str:
    """Names travel in every gossip message and in mDNS instance names: short and plain."""
    if not NODE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid name {text!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


GOSSIP_PARAMETERS = {f.name: type(getattr(LAN, f.name)) for f in fields(LAN) if f.name != "name"}


def set_arg(text: str) -> tuple[str, Any]:
    """`--set probe_interval=0.5` -> ("probe_interval", 0.5), typed like the profile's field."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    kind = GOSSIP_PARAMETERS.get(key)
    if kind is None:
        raise argparse.ArgumentTypeError(
            f"unknown gossip parameter {key!r}; known: {', '.join(sorted(GOSSIP_PARAMETERS))}"
        )
    try:
        value = kind(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key} takes a {kind.__name__}, got {raw!r}") from None
    if isinstance(value, (int, float)) and value < 0:
        raise argparse.ArgumentTypeError(f"{key} must not be negative, got {raw!r}")
    return key, value


def overrides_from(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(pairs or [])


def overrides_to_flags(overrides: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in overrides.items():
        flags += ["--set", f"{key}={value}"]
    return flags


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--peer",
        metavar="URL",
        help="HTTP URL of the peer to ask, e.g. http://127.0.0.1:8080 "
        "(each peer logs it in its peer_started line)",
    )
    target.add_argument(
        "--cluster",
        metavar="FILE",
        type=Path,
        help="a cluster.json written by `murmur launch`; asks its first reachable peer "
        f"(default: ./{default_cluster_path()} if it exists)",
    )


def target_urls(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """The peer URLs to try, in order, and the cluster file they came from (if any)."""
    if args.peer:
        return [normalize_url(args.peer)], None
    path = args.cluster
    if path is None:
        path = default_cluster_path()
        if not path.exists():
            raise UsageError(
                "no peer to ask: pass --peer URL (a peer's HTTP address) or --cluster FILE "
                f"(written by `murmur launch`); ./{path} does not exist"
            )
    urls = cluster_urls(path)
    if not urls:
        raise UsageError(f"{path} lists no peers with an HTTP URL")
    return urls, path


def cluster_urls(path: Path) -> list[str]:
    try:
        return peer_urls(read_cluster(path))
    except ClusterFileError as exc:
        raise UsageError(str(exc)) from None


def single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (trio's nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def symbols_arg(text: str) -> list[str]:
    from peer.exchange.service import parse_symbols

    try:
        return parse_symbols(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def add_cluster_file_arguments(parser: argparse.ArgumentParser) -> None:
    """--cluster FILE or --data-dir DIR: where a launched cluster's cluster.json is."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="FILE", type=Path,
                       help=f"the cluster.json written by `murmur launch` (default: ./{default_cluster_path()})")
    where.add_argument("--data-dir", metavar="DIR", type=Path,
                       help="the data directory given to `murmur launch` (its cluster.json is used)")


def nemesis_from(args: argparse.Namespace):
    """The Nemesis of the cluster named by --cluster/--data-dir; a usage error if there is none."""
    from peer.faults.nemesis import Nemesis, NemesisError

    try:
        return Nemesis.find(args.cluster, args.data_dir)
    except NemesisError as exc:
        raise UsageError(str(exc)) from None


def print_outcome(command: str, outcome) -> int:
    """One line a thing done; exit 0 if every part took, 1 if some did not."""
    for line in outcome.lines:
        print(line)
    if not outcome.ok:
        print(f"murmur {command}: not every part took (see above)", file=sys.stderr)
    return 0 if outcome.ok else 1
