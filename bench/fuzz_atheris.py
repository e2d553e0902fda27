"""Coverage-guided fuzzing (atheris, libFuzzer) of what reads another process's bytes.

Method: each target runs in its own process under atheris for `--seconds`, its modules
instrumented for coverage, its corpus seeded with valid inputs (a gossip packet and a push-pull
state, pipelined HTTP requests, order and fill bodies, a sealed frame) so that mutation starts
from inputs that get deep. A target fails (libFuzzer writes the input as `crash-*` under
`--artifacts`) when its code raises anything but its own error type, or uses more than
`--rss-mb` of memory. The targets:

- `gossip`: `gossip.wire.decode_packet` and `decode_state` (CBOR from any UDP packet or push-pull
  stream); only `WireError`.
- `http`: `peer.http.wire.RequestReader` fed the bytes in two pieces (the cut from the first byte),
  every request drained; only `BadRequest`. Bounded: what it buffers stays within its limits.
- `json`: `peer.http.inputs` (the strict decoder, `json_object`) with the exchange's order fields,
  then the exchange core runs the order; the ledger's parsers (`parse_fills`, `parse_request`,
  `parse_apply_fill`) on the same body; only the layer's `FieldError`s.
- `seal`: `gossip.seal.open_sealed` of any frame under a known key, with a replay guard; only
  `SealError`.

Run: .venv/bin/python bench/fuzz_atheris.py [--seconds 60] [--targets gossip,http,json,seal]
Prints, per target, executions, seconds, libFuzzer's coverage (`cov`: edges, `ft`: features),
corpus size and crashes; writes the table to bench/results/fuzz_atheris-<date>.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TARGETS = ("gossip", "http", "json", "seal")
MAX_LEN = 4096


# --- the targets (each runs in its own process, with its modules instrumented) -------------------


def gossip_target():
    from gossip import wire

    def one(data: bytes) -> None:
        for decode in (wire.decode_packet, wire.decode_state):
            try:
                decode(data, "murmur")
            except wire.WireError:
                pass

    return one


def gossip_seeds() -> list[bytes]:
    from gossip import wire
    from gossip.types import MemberState

    ping = wire.encode_message(wire.Ping(seq=7, target="mm-1", source="mm-2"))
    dead = wire.encode_message(wire.Dead(name="mm-1", incarnation=3, source="mm-2"))
    alive = wire.encode_message(wire.Alive(name="mm-3", incarnation=1, addr=("10.0.0.3", 7946),
                                           meta={"role": "mm", "http": "http://10.0.0.3:8080", "version": 1}))
    state = wire.encode_state([wire.StateEntry("mm-1", 4, ("10.0.0.1", 7946), MemberState.ALIVE,
                                               {"role": "exchange"})], "murmur")
    return [wire.encode_packet([ping, dead, alive], "murmur"), state]


def http_target():
    from peer.http.wire import MAX_BODY, MAX_HEAD, BadRequest, RequestReader

    def one(data: bytes) -> None:
        reader = RequestReader()
        cut = data[0] if data else 0
        try:
            for piece in (data[1:1 + cut], data[1 + cut:]):
                reader.feed(piece)
                while (req := reader.next()) is not None:
                    assert len(req.body) <= MAX_BODY and len(req.raw_path) <= MAX_HEAD
        except BadRequest:
            pass

    return one


def http_seeds() -> list[bytes]:
    body = json.dumps({"order_id": "o1", "symbol": "AAPL", "side": "buy", "quantity": 2}).encode()
    post = (b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    get = b"GET /fills?after=3&wait=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    expect = b"PUT /quotes/A HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
    return [bytes([len(post) // 2]) + post + get, bytes([3]) + expect, bytes([0]) + get + get]


ORDER_FIELDS = ("order_id", "symbol", "side", "quantity", "type", "limit_price")


def json_target():
    from book.exchange import CommandError, ExchangeCore
    from ledger.exposure import InvalidInput, parse_request
    from peer.exchange.api import parse_body
    from peer.http import inputs
    from peer.ledger.api import parse_apply_fill, parse_fills

    def fresh() -> ExchangeCore:
        core = ExchangeCore(["AAPL", "MSFT"])
        core.claim(now=1.0, symbol="AAPL", holder="mm-1", epoch=1)
        core.put_quote(now=1.0, symbol="AAPL", holder="mm-1", epoch=1, seq=1, quote_id="q0", bid_price=99,
                       bid_quantity=5, ask_price=101, ask_quantity=5)
        return core

    core = fresh()
    count = [0]

    def one(data: bytes) -> None:
        nonlocal core
        count[0] += 1
        if count[0] % 1000 == 0:
            core = fresh()  # memory stays bounded: a fresh book now and then
        try:
            args = parse_body(data, ORDER_FIELDS, ORDER_FIELDS[:4])
            answer = core.execute("submit_order", args, 2.0)
            assert isinstance(answer["accepted"], bool)
        except CommandError:
            pass
        try:
            body = inputs.json_body(data, max_bytes=64 * 1024, error=InvalidInput)
        except InvalidInput:
            return
        for parse in (parse_fills, parse_request, lambda b: parse_apply_fill("R-1", b)):
            try:
                parse(body)
            except InvalidInput:
                pass

    return one


def json_seeds() -> list[bytes]:
    fill = {"fill_id": "F-7", "seq": 7, "order_id": "o7", "symbol": "AAPL", "side": "buy", "quantity": 2,
            "price": 10_000, "quote_id": "q1", "epoch": 1, "holder": "mm-1", "reservation_id": "r1",
            "created_at": 1_700_000_000.5}
    return [json.dumps(x).encode() for x in (
        {"order_id": "o1", "symbol": "AAPL", "side": "buy", "quantity": 2, "type": "limit", "limit_price": 10_010},
        {"order_id": "o2", "symbol": "MSFT", "side": "sell", "quantity": 5, "type": "market"},
        fill, {"fills": [fill, fill]},
        {"quote_id": "q9", "holder": "mm-1", "symbol": "AAPL", "bid_quantity": 10, "ask_quantity": 10, "ttl": 30},
        {"fill_id": "F-x", "side": "buy", "quantity": 1},
    )]


SEAL_KEY = bytes(range(32))


def seal_target():
    from gossip import seal
    from gossip.keyring import Keyring

    ring = Keyring([SEAL_KEY])
    guard = seal.ReplayGuard()
    now = [1_700_000_000.0]

    def one(data: bytes) -> None:
        now[0] += 0.001
        for kind in (b"p", b"q"):
            try:
                opened = seal.open_sealed(ring, "murmur", kind, data, now[0], guard)
                assert isinstance(opened.payload, bytes)
            except seal.SealError:
                pass

    return one


def seal_seeds() -> list[bytes]:
    from gossip import seal
    from gossip.keyring import Keyring

    ring = Keyring([SEAL_KEY])
    return [seal.seal(ring, "murmur", b"p", b"\x83\x01\x66murmur\x80", 1_700_000_000.0, bytes(12)),
            seal.seal(ring, "murmur", b"q", b"x" * 40, 1_700_000_000.0, bytes(range(12)))]


def run_target(name: str, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["gossip", "peer", "book", "ledger", "cbor2", "json"]):
        one = globals()[f"{name}_target"]()

    def test_one_input(data: bytes) -> None:
        one(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


# --- the driver ----------------------------------------------------------------------------------


def parse_run(stderr: str) -> dict:
    """The last libFuzzer status line and its `Done` line: executions, coverage, corpus."""
    out: dict = {}
    for line in stderr.splitlines():
        m = re.match(r"#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", line)
        if m:
            out.update(execs=int(m[1]), cov=int(m[3]), ft=int(m[4]), corpus=int(m[5]), corpus_size=m[6])
        m = re.match(r"Done (\d+) runs in (\d+) second", line)
        if m:
            out.update(execs=int(m[1]), seconds=int(m[2]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="per target")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--rss-mb", type=int, default=1024)
    ap.add_argument("--artifacts", type=Path, default=Path("bench/results/fuzz-artifacts"))
    ap.add_argument("--target", help=argparse.SUPPRESS)  # a child process: run this one target
    args, rest = ap.parse_known_args()
    if args.target:
        run_target(args.target, rest)
        return
    args.artifacts.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}, {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"load {os.getloadavg()[0]:.2f}; {args.seconds} s a target, rss cap {args.rss_mb} MB", flush=True)
    rows = []
    for name in args.targets.split(","):
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
            for i, seed in enumerate(globals()[f"{name}_seeds"]()):
                Path(corpus, f"seed-{i}").write_bytes(seed)
            t0 = time.monotonic()
            proc = subprocess.run(
                [sys.executable, str(HERE), "--target", name, f"-max_total_time={args.seconds}",
                 f"-rss_limit_mb={args.rss_mb}", f"-max_len={MAX_LEN}", "-print_final_stats=1",
                 f"-artifact_prefix={args.artifacts}/{name}-", corpus],
                capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            wall = time.monotonic() - t0
        crashes = sorted(p.name for p in args.artifacts.glob(f"{name}-*"))
        row = {"target": name, "exit": proc.returncode, "wall_s": round(wall, 1), **parse_run(proc.stderr),
               "artifacts": crashes}
        if proc.returncode != 0:
            row["tail"] = proc.stderr.strip().splitlines()[-25:]
        rows.append(row)
        print(f"{name:7s} exit {proc.returncode:3d}  {row.get('execs', 0):>9,} execs in {row.get('seconds', wall):>4} s"
              f"  cov {row.get('cov', 0):5d}  ft {row.get('ft', 0):6d}  corpus {row.get('corpus', 0):5d}"
              f"  artifacts {len(crashes)}", flush=True)
        if proc.returncode != 0:
            print("\n".join(row["tail"]), flush=True)
    stamp = datetime.date.today().isoformat()
    out = Path("bench/results") / f"fuzz_atheris-{stamp}.txt"
    header = (f"# bench/fuzz_atheris.py --seconds {args.seconds} on {platform.node()} "
              f"({os.cpu_count()} cores, Python {platform.python_version()})\n")
    out.write_text(header + "\n".join(json.dumps(r) for r in rows) + "\n")
    print(f"written to {out}")
    print(json.dumps({"fuzz_atheris": rows}))


if __name__ == "__main__":
    main()
