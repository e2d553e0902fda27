"""The launcher's command lines: every peer it starts carries the cluster's name, and the flags
of each peer give it exactly the options the launcher meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer.cli import build_parser, main
from peer.options import ExchangeOptions, PeerOptions, command_line, from_args
from peer.tools.launcher import LaunchOptions, peer_argv, peer_options, peer_specs


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


def test_each_peers_command_line_parses_back_to_the_options_the_launcher_meant(tmp_path: Path):
    opts = LaunchOptions(
        peers=2,
        data_dir=tmp_path,
        base_port=7000,
        overrides={"probe_interval": 0.5, "suspicion_mult": 3},
        exchange=ExchangeOptions(symbols=["AAPL"], flow_rate=3.5, lease=4.0),
    )
    join = [("127.0.0.1", 7000), ("127.0.0.1", 7002)]
    for spec in peer_specs(opts):
        meant = peer_options(opts, spec, spec.bind, spec.http, join)
        argv = peer_argv(opts, spec, spec.bind, spec.http, join)
        parsed = from_args(PeerOptions, build_parser().parse_args(argv[3:]))
        # Of the role groups a peer is given what its role reads; the rest stays at the defaults.
        assert command_line(parsed) == command_line(meant) == argv[4:]
        common = ("role", "name", "bind", "http", "join", "cluster", "data_dir", "profile",
                  "overrides", "log_stderr")
        assert [getattr(parsed, k) for k in common] == [getattr(meant, k) for k in common]
        if spec.role == "exchange":
            assert parsed == meant
        if spec.role == "mm":
            assert (parsed.exchange.lease, parsed.exchange.flow_rate) == (4.0, 0.0)


def test_the_admin_token_is_new_each_launch_readable_by_its_owner_only_and_every_peer_is_given_it(tmp_path: Path):
    from peer.tools.launcher import write_admin_token

    path = write_admin_token(tmp_path)
    first = path.read_text().strip()
    path.chmod(0o644)  # a looser file from before is tightened, not trusted
    again = write_admin_token(tmp_path)
    assert again == path and (path.stat().st_mode & 0o777) == 0o600
    assert len(first) >= 40 and path.read_text().strip() != first
    opts = LaunchOptions(peers=1, data_dir=tmp_path)
    for spec in peer_specs(opts):
        argv = peer_argv(opts, spec, ("127.0.0.1", 1), ("127.0.0.1", 2), [])
        assert argv[argv.index("--admin-token-file") + 1] == str(path)
        assert first not in " ".join(argv)  # the token itself is never on a command line


def test_with_discover_peers_get_no_seeds(tmp_path: Path):
    opts = LaunchOptions(peers=2, data_dir=tmp_path, discover=True)
    for spec in peer_specs(opts):
        meant = peer_options(opts, spec, spec.bind, spec.http, [("127.0.0.1", 7000)])
        assert meant.discover and meant.join == []


def test_netns_is_refused_with_the_reason_when_not_root(monkeypatch, capsys, tmp_path: Path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exc:
        main(["launch", "--netns", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--netns" in err and "root" in err
    assert not (tmp_path / "cluster.json").exists()


async def test_the_control_socket_answers_malformed_requests_with_an_error_and_changes_nothing(tmp_path: Path):
    from peer.tools.launcher import Launcher

    launcher = Launcher(LaunchOptions(peers=1, data_dir=tmp_path), say=lambda text: None)
    for raw in (b"", b"not json\n", b"[1, 2]\n", b'{"op": "restart"}\n', b'{"op": "stop", "peer": "mm-1"}\n',
                b'{"op": "restart", "peer": 7}\n', b"{" * 5000, b"[" * 3000 + b"]" * 3000, b'{"op": "restart", "peer": "mm-9"}\n'):
        answer = await launcher._control_answer(raw)
        assert answer["ok"] is False and answer["error"], raw[:40]
    assert launcher.children == []  # nothing was started or stopped


def test_every_launched_peer_is_given_the_clusters_key_file_and_never_a_key(tmp_path: Path):
    opts = from_args(LaunchOptions, build_parser().parse_args(["launch", "--data-dir", str(tmp_path)]))
    for spec in peer_specs(opts):
        argv = peer_argv(opts, spec, ("127.0.0.1", 1), ("127.0.0.1", 2), [])
        assert argv[argv.index("--key-file") + 1] == str(tmp_path.resolve() / "cluster.key")
        assert "--insecure" not in argv


def test_launch_insecure_passes_insecure_and_no_key_file(tmp_path: Path):
    opts = from_args(LaunchOptions, build_parser().parse_args(["launch", "--data-dir", str(tmp_path), "--insecure"]))
    for spec in peer_specs(opts):
        argv = peer_argv(opts, spec, ("127.0.0.1", 1), ("127.0.0.1", 2), [])
        assert "--insecure" in argv and "--key-file" not in argv
        assert from_args(PeerOptions, build_parser().parse_args(argv[3:])).insecure


def test_the_cluster_key_is_written_once_with_mode_0600(tmp_path: Path):
    from gossip.keyring import Keyring
    from peer.tools.launcher import ensure_cluster_key

    path = ensure_cluster_key(tmp_path)
    assert path == tmp_path.resolve() / "cluster.key" and path.stat().st_mode & 0o777 == 0o600
    first = Keyring.load(path).ids()
    assert ensure_cluster_key(tmp_path) == path and Keyring.load(path).ids() == first  # a relaunch keeps it
