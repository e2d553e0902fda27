"""Rendezvous (highest-random-weight) hashing: which market maker owns which symbol.

What it is for: every market maker computes, from its own gossip view alone, the same owner for
every symbol: the candidate with the highest weight(name, symbol). Peers that see the same
members agree without talking; a joining peer takes only the symbols it now wins, and a leaving
peer's symbols spread over the others, so a membership change moves about 1/N of the symbols.

It must never use Python's `hash()` (salted per process, so two peers would disagree), never read
the clock or draw randomness, and never touch I/O. The weight is part of the cluster's contract:
changing it makes peers of two versions disagree about every owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from gossip.types import Member

MARKET_MAKER_ROLE = "mm"
# The gossip meta key a market maker sets (to its reason) while it cannot reach the exchange.
ASIDE_KEY = "aside"


def with_aside(meta: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """`meta` with "aside" set to `reason`, or without it for None: what a market maker gossips."""
    base = {k: v for k, v in meta.items() if k != ASIDE_KEY}
    return base if reason is None else {**base, ASIDE_KEY: reason}

# A personalisation string keeps these weights apart from any other BLAKE2b use in murmur.
_PERSON = b"murmur-hrw-v1"


def weight(member_name: str, symbol: str) -> int:
    """The member's 64-bit weight for the symbol: the same in every process and on every machine."""
    name_b = member_name.encode("utf-8")
    symbol_b = symbol.encode("utf-8")
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    # Length-prefixed so that ("ab", "c") and ("a", "bc") can never hash alike.
    h.update(len(name_b).to_bytes(4, "big"))
    h.update(name_b)
    h.update(symbol_b)
    return int.from_bytes(h.digest(), "big")


def owner(symbol: str, candidates: Iterable[str]) -> str | None:
    """The candidate with the highest weight for `symbol`, or None if there is no candidate.

    Ties (a 64-bit collision) go to the greater name, so the answer never depends on the order in
    which a view lists its members.
    """
    best: tuple[int, str] | None = None
    for name in candidates:
        key = (weight(name, symbol), name)
        if best is None or key > best:
            best = key
    return best[1] if best is not None else None


def assignment(symbols: Iterable[str], candidates: Iterable[str]) -> dict[str, str | None]:
    """Every symbol's owner among `candidates` (None for all of them if there is none)."""
    names = sorted(set(candidates))
    return {symbol: owner(symbol, names) for symbol in symbols}


def candidates_from_view(members: Iterable[Member]) -> list[str]:
    """The market makers of a gossip view that may own symbols, sorted by name.

    Alive and suspect members count: a suspect keeps its symbols until it is declared dead, so a
    missed probe does not move authority back and forth. Dead and left members do not count.
    Nor does a member whose meta has a truthy "aside": it says it cannot reach the exchange
    (peer.market_maker.reach). Its peers may still see it alive, and would otherwise keep naming
    it the owner of symbols it cannot claim or quote, leaving them unquoted for as long as its cut
    lasts. Every peer reads the same meta from gossip, so they still agree on the owners.
    """
    return sorted(
        {m.name for m in members if m.role == MARKET_MAKER_ROLE and m.state.is_up and not m.meta.get(ASIDE_KEY)}
    )
