"""A transport that seals everything it sends and opens everything it receives.

What it is for: `SealedTransport(inner, keyring, cluster)` wraps any transport (the real
`UdpTransport`, a `SimNetwork`'s) so that the gossip node above it only ever sees packets and
push-pull states from holders of the cluster key (gossip/seal.py has the frame). Packets that do
not open are dropped and counted (`sealed_dropped_<reason>`); a stream request that does not open
is refused (the connection closes with no answer) and counted likewise; an answer that does not
open fails the exchange. The node's packets must leave room for the seal: run it with
`config.max_packet = MAX_PACKET - seal.OVERHEAD` (`sealed_config`).

It must never hand the node a byte that did not open, log or count a key, or let hostile input
raise anything but the transport's own TransportError. Clock and nonces are injectable so that
a simulation stays deterministic (wall clock and os.urandom in a real peer).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from gossip.config import GossipConfig
from gossip.keyring import Keyring
from gossip.seal import (
    NONCE_BYTES,
    OVERHEAD,
    REASONS,
    ReplayGuard,
    SealError,
    frame_nonce,
    open_sealed,
    seal,
)
from gossip.transport import MAX_PACKET, MAX_STREAM, StreamHandler, Transport, TransportError
from gossip.types import Address

STAT_KEYS = ("sealed_sent", "sealed_opened", *(f"sealed_dropped_{r}" for r in REASONS))


def sealed_config(config: GossipConfig) -> GossipConfig:
    """`config` with packets small enough to stay within MAX_PACKET once sealed."""
    return config.with_overrides(max_packet=min(config.max_packet, MAX_PACKET - OVERHEAD))


class SealedTransport:
    def __init__(
        self,
        inner: Transport,
        keyring: Keyring,
        cluster: str,
        *,
        clock: Callable[[], float] = time.time,
        nonces: Callable[[int], bytes] = os.urandom,
        guard: ReplayGuard | None = None,
    ) -> None:
        self.inner = inner
        self.keyring = keyring
        self.cluster = cluster
        self._clock = clock
        self._nonces = nonces
        self.guard = guard if guard is not None else ReplayGuard()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    @property
    def local_addr(self) -> Address:
        return self.inner.local_addr

    def _seal(self, kind: bytes, payload: bytes, bind: bytes = b"") -> bytes:
        frame = seal(self.keyring, self.cluster, kind, payload, self._clock(), self._nonces(NONCE_BYTES), bind)
        self.stats["sealed_sent"] += 1
        return frame

    def _open(self, kind: bytes, data: bytes, bind: bytes = b""):
        try:
            opened = open_sealed(self.keyring, self.cluster, kind, data, self._clock(), self.guard, bind)
        except SealError as exc:
            self.stats[f"sealed_dropped_{exc.reason}"] += 1
            raise
        self.stats["sealed_opened"] += 1
        return opened

    async def send_packet(self, data: bytes, addr: Address) -> None:
        await self.inner.send_packet(self._seal(b"p", data), addr)

    async def recv_packet(self) -> tuple[bytes, Address]:
        while True:
            data, sender = await self.inner.recv_packet()
            try:
                return self._open(b"p", data).payload, sender
            except SealError:
                continue  # counted; whoever sent it gets nothing, not even an error

    async def exchange(self, addr: Address, data: bytes) -> bytes:
        if len(data) + OVERHEAD > MAX_STREAM:
            raise ValueError(f"stream of {len(data)} bytes exceeds MAX_STREAM once sealed")
        request = self._seal(b"q", data)
        answer = await self.inner.exchange(addr, request)
        try:
            return self._open(b"r", answer, bind=frame_nonce(request)).payload
        except SealError as exc:
            raise TransportError(f"push-pull answer from {addr[0]}:{addr[1]} did not open: {exc.reason}") from None

    def set_stream_handler(self, handler: StreamHandler) -> None:
        async def answer(data: bytes, sender: Address) -> bytes:
            try:
                opened = self._open(b"q", data)
            except SealError as exc:
                raise TransportError(f"push-pull request did not open: {exc.reason}") from None
            response = await handler(opened.payload, sender)
            if len(response) + OVERHEAD > MAX_STREAM:
                raise TransportError("push-pull answer exceeds MAX_STREAM once sealed")
            return self._seal(b"r", response, bind=opened.nonce)

        self.inner.set_stream_handler(answer)
