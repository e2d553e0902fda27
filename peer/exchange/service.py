"""The exchange role inside a peer process: the core, its tape, its clock, its flow, its outbox.

What it is for: driving `book.exchange.ExchangeCore` for real. Every command runs on the core
with the wall clock as `now`, is appended to the tape (durable before the answer leaves), and
the tape is replayed on start so epochs, quotes, the book and fill ids survive a restart. Around
it: a ticker that withdraws quotes whose TTL or lease ran out, the deterministic external order
flow (`--flow-rate`, `--seed`), and the fill outbox to the ledger.

It must never decide anything the core decides, and never answer a command before its tape
record is durable: an answer is a promise that survives a crash.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from book import bounds
from book.exchange import CommandError, ExchangeCore
from book.market import OrderFlow, ReferencePrices
from peer.exchange.tape import TapeClosed, TapeReader, TapeWriter, scan
from peer.groupcommit import Runner
from peer.logs import JsonLog
from peer.options import DEFAULT_SYMBOLS, ExchangeOptions

# The service takes the defaults of `murmur peer --role exchange` (written once, in peer.options).
_DEFAULT = ExchangeOptions()
TAPE_FILE = "exchange.tape"


class TapeDivergence(RuntimeError):
    """Replaying the tape gave another answer than the one recorded: refuse to serve."""


class ExchangeService:
    def __init__(
        self,
        data_dir: Path,
        *,
        symbols: list[str] | None = None,
        seed: int = _DEFAULT.market_seed,
        flow_rate: float = _DEFAULT.flow_rate,
        quote_ttl: float = _DEFAULT.quote_ttl,
        lease_duration: float = _DEFAULT.lease,
        is_alive: Callable[[str], bool] = lambda name: True,
        log: JsonLog | None = None,
        clock: Callable[[], float] = time.time,
        run_sync: Runner = trio.to_thread.run_sync,
        instance: str | None = None,
    ):
        """`run_sync` is how the blocking replay at start and the tape's open and write + fsync
        run: a worker thread by default; a simulation under trio's MockClock passes
        `peer.groupcommit.run_inline`, so no thread's timing decides the order of events.
        `instance` names this exchange's tape in its genesis record (fill ids are `F<instance>-n`):
        random by default, so two tapes never share fill ids; a simulation fixes it from its seed
        so that a run is the same byte for byte."""
        self.data_dir = Path(data_dir)
        self.tape_path = self.data_dir / TAPE_FILE
        self.params = {
            "symbols": list(symbols or DEFAULT_SYMBOLS),
            "seed": seed,
            "quote_ttl": quote_ttl,
            "lease_duration": lease_duration,
        }
        self.flow_rate = flow_rate
        self.is_alive = is_alive
        self.log = log or JsonLog("exchange", stream=None)
        self.clock = clock
        if instance is not None and (not isinstance(instance, str) or not instance):
            raise ValueError(f"instance must be a non-empty string, got {instance!r}")
        self.run_sync = run_sync
        self.instance = instance
        self.core: ExchangeCore | None = None
        self.genesis: dict[str, Any] = {}
        self.prices: ReferencePrices | None = None
        self.tape: TapeWriter | None = None
        self.ledger_acked = 0  # fills up to this seq are durable at the ledger
        self.fill_added = trio.Event()  # set (and replaced) whenever fills are created
        self.counters: dict[str, int] = {"commands": 0, "accepted": 0, "rejected": 0, "invalid": 0, "replayed": 0}
        self._ticker_wakeup = trio.Event()
        self.outbox_stats: dict[str, int] = {}
        # Set while the ledger refuses a batch of fills outright (peer.exchange.outbox): what it said.
        self.outbox_alarm: dict[str, Any] | None = None

    # --- start: replay, then serve ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[dict] = trio.TASK_STATUS_IGNORED) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        replay = await self.run_sync(self._replay)
        self.tape = TapeWriter(self.tape_path, run_sync=self.run_sync)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.tape.run)
            if not self.genesis:
                self.genesis = {
                    "type": "genesis",
                    "at": self.clock(),
                    "instance": self.instance if self.instance is not None else secrets.token_hex(4),
                    **self.params,
                }
                await self.tape.append(dict(self.genesis))
                self._make_core()
            self.log("exchange_started", **replay, symbols=self.core.symbols, instance=self.genesis["instance"],
                     epochs={a.symbol: a.epoch for a in self.core.authority.all()})
            nursery.start_soon(self._ticker)
            if self.flow_rate > 0:
                nursery.start_soon(self._flow)
            task_status.started(replay)

    def _make_core(self) -> None:
        g = self.genesis
        self.core = ExchangeCore(g["symbols"], quote_ttl=g["quote_ttl"], lease_duration=g["lease_duration"],
                                 fill_prefix=f"F{g['instance']}-")
        self.prices = ReferencePrices(g["seed"], g["symbols"])

    def _replay(self) -> dict[str, Any]:
        """Rebuild the core from the tape (runs with `run_sync`, a thread by default: it may be long)."""
        if not self.tape_path.exists():
            return {"replayed": 0, "torn_bytes": 0}
        result = scan(self.tape_path)
        n = 0
        for rec in TapeReader(self.tape_path).records():
            try:
                n += self._replay_record(rec)
            except TapeDivergence:
                raise
            except Exception as exc:  # noqa: BLE001 - a CRC-valid record that means nothing: refuse, say which
                raise TapeDivergence(
                    f"{self.tape_path}: record {rec.get('seq')} ({bounds.short(rec.get('type'))}) cannot be "
                    f"replayed: {type(exc).__name__}: {bounds.short(str(exc))}; see docs/runbook.md: corrupt tape"
                ) from exc
        self.counters["replayed"] = n
        return {"replayed": n, "torn_bytes": result.torn_bytes, "last_seq": result.last_seq}

    def _replay_record(self, rec: dict[Any, Any]) -> int:
        """Apply one tape record to the state; 1 if it was a command. Raises on a record that
        is not what this exchange writes (the caller makes that a TapeDivergence)."""
        kind = rec.get("type")
        if kind == "genesis":
            genesis = {k: v for k, v in rec.items() if k != "seq"}
            if not isinstance(genesis.get("instance"), str) or not isinstance(genesis.get("symbols"), list):
                raise ValueError("a genesis record needs an instance and a list of symbols")
            bounds.seconds(genesis.get("at"), "at")
            self.genesis = genesis
            self._make_core()
            return 0
        if self.core is None:
            raise TapeDivergence(f"{self.tape_path}: record {rec.get('seq')} before the genesis record")
        if kind == "ledger_ack":
            self.ledger_acked = max(self.ledger_acked, bounds.count(rec.get("up_to"), "up_to"))
            return 0
        if kind not in ExchangeCore.COMMANDS:
            return 0
        args, at = rec.get("args"), bounds.seconds(rec.get("at"), "at")
        if not isinstance(args, dict):
            raise ValueError(f"args is a {type(args).__name__}, not a map")
        answer = self.core.execute(kind, args, at)
        if answer["accepted"] != rec.get("accepted") or answer["reason"] != rec.get("reason"):
            raise TapeDivergence(
                f"{self.tape_path}: record {rec['seq']} ({kind}) replays as {answer['reason']!r}, "
                f"recorded {bounds.short(rec.get('reason'))}; see docs/runbook.md: corrupt tape"
            )
        return 1

    # --- commands -----------------------------------------------------------------------------

    async def command(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run one command on the core, make it durable, return the answer.

        Raises CommandError for malformed arguments (nothing changed, nothing recorded).
        """
        answer, record = self._apply(kind, args)
        if record is not None:
            # Appending is synchronous up to the enqueue, so tape order is the order of execution.
            await self._append(record)
            self._after(kind, args, answer)
        return answer

    async def command_batch(self, commands: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | CommandError]:
        """Run several commands in order and make them durable together (one wait, not one per
        command): the built-in flow's batches. A malformed one is answered with its CommandError."""
        done: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        answers: list[dict[str, Any] | CommandError] = []
        records = []
        for kind, args in commands:
            try:
                answer, record = self._apply(kind, args)
            except CommandError as exc:
                answers.append(exc)
                continue
            answers.append(answer)
            if record is not None:
                records.append(record)
                done.append((kind, args, answer))
        if records:
            assert self.tape is not None
            try:
                await self.tape.append_many(records)
            except TapeClosed:
                await trio.lowlevel.checkpoint()
                raise
        for kind, args, answer in done:
            self._after(kind, args, answer)
        return answers

    def _apply(self, kind: str, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Execute on the core; the answer and the tape record to make durable (None for a retry)."""
        assert self.core is not None and self.tape is not None
        if kind == "claim":
            holder = args.get("holder")
            current = self.core.authority[args["symbol"]].holder if args.get("symbol") in self.core.authority else None
            # The membership verdict is an input of the rule, so it is recorded for replay.
            args = {**args, "holder_alive": current is None or current == holder or self.is_alive(current)}
        now = self.clock()
        self.counters["commands"] += 1
        try:
            answer = self.core.execute(kind, args, now)
        except CommandError:
            self.counters["invalid"] += 1
            raise
        if answer.get("duplicate"):
            return answer, None  # a retry: nothing changed, nothing to record
        self.counters["accepted" if answer["accepted"] else "rejected"] += 1
        record = {"type": kind, "at": now, "args": args, "accepted": answer["accepted"], "reason": answer["reason"]}
        symbol = args.get("symbol") or (answer.get("order") or {}).get("symbol")
        if symbol:
            record["symbol"] = symbol  # top level, so `murmur tape --symbol` and checkers find it
        for key in ("fills", "withdrawn", "ended", "replaced"):
            if answer.get(key):
                record[key] = answer[key]
        if kind == "put_quote" and answer["accepted"]:
            record["quote_id"] = answer["quote"]["quote_id"]
        return answer, record

    def _after(self, kind: str, args: dict[str, Any], answer: dict[str, Any]) -> None:
        """What follows a durable command: wake the outbox and the ticker, log the decision."""
        if answer.get("fills"):
            self._notify_fills()
        if kind in ("claim", "put_quote", "renew"):
            self._ticker_wakeup.set()
        self._log_command(kind, args, answer)

    def _notify_fills(self) -> None:
        self.fill_added.set()
        self.fill_added = trio.Event()

    def _log_command(self, kind: str, args: dict, answer: dict) -> None:
        if kind in ("submit_order", "cancel_order") and answer["accepted"] and not answer.get("fills"):
            return  # the flow's steady stream of orders is on the tape; keep the log for decisions
        fields = {k: args.get(k) for k in ("symbol", "holder", "epoch", "seq", "order_id") if args.get(k) is not None}
        self.log(f"exchange_{kind}", accepted=answer["accepted"], reason=answer["reason"], **fields,
                 fills=[f["fill_id"] for f in answer.get("fills", [])] or None,
                 withdrawn=[w["quote_id"] for w in answer.get("withdrawn", [])] or None)

    def note_ledger_ack(self, up_to: int) -> dict[str, Any] | None:
        """The ledger has every fill up to `up_to`: move the cursor; the record to persist, if it moved."""
        if up_to <= self.ledger_acked:
            return None
        self.ledger_acked = up_to
        return {"type": "ledger_ack", "at": self.clock(), "up_to": up_to}

    async def persist(self, record: dict[str, Any]) -> None:
        """Append a record of the exchange's own (not a command) and wait until it is durable."""
        await self._append(record)

    async def _append(self, record: dict[str, Any]) -> int:
        assert self.tape is not None
        try:
            return await self.tape.append(record)
        except TapeClosed:
            # The writer stops first when the whole service is cancelled: surface the
            # cancellation rather than an error (a checkpoint raises Cancelled if so).
            await trio.lowlevel.checkpoint()
            raise

    # --- background ---------------------------------------------------------------------------

    async def _ticker(self) -> None:
        assert self.core is not None
        while True:
            delay = self.core.next_deadline() - self.clock()
            if delay > 0:
                with trio.move_on_after(min(delay, 1.0)):
                    self._ticker_wakeup = trio.Event()
                    await self._ticker_wakeup.wait()
                continue
            # Only a tick that ends something is recorded; an empty one changes nothing.
            now = self.clock()
            answer = self.core.execute("tick", {}, now)
            if answer["ended"]:
                await self._append({"type": "tick", "at": now, "args": {}, "accepted": True,
                                    "reason": "ticked", "ended": answer["ended"]})
                for ended in answer["ended"]:
                    self.log("exchange_quote_ended", **ended)
            await trio.lowlevel.checkpoint()

    async def _flow(self) -> None:
        assert self.prices is not None and self.core is not None
        flow = OrderFlow(self.genesis["seed"], self.core.symbols, self.prices, rate=self.flow_rate)
        start = self.genesis["at"]
        # After a restart, intents from before now were either taped (and are replayed) or lost
        # with the crash: skip them rather than flood the book.
        flow.next_batch(self.clock() - start)
        while True:
            batch = []
            for intent in flow.next_batch(self.clock() - start):
                if intent.cancel_of is not None:
                    batch.append(("cancel_order", {"order_id": intent.cancel_of}))
                else:
                    batch.append(("submit_order", {
                        "order_id": intent.order_id, "symbol": intent.symbol, "side": intent.side.value,
                        "type": intent.kind.value, "quantity": intent.quantity, "limit_price": intent.limit_price,
                    }))
            # In order, durable together: one tape wait a batch, so the rate is the flow's, not
            # one fsync per order.
            for answer in await self.command_batch(batch):
                if isinstance(answer, CommandError):
                    self.log("flow_order_invalid", error=str(answer))
            await trio.sleep(max(0.005, min(0.1, 1.0 / max(self.flow_rate, 1.0))))

    # --- reading ------------------------------------------------------------------------------

    def alarms(self) -> dict[str, dict[str, Any]]:
        """What needs a person (see docs/runbook.md), for `/status`."""
        return {"outbox-refused": self.outbox_alarm} if self.outbox_alarm is not None else {}

    def price(self, symbol: str) -> int:
        assert self.prices is not None
        return self.prices.price(symbol, self.clock() - self.genesis["at"])

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "instance": self.genesis.get("instance"),
            "symbols": core.symbols if core else [],
            "fills": len(core.fills) if core else 0,
            "ledger_acked": self.ledger_acked,
            "outbox": {**self.outbox_stats, "pending": (len(core.fills) if core else 0) - self.ledger_acked,
                       "alarm": self.outbox_alarm},
            "active_quotes": len(core.active_quotes) if core else 0,
            "flow_rate": self.flow_rate,
            **self.counters,
            "tape": dataclasses.asdict(self.tape.stats) if self.tape is not None else {},
        }


def parse_symbols(text: str) -> list[str]:
    symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
    if not symbols or len(set(symbols)) != len(symbols) or any(
            not s.isascii() or not s.isalnum() or len(s) > bounds.MAX_SYMBOL_LENGTH for s in symbols):
        raise ValueError(f"symbols must be distinct names of 1 to {bounds.MAX_SYMBOL_LENGTH} ASCII letters or digits, "
                         f"comma-separated, got {text!r}")
    return symbols
