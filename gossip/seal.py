"""Sealing gossip: every packet and push-pull stream as an AEAD frame under the cluster key.

What it is for: a peer without the cluster key can neither read nor forge gossip. `seal` turns a
payload into a frame, `open_sealed` turns a frame back into its payload or raises `SealError`
with a reason that names the counter it goes to (`sealed_dropped_<reason>`, gossip/sealed.py).

A sealed frame (ChaCha20-Poly1305, RFC 8439):

    b"M1" | key id (4 bytes: the keyring's 8 hex digits) | nonce (12 random bytes) | ciphertext+tag

The plaintext is the sender's wall-clock send time in milliseconds (8 bytes, big-endian) and the
payload. The associated data binds the frame to its use: b"murmur-seal-v1", the cluster's name
(length-prefixed), the key id and the kind: b"p" a packet, b"q" a stream request, b"r" a stream
response, which also binds the request's nonce (so an answer cannot be replayed onto another
request). A frame of another cluster, another kind or another request does not open.

Replays: `ReplayGuard` refuses a frame whose send time is more than `window` seconds from the
receiver's clock (`expired`) and, within the window, a nonce it has already seen (`replayed`).
So a captured frame can be replayed only within the window, and only to a peer that has not
seen it; what it says (SWIM messages carrying incarnations) is then at most 30 s old, which the
gossip core already bounds: a member refutes a suspicion with a higher incarnation and an old
incarnation's suspect or dead is ignored (docs/security.md).

What it must never do: read a clock or draw randomness (time and nonce are arguments), raise
anything but SealError on hostile bytes, or put a key in an error message.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gossip.keyring import Keyring

VERSION = b"M1"
KID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
TIME_BYTES = 8
HEADER = len(VERSION) + KID_BYTES + NONCE_BYTES
# What sealing adds to a payload: the gossip core's packets must stay this much under MAX_PACKET.
OVERHEAD = HEADER + TIME_BYTES + TAG_BYTES
AAD_LABEL = b"murmur-seal-v1"
KINDS = (b"p", b"q", b"r")
REPLAY_WINDOW = 30.0
# Nonces remembered at most. Only frames that opened (authentic ones) are remembered, so only
# members can fill it; when full the oldest are forgotten and anything sent at or before the
# newest forgotten send time counts as expired, so forgetting never lets a replay through.
REPLAY_MEMORY = 200_000

REASONS = ("short", "bad_version", "unknown_key", "auth_failed", "expired", "replayed")


class SealError(Exception):
    """A frame that does not open; `reason` is one of REASONS (a counter name)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Opened:
    payload: bytes
    key_id: str
    nonce: bytes
    sent_at: float  # the sender's wall clock, seconds


class ReplayGuard:
    """Send times within `window` of now, and each nonce once. Pure: `now` is an argument."""

    def __init__(self, window: float = REPLAY_WINDOW, memory: int = REPLAY_MEMORY) -> None:
        self.window = window
        self.memory = memory
        self._seen: set[bytes] = set()
        # (forget at, sent_at, nonce) in the order remembered.
        self._order: deque[tuple[float, float, bytes]] = deque()
        # Send times at or before this count as expired (entries forgotten early because full).
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, nonce: bytes, sent_at: float, now: float) -> None:
        """Raise SealError('expired' | 'replayed'), or remember `nonce` and return."""
        self._prune(now)
        if abs(sent_at - now) > self.window or sent_at <= self._floor:
            raise SealError("expired")
        if nonce in self._seen:
            raise SealError("replayed")
        while len(self._seen) >= self.memory:
            _, old_sent, old = self._order.popleft()
            self._seen.discard(old)
            self._floor = max(self._floor, old_sent)
        self._seen.add(nonce)
        # Once now is past sent_at + window the frame is expired anyway: no need to remember it.
        self._order.append((sent_at + self.window, sent_at, nonce))

    def _prune(self, now: float) -> None:
        # Entries are appended in arrival order, not by expiry; a late one at the front only
        # delays pruning of those behind it, which the memory bound covers.
        order = self._order
        while order and order[0][0] < now:
            _, _, nonce = order.popleft()
            self._seen.discard(nonce)


def _aad(cluster: str, kid: bytes, kind: bytes, bind: bytes) -> bytes:
    name = cluster.encode("utf-8")
    return AAD_LABEL + len(name).to_bytes(2, "big") + name + kid + kind + bind


def _check_kind(kind: bytes, bind: bytes) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if (kind == b"r") != bool(bind):
        raise ValueError("a response (kind b'r') and only a response binds the request's nonce")


def seal(keyring: Keyring, cluster: str, kind: bytes, payload: bytes, now: float, nonce: bytes,
         bind: bytes = b"") -> bytes:
    """`payload` sealed under the keyring's primary key, sent at wall time `now` (seconds).

    `nonce` must be 12 bytes never used before with this key (random); `bind` is the request's
    nonce for a response (kind b"r") and empty otherwise.
    """
    _check_kind(kind, bind)
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    kid = bytes.fromhex(keyring.primary_id)
    plain = struct.pack(">Q", max(0, int(now * 1000))) + payload
    sealed = ChaCha20Poly1305(keyring.primary).encrypt(nonce, plain, _aad(cluster, kid, kind, bind))
    return VERSION + kid + nonce + sealed


def frame_nonce(data: bytes) -> bytes:
    """The nonce of a frame (to bind a response to it); only for a frame that opened."""
    return data[len(VERSION) + KID_BYTES:HEADER]


def open_sealed(keyring: Keyring, cluster: str, kind: bytes, data: bytes, now: float,
                guard: ReplayGuard | None, bind: bytes = b"") -> Opened:
    """The payload of a sealed frame, or SealError(reason). `guard` None: no replay check."""
    _check_kind(kind, bind)
    if len(data) < OVERHEAD:
        raise SealError("short")
    if data[: len(VERSION)] != VERSION:
        raise SealError("bad_version")
    kid = data[len(VERSION): len(VERSION) + KID_BYTES]
    kid_hex = kid.hex()
    key = keyring.get(kid_hex)
    if key is None:
        raise SealError("unknown_key")
    nonce = data[len(VERSION) + KID_BYTES: HEADER]
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, data[HEADER:], _aad(cluster, kid, kind, bind))
    except InvalidTag:
        raise SealError("auth_failed") from None
    (sent_ms,) = struct.unpack(">Q", plain[:TIME_BYTES])
    sent_at = sent_ms / 1000
    if guard is not None:
        guard.check(nonce, sent_at, now)
    return Opened(plain[TIME_BYTES:], kid_hex, nonce, sent_at)
