"""Start a whole cluster on 127.0.0.1, one OS process a peer, and stop it without leftovers.

What it is for: `murmur launch`. It starts N market makers (`mm-1`..`mm-N`), an `exchange` and a
`ledger`, each `python -m peer.cli peer ...` with its own data directory `<data-dir>/<name>`;
the first peer is the seed the others join through. Once every peer answers `/health` it
writes `<data-dir>/cluster.json`. On SIGINT/SIGTERM/SIGHUP it sends SIGTERM to every peer (each
leaves gracefully), waits, and SIGKILLs whatever is left. Children also get SIGTERM from the
kernel if the launcher dies (Linux `PR_SET_PDEATHSIG`).

What it must never do: leave a process behind, or act as a coordinator: once started, peers
find each other by gossip only, and a launcher that stops watching changes nothing for them.

Why `subprocess.Popen` on the trio thread and not `trio.lowlevel.open_process`: trio spawns
from a worker thread, and PR_SET_PDEATHSIG fires when the *thread* that forked exits, so trio's
idle worker threads would kill every peer about ten seconds after launch.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from gossip.types import Address
from peer.commands._common import port_arg, positive_int_arg, positive_seconds_arg
from peer.logs import wall_iso
from peer.options import (
    ExchangeOptions,
    LedgerOptions,
    MarketMakerOptions,
    PeerOptions,
    command_line,
    option,
    passed_on,
    passed_values,
)
from peer.runner import read_peer_file
from peer.tools.cluster_file import DEFAULT_DATA_DIR, FILE_NAME, write_cluster
from peer.tools.netns import Lan, create_lan, remove_stale

TOKEN_FILE = "admin.token"
KEY_FILE = "cluster.key"
CONTROL_FILE = "launcher.sock"
# A Unix socket's path is at most 107 bytes on Linux; a deeper data dir gets one in /tmp.
MAX_SOCKET_PATH = 100
MAX_CONTROL_REQUEST = 4096

HOST = "127.0.0.1"
# With --netns every peer has an address of its own, so every peer uses the same ports.
NETNS_GOSSIP_PORT = 7946
NETNS_HTTP_PORT = 7947
PR_SET_PDEATHSIG = 1
POLL = 0.05
# How long a SIGKILLed peer may take to be reaped.
KILL_WAIT = 5.0


class LaunchError(Exception):
    """A peer did not come up; the message says which and where its output is."""


@dataclass
class PeerSpec:
    name: str
    role: str
    data_dir: Path
    bind: Address
    http: Address
    # With --netns: what runs the peer inside its namespace, and its one interface for mDNS.
    prefix: list[str] = field(default_factory=list)
    interfaces: str = "all"


@dataclass
class Child:
    spec: PeerSpec
    popen: subprocess.Popen
    argv: list[str]
    stderr_path: Path
    info: dict[str, Any] | None = None  # peer.json once the peer is up
    exit_reported: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class LaunchOptions:
    """`murmur launch`'s own settings, then those it passes on to every peer it starts."""

    peers: int = option(
        5,
        "number of market-maker peers (plus the exchange and the ledger)",
        parse=positive_int_arg,
        metavar="N",
    )
    data_dir: Path = option(
        DEFAULT_DATA_DIR,
        "where cluster.json and each peer's directory go",
        parse=Path,
        default_text=f"./{DEFAULT_DATA_DIR}",
    )
    base_port: int | None = option(
        None,
        "give peer i gossip port PORT+2i and HTTP port PORT+2i+1",
        parse=port_arg,
        metavar="PORT",
        default_text="free ports chosen by the OS",
    )
    startup_timeout: float = option(
        30.0,
        "give up if a peer does not answer /health within this",
        parse=positive_seconds_arg,
        metavar="SECONDS",
    )
    stop_timeout: float = option(
        5.0,
        "on Ctrl-C, kill peers that have not stopped within this",
        parse=positive_seconds_arg,
        metavar="SECONDS",
    )
    netns: bool = option(
        False,
        "put each peer in a network namespace of its own, with its own 10.x address on a bridge: "
        "a LAN on one machine (Linux, as root); removed on exit, stale ones at the next launch",
        kind="switch",
    )
    python: str = sys.executable
    discover: bool = passed_on("discover")
    # Without it, launch writes <data-dir>/cluster.key (once) and gives every peer --key-file.
    insecure: bool = passed_on("insecure")
    # Passed on: PeerOptions' fields of the same name, with launch's defaults where it has its
    # own (`Flag.launch`: --profile, --flow-rate). A field added to a role group arrives by itself.
    cluster: str = passed_on("cluster")
    profile: str = passed_on("profile")
    overrides: dict[str, Any] = passed_on("overrides")
    exchange: ExchangeOptions = passed_on("exchange")
    ledger: LedgerOptions = passed_on("ledger")
    mm: MarketMakerOptions = passed_on("mm")


def peer_names(opts: LaunchOptions) -> list[tuple[str, str]]:
    """(name, role): mm-1 first (the seed), then the other market makers, the exchange, the ledger."""
    names = [(f"mm-{i}", "mm") for i in range(1, opts.peers + 1)]
    return names + [("exchange", "exchange"), ("ledger", "ledger")]


def peer_specs(opts: LaunchOptions, lan: Lan | None = None) -> list[PeerSpec]:
    specs = []
    # Absolute, so that the restart commands in cluster.json work from any directory.
    root = opts.data_dir.resolve()
    for i, (name, role) in enumerate(peer_names(opts)):
        if lan is not None:
            # A host of its own: the same well-known ports on every peer's own address.
            host = lan.address(name)
            specs.append(PeerSpec(name, role, root / name, (host, NETNS_GOSSIP_PORT), (host, NETNS_HTTP_PORT),
                                  prefix=lan.exec_prefix(name), interfaces=host))
            continue
        if opts.base_port is None:
            bind, http = (HOST, 0), (HOST, 0)
        else:
            bind, http = (HOST, opts.base_port + 2 * i), (HOST, opts.base_port + 2 * i + 1)
        specs.append(PeerSpec(name, role, root / name, bind, http))
    return specs


def peer_options(
    opts: LaunchOptions, spec: PeerSpec, bind: Address, http: Address, join: list[Address]
) -> PeerOptions:
    """What one launched peer runs with: its place in the cluster, and what launch passes on."""
    return PeerOptions(
        role=spec.role,
        name=spec.name,
        bind=bind,
        http=http,
        # With --discover, peers find each other by mDNS only: no seeds.
        join=[] if opts.discover else list(join),
        data_dir=spec.data_dir,
        interfaces=spec.interfaces,
        log_stderr=False,
        admin_token_file=token_path(opts.data_dir),
        key_file=None if opts.insecure else key_path(opts.data_dir),
        **passed_values(opts),
    )


def key_path(data_dir: Path) -> Path:
    return data_dir.resolve() / KEY_FILE


def ensure_cluster_key(data_dir: Path) -> Path:
    """<data-dir>/cluster.key: kept if there (a relaunch keeps its cluster's key), else a new
    keyring of one key, mode 0600."""
    from gossip.keyring import new_key_file

    path = key_path(data_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        new_key_file(path)
    return path


def token_path(data_dir: Path) -> Path:
    return data_dir.resolve() / TOKEN_FILE


def write_admin_token(data_dir: Path) -> Path:
    """A new random admin token for this launch, readable by its owner only (0600)."""
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file was there with a looser mode
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def control_path(data_dir: Path) -> Path:
    path = data_dir.resolve() / CONTROL_FILE
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        return path
    return Path("/tmp") / f"murmur-launcher-{os.getpid()}.sock"


def peer_argv(
    opts: LaunchOptions, spec: PeerSpec, bind: Address, http: Address, join: list[Address]
) -> list[str]:
    return [
        *spec.prefix,
        opts.python,
        "-m",
        "peer.cli",
        "peer",
        *command_line(peer_options(opts, spec, bind, http, join)),
    ]


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: ask the kernel for SIGTERM when the launcher dies (Linux only)."""

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return  # not Linux: the launcher's own clean-up is all there is
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Launcher:
    def __init__(self, opts: LaunchOptions, *, say: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.say = say
        self.children: list[Child] = []
        self.cluster_path = opts.data_dir / FILE_NAME
        self.control = control_path(opts.data_dir)
        self.lan: Lan | None = None
        self._restarting = trio.Lock()  # one restart at a time: each rewrites cluster.json

    # -- starting ----------------------------------------------------------------------------

    def spawn(self, spec: PeerSpec, join: list[Address], *, bind: Address | None = None,
              http: Address | None = None) -> Child:
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        argv = peer_argv(self.opts, spec, bind or spec.bind, http or spec.http, join)
        stderr_path = spec.data_dir / "stderr.log"
        with open(stderr_path, "ab") as err:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=False,
                preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
            )
        child = Child(spec, popen, argv, stderr_path)
        self.children.append(child)
        return child

    async def wait_up(self, child: Child, client: httpx.AsyncClient) -> None:
        """Until the child wrote its peer.json (this pid) and its /health says ok."""
        deadline = trio.current_time() + self.opts.startup_timeout
        while True:
            if not child.alive():
                raise LaunchError(
                    f"{child.spec.name} exited with code {child.popen.returncode} while "
                    f"starting:\n{_tail(child.stderr_path)}"
                )
            if trio.current_time() > deadline:
                raise LaunchError(
                    f"{child.spec.name} did not come up within {self.opts.startup_timeout:g}s; "
                    f"see {child.stderr_path} and {child.spec.data_dir / (child.spec.name + '.log')}"
                )
            if child.info is None:
                info = read_peer_file(child.spec.data_dir)
                if info and info.get("pid") == child.pid:
                    child.info = info
            if child.info is not None:
                try:
                    r = await client.get(f"{child.info['http']}/health")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            await trio.sleep(POLL)

    async def make_lan(self) -> None:
        """--netns: remove the LANs of launchers that died, then make this one's."""
        removed = await trio.to_thread.run_sync(remove_stale)
        if removed:
            self.say(f"removed {len(removed)} stale namespace(s) and link(s) of dead launches")
        names = [name for name, _role in peer_names(self.opts)]
        self.lan = await trio.to_thread.run_sync(lambda: create_lan(names, tag=str(os.getpid())))
        self.say(f"LAN {self.lan.subnet} on bridge {self.lan.bridge}: one namespace a peer")

    async def start_all(self) -> None:
        specs = peer_specs(self.opts, self.lan)
        async with httpx.AsyncClient(timeout=1.0) as client:
            seed = self.spawn(specs[0], join=[])
            await self.wait_up(seed, client)
            seed_addr = _addr(seed.info["gossip"])
            rest = [self.spawn(spec, join=[seed_addr]) for spec in specs[1:]]
            async with trio.open_nursery() as nursery:
                for child in rest:
                    nursery.start_soon(self.wait_up, child, client)

    def cluster_data(self, status: str) -> dict[str, Any]:
        peers = []
        gossip = [_addr(c.info["gossip"]) for c in self.children if c.info]
        for c in self.children:
            if c.info is None:
                continue
            me = _addr(c.info["gossip"])
            # The command that restarts this peer at the same addresses, joining through any
            # of the others (whichever is still alive).
            restart = peer_argv(
                self.opts,
                c.spec,
                me,
                _addr(c.info["http"].split("://", 1)[1]),
                [a for a in gossip if a != me],
            )
            peers.append(
                {
                    "name": c.spec.name,
                    "role": c.spec.role,
                    "pid": c.pid,
                    "gossip": c.info["gossip"],
                    "http": c.info["http"],
                    "data_dir": str(c.spec.data_dir),
                    "log": str(c.spec.data_dir / f"{c.spec.name}.log"),
                    "restart": restart,
                }
            )
        return {
            "status": status,
            "launcher_pid": os.getpid(),
            "profile": self.opts.profile,
            "cluster": self.opts.cluster,
            "started_at": self.started_at,
            # Where `murmur restart` asks this launcher, and the token /admin endpoints require.
            "control": str(self.control),
            "admin_token_file": str(token_path(self.opts.data_dir)),
            "key_file": None if self.opts.insecure else str(key_path(self.opts.data_dir)),
            **({"netns": self.lan.to_json()} if self.lan is not None else {}),
            "peers": peers,
        }

    # -- running -----------------------------------------------------------------------------

    async def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Start, report (`on_ready(cluster)`), watch until a signal, stop. Returns 0.

        Raises LaunchError (after stopping whatever did start) if a peer does not come up.
        """
        self.started_at = wall_iso()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            try:
                async with trio.open_nursery() as nursery:

                    async def on_signal() -> None:
                        async for signum in signals:
                            self.say(f"{signal.Signals(signum).name}: stopping the cluster...")
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(on_signal)
                    write_admin_token(self.opts.data_dir)
                    if not self.opts.insecure:
                        ensure_cluster_key(self.opts.data_dir)
                    if self.opts.netns:
                        await self.make_lan()
                    await self.start_all()
                    await nursery.start(self.serve_control)
                    cluster = self.cluster_data("running")
                    write_cluster(self.cluster_path, cluster)
                    if on_ready is not None:
                        on_ready(cluster)
                    await self.watch()
            finally:
                # Also on errors and on a second Ctrl-C: no peer may outlive the launcher.
                with trio.CancelScope(shield=True):
                    await self.stop_all()
                    if self.lan is not None:
                        removed = await trio.to_thread.run_sync(self.lan.teardown)
                        self.say(f"removed the LAN ({len(removed)} namespace(s) and link(s))")
        return 0

    async def watch(self) -> None:
        """Report peers that exit on their own (crashed, or killed by a person); keep running."""
        while True:
            for c in self.children:
                if not c.exit_reported and not c.alive():
                    c.exit_reported = True
                    self.say(
                        f"{c.spec.name} (pid {c.pid}) exited with code {c.popen.returncode}; "
                        f"the others will notice. Output: {c.stderr_path}"
                    )
            await trio.sleep(0.5)

    # -- stopping ----------------------------------------------------------------------------

    async def stop_all(self) -> None:
        """SIGTERM every peer (graceful leave), wait, SIGKILL leftovers, reap everything."""
        live = [c for c in self.children if c.alive()]
        for c in live:
            _signal(c, signal.SIGCONT)  # a frozen peer (`murmur freeze`) cannot leave
            _signal(c, signal.SIGTERM)
        with trio.move_on_after(self.opts.stop_timeout):
            await _reap(live)
        killed = [c for c in live if c.alive()]
        for c in killed:
            _signal(c, signal.SIGKILL)
        with trio.move_on_after(KILL_WAIT):
            await _reap(self.children)
        if self.children:
            graceful = len(live) - len(killed)
            self.say(
                f"stopped {len(live)} peer(s): {graceful} left gracefully"
                + (f", {len(killed)} killed after {self.opts.stop_timeout:g}s" if killed else "")
            )
        if self.cluster_path.exists() and any(c.info for c in self.children):
            write_cluster(self.cluster_path, self.cluster_data("stopped"))


    # -- the control socket: `murmur restart` -------------------------------------------------

    async def serve_control(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Answer one JSON line a connection on a Unix socket only this user can open.

        The launcher owns the peers' processes (they die with it), so a restart is asked of it
        rather than done by the command: the new process is its child like the others."""
        path = self.control
        with _unlinked(path):
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_mask = os.umask(0o177)  # the socket file is created 0600
            try:
                await sock.bind(str(path))
            finally:
                os.umask(old_mask)
            sock.listen(8)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._control_connection, [trio.SocketListener(sock)])
                task_status.started(path)

    async def _control_connection(self, stream: trio.SocketStream) -> None:
        # Whatever arrives, this connection's task ends with an answer or a close, never an error.
        try:
            data = b""
            with trio.move_on_after(5.0):
                while not data.endswith(b"\n") and len(data) <= MAX_CONTROL_REQUEST:
                    chunk = await stream.receive_some(MAX_CONTROL_REQUEST)
                    if not chunk:
                        break
                    data += chunk
            answer = await self._control_answer(data)
            await stream.send_all(json.dumps(answer).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _control_answer(self, data: bytes) -> dict[str, Any]:
        try:
            request = json.loads(data)
        except (ValueError, RecursionError):  # deep nesting raises the latter
            return {"ok": False, "error": "not one JSON line"}
        if not isinstance(request, dict) or request.get("op") != "restart" or not isinstance(request.get("peer"), str):
            return {"ok": False, "error": 'expected {"op": "restart", "peer": NAME}'}
        try:
            return {"ok": True, **await self.restart(request["peer"])}
        except LaunchError as exc:
            return {"ok": False, "error": str(exc)}

    async def restart(self, name: str) -> dict[str, Any]:
        """Stop the peer if it runs, start it again at the same addresses, wait for /health."""
        async with self._restarting:
            old = next((c for c in reversed(self.children) if c.spec.name == name), None)
            if old is None or old.info is None:
                raise LaunchError(f"no peer named {name!r} in this cluster")
            begun = trio.current_time()
            if old.alive():
                _signal(old, signal.SIGCONT)
                _signal(old, signal.SIGTERM)
                with trio.move_on_after(self.opts.stop_timeout):
                    await _reap([old])
                if old.alive():
                    _signal(old, signal.SIGKILL)
                    with trio.move_on_after(KILL_WAIT):
                        await _reap([old])
            old.exit_reported = True
            me = _addr(old.info["gossip"])
            http = _addr(old.info["http"].split("://", 1)[1])
            others = [_addr(c.info["gossip"]) for c in self.children if c.info and c is not old]
            self.children.remove(old)
            child = self.spawn(old.spec, join=others, bind=me, http=http)
            async with httpx.AsyncClient(timeout=1.0) as client:
                await self.wait_up(child, client)
            write_cluster(self.cluster_path, self.cluster_data("running"))
            self.say(f"{name} restarted (pid {child.pid})")
            return {"pid": child.pid, "took_s": round(trio.current_time() - begun, 3)}


class _unlinked:
    """Removes a socket file before binding (a stale one of a killed launcher) and after."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self._remove()

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


async def _reap(children: list[Child]) -> None:
    """Until every child has exited (and is reaped). Popen offers no awaitable wait, so a worker
    thread waits; cancelled, it is abandoned and returns once the child is gone."""
    for c in children:
        await trio.to_thread.run_sync(c.popen.wait, abandon_on_cancel=True)


def _signal(child: Child, signum: int) -> None:
    try:
        child.popen.send_signal(signum)
    except ProcessLookupError:
        pass


def _addr(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no output in {path})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) or f"(no output in {path})"
