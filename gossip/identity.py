"""A node's stable name and its incarnation floor, kept in the data directory.

What it is for: a node that restarts must come back under the same name with an incarnation
above any it used before, so that it refutes its own death with no manual clean-up. The name is
given, or generated once and kept; the incarnation is persisted whenever it rises, and bumped on
every start. It must never be consulted by the protocol core: the shell reads it and hands the
numbers in.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "identity.json"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    incarnation: int


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
        incarnation = int(stored.get("incarnation", 0)) + 1
        self._write(name, incarnation)
        return Identity(name, incarnation)

    def record(self, identity: Identity) -> None:
        """Remember a raised incarnation (after a refutation) so a restart goes above it."""
        stored = self._read()
        if identity.incarnation > int(stored.get("incarnation", -1)) or stored.get("name") != identity.name:
            self._write(identity.name, identity.incarnation)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"{self.path} is unreadable ({exc}); remove it to start as a new node"
            ) from exc
        return data if isinstance(data, dict) else {}

    def _write(self, name: str, incarnation: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"name": name, "incarnation": incarnation}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
