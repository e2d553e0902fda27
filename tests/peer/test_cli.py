"""The `murmur` command line (`peer/cli.py`, `peer/commands/`): usage errors, the flags `peer`
and `launch` share, and `members`."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
from functools import partial

import pytest
import trio

from peer.cli import build_parser, main
from peer.commands.members import format_serf
from peer.http.endpoints import PeerHandle, create_app, serve_http
from peer.options import PeerOptions, flag_of, from_args, groups_of
from peer.tools.cluster_file import write_cluster
from peer.tools.launcher import LaunchOptions, peer_argv, peer_specs

from .fakes import FakeNode


def free_port_url() -> str:
    """A URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def start_fake_peer(nursery, name="mm-1") -> str:
    handle = PeerHandle(role="mm", profile="local", node=FakeNode(name), clock_offset=1e9)
    shutdown = trio.Event()
    return await nursery.start(serve_http, create_app(handle), ("127.0.0.1", 0), shutdown)


async def run_cli(*argv: str) -> int:
    """`main` in a worker thread, so the trio loop keeps serving the fake peer meanwhile."""
    return await trio.to_thread.run_sync(partial(main, list(argv)))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["peer", "--role", "mm", "--bind", "nonsense"], "expected HOST:PORT"),
        (["peer", "--role", "mm", "--bind", "127.0.0.1:99999"], "port must be"),
        (["peer", "--role", "mm", "--bind", "0.0.0.0:7946"], "cannot be advertised"),
        (["peer", "--role", "mm", "--http", "localhost"], "expected HOST:PORT"),
        (["peer", "--role", "mm", "--join", "127.0.0.1:1,oops"], "expected HOST:PORT"),
        (["peer", "--role", "trader"], "invalid choice"),
        (["peer", "--role", "mm", "--name", "bad name!"], "invalid name"),
        (["peer"], "--role"),
        (["peer", "--role", "mm", "--profile", "wan"], "unknown profile"),
        (["peer", "--role", "mm", "--set", "nope=1"], "unknown gossip parameter"),
        (["peer", "--role", "mm", "--set", "probe_interval=fast"], "takes a float"),
        (["peer", "--role", "mm", "--set", "probe_interval"], "expected KEY=VALUE"),
        (["peer", "--role", "mm", "--lease", "0.2"], "too short for a market maker"),
        (["check", "no-such-dir"], "is not a directory"),
        (["launch", "--peers", "0"], "at least 1"),
        (["launch", "--peers", "many"], "whole number"),
        (["launch", "--base-port", "70000"], "port must be"),
        (["launch", "--base-port", "65530"], "no room"),
        (["launch", "--startup-timeout", "0"], "positive number of seconds"),
        (["launch", "--flow-rate", "-1"], ">= 0"),
        (["launch", "--half-spread", "0"], "at least 1"),
        (["members", "--peer", "http://x", "--cluster", "c.json"], "not allowed with"),
        (["top", "--interval", "0"], "--interval"),
        (["dance"], "invalid choice"),
    ],
)
def test_bad_flags_are_one_clear_line_and_exit_code_2(
    argv, expected, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("murmur")
    assert "error:" in err
    assert expected in err


def test_members_without_a_peer_or_cluster_file_says_what_to_pass(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["members"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--peer URL" in err and "--cluster FILE" in err


def test_members_with_an_unreadable_cluster_file_is_a_usage_error(capsys, tmp_path):
    bad = tmp_path / "cluster.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        main(["members", "--cluster", str(bad)])
    assert exc.value.code == 2
    assert "unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["peer", "launch", "members", "top"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"murmur {command}" in out
    assert "examples:" in out


GROUP_NAMES = {cls: name for name, cls in groups_of(PeerOptions).items()}
ROLE_FIELDS = [(cls, f) for cls in GROUP_NAMES for f in dataclasses.fields(cls)]
# A value other than the default for every role option, as typed and as parsed. A new option
# fails the tests below until it has one here.
SAMPLES = {
    "symbols": ("AAPL,MSFT", ["AAPL", "MSFT"]),
    "market_seed": ("9", 9),
    "flow_rate": ("7.5", 7.5),
    "quote_ttl": ("40", 40.0),
    "lease": ("3", 3.0),
    "exposure_limit": ("50", 50),
    "half_spread": ("4", 4),
    "quote_size": ("6", 6),
}


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(("group", "field"), ROLE_FIELDS, ids=lambda x: getattr(x, "name", ""))
def test_every_role_option_is_a_flag_of_peer_and_of_launch(group, field, capsys):
    flag = "--" + field.name.replace("_", "-")
    for command in ("peer", "launch"):
        assert f"{flag} " in help_of(command, capsys), f"{flag} not in murmur {command} --help"


def test_every_role_option_has_a_sample_value_for_these_tests():
    assert set(SAMPLES) == {f.name for _, f in ROLE_FIELDS}


def test_a_value_given_to_launch_reaches_the_command_line_of_each_peer_that_reads_it():
    argv = ["launch", "--cluster", "desk-b", "--profile", "lan", "--set", "probe_interval=0.5"]
    for name, (text, _) in SAMPLES.items():
        argv += ["--" + name.replace("_", "-"), text]
    opts = from_args(LaunchOptions, parse(*argv))
    seen = set()
    for spec in peer_specs(opts):
        command = peer_argv(opts, spec, spec.bind, spec.http, [("127.0.0.1", 9)])
        assert command[1:4] == ["-m", "peer.cli", "peer"]
        peer = from_args(PeerOptions, parse(*command[3:]))
        assert (peer.role, peer.cluster, peer.profile) == (spec.role, "desk-b", "lan")
        assert peer.overrides == {"probe_interval": 0.5} and not peer.log_stderr
        for group, field in ROLE_FIELDS:
            flag = flag_of(field)
            got = getattr(getattr(peer, GROUP_NAMES[group]), field.name)
            if spec.role == group.ROLE or spec.role in flag.also:
                assert got == SAMPLES[field.name][1], (spec.name, field.name)
                seen.add(field.name)
            else:  # a peer is given only what its role reads
                assert flag.name(field) not in command, (spec.name, field.name)
    assert seen == set(SAMPLES)


def test_flow_rate_none_for_a_peer_and_20_for_a_launch_and_both_helps_say_why(capsys):
    assert from_args(PeerOptions, parse("peer", "--role", "exchange")).exchange.flow_rate == 0
    assert from_args(LaunchOptions, parse("launch")).exchange.flow_rate == 20
    peer, launch = help_of("peer", capsys), help_of("launch", capsys)
    building_block = (
        "because a peer is a building block: orders come from clients such as `murmur flow`"
    )
    demo = "so that the demo cluster trades at once and `murmur top` shows fills"
    assert f"(default: 0 {building_block}; `murmur launch` uses 20 {demo})" in peer
    assert f"(default: 20 {demo}; `murmur peer` uses 0 {building_block})" in launch


def test_flags_left_out_give_the_dataclasses_defaults():
    assert from_args(PeerOptions, parse("peer", "--role", "mm")) == PeerOptions(role="mm")
    assert from_args(LaunchOptions, parse("launch")) == LaunchOptions()


def test_no_command_prints_the_overview(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("peer", "launch", "members", "top"):
        assert command in out


async def test_members_json_prints_the_peers_rows(capsys):
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await start_fake_peer(nursery)
            code = await run_cli("members", "--peer", url, "--json")
            nursery.cancel_scope.cancel()
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["exchange", "ledger", "mm-1", "mm-2", "mm-3", "mm-4"]
    assert {r["state"] for r in rows} == {"alive", "suspect", "dead", "left"}
    assert set(rows[0]) >= {"name", "role", "addr", "state", "incarnation", "http", "changed_at"}


async def test_members_prints_serf_style_columns(capsys):
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await start_fake_peer(nursery)
            code = await run_cli("members", "--peer", url.removeprefix("http://"))
            nursery.cancel_scope.cancel()
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[3].split() == ["mm-2", "127.0.0.1:7004", "mm", "suspect", "2"]
    assert lines[4].split() == ["mm-3", "127.0.0.1:7005", "mm", "dead", "1"]
    # Columns line up: every address starts at the same offset.
    assert len({line.index("127.0.0.1") for line in lines}) == 1


async def test_members_with_a_cluster_file_asks_the_first_peer_that_answers(capsys, tmp_path):
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await start_fake_peer(nursery, name="mm-2")
            cluster = tmp_path / "cluster.json"
            write_cluster(
                cluster,
                {
                    "peers": [
                        {"name": "mm-1", "http": free_port_url()},
                        {"name": "mm-2", "http": url},
                    ]
                },
            )
            code = await run_cli("members", "--cluster", str(cluster), "--json")
            nursery.cancel_scope.cancel()
    assert code == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 6
    assert f"as seen by {url}" in captured.err


async def test_members_exits_1_with_the_reason_when_no_peer_answers(capsys):
    url = free_port_url()
    with trio.fail_after(15):
        code = await run_cli("members", "--peer", url)
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert url in err and "connection refused" in err


def test_serf_table_of_no_rows_is_empty():
    assert format_serf([]) == ""


async def test_the_real_entry_point_reports_bad_flags_with_exit_code_2():
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "peer.cli", "peer", "--role", "mm", "--bind", "localhost"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.strip().splitlines() == [
        "murmur peer: error: argument --bind: expected HOST:PORT (e.g. 127.0.0.1:7946), "
        "got 'localhost' (see 'murmur peer --help')"
    ]


def test_serf_table_marks_a_market_maker_that_stepped_aside():
    rows = [{"name": "mm-1", "addr": "127.0.0.1:7001", "role": "mm", "state": "alive", "incarnation": 4,
             "meta": {"role": "mm", "aside": "exchange-unreachable"}},
            {"name": "mm-2", "addr": "127.0.0.1:7002", "role": "mm", "state": "alive", "incarnation": 1,
             "meta": {"role": "mm"}}]
    lines = format_serf(rows).splitlines()
    assert lines[0].split() == ["mm-1", "127.0.0.1:7001", "mm", "alive,aside", "4"]
    assert lines[1].split() == ["mm-2", "127.0.0.1:7002", "mm", "alive", "1"]
