"""The link filter: which packets, streams and requests a peer lets through while a fault is set.

What it is for: `murmur partition` cuts or degrades the links between groups of peers by giving
each peer rules (through `/admin/links`, peer/faults/admin.py); the peer's transports ask this
core, for every packet, stream and HTTP call, what to do with it:

- `packet(direction, addr, now)`: a gossip UDP packet to (`"out"`) or from (`"in"`) a remote
  gossip address -> the delays in seconds of the copies to deliver: `[]` drop it, `[0.0]` now,
  two entries: it is duplicated.
- `stream(addr, now)` (a push-pull TCP stream dialed to a gossip address) and `http(target,
  now)` (an HTTP call to a base URL or its (host, port)) -> `Link(blocked, delay)`. TCP needs
  both directions, so any cut naming the peer, in either direction, blocks it; a degraded link
  adds its delay (+ jitter) once per affected direction and, with probability `loss` per
  affected direction, one TCP retransmission timeout (`RETRANSMIT`).
- `blocks_name(name, now)`: the HTTP server drops a request whose `x-murmur-peer` names a peer
  that a cut rule names.

A rule (the JSON the endpoint takes, `parse_rule`): `id`, `peers` (the remote side: `name`,
`gossip` "host:port", `http` "http://host:port"), `direction` both | out | in, `cut`, `loss`,
`duplicate` (probabilities), `delay_ms`, `jitter_ms` (>= 0, uniform +-jitter, a delay never
below 0), `until` (wall-clock seconds, or null). Several rules combine: any cut cuts, losses are
independent drops, delays add, a packet is duplicated if any rule duplicates it. A rule stops
applying at `until` by itself; `expire(now)` removes the ones past it.

What it must never do: read a clock, sleep, touch a socket, or draw randomness from anywhere but
the `random.Random` it was given. Lookups are a dict access per packet (the indexes are rebuilt
when the rules change): gossip sends many packets, and with no rules a lookup costs one check.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from book.bounds import MAX_SECONDS, FieldError, field_name, short
from gossip.types import Address
from peer.addresses import AddressError, format_address, is_unspecified, parse_address

__all__ = [
    "DIRECTIONS", "MAX_DELAY_MS", "MAX_PEERS", "MAX_RULES", "RETRANSMIT", "BadRule", "Link",
    "LinkFilter", "RemotePeer", "Rule", "parse_rule",
]

DIRECTIONS = ("both", "out", "in")
MAX_ID_LENGTH = 64
MAX_PEERS = 1000
# A rule a peer holds at once: a partition is one rule, a flapping link replaces its own.
MAX_RULES = 64
# A delay longer than any caller waits is a cut: no reason to hold packets for longer.
MAX_DELAY_MS = 60_000.0
# What one lost TCP segment costs a call: the sender retransmits after its RTO (Linux: 200 ms min).
RETRANSMIT = 0.2
RULE_FIELDS = ("id", "peers", "direction", "cut", "loss", "duplicate", "delay_ms", "jitter_ms", "until")
PEER_FIELDS = ("name", "gossip", "http")
# A node name, as `murmur peer --name` takes it (peer/commands/_common.py NODE_NAME).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


class BadRule(FieldError):
    """A rule refused because of one field, which `field` names (`peers[2].gossip`)."""


class Link(NamedTuple):
    """A TCP connection's fate: `blocked` (never connects), else `delay` seconds added."""

    blocked: bool
    delay: float


OPEN = Link(False, 0.0)


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """A peer on the other side of a rule's links; `gossip` and `http` may be unknown (None)."""

    name: str
    gossip: Address | None = None
    http: Address | None = None  # (host, port) of its HTTP base URL

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gossip": None if self.gossip is None else format_address(self.gossip),
            "http": None if self.http is None else "http://" + format_address(self.http),
        }


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    peers: tuple[RemotePeer, ...]
    direction: str = "both"
    cut: bool = False
    loss: float = 0.0
    duplicate: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    until: float | None = None

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peers": [p.to_json() for p in self.peers],
            "direction": self.direction,
            "cut": self.cut,
            "loss": self.loss,
            "duplicate": self.duplicate,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "until": self.until,
        }


# --- reading a rule -----------------------------------------------------------------------------


def parse_rule(raw: Any, *, where: str = "") -> Rule:
    """A Rule from its JSON form, or BadRule naming the first field that is wrong (prefixed with
    `where`, e.g. "rule."). Fields left out take their defaults; `id` and `peers` are required."""
    if not isinstance(raw, dict):
        raise BadRule(where.rstrip(".") or "rule", "must be a JSON object")
    unknown = sorted(set(raw) - set(RULE_FIELDS), key=str)
    if unknown:
        raise BadRule(f"{where}{field_name(unknown[0])}", f"unknown field; allowed: {', '.join(RULE_FIELDS)}")
    for name in ("id", "peers"):
        if name not in raw:
            raise BadRule(where + name, "required")
    rule_id = raw["id"]
    if (type(rule_id) is not str or not 1 <= len(rule_id) <= MAX_ID_LENGTH or not rule_id.isprintable()
            or not rule_id.isascii()):
        raise BadRule(where + "id", f"must be 1 to {MAX_ID_LENGTH} printable ASCII characters, got {short(rule_id)}")
    direction = raw.get("direction", "both")
    if type(direction) is not str or direction not in DIRECTIONS:
        raise BadRule(where + "direction", f"must be one of {', '.join(DIRECTIONS)}, got {short(direction)}")
    cut = raw.get("cut", False)
    if type(cut) is not bool:
        raise BadRule(where + "cut", f"must be true or false, got {short(cut)}")
    until = raw.get("until")
    if until is not None:
        until = _number(until, where + "until", 0.0, float(MAX_SECONDS),
                        "wall-clock seconds (time.time()) or null")
    return Rule(
        id=rule_id,
        peers=_peers(raw["peers"], where + "peers"),
        direction=direction,
        cut=cut,
        loss=_number(raw.get("loss", 0.0), where + "loss", 0.0, 1.0, "a probability"),
        duplicate=_number(raw.get("duplicate", 0.0), where + "duplicate", 0.0, 1.0, "a probability"),
        delay_ms=_number(raw.get("delay_ms", 0.0), where + "delay_ms", 0.0, MAX_DELAY_MS, "milliseconds"),
        jitter_ms=_number(raw.get("jitter_ms", 0.0), where + "jitter_ms", 0.0, MAX_DELAY_MS, "milliseconds"),
        until=until,
    )


def _number(value: Any, field: str, lo: float, hi: float, what: str) -> float:
    # The range is checked before float(): a 4,000-digit int would overflow it.
    if type(value) not in (int, float) or not lo <= value <= hi or not math.isfinite(value):
        raise BadRule(field, f"must be {what}, a finite number from {lo:g} to {hi:g}, got {short(value)}")
    return float(value)


def _peers(raw: Any, field: str) -> tuple[RemotePeer, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PEERS:
        got = f"{len(raw)} of them" if isinstance(raw, list) else short(raw)
        raise BadRule(field, f"must be a list of 1 to {MAX_PEERS} peers, got {got}")
    peers = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise BadRule(where, 'must be an object {"name", "gossip", "http"}')
        unknown = sorted(set(item) - set(PEER_FIELDS), key=str)
        if unknown:
            raise BadRule(f"{where}.{field_name(unknown[0])}", f"unknown field; allowed: {', '.join(PEER_FIELDS)}")
        name = item.get("name")
        if name is None:
            raise BadRule(f"{where}.name", "required")
        if type(name) is not str or not _NAME.fullmatch(name):
            raise BadRule(f"{where}.name", f"must be a node name (1-63 letters, digits, '.', '_' or '-'), got {short(name)}")
        gossip = item.get("gossip")
        http = item.get("http")
        peers.append(RemotePeer(
            name,
            None if gossip is None else _gossip_address(gossip, f"{where}.gossip"),
            None if http is None else _http_address(http, f"{where}.http"),
        ))
    return tuple(peers)


def _host(host: str) -> str | None:
    """One spelling of a host: an IP address in its canonical form, a name in lower case; None
    when it is neither."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    host = host.lower()
    return host if _HOSTNAME.fullmatch(host) else None


def _gossip_address(value: Any, field: str) -> Address:
    if type(value) is not str:
        raise BadRule(field, f'must be a "host:port" string, got {short(value)}')
    try:
        host, port = parse_address(value)
    except AddressError as exc:
        raise BadRule(field, str(exc)) from None
    canonical = _host(host)
    if canonical is None or is_unspecified(canonical) or port == 0:
        raise BadRule(field, f"must be an address a peer is reached at (a host and a port from 1 to 65535), got {short(value)}")
    return canonical, port


def _http_address(value: Any, field: str) -> Address:
    if type(value) is not str or len(value) > 300:
        raise BadRule(field, f'must be an "http://host:port" string, got {short(value)}')
    try:
        parts = urlsplit(value)
        port = parts.port or 80
    except ValueError as exc:
        raise BadRule(field, f"is not an http://host:port URL: {exc}") from None
    canonical = _host(parts.hostname or "")
    if parts.scheme != "http" or canonical is None or is_unspecified(canonical) or port == 0:
        raise BadRule(field, f"must be an http://host:port URL a peer is reached at, got {short(value)}")
    return canonical, port


def _target(addr: str | Address) -> Address | None:
    """A (host, port) from "host:port" or a tuple, spelled as the rules spell it; None if it is
    no address (it matches no rule then)."""
    if isinstance(addr, str):
        try:
            host, port = parse_address(addr)
        except AddressError:
            return None
    else:
        host, port = addr[0], addr[1]
    canonical = _host(host)
    return None if canonical is None else (canonical, port)


def _url_target(target: str | Address) -> Address | None:
    if not isinstance(target, str):
        return _target(target)
    try:
        parts = urlsplit(target)
        port = parts.port or 80
    except ValueError:
        return None
    canonical = _host(parts.hostname or "")
    return None if canonical is None else (canonical, port)


# --- the filter ---------------------------------------------------------------------------------


class LinkFilter:
    """The rules one peer holds, indexed for per-packet lookups; see the module docstring."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
        self._rules: dict[str, Rule] = {}  # by id, in the order they were first set
        self._out: dict[Address, tuple[Rule, ...]] = {}  # gossip address -> rules cutting packets to it
        self._in: dict[Address, tuple[Rule, ...]] = {}  # gossip address -> rules on packets from it
        self._gossip: dict[Address, tuple[Rule, ...]] = {}  # gossip address -> every rule naming it
        self._http: dict[Address, tuple[Rule, ...]] = {}  # HTTP (host, port) -> every rule naming it
        self._names: dict[str, tuple[Rule, ...]] = {}  # peer name -> every rule naming it

    def __len__(self) -> int:
        return len(self._rules)

    def __bool__(self) -> bool:
        # A filter is "on" while it holds a rule: the shells skip every lookup otherwise.
        return bool(self._rules)

    # --- changes --------------------------------------------------------------------------------

    def set(self, rule: Rule | dict[str, Any], *, where: str = "") -> bool:
        """Add a rule, or replace the one with the same id; True if it replaced one. A dict is
        read with `parse_rule` (BadRule on a bad one; nothing changes then)."""
        if not isinstance(rule, Rule):
            rule = parse_rule(rule, where=where)
        replaced = rule.id in self._rules
        if not replaced and len(self._rules) >= MAX_RULES:
            raise BadRule(where + "id", f"this peer already holds {MAX_RULES} rules; delete them first")
        self._rules[rule.id] = rule
        self._reindex()
        return replaced

    def remove(self, rule_id: str) -> bool:
        """Remove one rule by id; False if there was none."""
        if self._rules.pop(rule_id, None) is None:
            return False
        self._reindex()
        return True

    def clear(self) -> int:
        """Remove every rule (heal); how many there were."""
        n = len(self._rules)
        self._rules.clear()
        self._reindex()
        return n

    def expire(self, now: float) -> list[Rule]:
        """Remove the rules whose `until` has passed; those removed. (Queries already ignore them.)"""
        gone = [r for r in self._rules.values() if not r.active(now)]
        if gone:
            for rule in gone:
                del self._rules[rule.id]
            self._reindex()
        return gone

    def next_expiry(self) -> float | None:
        """The earliest `until` among the rules, or None if none expires."""
        return min((r.until for r in self._rules.values() if r.until is not None), default=None)

    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self._rules.values()]

    def _reindex(self) -> None:
        out: dict[Address, list[Rule]] = {}
        inbound: dict[Address, list[Rule]] = {}
        gossip: dict[Address, list[Rule]] = {}
        http: dict[Address, list[Rule]] = {}
        names: dict[str, list[Rule]] = {}
        for rule in self._rules.values():
            # A peer named twice in one rule still counts once for it.
            for index, keys in ((gossip, {p.gossip for p in rule.peers if p.gossip is not None}),
                                (http, {p.http for p in rule.peers if p.http is not None}),
                                (names, {p.name for p in rule.peers})):
                for key in keys:
                    index.setdefault(key, []).append(rule)
            for key in {p.gossip for p in rule.peers if p.gossip is not None}:
                if rule.direction in ("both", "out"):
                    out.setdefault(key, []).append(rule)
                if rule.direction in ("both", "in"):
                    inbound.setdefault(key, []).append(rule)
        self._out, self._in = _frozen(out), _frozen(inbound)
        self._gossip, self._http, self._names = _frozen(gossip), _frozen(http), _frozen(names)

    # --- decisions ------------------------------------------------------------------------------

    def packet(self, direction: str, addr: str | Address, now: float) -> list[float]:
        """A UDP packet to (`out`) or from (`in`) the gossip address `addr`: the delay of each
        copy to deliver, in seconds ([] drop, [0.0] at once, two entries: duplicated)."""
        if not self._rules:
            return [0.0]
        if direction == "out":
            index = self._out
        elif direction == "in":
            index = self._in
        else:
            raise ValueError(f"direction must be 'out' or 'in', not {direction!r}")
        rules = index.get(addr if type(addr) is tuple else _target(addr))
        if rules is None or not (rules := _live(rules, now)):
            return [0.0]
        if any(r.cut for r in rules):
            return []
        rng = self.rng
        for rule in rules:
            if rule.loss and rng.random() < rule.loss:
                return []
        copies = 1
        for rule in rules:
            if rule.duplicate and rng.random() < rule.duplicate:
                copies = 2
        return [sum(self._delay(r) for r in rules) for _ in range(copies)]

    def stream(self, addr: str | Address, now: float) -> Link:
        """A TCP stream dialed to the gossip address `addr`."""
        if not self._rules:
            return OPEN
        key = addr if type(addr) is tuple else _target(addr)
        return self._tcp(self._gossip.get(key, ()), now)

    def http(self, target: str | Address, now: float) -> Link:
        """An HTTP call to a base URL ("http://host:port") or its (host, port)."""
        if not self._rules:
            return OPEN
        return self._tcp(self._http.get(_url_target(target), ()), now)

    def blocks_name(self, name: str, now: float) -> bool:
        """Whether a request from the peer `name` (its x-murmur-peer header) is dropped: a cut
        naming it, in either direction."""
        if not self._rules:
            return False
        return any(r.cut for r in _live(self._names.get(name, ()), now))

    def _tcp(self, rules: Iterable[Rule], now: float) -> Link:
        rules = _live(rules, now)
        if not rules:
            return OPEN
        if any(r.cut for r in rules):
            return Link(True, 0.0)
        delay = 0.0
        for rule in rules:
            for _ in range(2 if rule.direction == "both" else 1):
                delay += self._delay(rule)
                if rule.loss and self.rng.random() < rule.loss:
                    delay += RETRANSMIT
        return Link(False, delay)

    def _delay(self, rule: Rule) -> float:
        """One trip's delay under `rule`, in seconds: delay +- uniform jitter, never below 0."""
        ms = rule.delay_ms
        if rule.jitter_ms:
            ms += self.rng.uniform(-rule.jitter_ms, rule.jitter_ms)
        return max(0.0, ms) / 1000.0


def _live(rules: Iterable[Rule], now: float) -> tuple[Rule, ...]:
    return tuple(r for r in rules if r.until is None or now < r.until)


def _frozen(index: dict[Any, list[Rule]]) -> dict[Any, tuple[Rule, ...]]:
    return {key: tuple(rules) for key, rules in index.items()}
