"""Signed calls between peers, and the reservation grants the ledger signs: the pure rules.

What it is for: proving that a call that changes authority or money (a claim, a quote, a fill
posted to the ledger, a reservation) comes from a member holding the cluster key, under the name
it gives, and was not sent before. A request carries five headers:

    x-murmur-peer       the caller's name (it existed before: the link filter reads it)
    x-murmur-time       the caller's wall clock at signing, in whole milliseconds
    x-murmur-nonce      16 hex digits, fresh for every request
    x-murmur-key        the id of the cluster key it was signed under (gossip/keyring.py)
    x-murmur-signature  HMAC-SHA256, 64 hex digits

The HMAC key is HKDF-SHA256(cluster key, info=b"murmur http v1"), never the cluster key itself,
so a signature can never be confused with a sealed gossip packet or a grant. It covers one line
each of: the label `murmur http v1`, the method, the request target (path and query, exactly as
sent), the time, the nonce, the peer's name and SHA-256 of the body. None of these can hold a
line break, so no two requests share a signed text.

A receiver (`Verifier`) accepts a request only if the key id is in its keyring, the time is
within `window` (30 s) of its own clock either way, the HMAC matches (compared in constant time)
and the nonce was not seen within the window. Nonces are remembered until their request would
be refused as expired anyway, so the memory is bounded by the rate of signed calls times the
window; past `max_nonces` a request is refused (`busy`) rather than a nonce forgotten early.

A grant is the ledger's signature over a granted reservation: HMAC-SHA256 under
HKDF(cluster key, info=b"murmur grant v1") over reservation_id, quote_id, holder, symbol, the
reserved bid and ask quantities and expires_at. The exchange verifies it with no round trip to
the ledger (`verify_grant`) and hands the verified terms to its core.

It must never read a clock, draw randomness or touch a socket (time and nonces are arguments),
log or show a key, or raise anything but SignatureError (requests) or GrantError (grants) on
hostile input.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from book import bounds
from gossip.keyring import Keyring

HTTP_INFO = b"murmur http v1"
GRANT_INFO = b"murmur grant v1"
WINDOW = 30.0
MAX_NONCES = 1 << 18

PEER = "x-murmur-peer"
TIME = "x-murmur-time"
NONCE = "x-murmur-nonce"
KEY = "x-murmur-key"
SIGNATURE = "x-murmur-signature"
HEADERS = (PEER, TIME, NONCE, KEY, SIGNATURE)

# Failure reasons, also the names of the counters a guard keeps.
REASONS = ("missing", "malformed", "unknown_key", "expired", "bad_signature", "replayed", "busy")

_PEER = re.compile(r"[\x21-\x7e]{1,128}")
_TIME = re.compile(r"[0-9]{1,15}")
_NONCE = re.compile(r"[0-9a-f]{16}")
_KEY = re.compile(r"[0-9a-f]{8}")
_SIG = re.compile(r"[0-9a-f]{64}")
_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]*")


class SignatureError(Exception):
    """A request whose signature does not prove it: `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class GrantError(Exception):
    """A grant that does not verify or does not fit the quote: `reason` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def derive(key: bytes, info: bytes) -> bytes:
    """The key for one purpose (`info`), from a cluster key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class _Derived:
    """Derived keys by cluster key id: HKDF once per key, not once per request. The id is a
    hash of the key, so an id names one key for good."""

    def __init__(self, keyring: Keyring, info: bytes) -> None:
        self.keyring = keyring
        self.info = info
        self._cache: dict[str, bytes] = {}

    def get(self, kid: str) -> bytes | None:
        key = self.keyring.get(kid)
        if key is None:
            self._cache.pop(kid, None)
            return None
        derived = self._cache.get(kid)
        if derived is None:
            derived = self._cache[kid] = derive(key, self.info)
        return derived

    def primary(self) -> tuple[str, bytes]:
        kid = self.keyring.primary_id
        derived = self.get(kid)
        assert derived is not None
        return kid, derived


def signed_text(method: str, target: str, time_ms: str, nonce: str, peer: str, body: bytes) -> bytes:
    return "\n".join((HTTP_INFO.decode(), method, target, time_ms, nonce, peer,
                      hashlib.sha256(body).hexdigest())).encode("ascii")


def _mac(key: bytes, text: bytes) -> str:
    return hmac.new(key, text, hashlib.sha256).hexdigest()


class Signer:
    """Signs a peer's requests with the primary key of its keyring.

    `sign` is the rule (everything an argument); `headers` is what a client calls, taking the
    time from `clock` and the nonce from `nonces` (a callable returning 64 random bits)."""

    def __init__(self, keyring: Keyring, name: str, *, clock: Callable[[], float],
                 nonces: Callable[[], int]) -> None:
        if not _PEER.fullmatch(name):
            raise ValueError(f"a signer's name must be printable ASCII, not {name[:80]!r}")
        self.name = name
        self.clock = clock
        self.nonces = nonces
        self._keys = _Derived(keyring, HTTP_INFO)

    def sign(self, method: str, target: str, body: bytes, now: float, nonce: int) -> dict[str, str]:
        kid, key = self._keys.primary()
        time_ms = str(int(now * 1000))
        nonce_hex = f"{nonce & (2**64 - 1):016x}"
        mac = _mac(key, signed_text(method, target, time_ms, nonce_hex, self.name, body))
        return {PEER: self.name, TIME: time_ms, NONCE: nonce_hex, KEY: kid, SIGNATURE: mac}

    def headers(self, method: str, target: str, body: bytes) -> dict[str, str]:
        return self.sign(method, target, body, self.clock(), self.nonces())


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The signing headers of a request as the server read them ((name, value) bytes, names in
    lower case); a signing header given twice, or not ASCII, is malformed."""
    out: dict[str, str] = {}
    for name, value in raw:
        try:
            key = name.decode("ascii").lower()
        except UnicodeDecodeError:
            continue
        if key not in HEADERS:
            continue
        if key in out:
            raise SignatureError("malformed", f"header {key} given twice")
        try:
            out[key] = value.decode("ascii").strip()
        except UnicodeDecodeError:
            raise SignatureError("malformed", f"header {key} is not ASCII") from None
    return out


class Verifier:
    """Checks signed requests against a keyring and remembers their nonces for the window."""

    def __init__(self, keyring: Keyring, *, window: float = WINDOW, max_nonces: int = MAX_NONCES) -> None:
        self.window = window
        self.max_nonces = max_nonces
        self._keys = _Derived(keyring, HTTP_INFO)
        self._seen: set[str] = set()
        self._forget: list[tuple[float, str]] = []  # (when the nonce can go, nonce)

    def __len__(self) -> int:
        return len(self._seen)

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes, now: float) -> str:
        """The signer's name, if the request proves it; raises SignatureError otherwise."""
        if SIGNATURE not in headers:
            raise SignatureError("missing", "this call must be signed by a member (x-murmur-signature)")
        values = {}
        for name, pattern in ((PEER, _PEER), (TIME, _TIME), (NONCE, _NONCE), (KEY, _KEY), (SIGNATURE, _SIG)):
            value = headers.get(name)
            if type(value) is not str or not pattern.fullmatch(value):
                raise SignatureError("malformed", f"header {name} is missing or malformed")
            values[name] = value
        if type(method) is not str or not _METHOD.fullmatch(method) or type(target) is not str \
                or not _TARGET.fullmatch(target):
            raise SignatureError("malformed", "request method or target cannot be signed")
        key = self._keys.get(values[KEY])
        if key is None:
            raise SignatureError("unknown_key", f"key {values[KEY]} is not in this peer's keyring")
        sent = int(values[TIME]) / 1000
        if not math.isfinite(now) or abs(sent - now) > self.window:
            raise SignatureError("expired", f"signed {sent - now:+.1f} s from this peer's clock, "
                                 f"outside +-{self.window:g} s")
        expected = _mac(key, signed_text(method, target, values[TIME], values[NONCE], values[PEER], body))
        if not hmac.compare_digest(expected, values[SIGNATURE]):
            raise SignatureError("bad_signature", "the signature does not match the request")
        self._prune(now)
        nonce = values[NONCE]
        if nonce in self._seen:
            raise SignatureError("replayed", "this request was received before")
        if len(self._seen) >= self.max_nonces:
            raise SignatureError("busy", "too many signed requests within the window; try again")
        self._seen.add(nonce)
        # Past sent + window the request is refused as expired: its nonce need not be kept.
        heapq.heappush(self._forget, (sent + self.window, nonce))
        return values[PEER]

    def _prune(self, now: float) -> None:
        forget = self._forget
        while forget and forget[0][0] < now:
            self._seen.discard(heapq.heappop(forget)[1])


# --- grants ---------------------------------------------------------------------------------------

GRANT_TERMS = ("reservation_id", "quote_id", "holder", "symbol", "bid_quantity", "ask_quantity", "expires_at")
GRANT_FIELDS = (*GRANT_TERMS, "key", "mac")


@dataclass(frozen=True, slots=True)
class Grant:
    """The terms of a reservation the ledger granted, once its signature verified."""

    reservation_id: str
    quote_id: str
    holder: str
    symbol: str
    bid_quantity: int
    ask_quantity: int
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in GRANT_TERMS}


def _grant_text(terms: Grant) -> bytes:
    # A JSON array of the terms in a fixed order: unambiguous, and the same bytes on both sides
    # (a float's JSON text round-trips exactly).
    return GRANT_INFO + b"\n" + json.dumps([getattr(terms, n) for n in GRANT_TERMS],
                                           separators=(",", ":")).encode()


class GrantSigner:
    """What the ledger uses: a grant for each reservation it holds capacity for."""

    def __init__(self, keyring: Keyring) -> None:
        self._keys = _Derived(keyring, GRANT_INFO)

    def sign(self, terms: Grant) -> dict[str, Any]:
        kid, key = self._keys.primary()
        return {**terms.to_json(), "key": kid, "mac": _mac(key, _grant_text(terms))}


def _grant_value(value: Any, name: str) -> Any:
    def error(field: str, message: str) -> GrantError:
        return GrantError("malformed", f"grant.{field}: {message}")
    if name in ("bid_quantity", "ask_quantity"):
        return bounds.whole(value, name, maximum=bounds.MAX_QUANTITY, error=error)
    if name == "expires_at":
        if type(value) is not float:  # the ledger's times are floats; an int would not round-trip
            raise GrantError("malformed", "grant.expires_at: must be a number with a fraction")
        return bounds.seconds(value, name, error=error)
    if name == "symbol":
        return bounds.symbol(value, name, error=error)
    return bounds.ident(value, name, error=error)


class GrantVerifier:
    """What the exchange uses: the verified terms of a grant, or GrantError."""

    def __init__(self, keyring: Keyring) -> None:
        self._keys = _Derived(keyring, GRANT_INFO)

    def verify(self, grant: Any) -> Grant:
        if grant is None:
            raise GrantError("grant-missing", "a quote needs the ledger's grant of its reservation")
        if not isinstance(grant, dict) or set(grant) != set(GRANT_FIELDS):
            raise GrantError("malformed", f"a grant is an object of exactly {', '.join(GRANT_FIELDS)}")
        terms = Grant(*(_grant_value(grant[n], n) for n in GRANT_TERMS))
        kid, mac = grant["key"], grant["mac"]
        if type(kid) is not str or not _KEY.fullmatch(kid) or type(mac) is not str or not _SIG.fullmatch(mac):
            raise GrantError("malformed", "grant.key and grant.mac must be hex")
        key = self._keys.get(kid)
        if key is None:
            raise GrantError("unknown_key", f"grant signed with key {kid}, not in this peer's keyring")
        if not hmac.compare_digest(_mac(key, _grant_text(terms)), mac):
            raise GrantError("bad_grant", "the grant's signature does not match its terms")
        return terms
