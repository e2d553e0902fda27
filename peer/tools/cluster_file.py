"""`cluster.json`: what `murmur launch` started, for people and for the other commands.

What it is for: the one file that says where a launched cluster lives (each peer's name, role,
pid, gossip address, HTTP URL and the command that restarts it), so `murmur members`,
`murmur top` and scripts can find a peer without being told a port. It must never be needed by
a peer itself: peers learn about each other by gossip only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE_NAME = "cluster.json"
DEFAULT_DATA_DIR = Path("data")


class ClusterFileError(Exception):
    """The cluster file is missing or unreadable; the message says which and why."""


def default_cluster_path() -> Path:
    return DEFAULT_DATA_DIR / FILE_NAME


def write_cluster(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_cluster(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ClusterFileError(
            f"{path} does not exist (it is written by `murmur launch`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClusterFileError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("peers"), list):
        raise ClusterFileError(f"{path} has no 'peers' list; is it a murmur cluster.json?")
    return data


def peer_urls(cluster: dict[str, Any]) -> list[str]:
    """HTTP URLs of the cluster's peers, in launch order."""
    return [p["http"] for p in cluster["peers"] if isinstance(p, dict) and p.get("http")]


def normalize_url(text: str) -> str:
    """Accept `127.0.0.1:8080` as well as `http://127.0.0.1:8080/`."""
    url = text.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url
