"""The transmit-limited queue of membership updates waiting to be piggybacked.

What it is for: every update (alive, suspect, dead about some node) is sent a bounded number of
times (retransmit_mult * ceil(log10(N + 1))), least-sent first and, among equals, newest first; a
newer update about the same node replaces the older one, so the queue never holds two opinions
about a node. Updates are stored already encoded so retransmission costs no encoding. It must
never decide what an update means: the core puts them in, the packer takes bytes out.
"""

from __future__ import annotations

from sortedcontainers import SortedList


class _Item:
    __slots__ = ("key", "data", "transmits", "order")

    def __init__(self, key: str, data: bytes, order: int):
        self.key = key
        self.data = data
        self.transmits = 0
        self.order = order

    def sort_key(self) -> tuple[int, int]:
        return (self.transmits, -self.order)


class BroadcastQueue:
    def __init__(self) -> None:
        self._items: SortedList = SortedList(key=_Item.sort_key)
        self._by_key: dict[str, _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, data: bytes) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            self._items.remove(old)
        self._order += 1
        item = _Item(key, data, self._order)
        self._by_key[key] = item
        self._items.add(item)

    def take(self, budget: int, limit: int, overhead: int = 0) -> list[bytes]:
        """Messages that fit in `budget` bytes (each costing `overhead` extra), least-sent first.

        Each one taken counts a transmission; one that reached `limit` leaves the queue.
        """
        chosen: list[_Item] = []
        used = 0
        for item in self._items:
            cost = len(item.data) + overhead
            if used + cost > budget:
                # Smaller ones further on may still fit; a packet is rarely full, so keep looking
                # but stop once little room is left.
                if budget - used < 16:
                    break
                continue
            chosen.append(item)
            used += cost
        for item in chosen:
            self._items.remove(item)
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_key[item.key]
            else:
                self._items.add(item)
        return [item.data for item in chosen]

    def prune(self, keep: int) -> None:
        """Drop the most-sent items beyond `keep` (a bound for very large churn)."""
        while len(self._items) > keep:
            item = self._items.pop(-1)
            del self._by_key[item.key]
