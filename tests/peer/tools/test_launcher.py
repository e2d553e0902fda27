"""The launcher's command lines: every peer it starts carries the cluster's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer.cli import main
from peer.tools.launcher import LaunchOptions, peer_argv, peer_specs


def test_every_launched_peer_is_given_the_clusters_name(tmp_path: Path):
    opts = LaunchOptions(peers=2, data_dir=tmp_path, cluster="desk-a")
    for spec in peer_specs(opts):
        argv = peer_argv(opts, spec, ("127.0.0.1", 1), ("127.0.0.1", 2), [])
        assert argv[argv.index("--cluster") + 1] == "desk-a"
    default = LaunchOptions(peers=1, data_dir=tmp_path)
    argv = peer_argv(default, peer_specs(default)[0], ("127.0.0.1", 1), ("127.0.0.1", 2), [])
    assert argv[argv.index("--cluster") + 1] == "murmur"


def test_an_empty_or_overlong_cluster_name_is_a_usage_error(capsys, tmp_path):
    for name in ("", "x" * 200):
        with pytest.raises(SystemExit) as exc:
            main(["launch", "--data-dir", str(tmp_path), "--cluster", name])
        assert exc.value.code == 2
        assert "cluster name" in capsys.readouterr().err
