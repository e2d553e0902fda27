"""A node's stable name and its incarnation floor, kept in the data directory.

What it is for: a node that restarts must come back under the same name with an incarnation
above any it used before, so that it refutes its own death with no manual clean-up. The name is
given, or generated once and kept; the incarnation is persisted whenever it rises, and bumped on
every start. It must never be consulted by the protocol core: the shell reads it and hands the
numbers in.

A file of the wrong shape (not an object, a name that is not a node name, an incarnation that is
not a non-negative integer) raises `IdentityError`, naming the file. An incarnation above
`MAX_INCARNATION` (written by an older version that let one grow past what the wire carries) is
not refused, so that the peer can come back: it restarts at `HEADROOM_FLOOR`, and
`Identity.clamped_from` says so. Nothing above the bound is ever written.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossip.config import HEADROOM_FLOOR, MAX_INCARNATION

FILE_NAME = "identity.json"
# The node names `murmur peer --name` accepts.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class IdentityError(RuntimeError):
    """identity.json cannot be used as it is; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    incarnation: int
    # The stored incarnation, when it was above MAX_INCARNATION and this start was brought down.
    clamped_from: int | None = None


class IdentityStore:
    """Reads and atomically rewrites `<data_dir>/identity.json`."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.path = Path(data_dir) / FILE_NAME

    def start(self, name: str | None = None, prefix: str = "node") -> Identity:
        """Load (or create) the identity and bump the incarnation for this run."""
        stored = self._read()
        if name is None:
            name = stored.get("name") or f"{prefix}-{secrets.token_hex(3)}"
        elif stored.get("name") not in (None, name):
            # A renamed node is a new member; its old incarnation means nothing for it.
            stored = {}
        previous = stored.get("incarnation", 0)
        if previous > MAX_INCARNATION:
            # No peer can have announced it (the wire refuses it), so nobody holds it: come back
            # at the floor of the headroom, above any incarnation reached by ordinary means and
            # taken by every peer, with all of the headroom left to refute in.
            incarnation, clamped_from = HEADROOM_FLOOR, previous
        else:
            # At the bound, stay there (docs/membership.md says how such a peer comes back).
            incarnation, clamped_from = min(previous + 1, MAX_INCARNATION), None
        self._write(name, incarnation)
        return Identity(name, incarnation, clamped_from)

    def record(self, identity: Identity) -> None:
        """Remember a raised incarnation (after a refutation) so a restart goes above it."""
        incarnation = min(identity.incarnation, MAX_INCARNATION)
        try:
            stored = self._read()
        except IdentityError:
            stored = {}  # damaged while we ran: what we know now is the truth, write it
        if incarnation > stored.get("incarnation", -1) or stored.get("name") != identity.name:
            self._write(identity.name, incarnation)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise IdentityError(
                f"{self.path} is unreadable ({exc}); remove it to start as a new node"
            ) from exc
        if not isinstance(data, dict):
            raise self._malformed("it is not a JSON object")
        name = data.get("name")
        if name is not None and (type(name) is not str or not _NAME.fullmatch(name)):
            raise self._malformed("its name is not 1-63 letters, digits, '.', '_' or '-'")
        incarnation = data.get("incarnation")
        if incarnation is not None and (type(incarnation) is not int or incarnation < 0):
            raise self._malformed("its incarnation is not a non-negative integer")
        return {k: v for k, v in (("name", name), ("incarnation", incarnation)) if v is not None}

    def _malformed(self, why: str) -> IdentityError:
        return IdentityError(
            f"{self.path} is malformed: {why}; fix it, or remove it to start as a new node "
            "(a removed file costs the peer its name unless --name is given)"
        )

    def _write(self, name: str, incarnation: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"name": name, "incarnation": incarnation}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
