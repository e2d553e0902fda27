"""An exclusive lock on a data directory, held for as long as a process uses it.

What it is for: two peers running from one data directory would share a name and fight over
its incarnation forever; two launchers in one directory would start twin clusters. `flock` is
released by the kernel when the holder dies, so a crashed process never leaves a stale lock.
It must never block: a directory in use is an error for the person starting the second one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


class DirectoryInUse(RuntimeError):
    pass


@contextmanager
def lock_directory(path: Path, what: str) -> Iterator[None]:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DirectoryInUse(
                f"{path} is in use by another {what} (pid {holder}); stop it first "
                "or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
