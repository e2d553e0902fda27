"""The cluster keyring: the secret keys that make a peer a member, and which one it sends with.

What it is for: sealing gossip (gossip/seal.py) and signing the calls between peers
(peer/http/signing.py) both start from the keys here. A keyring holds one or more 32-byte keys;
exactly one of them, the primary, is used to send; every key installed is accepted on receipt.
That is what lets a running cluster rotate with no downtime: install the new key everywhere
(still sending with the old), make it primary everywhere, then remove the old one
(`murmur keys install|use|remove`, docs/security.md).

A key is named by its id: the first 8 hex digits of SHA-256 over a fixed label and the key.
The id travels in every sealed packet, so a receiver finds the key without trying them all;
it says nothing of the key itself. Keys are never logged and never put on a command line: they
come from a key file (`--key-file`, `MURMUR_KEY_FILE`), which `murmur launch` writes with mode
0600. The file is JSON:

    {"primary": "<id>", "keys": ["<base64 of 32 bytes>", ...]}

What it must never do: print, log or repr a key; accept a key that is not 32 random-looking
bytes; leave a keyring with no primary.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

KEY_BYTES = 32
ID_HEX = 8
KEY_FILE_ENV = "MURMUR_KEY_FILE"
MAX_KEYS = 16  # a keyring is a handful during a rotation; more is a mistake or an attack
MAX_FILE = 64 * 1024


class KeyringError(ValueError):
    """A key or key file that cannot be used: malformed, unreadable, or a rule broken."""


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """A key from its base64 text (as `murmur keygen` prints it). Raises KeyringError."""
    if not isinstance(text, str):
        raise KeyringError("a key is a base64 string")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError("a key must be base64 (as `murmur keygen` prints it)") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"a key must be {KEY_BYTES} bytes, this one is {len(key)}")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"murmur key id\x00" + key).hexdigest()[:ID_HEX]


class Keyring:
    """Keys by id, and the primary one. Changes are in place: every holder sees them at once."""

    def __init__(self, keys: list[bytes], primary: str | None = None) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        if len(keys) > MAX_KEYS:
            raise KeyringError(f"at most {MAX_KEYS} keys")
        self._keys: dict[str, bytes] = {}
        for key in keys:
            self._add(key)
        self._primary = primary if primary is not None else key_id(keys[0])
        if self._primary not in self._keys:
            raise KeyringError(f"the primary key {self._primary} is not in the keyring")

    def __repr__(self) -> str:  # ids only: never a key
        return f"Keyring(primary={self._primary}, ids={self.ids()})"

    def _add(self, key: bytes) -> str:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise KeyringError(f"a key must be {KEY_BYTES} bytes")
        kid = key_id(key)
        self._keys[kid] = key
        return kid

    @property
    def primary_id(self) -> str:
        return self._primary

    @property
    def primary(self) -> bytes:
        return self._keys[self._primary]

    def get(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def install(self, key: bytes) -> str:
        """Accept `key` on receipt from now on (the primary is unchanged); its id."""
        kid = key_id(key)
        if kid not in self._keys and len(self._keys) >= MAX_KEYS:
            raise KeyringError(f"at most {MAX_KEYS} keys")
        return self._add(key)

    def use(self, kid: str) -> None:
        """Send with key `kid` from now on; it must be installed."""
        if kid not in self._keys:
            raise KeyringError(f"no key {kid} in the keyring; install it first")
        self._primary = kid

    def remove(self, kid: str) -> None:
        if kid not in self._keys:
            raise KeyringError(f"no key {kid} in the keyring")
        if kid == self._primary:
            raise KeyringError(f"key {kid} is the primary; `use` another one before removing it")
        del self._keys[kid]

    def to_json(self) -> dict[str, Any]:
        """What a key file holds (secret: written 0600 only)."""
        return {"primary": self._primary, "keys": [encode_key(k) for _, k in sorted(self._keys.items())]}

    def describe(self) -> dict[str, Any]:
        """What may be shown (`/status`, `murmur keys list`, logs): ids, never keys."""
        return {"primary": self._primary, "ids": self.ids()}

    @classmethod
    def from_json(cls, data: Any) -> Keyring:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise KeyringError('a key file is JSON: {"primary": "<id>", "keys": ["<base64>", ...]}')
        primary = data.get("primary")
        if primary is not None and not isinstance(primary, str):
            raise KeyringError("primary must be a key id")
        return cls([decode_key(k) for k in data["keys"]], primary)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """The keyring in a key file. Raises KeyringError naming the file, never its content."""
        try:
            raw = Path(path).read_bytes()[: MAX_FILE + 1]
        except OSError as exc:
            raise KeyringError(f"cannot read key file {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE:
            raise KeyringError(f"key file {path} is larger than {MAX_FILE} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise KeyringError(f"key file {path} is not JSON") from None
        try:
            return cls.from_json(data)
        except KeyringError as exc:
            raise KeyringError(f"key file {path}: {exc}") from None

    def save(self, path: Path) -> None:
        """Write the key file atomically, mode 0600 from its first byte."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(self.to_json()).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def new_key_file(path: Path) -> Keyring:
    """A keyring of one new key, saved to `path` (mode 0600)."""
    ring = Keyring([generate_key()])
    ring.save(path)
    return ring
