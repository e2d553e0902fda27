"""One kinship node in its own process, with a murmur-like `GET /members`, for the benchmarks.

What it is for: `detection_real.py` runs the `kinship` library (PyPI; a Rust SWIM core with
Lifeguard) side by side with murmur and measures both the same way, by polling every node's
`/members`. This script starts one node with `kinship.Config.local()` (probe 200 ms, probe
timeout 100 ms; `--profile lan` for `Config.lan()`) bound to 127.0.0.1 on a free port (or
`--bind`), with `--key-file` encrypting its gossip under a murmur key file's primary key
(kinship's own keyring; without it kinship runs plaintext on loopback), joins `--seed`, writes
`<dir>/node.json` (pid, gossip address, HTTP URL) once it is up, serves

    GET /health   -> {"status": "ok", "name": ...}
    GET /members  -> [{"name", "state", "incarnation", "addr"}, ...]   (dead tombstones included)

on a free port, and logs every membership event as a JSON line to `<dir>/events.log`
({"t": wall time, "event": "member", "node", "new", "kind", "incarnation"}). On SIGTERM or
SIGINT it leaves and closes. The protocol runs on kinship's own Rust thread; the HTTP server is
the stdlib's threaded one. `--set key=value` overrides a `Config` field (numbers parsed).

Run by hand: python bench/kinship_node.py --name a --dir /tmp/k/a [--seed 127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kinship
from kinship.blocking import Cluster

STATES = {
    kinship.State.ALIVE: "alive",
    kinship.State.SUSPECT: "suspect",
    kinship.State.DEAD: "dead",
    kinship.State.LEFT: "left",
}
EVENT_STATE = {
    "MemberJoined": "alive",
    "MemberRecovered": "alive",
    "MemberSuspect": "suspect",
    "MemberDead": "dead",
    "MemberLeft": "left",
}


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--role", default="mm")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--seed", default=None, help="HOST:PORT of a node to join")
    ap.add_argument("--bind", default="127.0.0.1:0", help="HOST:PORT to bind (default: a free port)")
    ap.add_argument("--profile", default="local", choices=["local", "lan"], help="kinship.Config preset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--key-file", type=Path, default=None,
                    help="a murmur key file: kinship encrypts its gossip with its primary key")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    preset = kinship.Config.lan if args.profile == "lan" else kinship.Config.local
    if args.key_file is not None:
        from gossip.keyring import Keyring

        overrides["keys"] = [Keyring.load(args.key_file).primary]
    elif args.profile == "lan":
        overrides.setdefault("insecure_plaintext", True)  # a plaintext run, said by name
    cfg = preset(
        name=args.name,
        bind=args.bind,
        cluster="murmur-bench",
        seeds=[args.seed] if args.seed else [],
        meta={"role": args.role},
        **overrides,
    )
    cluster = Cluster(cfg).start(timeout=30)
    known: set[str] = {args.name}
    lock = threading.Lock()
    stopping = threading.Event()
    log = open(args.dir / "events.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def rows() -> list[dict]:
        with lock:
            for m in cluster.members():
                known.add(m.name)
            names = sorted(known)
        out = []
        for name in names:
            m = cluster.member(name)
            if m is None:
                out.append({"name": name, "state": "forgotten", "incarnation": None, "addr": None})
            else:
                out.append(
                    {
                        "name": m.name,
                        "state": STATES[m.state],
                        "incarnation": m.incarnation,
                        "addr": m.addr,
                        "role": m.meta.get("role"),
                    }
                )
        return out

    def watch_events() -> None:
        try:
            for ev in cluster.events(timeout=0.5):
                if stopping.is_set():
                    return
                if ev is None:
                    continue
                kind = type(ev).__name__
                member = getattr(ev, "member", None)
                if member is None:
                    log.write(json.dumps({"t": time.time(), "event": kind}) + "\n")
                    continue
                with lock:
                    known.add(member.name)
                rec = {
                    "t": time.time(),
                    "event": "member",
                    "peer": args.name,
                    "node": member.name,
                    "new": EVENT_STATE.get(kind, STATES[member.state]),
                    "kind": kind,
                    "incarnation": member.incarnation,
                }
                log.write(json.dumps(rec) + "\n")
        except Exception as exc:  # the node closed; nothing more to log
            log.write(
                json.dumps({"t": time.time(), "event": "events_ended", "why": repr(exc)}) + "\n"
            )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/members":
                body = json.dumps(rows()).encode()
                code = 200
            elif self.path == "/health":
                body = json.dumps({"status": "ok", "name": args.name}).encode()
                code = 200
            else:
                body = b'{"error": "no such endpoint"}'
                code = 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=watch_events, daemon=True).start()

    info = {
        "name": args.name,
        "pid": os.getpid(),
        "gossip": cluster.local.addr,
        "http": f"http://127.0.0.1:{server.server_address[1]}",
        "kinship": getattr(kinship, "__version__", "?"),
        "config": {
            k: getattr(cfg, k)
            for k in (
                "probe_interval",
                "probe_timeout",
                "suspicion_mult",
                "suspicion_max_mult",
                "gossip_interval",
                "indirect_checks",
                "awareness_max",
                "push_pull_interval",
            )
        },
    }
    tmp = args.dir / "node.json.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, args.dir / "node.json")

    def on_signal(signum, frame) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.is_set():
        stopping.wait(0.5)
    try:
        cluster.close()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
