"""Data directory locks (`peer/dirlock.py`): one process a directory, released on exit."""

from __future__ import annotations

import os

import pytest

from peer.dirlock import DirectoryInUse, lock_directory


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with lock_directory(tmp_path / "mm-1", "peer"):
        with pytest.raises(DirectoryInUse) as exc:
            with lock_directory(tmp_path / "mm-1", "peer"):
                pass
    message = str(exc.value)
    assert f"pid {os.getpid()}" in message
    assert "--data-dir" in message


def test_the_lock_is_free_again_once_released(tmp_path):
    with lock_directory(tmp_path, "launcher"):
        pass
    with lock_directory(tmp_path, "launcher"):
        pass


def test_different_directories_do_not_conflict(tmp_path):
    with lock_directory(tmp_path / "a", "peer"), lock_directory(tmp_path / "b", "peer"):
        pass
