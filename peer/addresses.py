"""HOST:PORT parsing and printing, shared by the commands, the runner and the HTTP API.

What it is for: one spelling of an address everywhere a person types or reads one
(`127.0.0.1:7946`, `[::1]:7946`). It must never resolve names or touch the network: a bad
address is reported by the caller as a one-line usage error.
"""

from __future__ import annotations

import ipaddress

from gossip.types import Address

# Hosts that a socket can bind but that no other peer can send to.
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


class AddressError(ValueError):
    """The text is not HOST:PORT; the message says what is wrong with it."""


def parse_address(text: str) -> Address:
    """`"127.0.0.1:7946"` -> `("127.0.0.1", 7946)`; `"[::1]:80"` -> `("::1", 80)`."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"expected [IPV6]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise AddressError(f"expected HOST:PORT (e.g. 127.0.0.1:7946), got {text!r}")
        if ":" in host:
            raise AddressError(f"write an IPv6 address in brackets, e.g. [::1]:7946, got {text!r}")
    if not host:
        raise AddressError(f"missing host in {text!r} (e.g. 127.0.0.1:{port_text or 7946})")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"port must be a number from 0 to 65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def parse_address_list(text: str) -> list[Address]:
    """`"a:1,b:2"` -> `[("a", 1), ("b", 2)]`; empty items are ignored."""
    return [parse_address(part) for part in text.split(",") if part.strip()]


def format_address(addr: Address | list | tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_unspecified(host: str) -> bool:
    if host in UNSPECIFIED_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def http_url(addr: Address) -> str:
    return f"http://{format_address(addr)}"
