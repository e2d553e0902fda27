"""Every setting of a peer, one dataclass a role, each default written once; and their flags.

What it is for: `PeerOptions` is what every peer has (name, addresses, cluster, profile, ...)
plus one group a role: `ExchangeOptions`, `LedgerOptions`, `MarketMakerOptions`. Each field's
metadata (a `Flag`: help, parser, metavar) is all the command line needs:

- `add_flags(parser, cls)` builds the flags of `murmur peer` (from `PeerOptions`) and of
  `murmur launch` (from `LaunchOptions`, whose role groups are these same classes, see
  `passed_on`), help and defaults included;
- `from_args(cls, args)` builds the dataclass back from the parsed flags;
- `command_line(peer_options)` writes the `murmur peer` flags for a PeerOptions: what the
  launcher starts each peer with.

So a field added to a role's dataclass is a flag of both commands and reaches every peer that
`murmur launch` starts, with no further code. Where launch wants another default than a peer
(`--profile`, `--flow-rate`), the field says so once (`Flag.launch`) with the reason, and both
`--help` texts show both values and why.

Defaults a core already has come from the core (the lease and the quote TTL from
`book.exchange`, the exposure limit from `ledger.exposure`, the quote terms from the market
maker's `QuoteConfig`); the services take the rest from here. It must never start anything,
read files or talk to the network.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from book.exchange import LEASE_DURATION, QUOTE_TTL
from gossip.config import DEFAULT_CLUSTER
from gossip.types import Address
from ledger.exposure import LIMIT
from peer.addresses import format_address
from peer.commands._common import (
    address_arg,
    address_list_arg,
    cluster_name_arg,
    node_name_arg,
    non_negative_float,
    positive_float,
    positive_int_arg,
    profile_arg,
    reachable_address_arg,
    set_arg,
    symbols_arg,
)
from peer.market_maker.quoting import QuoteConfig

ROLES = ("mm", "exchange", "ledger")
DEFAULT_SYMBOLS = ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX", "NVDA", "TSLA"]
# Seconds a stop may take before the process exits hard (peer/runner.py's watchdog).
STOP_WATCHDOG = 5.0

# Keys of the field metadata this module reads.
_FLAG = "murmur.flag"
_GROUP = "murmur.group"
_PASSED = "murmur.passed"


@dataclass(frozen=True)
class Flag:
    """How one field is a command-line flag."""

    help: str
    parse: Callable[[str], Any] | None = None  # argparse `type`
    metavar: str | None = None
    flag: str | None = None  # when it is not --<field-name>
    # value: `--x V`; switch: `--x` alone; list: `--x A,B` (repeatable, extends a list);
    # pairs: `--x KEY=VALUE` (repeatable, builds a dict; `parse` returns (key, value)).
    kind: str = "value"
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # how --help says the default, instead of the value
    why: str = ""  # why the default is what it is, said in --help
    # `murmur launch`'s own default for this setting, and why it differs (said in both --help).
    launch: tuple[Any, str] | None = None
    fmt: Callable[[Any], str] = str  # value -> command-line text
    also: tuple[str, ...] = ()  # roles besides the group's own that read it (the peer gets it too)

    def name(self, f: Field) -> str:
        return self.flag or "--" + f.name.replace("_", "-")


def option(default: Any = MISSING, help: str = "", **flag: Any) -> Any:
    """A dataclass field that is a flag."""
    return _with_default(default, {_FLAG: Flag(help, **flag)})


def _with_default(default: Any, meta: dict[str, Any]) -> Any:
    # A list or dict default is copied for each instance, as dataclasses require.
    if isinstance(default, list | dict):
        return field(default_factory=partial(copy.copy, default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """A field holding one role's options (an argument group of its own in --help)."""
    return field(default_factory=cls, metadata={_GROUP: cls})


def passed_on(name: str) -> Any:
    """A `LaunchOptions` field that launch passes on to its peers: PeerOptions' field `name`,
    same flag and help, with launch's own default where the field has one."""
    f = _field(PeerOptions, name)
    if _GROUP in f.metadata:
        cls = f.metadata[_GROUP]
        meta = {_GROUP: cls, _PASSED: True}
        return field(default_factory=partial(launch_defaults, cls), metadata=meta)
    flag = f.metadata[_FLAG]
    default = flag.launch[0] if flag.launch else _default(f)
    return _with_default(default, {_FLAG: flag, _PASSED: True})


def launch_defaults(cls: type) -> Any:
    """A role group with `murmur launch`'s defaults."""
    launched = {f.name: flag.launch[0] for f in fields(cls) if (flag := flag_of(f)) and flag.launch}
    return cls(**launched)


def passed_values(opts: Any) -> dict[str, Any]:
    """The fields of `opts` (a LaunchOptions) that go to every peer, by PeerOptions field name."""
    return {f.name: getattr(opts, f.name) for f in fields(opts) if f.metadata.get(_PASSED)}


# --- the settings -------------------------------------------------------------------------------


@dataclass
class ExchangeOptions:
    ROLE: ClassVar[str] = "exchange"
    TITLE: ClassVar[str] = "exchange role"

    symbols: list[str] | None = option(
        None,
        "comma-separated symbols the exchange lists; fixed at the first start",
        parse=symbols_arg,
        metavar="SYM,...",
        default_text=",".join(DEFAULT_SYMBOLS),
        fmt=",".join,
    )
    market_seed: int = option(
        1, "seed of the reference prices and the external order flow", parse=int
    )
    flow_rate: float = option(
        0.0,
        "external orders per second the exchange generates itself, 0 for none",
        parse=non_negative_float,
        metavar="PER_SECOND",
        why="because a peer is a building block: orders come from clients such as `murmur flow`",
        launch=(20.0, "so that the demo cluster trades at once and `murmur top` shows fills"),
    )
    quote_ttl: float = option(
        QUOTE_TTL,
        "seconds a quote lives after activation or refresh; market makers need the "
        "exchange's value",
        parse=positive_float,
        metavar="SECONDS",
        also=("mm",),
    )
    lease: float = option(
        LEASE_DURATION,
        "seconds a symbol authority lease lasts without renewal; market makers need the "
        "exchange's value",
        parse=positive_float,
        metavar="SECONDS",
        also=("mm",),
    )


@dataclass
class LedgerOptions:
    ROLE: ClassVar[str] = "ledger"
    TITLE: ClassVar[str] = "ledger role"

    exposure_limit: int = option(
        LIMIT,
        "global exposure limit, each side: the most the active reservations may hold on the "
        "bid side, and on the ask side",
        parse=positive_int_arg,
    )


_QUOTE = QuoteConfig()


@dataclass
class MarketMakerOptions:
    ROLE: ClassVar[str] = "mm"
    TITLE: ClassVar[str] = "market-maker role"

    half_spread: int = option(
        _QUOTE.half_spread,
        "ticks from the (position-skewed) reference price to the bid and to the ask",
        parse=positive_int_arg,
    )
    quote_size: int = option(
        _QUOTE.size,
        "quantity quoted on each side while the position leaves room",
        parse=positive_int_arg,
    )


@dataclass
class PeerOptions:
    role: str = option(help="what this peer does", choices=ROLES)
    name: str | None = option(
        None,
        "node name, unique in the cluster",
        parse=node_name_arg,
        default_text="the one kept in --data-dir, or <role>-<random> the first time",
    )
    bind: Address = option(
        ("127.0.0.1", 7946),
        "gossip address (UDP packets and TCP push-pull on the same port); other peers reach "
        "this peer there, so use a concrete address, not 0.0.0.0; port 0 picks a free one",
        parse=reachable_address_arg,
        metavar="HOST:PORT",
        fmt=format_address,
    )
    http: Address = option(
        ("127.0.0.1", 0),
        "HTTP API address: /health /status /members /metrics; port 0 picks a free one, "
        "logged in peer_started",
        parse=address_arg,
        metavar="HOST:PORT",
        fmt=format_address,
    )
    join: list[Address] = option(
        [],
        "gossip addresses of peers to join through (any live one is enough; retried until "
        "one answers)",
        parse=address_list_arg,
        kind="list",
        metavar="HOST:PORT,...",
        fmt=lambda addrs: ",".join(format_address(a) for a in addrs),
    )
    discover: bool = option(
        False,
        "find peers of the same --cluster on the LAN by zeroconf/mDNS (no --join needed)",
        kind="switch",
    )
    cluster: str = option(
        DEFAULT_CLUSTER,
        "cluster name: every gossip packet and push-pull carries it, and those of another "
        "cluster are dropped (counted as dropped_foreign_cluster); --discover finds only "
        "peers of this cluster",
        parse=cluster_name_arg,
    )
    # Interfaces for mDNS: "all", "default" or a comma-separated list of addresses.
    interfaces: str = option(
        "all", "network interfaces for --discover", metavar="all|default|IP,..."
    )
    data_dir: Path | None = option(
        None,
        "where the peer keeps identity.json, its log and peer.json",
        parse=Path,
        default_text="./data/<name>, or ./data/<role> without --name",
    )
    profile: str = option(
        "lan",
        "protocol timings: lan (memberlist LAN defaults, probe 1 s) or local (probe 200 ms, "
        "for many peers on one machine)",
        parse=profile_arg,
        launch=("local", "because all its peers share this one machine"),
    )
    overrides: dict[str, Any] = option(
        {},
        "override one protocol parameter of the profile, e.g. --set probe_interval=0.5 "
        "(repeatable)",
        flag="--set",
        kind="pairs",
        parse=set_arg,
        metavar="KEY=VALUE",
    )
    # JSON lines on stderr too (the launcher turns this off and keeps only the file).
    log_stderr: bool = option(
        True,
        "do not copy log lines to stderr (they still go to <data-dir>/<name>.log)",
        flag="--quiet",
        kind="switch",
    )
    seed: int | None = option(None, "seed of the protocol's randomness (for replays)", parse=int)
    admin_token_file: Path | None = option(
        None,
        "the cluster's admin token: the file `murmur launch` writes in its data dir (mode 0600), "
        "read once at start; /admin requests (the link filter of `murmur partition`) must carry "
        "it as `Authorization: Bearer <token>`",
        parse=Path,
        metavar="FILE",
        default_text="none: every /admin request is answered 401",
    )
    key_file: Path | None = option(
        None,
        "the cluster's keyring (`murmur keygen`, or the cluster.key `murmur launch` writes, mode "
        "0600): every gossip packet and push-pull is sealed with its primary key, and what does "
        "not open under one of its keys is dropped; keys never go on the command line",
        parse=Path,
        metavar="FILE",
        default_text="$MURMUR_KEY_FILE; with neither, the peer refuses to start unless --insecure",
    )
    insecure: bool = option(
        False,
        "run without a key: gossip in plaintext, calls between peers unsigned (anyone on the "
        "network can join or forge members); announced in the log and in /status",
        kind="switch",
    )
    # Seconds a stop may take before the process exits hard; None for peers run in-process.
    stop_watchdog: float | None = STOP_WATCHDOG
    exchange: ExchangeOptions = group(ExchangeOptions)
    ledger: LedgerOptions = group(LedgerOptions)
    mm: MarketMakerOptions = group(MarketMakerOptions)

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        return Path("data") / (self.name or self.role)


# --- flags from the dataclasses, and back ------------------------------------------------------


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag a field of `cls`, one argument group a role group, help with the defaults."""
    every_peer = None
    for f in fields(cls):
        passed = bool(f.metadata.get(_PASSED))
        if _GROUP in f.metadata:
            sub = f.metadata[_GROUP]
            target = parser.add_argument_group(_group_title(sub, passed))
            for g in fields(sub):
                if flag_of(g):
                    _add_flag(target, g, passed)
        elif flag_of(f):
            if not passed:
                _add_flag(parser, f, passed)
                continue
            if every_peer is None:
                every_peer = parser.add_argument_group("every peer (passed on to each one started)")
            # The peer's field: its default is the peer's, and launch's own is in its Flag.
            _add_flag(every_peer, _field(PeerOptions, f.name), passed)


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` from flags parsed by a parser that `add_flags(parser, cls)` built."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if _GROUP in f.metadata:
            values[f.name] = from_args(f.metadata[_GROUP], args)
        elif flag := flag_of(f):
            value = getattr(args, f.name)
            if flag.kind == "list":
                value = list(value)
            elif flag.kind == "pairs":
                value = dict(value)
            values[f.name] = value
    return cls(**values)


def command_line(opts: PeerOptions) -> list[str]:
    """The `murmur peer` flags that give a peer exactly `opts`: every setting spelled out, and of
    the role groups only what the peer's role reads."""
    return _argv(opts, opts.role, None)


def _argv(obj: Any, role: str, group_role: str | None) -> list[str]:
    argv: list[str] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if _GROUP in f.metadata:
            argv += _argv(value, role, value.ROLE)
            continue
        flag = flag_of(f)
        if flag is None or (group_role not in (None, role) and role not in flag.also):
            continue
        name = flag.name(f)
        if flag.kind == "switch":
            argv += [name] if value != f.default else []
        elif flag.kind == "pairs":
            for key, item in value.items():
                argv += [name, f"{key}={item}"]
        elif value is not None and value != []:
            argv += [name, flag.fmt(value)]
    return argv


def _add_flag(parser: Any, f: Field, passed: bool) -> None:
    """`f` is a field of PeerOptions or of a role group; `passed`: the flag is launch's."""
    flag: Flag = f.metadata[_FLAG]
    default = flag.launch[0] if passed and flag.launch else _default(f)
    text = _help(flag, _default(f), passed).replace("%", "%%")  # argparse formats help with %
    kw: dict[str, Any] = {"dest": f.name, "help": text}
    if flag.kind == "switch":
        kw["action"] = "store_false" if default else "store_true"
    else:
        kw.update(type=flag.parse, metavar=flag.metavar, choices=flag.choices)
        if default is MISSING:
            kw["required"] = True
        elif flag.kind == "list":
            kw.update(action="extend", default=list(default))
        elif flag.kind == "pairs":
            kw.update(action="append", default=list(default.items()))
        else:
            kw["default"] = default
    parser.add_argument(flag.name(f), **kw)


def _help(flag: Flag, peer_default: Any, passed: bool) -> str:
    """The help text with the default; where launch has its own, both defaults and why."""
    if flag.kind == "switch":
        return flag.help
    peer = _shown(flag, peer_default)
    if peer is not None and flag.why:
        peer += " " + flag.why
    if flag.launch is None:
        return flag.help if peer is None else f"{flag.help} (default: {peer})"
    launch = f"{_shown(flag, flag.launch[0])} {flag.launch[1]}"
    if passed:
        return f"{flag.help} (default: {launch}; `murmur peer` uses {peer})"
    return f"{flag.help} (default: {peer}; `murmur launch` uses {launch})"


def _shown(flag: Flag, value: Any) -> str | None:
    if flag.default_text is not None:
        return flag.default_text
    if value is None or value is MISSING or value == [] or value == {}:
        return None
    if isinstance(value, float):
        return f"{value:g}"
    return flag.fmt(value)


def _group_title(cls: type, passed: bool) -> str:
    """Which peers read the group: its role's, and for some flags (`Flag.also`) other roles."""
    shared: dict[str, list[str]] = {}
    for f in fields(cls):
        if flag := flag_of(f):
            for role in flag.also:
                shared.setdefault(role, []).append(flag.name(f))
    if passed:
        title = f"{cls.TITLE}: passed on to each peer of --role {cls.ROLE}"
        return title + "".join(f", and {' '.join(n)} to --role {r} too" for r, n in shared.items())
    also = "".join(f"; {' '.join(n)} for --role {r} too" for r, n in shared.items())
    return f"{cls.TITLE} (--role {cls.ROLE}{also})"


def flag_of(f: Field) -> Flag | None:
    """The Flag of a dataclass field, or None for a field that is no flag."""
    return f.metadata.get(_FLAG)


def groups_of(cls: type) -> dict[str, type]:
    """The role groups of `cls` (PeerOptions, LaunchOptions), by field name."""
    return {f.name: f.metadata[_GROUP] for f in fields(cls) if _GROUP in f.metadata}


def _field(cls: type, name: str) -> Field:
    for f in fields(cls):
        if f.name == name:
            return f
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING
