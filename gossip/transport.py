"""The seam between the gossip shell and a network: what any transport must offer.

What it is for: one interface that the real trio UDP/TCP transport (`udp.py`) and the in-memory
simulated network (`simnet.py`) both implement, so the same `GossipNode` shell runs over either.
It must never know anything of SWIM: it moves opaque bytes.

Packets are unreliable datagrams (may be lost, delayed, reordered; at most `MAX_PACKET` bytes).
Streams are for push-pull anti-entropy: one request, one response, reliable while the link is up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gossip.types import Address

MAX_PACKET = 1400
# Push-pull states are bounded too, so that a hostile or broken peer cannot make us buffer
# without limit: 4 MiB holds tens of thousands of members.
MAX_STREAM = 4 * 1024 * 1024

# Called by a transport for every inbound push-pull stream: (request bytes, peer address) ->
# response bytes. It runs inside the transport's own nursery.
StreamHandler = Callable[[bytes, Address], Awaitable[bytes]]


class TransportError(Exception):
    """A stream exchange failed: refused, reset, timed out by the caller, or cut by a partition."""


class Transport(Protocol):
    @property
    def local_addr(self) -> Address:
        """The bound address others reach this node at (packets and streams share it)."""
        ...

    async def send_packet(self, data: bytes, addr: Address) -> None:
        """Best effort: never raises for an unreachable peer, it just loses the packet."""
        ...

    async def recv_packet(self) -> tuple[bytes, Address]:
        """Wait for the next inbound datagram."""
        ...

    async def exchange(self, addr: Address, data: bytes) -> bytes:
        """Open a stream to `addr`, send `data`, return its response. Raises TransportError.

        No timeout of its own: the caller wraps it in `trio.fail_after`/`move_on_after`.
        """
        ...

    def set_stream_handler(self, handler: StreamHandler) -> None:
        """Install the function that answers inbound streams."""
        ...
