"""The operator's side of fault injection: cut, degrade, heal, freeze, thaw, kill and restart peers.

What it is for: the commands `murmur partition/heal/freeze/thaw/kill/restart` and the scenario
tests. A `Nemesis` finds a launched cluster through its `cluster.json`, reads the admin token
that `murmur launch` wrote beside it, and acts: link rules go to each peer's `/admin/links`
(every peer of a cut link holds its rule, so both ends drop), signals go to the peer's pid, a
restart is asked of the launcher (which owns the processes) over its control socket. In a
`--netns` cluster a cut also happens in the kernel (every peer of each group but the last has
its veth set down). Every action is appended to `<data-dir>/faults.jsonl` with its time, and each method
returns the lines that say what it did.

What it must never do: act on a process that is not the cluster's peer (a pid is checked
against the peer's data directory before it is signalled), or hide a peer it could not reach:
those are reported, and the other ends of its links still hold their rules.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from peer.faults.journal import append_fault, fault_intervals, read_faults
from peer.faults.plan import Partition, PlanError, partition_from_record, rules_for
from peer.tools.cluster_file import FILE_NAME, ClusterFileError, read_cluster
from peer.tools.processes import pid_alive

TOKEN_FILE = "admin.token"
# A frozen peer accepts a connection and never answers: do not wait long for it.
ADMIN_TIMEOUT = 1.0
# A restart waits for the launcher to stop the old process and see the new one healthy.
RESTART_TIMEOUT = 60.0
KILL_WAIT = 5.0
# The launcher answers one short JSON line; more than this is not an answer.
MAX_ANSWER = 1 << 20


class NemesisError(Exception):
    """The cluster cannot be acted on (no cluster file, no token, no such peer, ...)."""


@dataclass
class Outcome:
    """What one action did, line by line, and whether every part of it took."""

    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, text: str) -> None:
        self.lines.append(text)

    def fail(self, text: str) -> None:
        self.ok = False
        self.lines.append(text)


class Nemesis:
    def __init__(self, cluster_path: Path) -> None:
        self.cluster_path = Path(cluster_path)
        self.data_dir = self.cluster_path.parent
        try:
            self.cluster = read_cluster(self.cluster_path)
        except ClusterFileError as exc:
            raise NemesisError(str(exc)) from None
        self.peers: list[dict[str, Any]] = [p for p in self.cluster["peers"] if isinstance(p, dict)]

    @classmethod
    def find(cls, cluster: Path | None, data_dir: Path | None) -> Nemesis:
        if cluster is not None:
            return cls(cluster)
        return cls(Path(data_dir or "data") / FILE_NAME)

    # -- the cluster --------------------------------------------------------------------------

    def reload(self) -> None:
        self.__init__(self.cluster_path)  # type: ignore[misc]

    def names(self) -> list[str]:
        return [p["name"] for p in self.peers]

    def peer(self, name: str) -> dict[str, Any]:
        for p in self.peers:
            if p["name"] == name:
                return p
        raise NemesisError(f"no peer named {name!r} in {self.cluster_path} (peers: {', '.join(self.names())})")

    def token(self) -> str:
        path = self.data_dir / TOKEN_FILE
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise NemesisError(f"cannot read the admin token {path}: {exc.strerror or exc} "
                               "(`murmur launch` writes it)") from None

    def running(self, name: str) -> bool:
        p = self.peer(name)
        return _is_peer_process(p.get("pid"), p.get("data_dir"))

    # -- links ---------------------------------------------------------------------------------

    def partition(self, partition: Partition, *, for_s: float | None = None, now: float | None = None) -> Outcome:
        now = time.time() if now is None else now
        until = None if for_s is None else now + for_s
        rule_id = f"p-{int(now * 1000)}"
        rules = rules_for(partition, self.peers, rule_id=rule_id, until=until)
        out = Outcome()
        # Rules first: a peer cut in the kernel can no longer be told anything.
        self._push_rules(rules, out)
        kernel = self._kernel_cut(partition, out)
        append_fault(self.data_dir, {
            "fault": "partition", "id": rule_id, "groups": partition.groups, "one_way": partition.one_way,
            **partition.effect.to_json(), "for_s": for_s, "until": until, "kernel": kernel,
            "summary": partition.summary,
        }, now=now)
        what = "cut" if partition.effect.cut else "degraded"
        out.lines.insert(0, f"{what} {partition.summary}" + (f" for {for_s:g} s" if for_s else "")
                         + (" (in the kernel too)" if kernel else ""))
        return out

    def heal(self, *, now: float | None = None) -> Outcome:
        now = time.time() if now is None else now
        out = Outcome()
        # Thawed first: a frozen peer could not take its DELETE.
        for name in self.frozen(now):
            thawed = self.thaw(name, now=now)
            out.lines += thawed.lines
            out.ok = out.ok and thawed.ok
        self._kernel_restore(out)
        token = self.token()
        with httpx.Client(timeout=ADMIN_TIMEOUT) as client:
            for p in self.peers:
                if not self.running(p["name"]):
                    out.say(f"{p['name']}: not running, nothing to heal")
                    continue
                try:
                    r = client.delete(f"{p['http']}/admin/links", headers=_auth(token))
                    r.raise_for_status()
                    out.say(f"{p['name']}: {r.json().get('removed', 0)} rule(s) removed")
                except (httpx.HTTPError, ValueError) as exc:
                    out.fail(f"{p['name']}: did not answer ({_brief(exc)}); its rules stay until it does")
        append_fault(self.data_dir, {"fault": "heal"}, now=now)
        out.lines.insert(0, "healed every link")
        return out

    def active_partitions(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        records, _problems = read_faults(self.data_dir)
        return [iv.record for iv in fault_intervals(records, now)
                if iv.kind == "partition" and (iv.end is None or iv.end > now)]

    def _push_rules(self, rules: dict[str, dict[str, Any]], out: Outcome) -> None:
        token = self.token()
        with httpx.Client(timeout=ADMIN_TIMEOUT) as client:
            for name, rule in rules.items():
                p = self.peer(name)
                if not self.running(name):
                    out.say(f"{name}: not running; it gets its rule when restarted")
                    continue
                try:
                    r = client.post(f"{p['http']}/admin/links", json={"rule": rule}, headers=_auth(token))
                    r.raise_for_status()
                    out.say(f"{name}: drops {rule['direction']} links with {len(rule['peers'])} peer(s)")
                except (httpx.HTTPError, ValueError) as exc:
                    out.fail(f"{name}: did not take its rule ({_brief(exc)}); the other ends still hold theirs")

    def _kernel_cut(self, partition: Partition, out: Outcome) -> bool:
        lan = self._lan()
        if lan is None:
            return False
        if partition.one_way or not partition.effect.cut:
            out.say("kernel: one-way cuts and degraded links stay in the transport filter")
            return False
        # A port set down cuts every link of its peer, so the kernel can isolate peers, not draw
        # groups: each peer of every group but the last is cut off the LAN; the transport filter
        # holds the exact groups.
        cut = [name for group in partition.groups[:-1] for name in group]
        for name in cut:
            lan.cut(name)
        out.say(f"kernel: {', '.join(cut)} cut off the LAN (veth down)")
        return True

    def _kernel_restore(self, out: Outcome) -> None:
        lan = self._lan()
        if lan is not None:
            restored = [name for name in lan.names if lan.is_cut(name)]
            for name in restored:
                lan.restore(name)
            if restored:
                out.say(f"kernel: {', '.join(restored)} back on the LAN")

    def _lan(self):
        data = self.cluster.get("netns")
        if not data:
            return None
        from peer.tools.netns import Lan

        return Lan.from_json(data)

    # -- processes -----------------------------------------------------------------------------

    def frozen(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        records, _problems = read_faults(self.data_dir)
        return sorted({iv.record["peer"] for iv in fault_intervals(records, now)
                       if iv.kind == "freeze" and iv.end is None})

    def freeze(self, name: str, *, now: float | None = None) -> Outcome:
        return self._signal(name, signal.SIGSTOP, "freeze", "frozen (SIGSTOP)", now)

    def thaw(self, name: str, *, now: float | None = None) -> Outcome:
        return self._signal(name, signal.SIGCONT, "thaw", "thawed (SIGCONT)", now)

    def kill(self, name: str, *, now: float | None = None) -> Outcome:
        out = self._signal(name, signal.SIGKILL, "kill", "killed (SIGKILL)", now)
        if out.ok:
            pid = self.peer(name)["pid"]
            deadline = time.monotonic() + KILL_WAIT
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        return out

    def _signal(self, name: str, signum: int, fault: str, done: str, now: float | None) -> Outcome:
        p = self.peer(name)
        out = Outcome()
        if not self.running(name):
            out.fail(f"{name}: not running (pid {p.get('pid')}); nothing to {fault}")
            return out
        os.kill(p["pid"], signum)
        append_fault(self.data_dir, {"fault": fault, "peer": name, "pid": p["pid"]},
                     now=time.time() if now is None else now)
        out.say(f"{name} (pid {p['pid']}) {done}")
        return out

    def restart(self, name: str, *, now: float | None = None) -> Outcome:
        """Ask the launcher to start the peer again (stopping it first if it runs), then give it
        the link rules of the partitions still active."""
        self.peer(name)
        control = self.cluster.get("control")
        if not control or not self.cluster.get("launcher_pid") or not pid_alive(self.cluster["launcher_pid"]):
            raise NemesisError(f"no running launcher for {self.cluster_path}: `murmur restart` asks the "
                               "launcher that owns the peers; start the cluster with `murmur launch`")
        answer = _ask_launcher(control, {"op": "restart", "peer": name})
        out = Outcome()
        if not answer.get("ok"):
            out.fail(f"{name}: the launcher could not restart it: {answer.get('error')}")
            return out
        self.reload()
        out.say(f"{name} restarted (pid {answer.get('pid')}, up in {answer.get('took_s')} s)")
        now = time.time() if now is None else now
        for record in self.active_partitions(now):
            partition = partition_from_record(record)
            try:
                rules = rules_for(partition, self.peers, rule_id=record["id"], until=record.get("until"))
            except PlanError:
                continue
            if name in rules:
                self._push_rules({name: rules[name]}, out)
        append_fault(self.data_dir, {"fault": "restart", "peer": name, "pid": answer.get("pid")}, now=now)
        return out


def _ask_launcher(path: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(RESTART_TIMEOUT)
            s.connect(path)
            s.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_ANSWER:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise NemesisError(f"the launcher's control socket {path} did not answer: {exc}") from None
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):  # deep nesting raises the latter
        raise NemesisError(f"the launcher answered {data[:200]!r}, not JSON") from None
    if not isinstance(answer, dict):
        raise NemesisError(f"the launcher answered {answer!r}, not an object")
    return answer


def _is_peer_process(pid: Any, data_dir: Any) -> bool:
    """The pid is alive and is the peer of that data directory (not a recycled pid)."""
    if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
        return False
    if not data_dir:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): the pid is all there is
    return os.fsencode(str(data_dir)) in cmdline


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:120]}"
