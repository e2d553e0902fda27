"""Per-client limits on a peer's public HTTP face: a request rate and a number of open connections.

What it is for: order entry (`POST /orders`, `DELETE /orders/{id}`) is open to anyone who reaches
the exchange (docs/security.md): one client address must not take the whole exchange. The HTTP
server (peer/http/server.py) asks `ClientLimits` before it runs a rate-limited route and before it
serves a new connection; a refusal is a 429 naming the limit. Which routes are rate-limited is
said by the role's routes (`rate_limited(route)`), not here.

A client is its address: an IPv4 address, or the /64 prefix of an IPv6 one (a host on a LAN
gets a whole /64 to pick addresses from). Clients on the peer's own host (loopback) are exempt by
default: whoever runs there can read the peer's keys anyway, and `murmur flow`, the benchmarks
and a cluster launched on one machine all come from 127.0.0.1.

What it must never do: read a clock (time is an argument), grow without bound (at most
`max_clients` buckets; a bucket that has refilled is the same as none and is dropped first), or
raise on any address string a socket may report.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONNECTIONS_PER_CLIENT",
    "ORDER_BURST",
    "ORDER_RATE",
    "ClientLimits",
    "LimitsConfig",
    "RoutePatterns",
    "TokenBucket",
    "client_key",
    "rate_limited",
]

# Per client address. The exchange answers about 3,000 orders/s on this machine (docs/BENCH.md):
# one client may take a third of it, and a burst of two seconds' worth.
ORDER_RATE = 1000.0
ORDER_BURST = 2000.0
# Fewer than the server's 512 in all: a few clients cannot hold every connection.
CONNECTIONS_PER_CLIENT = 64
# Buckets kept at once; past it the least recently used goes (bounded memory whatever comes).
MAX_CLIENTS = 4096
EXEMPT = ("127.0.0.0/8", "::1/128")

_RATE_LIMITED = "_murmur_rate_limited"


@dataclass(frozen=True)
class LimitsConfig:
    rate: float = ORDER_RATE  # tokens a second, one a rate-limited request
    burst: float = ORDER_BURST  # a bucket's size: requests a client may send at once
    connections: int = CONNECTIONS_PER_CLIENT  # open connections a client may hold
    max_clients: int = MAX_CLIENTS
    exempt: tuple[str, ...] = EXEMPT  # networks no limit applies to

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1 and self.connections >= 1 and self.max_clients >= 1):
            raise ValueError(f"limits must be positive: {self}")


@dataclass
class TokenBucket:
    """`burst` tokens at most, refilled at `rate` a second; a request takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        # A clock that went back gives nothing and takes nothing.
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one token is back (after `take` refused)."""
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


def _address(host: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(host, str):
        return None
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_key(host: Any) -> str | None:
    """The client a host address belongs to: the address itself, or an IPv6 address's /64.
    None for anything that is not an IP address (a test's memory stream, a Unix socket)."""
    addr = _address(host)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ClientLimits:
    """The buckets and open-connection counts of every client seen; `stats` counts refusals."""

    def __init__(self, config: LimitsConfig | None = None) -> None:
        self.config = config or LimitsConfig()
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in self.config.exempt]
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._open: dict[str, int] = {}
        self.stats = {"rate_limited": 0, "refused_client_connections": 0}

    def key(self, host: Any) -> str | None:
        """The client key limits are counted by, or None when no limit applies to `host`."""
        addr = _address(host)
        if addr is None or any(addr in net for net in self._exempt):
            return None
        return client_key(host)

    def allow_request(self, key: str | None, now: float) -> float | None:
        """None if the client may send a rate-limited request now (a token is taken); else the
        seconds until it may."""
        if key is None:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = TokenBucket(self.config.rate, self.config.burst,
                                                      self.config.burst, now)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return None
        self.stats["rate_limited"] += 1
        return bucket.retry_after()

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.config.max_clients:
            return
        # A full bucket is what a new client gets anyway: dropping it loses nothing.
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self.config.max_clients:
            self._buckets.popitem(last=False)  # the least recently used

    def open_connection(self, key: str | None) -> bool:
        """Count a new connection from the client; False (and nothing counted) over the cap."""
        if key is None:
            return True
        n = self._open.get(key, 0)
        if n >= self.config.connections:
            self.stats["refused_client_connections"] += 1
            return False
        self._open[key] = n + 1
        return True

    def close_connection(self, key: str | None) -> None:
        if key is None:
            return
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def open_connections(self, key: str) -> int:
        return self._open.get(key, 0)

    def clients(self) -> int:
        """Buckets held (for tests and the memory bound)."""
        return len(self._buckets)


def rate_limited(route: Any) -> Any:
    """Mark a Starlette route as rate-limited per client (the server finds it in the app's routes)."""
    setattr(route, _RATE_LIMITED, True)
    return route


@dataclass
class RoutePatterns:
    """The (method, path) pairs of the routes marked `rate_limited`, matched against raw paths."""

    patterns: list[tuple[frozenset[str], Any]] = field(default_factory=list)

    @classmethod
    def of(cls, routes: Iterable[Any]) -> RoutePatterns:
        found = []
        for route in routes:
            if getattr(route, _RATE_LIMITED, False):
                found.append((frozenset(route.methods or ()), route.path_regex))
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, method: str, path: str) -> bool:
        return any(method in methods and regex.match(path) for methods, regex in self.patterns)
