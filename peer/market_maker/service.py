"""The market-maker role inside a peer process: authority and quoting, driven for real.

What it is for: the thin trio shell around three cores — `peer.market_maker.rendezvous` (who owns which
symbol, over this peer's gossip view), `peer.market_maker.authority` (claim, renew, release, back off) and
`peer.market_maker.quoting` (what to quote and when) — that talks to the exchange and the ledger, both found
through membership (the alive member with role `exchange`, `ledger`). Its tasks:

- authority: recompute the assignment whenever the view changes, feed the core, perform the
  claims, renewals and releases it asks for, and hand held epochs to the planners;
- one quoting task per symbol: send what its planner asks for — reserve exposure at the ledger,
  then publish, replace, refresh or cancel the quote at the exchange — checking the lease
  immediately before every quote operation;
- streams in: committed position updates from the ledger (long poll, resumed from the last seq),
  this peer's fills from the exchange (long poll), and reference prices (polled);
- reach: every call to the exchange feeds `peer.market_maker.reach`, a probe goes out when none
  was answered lately, and a peer that cannot reach the exchange steps aside (its gossip meta
  says "aside", so rendezvous gives its symbols to the others) until it can again.

Every request carries its idempotency key (the epoch for authority calls, `quote_id` and `seq`
for quotes, `quote_id` for reservations), so a retry after a timeout or a restart has no second
effect. A restarted peer starts from what the exchange and the ledger say, never from memory.

It must never decide anything its cores decide, and never send a quote operation unless the
authority core says `may_quote` right before it. Logs are JSON lines, one per decision: authority
transitions, quote attempts (with the position version that triggered them), reservations
granted/reduced/rejected, quotes activated/refused, fills.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from gossip.types import Member
from peer.backoff import Backoff
from peer.http.client import Answer, HttpClient, HttpError
from peer.http.client import path as http_path
from peer.http.signing import Signer
from peer.logs import JsonLog
from peer.market_maker import answers as mm_answers
from peer.market_maker.answers import AnswerError
from peer.market_maker.authority import (
    AuthorityConfig,
    CheckAuthority,
    Claim,
    ExchangeAnswer,
    ExchangeRequest,
    MarketMakerAuthority,
    Outcome,
    Phase,
    Release,
    Renew,
    StopQuoting,
)
from peer.market_maker.quoting import (
    PlannerConfig,
    QuoteAttempt,
    QuoteConfig,
    QuotePlanner,
    cap_by_reservation,
)
from peer.market_maker.reach import ExchangeReach, ReachChange, ReachConfig
from peer.market_maker.rendezvous import assignment, candidates_from_view
from peer.roles import RoleDirectory

# The reservation outlives its quote's TTL by this much: the exchange starts the TTL a little
# after the ledger starts the reservation, and a quote must never be live without one.
RESERVATION_MARGIN = 1.0
LONG_POLL = 5.0
PRICE_POLL = 0.25
LOOP_RESTART = 0.5
# Reading the exchange or the ledger again after no answer or a bad one (a peer restarting, not
# found yet, or cut off): soon at first, at most twice a second, jittered so that market makers
# that lost the same peer do not come back in lock-step.
READ_RETRY = Backoff(first=0.1, cap=0.5, jitter=0.5)


@dataclass
class MarketMakerStats:
    claims: int = 0
    renewals: int = 0
    releases: int = 0
    quote_attempts: int = 0
    quotes_activated: int = 0
    quotes_refused: int = 0
    reservations_rejected: int = 0
    fills: int = 0
    position_updates: int = 0
    request_failures: int = 0
    malformed_answers: int = 0
    loop_failures: int = 0
    exchange_probes: int = 0  # GET /health sent because no exchange call was answered lately
    steps_aside: int = 0  # the exchange became unreachable: "aside" set in the gossip meta
    steps_back: int = 0
    authority_changes: list[dict[str, Any]] = field(default_factory=list)

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if type(v) is int}

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["authority_changes"] = self.authority_changes[-20:]
        return out


class MarketMakerService:
    def __init__(
        self,
        name: str,
        *,
        members: Callable[[], list[Member]],
        log: JsonLog | None = None,
        clock: Callable[[], float] = time.time,
        quote_config: QuoteConfig | None = None,
        planner_config: PlannerConfig | None = None,
        authority_config: AuthorityConfig | None = None,
        seed: int = 0,
        request_timeout: float = 1.0,
        roles: RoleDirectory | None = None,
        links: Any = None,
        reach_config: ReachConfig | None = None,
        set_aside: Callable[[str | None], None] | None = None,
        client_factory: Callable[[str, str], HttpClient] | None = None,
        signer: Signer | None = None,
    ) -> None:
        """`client_factory(role, url)` makes the keep-alive client for the exchange or the ledger
        at `url`; by default an `HttpClient` over TCP that obeys `links` and names this peer. A
        simulation passes one whose client dials its simulated network. `signer` signs the
        default client's calls (peer/http/signing.py); None in an insecure cluster."""
        self.name = name
        self.members = members
        self.log = log or JsonLog(name, stream=None)
        self.clock = clock
        self.quote_config = quote_config or QuoteConfig()
        self.planner_config = planner_config or PlannerConfig()
        self.authority_config = authority_config or AuthorityConfig()
        self.seed = seed
        self.request_timeout = request_timeout
        self.roles = roles or RoleDirectory(self.log)
        # The peer's link filter (peer/faults/links.py): calls obey it and name this peer.
        self.links = links
        self.signer = signer
        self.client_factory = client_factory or self._default_client
        # Whether the exchange answers this peer; `set_aside(reason)` puts the reason in this
        # peer's gossip meta (None takes it out), so the others stop naming it an owner.
        self.reach = ExchangeReach(reach_config, now=clock())
        self.set_aside = set_aside or (lambda reason: None)
        self.aside_reason: str | None = None
        self._reach_wakeup = trio.Event()
        self._probing = False
        self.symbols: list[str] = []
        self.authority: MarketMakerAuthority | None = None
        self.planners: dict[str, QuotePlanner] = {}
        self.reservations: dict[str, str] = {}  # symbol -> reservation_id of the live quote
        # Reservations of quotes we stopped quoting, with the quote's epoch: released once the
        # exchange confirms the quote is gone (an accepted release, or an accepted claim of a newer
        # epoch, ours or another's, which withdrew every older quote in the same step), otherwise
        # left to expire with the quote's TTL.
        self._retired: dict[str, list[tuple[str, int | None]]] = {}
        # Reservations asked for as soon as a fill is seen, for the quote_id the replacement will
        # carry: symbol -> (quote_id, done event, the ledger's answer or None).
        self._early: dict[str, tuple[str, trio.Event, list]] = {}
        self.stats = MarketMakerStats()
        self._retry_rng = random.Random(f"{seed}:{name}:retry")
        self._clients: dict[str, HttpClient] = {}
        self._view_changed = trio.Event()
        self._authority_wakeup = trio.Event()
        # Set (and replaced) whenever some symbol's authority phase changed: what `leave` waits on.
        self._phases_changed = trio.Event()
        self._symbol_wakeup: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._leaving = False
        self.ready = trio.Event()

    # --- wiring -------------------------------------------------------------------------------

    def view_changed(self) -> None:
        """Called on every membership event: the assignment may have moved."""
        self._view_changed.set()

    def _url(self, role: str) -> str | None:
        return self.roles.url(role, self.members())

    def _default_client(self, role: str, url: str) -> HttpClient:
        return HttpClient(url, max_connections=16, timeout=self.request_timeout, links=self.links, sender=self.name,
                          signer=self.signer)

    async def _client(self, role: str, url: str) -> HttpClient:
        """The keep-alive client for `role`, at its current URL: when the role moves to another
        address, the old client is closed, not left with connections open until exit."""
        client = self._clients.get(role)
        if client is None or client.base_url != url.rstrip("/"):
            # Replaced before the old one is closed: no other call can see the old one after.
            old, client = client, self.client_factory(role, url)
            self._clients[role] = client
            if old is not None:
                await old.aclose()
        return client

    # `timeout` is passed on to the client, whose deadline ends in an answer of None (a failed
    # call, counted), not in the caller's cancellation; a long poll needs a longer one.
    async def _call(self, role: str, method: str, path: str, body: Any = None, *,
                    timeout: float | None = None) -> Answer | None:  # noqa: ASYNC109
        """One request to the exchange or the ledger; None if it is not reachable or did not answer."""
        url = self._url(role)
        sent_at = self.clock()
        if url is None:
            self.stats.request_failures += 1
            self._reached(role, False, sent_at)
            return None
        try:
            client = await self._client(role, url)
            answer = await client.request(method, path, json=body, timeout=timeout)
        except HttpError as exc:
            self.stats.request_failures += 1
            self.log("mm_request_failed", role=role, method=method, path=path, error=str(exc)[:200])
            self._reached(role, False, sent_at)
            return None
        self._reached(role, True, sent_at)
        return answer

    # --- reaching the exchange ----------------------------------------------------------------

    def _reached(self, role: str, ok: bool, sent_at: float) -> None:
        """Feed the reach core one exchange call's outcome: any answer is ok (the link works),
        no answer or no exchange in the view is a failure."""
        if role != "exchange":
            return
        deadline = self.reach.next_deadline()
        change = self.reach.record(ok, sent_at=sent_at, now=self.clock())
        if change is not None:
            self._reach_changed(change)
        if self.reach.next_deadline() != deadline:
            self._reach_wakeup.set()  # the reach loop sleeps until the deadline it knew

    def _reach_changed(self, change: ReachChange) -> None:
        """Step aside (or back): gossip it, log it, count it, and recompute the assignment now,
        which no longer names (or names again) this peer."""
        self.aside_reason = change.reason
        cfg = self.reach.config
        if change.reachable:
            self.stats.steps_back += 1
            self.log("mm_step_back", **change.to_json(), back_after=cfg.back_after)
        else:
            self.stats.steps_aside += 1
            self.log("mm_step_aside", **change.to_json(), aside_after=cfg.aside_after)
        try:
            self.set_aside(change.reason)
        except Exception as exc:  # the view is gossip's: a failed update must not end a call path
            self.log("mm_set_aside_failed", reason=change.reason, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        self._authority_wakeup.set()

    async def _reach_loop(self) -> None:
        """Probe the exchange (`GET /health`) whenever no call to it was answered for a probe
        interval, so that a cut is noticed whatever the other loops are doing and an aside peer
        hears of recovery; and step aside when the reach core's deadline comes."""
        assert self._nursery is not None
        while True:
            now = self.clock()
            change = self.reach.poll(now)
            if change is not None:
                self._reach_changed(change)
            if not self._probing and self.reach.wants_probe(now):
                self._probing = True
                self._nursery.start_soon(self._probe)
            self._reach_wakeup = trio.Event()
            wait = self.reach.config.probe_interval
            deadline = self.reach.next_deadline()
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - self.clock()))
            with trio.move_on_after(wait):
                await self._reach_wakeup.wait()

    async def _probe(self) -> None:
        self.stats.exchange_probes += 1
        try:
            await self._call("exchange", "GET", "/health")  # its outcome feeds the reach core
        finally:
            self._probing = False

    # --- start --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # From the start: a peer that starts cut from the exchange must step aside too.
                nursery.start_soon(self._supervised, self._reach_loop)
                await self._start_from_the_exchange_and_ledger()
                nursery.start_soon(self._supervised, self._authority_loop)
                nursery.start_soon(self._supervised, self._updates_loop)
                nursery.start_soon(self._supervised, self._fills_loop)
                nursery.start_soon(self._supervised, self._prices_loop)
                for symbol in self.symbols:
                    nursery.start_soon(self._supervised, self._quote_loop, symbol)
                self.ready.set()
        finally:
            with trio.CancelScope(shield=True):
                for client in self._clients.values():
                    await client.aclose()

    async def _supervised(self, loop: Callable[..., Any], *args: Any) -> None:
        """Run one of the market maker's loops, and start it again if it fails.

        Every answer is read by `mm_answers`, so no input of another peer should reach here;
        this is the second line: a bug that one peer's input trips costs that loop a restart
        (logged, counted), never the process and the cluster's other symbols with it."""
        while True:
            try:
                await loop(*args)
                return
            except Exception as exc:  # cancellation is a BaseException and passes through
                self.stats.loop_failures += 1
                self.log("mm_loop_failed", loop=loop.__name__, args=[str(a) for a in args],
                         error=f"{type(exc).__name__}: {str(exc)[:200]}")
                await trio.sleep(LOOP_RESTART)

    async def _start_from_the_exchange_and_ledger(self) -> None:
        """Symbols, epochs and positions come from the exchange and the ledger, not memory."""
        prices = await self._get_until_ok("exchange", "/prices", mm_answers.prices)
        self.symbols = sorted(prices)
        self.authority = MarketMakerAuthority(self.name, self.symbols, self.authority_config,
                                              random.Random(f"{self.seed}:{self.name}"))
        now = self.clock()
        for symbol in self.symbols:
            planner = QuotePlanner(self.name, symbol, self.quote_config, self.planner_config)
            planner.on_reference_price(prices[symbol], now)
            self.planners[symbol] = planner
            self._symbol_wakeup[symbol] = trio.Event()
        authority = await self._get_until_ok("exchange", "/authority", mm_answers.authority_rows)
        self._handle(self.authority.observe_authority(authority, self.clock()))
        rows, last_seq = await self._get_until_ok("ledger", "/positions", mm_answers.positions)
        for row in rows:
            if row.symbol in self.planners:
                self.planners[row.symbol].on_position(row.net_quantity, row.position_version, now)
        for planner in self.planners.values():
            if planner.position is None:
                planner.on_position(0, 0, now)  # a symbol never filled has no row: flat, version 0
        self._updates_after = last_seq
        self._fills_after = await self._get_until_ok("exchange", "/fills?after=0&limit=1", mm_answers.fills_total)
        self.log("mm_started", symbols=self.symbols, updates_after=self._updates_after,
                 fills_after=self._fills_after,
                 epochs={r.get("symbol"): r.get("epoch") for r in authority})

    async def _get_until_ok(self, role: str, path: str, read: Callable[[bytes], Any]) -> Any:
        attempt = 0
        while True:
            answer = await self._call(role, "GET", path)
            if answer is not None and answer.status == 200:
                found = self._read(role, "GET", path, answer, read)
                if found is not None:
                    return found
            attempt += 1
            await self._retry_after(attempt)

    async def _retry_after(self, attempt: int) -> None:
        await trio.sleep(READ_RETRY.delay(attempt, self._retry_rng))

    def _read(self, role: str, method: str, path: str, answer: Answer, reader: Callable[[bytes], Any]) -> Any:
        """`reader(answer.body)`, or None when the answer is malformed (counted and logged)."""
        try:
            return reader(answer.body)
        except AnswerError as exc:
            self._malformed(role, method, path, exc)
            return None

    def _malformed(self, role: str, method: str, path: str, exc: AnswerError) -> None:
        """An answer that is not what the API promises: counted and logged, the request failed."""
        self.stats.malformed_answers += 1
        self.log("mm_answer_malformed", role=role, method=method, path=path, error=str(exc)[:200])

    # --- authority ----------------------------------------------------------------------------

    async def _authority_loop(self) -> None:
        assert self.authority is not None
        while True:
            now = self.clock()
            if self._leaving:
                owners: dict[str, str | None] = dict.fromkeys(self.symbols)
            else:
                candidates = candidates_from_view(self.members())
                if self.aside_reason is not None:
                    # Our own meta says so once set_aside has run; this holds even if it failed.
                    candidates = [c for c in candidates if c != self.name]
                owners = assignment(self.symbols, candidates)
            self._view_changed = trio.Event()
            self._authority_wakeup = trio.Event()
            self._handle(self.authority.set_owners(owners, now), wake=False)
            self._handle(self.authority.poll(now), wake=False)
            deadline = self.authority.next_deadline()
            wait = math.inf if deadline is None else max(0.0, deadline - self.clock())
            with trio.move_on_after(wait):
                await _either(self._view_changed, self._authority_wakeup)

    def _handle(self, outcome: Outcome, *, wake: bool = True) -> None:
        """Log transitions and start what the authority core asked for; `wake` the authority
        loop (its next deadline may have moved) unless this is the loop itself."""
        assert self.authority is not None and self._nursery is not None
        now = self.clock()
        if outcome.transitions:
            self._phases_changed.set()
            self._phases_changed = trio.Event()
        for t in outcome.transitions:
            self.log("mm_authority", **t.to_json())
            if t.new is Phase.IDLE and t.reason.startswith("released:") and t.reason != "released:lease-expired":
                # The exchange accepted the release and withdrew the quote in the same step.
                self._release_retired(t.symbol, None, "authority-released")
            elif t.new is Phase.HELD and t.old is not Phase.HELD:
                # Our claim at t.epoch was accepted: every quote of an older epoch was withdrawn in
                # that step. Without this, a holder that keeps losing its lease (a flapping link)
                # would hold a reservation per loss until their TTLs ran out, and the ledger would
                # refuse it capacity for every symbol.
                self._release_retired(t.symbol, t.epoch, "superseded-by-own-claim")
            elif t.reason.startswith("lost:taken-by:"):
                # Another's newer epoch was accepted: our quotes of t.epoch and before are gone.
                self._release_retired(t.symbol, t.epoch + 1, "superseded")
            if t.new is Phase.HELD and t.old is not Phase.HELD:
                self.stats.authority_changes.append({"symbol": t.symbol, "epoch": t.epoch, "reason": t.reason,
                                                     "at": t.at})
                self.planners[t.symbol].start(t.epoch, now)
                self._wake(t.symbol)
        for action in outcome.actions:
            if isinstance(action, StopQuoting):
                epoch = self.planners[action.symbol].epoch
                self.planners[action.symbol].stop(now)
                self._drop_early(action.symbol, "authority-lost")
                # Not released yet: until the exchange withdraws it, the quote may still be live
                # there, and a live quote must keep its reservation (invariant 4).
                rid = self.reservations.pop(action.symbol, None)
                if rid is not None:
                    self._retired.setdefault(action.symbol, []).append((rid, epoch))
            elif isinstance(action, CheckAuthority):
                self._nursery.start_soon(self._check_authority)
            else:
                self._nursery.start_soon(self._ask_exchange, action)
        if wake and outcome:
            self._authority_wakeup.set()

    async def _ask_exchange(self, request: ExchangeRequest) -> None:
        assert self.authority is not None
        kind, counter = {Claim: ("claim", "claims"), Renew: ("renew", "renewals"),
                         Release: ("release", "releases")}[type(request)]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        sent_at = self.clock()
        answer = await self._call("exchange", "POST", http_path("authority", request.symbol, kind),
                                  {"holder": self.name, "epoch": request.epoch})
        now = self.clock()
        body = None
        if answer is not None and answer.status in (200, 409):
            body = self._read("exchange", "POST", http_path("authority", request.symbol, kind), answer,
                              mm_answers.authority_answer)
        if body is None:
            if answer is not None and answer.status not in (200, 409):
                self.log("mm_authority_refused", symbol=request.symbol, op=kind, status=answer.status,
                         body=answer.body[:200].decode("utf-8", "replace"))
            self._handle(self.authority.on_no_answer(request, now=now))
            return
        self._handle(self.authority.on_answer(request, ExchangeAnswer.from_exchange(body),
                                              sent_at=sent_at, now=now))

    async def _check_authority(self) -> None:
        assert self.authority is not None
        answer = await self._call("exchange", "GET", "/authority")
        if answer is not None and answer.status == 200:
            rows = self._read("exchange", "GET", "/authority", answer, mm_answers.authority_rows)
            if rows is not None:
                self._handle(self.authority.observe_authority(rows, self.clock()))

    # --- quoting ------------------------------------------------------------------------------

    def _wake(self, symbol: str) -> None:
        event = self._symbol_wakeup[symbol]
        self._symbol_wakeup[symbol] = trio.Event()
        event.set()

    async def _quote_loop(self, symbol: str) -> None:
        planner = self.planners[symbol]
        while True:
            wakeup = self._symbol_wakeup[symbol]
            attempt = planner.poll(self.clock())
            if attempt is not None:
                await self._execute(attempt)
                continue
            deadline = planner.next_deadline()
            wait = math.inf if deadline is None else max(0.0, deadline - self.clock())
            with trio.move_on_after(wait):
                await wakeup.wait()

    def _may_quote(self, attempt: QuoteAttempt) -> bool:
        assert self.authority is not None
        return (self.authority.held_epoch(attempt.symbol) == attempt.epoch
                and self.authority.may_quote(attempt.symbol, self.clock()))

    async def _execute(self, attempt: QuoteAttempt) -> None:
        planner = self.planners[attempt.symbol]
        self.stats.quote_attempts += 1
        self.log("mm_quote_attempt", symbol=attempt.symbol, kind=attempt.kind, quote_id=attempt.quote_id,
                 epoch=attempt.epoch, seq=attempt.seq, position_version=attempt.position_version,
                 net_quantity=attempt.net_quantity, reference_price=attempt.reference_price, reason=attempt.reason)
        if not self._may_quote(attempt):
            planner.on_result(attempt, accepted=False, reason="no-authority", now=self.clock())
            return
        if attempt.kind != "new" and attempt.symbol in self._early:
            self._drop_early(attempt.symbol, "not-used")  # no new quote will carry it
        if attempt.kind == "cancel":
            await self._cancel(attempt)
        elif attempt.kind == "refresh":
            await self._refresh(attempt)
        else:
            await self._publish(attempt)

    def _reserve_early(self, symbol: str) -> None:
        """A fill of ours was seen: reserve the replacement's exposure now, for the quote_id it
        will carry and the most it can offer (`size` a side), while the ledger commits the fill
        and the position that will price the replacement is on its way. The replacement then
        only caps its terms by this reservation instead of waiting for one."""
        qid = self.planners[symbol].next_quote_id()
        if qid is None or self._nursery is None or not self.authority or not self.authority.may_quote(symbol, self.clock()):
            return
        early = self._early.get(symbol)
        if early is not None and early[0] == qid:
            return  # already asked for this quote_id
        if early is not None:
            self._drop_early(symbol, "superseded")
        entry = (qid, trio.Event(), [])
        self._early[symbol] = entry
        self._nursery.start_soon(self._ask_reservation, symbol, qid, self.quote_config.size,
                                 self.quote_config.size, entry)

    async def _ask_reservation(self, symbol: str, quote_id: str, bid: int, ask: int, entry: tuple | None) -> Answer | None:
        answer = await self._call("ledger", "POST", "/reservations", {
            "quote_id": quote_id, "holder": self.name, "symbol": symbol, "bid_quantity": bid, "ask_quantity": ask,
            "ttl": self.planner_config.quote_ttl + RESERVATION_MARGIN})
        if entry is not None:
            entry[2].append(answer)
            entry[1].set()
        return answer

    def _drop_early(self, symbol: str, why: str) -> None:
        """An early reservation that no quote will use: release it once its answer is in."""
        entry = self._early.pop(symbol, None)
        if entry is not None and self._nursery is not None:
            # Its quote_id is spent: the ledger answers a repeated quote_id with this very
            # reservation, released by then, so no later quote may carry it.
            self.planners[symbol].retire_quote_id(entry[0])
            self._nursery.start_soon(self._release_early, entry, why)

    async def _release_early(self, entry: tuple, why: str) -> None:
        await entry[1].wait()
        answer = entry[2][0]
        if answer is not None and answer.status in (200, 201):
            read = self._read("ledger", "POST", "/reservations", answer, mm_answers.reservation_answer)
            if read is not None:  # else nothing to name in a release: it expires with its TTL
                await self._release(read.reservation.reservation_id, why)

    async def _publish(self, attempt: QuoteAttempt) -> None:
        planner = self.planners[attempt.symbol]
        assert attempt.terms is not None
        early = self._early.get(attempt.symbol)
        answer = None
        used_early = early is not None and early[0] == attempt.quote_id
        if used_early:
            assert early is not None
            del self._early[attempt.symbol]
            await early[1].wait()
            answer = early[2][0]
        elif early is not None:
            self._drop_early(attempt.symbol, "not-used")
        if answer is None:
            answer = await self._ask_reservation(attempt.symbol, attempt.quote_id, attempt.terms.bid_quantity,
                                                 attempt.terms.ask_quantity, None)
        if answer is None:
            planner.on_timeout(attempt, self.clock())
            return
        read: mm_answers.ReservationAnswer | None = None
        if answer.status in (200, 201) or (answer.status == 409 and mm_answers.reason_of(answer.body) == "no-capacity"):
            read = self._read("ledger", "POST", "/reservations", answer, mm_answers.reservation_answer)
        if read is None:
            reason = mm_answers.reason_of(answer.body)
            self.log("mm_reservation_refused", symbol=attempt.symbol, quote_id=attempt.quote_id,
                     status=answer.status, reason=reason)
            if reason == "not-active":
                planner.retire_quote_id(attempt.quote_id)  # spent: the ledger ended its reservation
            planner.on_result(attempt, accepted=False, reason=f"reservation:{reason}", now=self.clock())
            return
        reservation = read.reservation
        rid = reservation.reservation_id
        assert rid is not None
        self.log("mm_reservation", symbol=attempt.symbol, quote_id=attempt.quote_id, decision=reservation.outcome,
                 reservation_id=rid, state=read.state,
                 requested=[attempt.terms.bid_quantity, attempt.terms.ask_quantity],
                 reserved=[reservation.reserved_bid_quantity, reservation.reserved_ask_quantity],
                 position_version=attempt.position_version, early=used_early)
        if reservation.outcome != "rejected" and read.state != "active":
            # Never quote on a reservation not seen live: a retried quote_id whose reservation
            # was released meanwhile comes back with its old decision (ledgers before the
            # not-active refusal answered so), and a quote on it would hold no capacity.
            planner.retire_quote_id(attempt.quote_id)
            planner.on_result(attempt, accepted=False, reason=f"reservation-{read.state}", now=self.clock())
            return
        terms = cap_by_reservation(attempt.terms, reservation)
        if terms is None:
            self.stats.reservations_rejected += 1
            if reservation.outcome != "rejected":
                self._nursery.start_soon(self._release, rid, "not-used")
            planner.on_result(attempt, accepted=False, reason="reservation-rejected", now=self.clock())
            return
        if not self._may_quote(attempt):  # the reservation took time: check the lease again
            self._nursery.start_soon(self._release, rid, "no-authority")
            planner.on_result(attempt, accepted=False, reason="no-authority", now=self.clock())
            return
        path = http_path("quotes", attempt.symbol)
        put = await self._call("exchange", "PUT", path, {
            "holder": self.name, "epoch": attempt.epoch, "seq": attempt.seq, "quote_id": attempt.quote_id,
            **terms.to_json(), "reservation_id": rid, **_grant(answer)})
        result = self._verdict(put, "PUT", path)
        if result is None:
            planner.on_timeout(attempt, self.clock())  # the retry reuses quote_id: same reservation
            return
        accepted, reason = result.accepted, result.reason
        planner.on_result(attempt, accepted=accepted, reason=reason, now=self.clock(), live_terms=terms)
        if accepted:
            self.stats.quotes_activated += 1
            old = self.reservations.get(attempt.symbol)
            self.reservations[attempt.symbol] = rid
            if old is not None and old != rid:
                self._nursery.start_soon(self._release, old, "replaced")
            self.log("mm_quote_active", symbol=attempt.symbol, quote_id=attempt.quote_id, epoch=attempt.epoch,
                     seq=attempt.seq, **terms.to_json(), reservation_id=rid,
                     position_version=attempt.position_version, fills=result.fills)
        else:
            self.stats.quotes_refused += 1
            self._nursery.start_soon(self._release, rid, f"quote-refused:{reason}")
            self.log("mm_quote_refused", symbol=attempt.symbol, quote_id=attempt.quote_id, epoch=attempt.epoch,
                     seq=attempt.seq, reason=reason, status=put.status)

    async def _refresh(self, attempt: QuoteAttempt) -> None:
        planner = self.planners[attempt.symbol]
        rid = self.reservations.get(attempt.symbol)
        renewed = None
        if rid is not None:
            renewed = await self._call("ledger", "POST", http_path("reservations", rid, "renew"),
                                       {"ttl": self.planner_config.quote_ttl + RESERVATION_MARGIN})
            if renewed is None or renewed.status != 200:
                # Without a reservation that outlives the refreshed TTL, publish a new quote instead.
                self.log("mm_reservation_renew_failed", symbol=attempt.symbol, quote_id=attempt.quote_id,
                         reservation_id=rid, status=None if renewed is None else renewed.status,
                         reason=None if renewed is None else mm_answers.reason_of(renewed.body))
                planner.on_result(attempt, accepted=False, reason="reservation-renew-failed", now=self.clock())
                return
        if not self._may_quote(attempt):
            planner.on_result(attempt, accepted=False, reason="no-authority", now=self.clock())
            return
        assert attempt.terms is not None
        path = http_path("quotes", attempt.symbol)
        # The renewal's grant: the exchange extends the quote no further than it.
        put = await self._call("exchange", "PUT", path, {
            "holder": self.name, "epoch": attempt.epoch, "seq": attempt.seq, "quote_id": attempt.quote_id,
            **attempt.terms.to_json(), "reservation_id": rid, **_grant(renewed)})
        result = self._verdict(put, "PUT", path)
        if result is None:
            planner.on_timeout(attempt, self.clock())
            return
        planner.on_result(attempt, accepted=result.accepted, reason=result.reason, now=self.clock())
        self.log("mm_quote_refreshed" if result.accepted else "mm_quote_refused", symbol=attempt.symbol,
                 quote_id=attempt.quote_id, seq=attempt.seq, reason=result.reason)

    async def _cancel(self, attempt: QuoteAttempt) -> None:
        planner = self.planners[attempt.symbol]
        path = http_path("quotes", attempt.symbol)
        answer = await self._call("exchange", "DELETE", path,
                                  {"holder": self.name, "epoch": attempt.epoch, "seq": attempt.seq})
        result = self._verdict(answer, "DELETE", path)
        if result is None:
            planner.on_timeout(attempt, self.clock())
            return
        planner.on_result(attempt, accepted=result.accepted, reason=result.reason, now=self.clock())
        if result.accepted:
            self._release_reservation(attempt.symbol, "cancelled")
        self.log("mm_quote_cancelled" if result.accepted else "mm_quote_refused", symbol=attempt.symbol,
                 quote_id=attempt.quote_id, seq=attempt.seq, reason=result.reason)

    def _verdict(self, answer: Answer | None, method: str, path: str) -> mm_answers.Verdict | None:
        """The exchange's verdict on a quote operation; None (try the same attempt again) when
        there was no answer or one we cannot read: the operation may or may not have landed,
        and its retry carries the same seq and quote_id."""
        if answer is None:
            return None
        return self._read("exchange", method, path, answer, lambda body: mm_answers.verdict(answer.status, body))

    def _release_retired(self, symbol: str, below: int | None, why: str) -> None:
        """Release the retired reservations of `symbol` whose quotes' epoch is below `below` (all
        of them for None): the exchange has withdrawn those quotes."""
        keep = []
        for rid, epoch in self._retired.pop(symbol, []):
            if below is None or (epoch is not None and epoch < below):
                self._nursery.start_soon(self._release, rid, why)
            else:
                keep.append((rid, epoch))
        if keep:
            self._retired[symbol] = keep

    def _release_reservation(self, symbol: str, why: str) -> None:
        rid = self.reservations.pop(symbol, None)
        if rid is not None and self._nursery is not None:
            self._nursery.start_soon(self._release, rid, why)

    async def _release(self, reservation_id: str, why: str) -> None:
        # Best effort: a reservation nobody releases still expires with its quote's TTL.
        answer = await self._call("ledger", "POST", http_path("reservations", reservation_id, "release"),
                                  {"reason": why})
        self.log("mm_reservation_released", reservation_id=reservation_id, reason=why,
                 status=None if answer is None else answer.status)

    # --- streams in ---------------------------------------------------------------------------

    async def _updates_loop(self) -> None:
        """Committed position updates, in order, resumed from the last seq seen."""
        failures = 0
        while True:
            path = f"/updates?after={self._updates_after}&wait={LONG_POLL}"
            status, read = await self._long_poll("ledger", path, mm_answers.updates)
            if status == 409:
                await self._resync_positions("ledger-behind")
            if read is None:
                failures += 1
                await self._retry_after(failures)
                continue
            failures = 0
            rows, next_after = read
            now = self.clock()
            for u in rows:
                planner = self.planners.get(u.symbol)
                if planner is not None and planner.on_position(u.net_quantity, u.position_version, now):
                    self.stats.position_updates += 1
                    self._wake(u.symbol)
            self._updates_after = next_after

    async def _long_poll(self, role: str, path: str, reader: Callable[[bytes], Any]) -> tuple[int | None, Any]:
        """One long poll: the answer's status (None if none came) and what `reader` made of a
        200 (None for anything else, or for a malformed body, which `_read` counts)."""
        answer = await self._call(role, "GET", path, timeout=LONG_POLL + 2)
        if answer is None or answer.status != 200:
            return (None if answer is None else answer.status), None
        return 200, self._read(role, "GET", path, answer, reader)

    async def _resync_positions(self, why: str) -> None:
        """The ledger has fewer updates than this peer saw (a database restored from a backup):
        its positions are the truth now. Take them whole, and quote anew from them."""
        found, last_seq = await self._get_until_ok("ledger", "/positions", mm_answers.positions)
        rows = {row.symbol: row for row in found}
        now = self.clock()
        for symbol, planner in self.planners.items():
            row = rows.get(symbol, mm_answers.PositionRow(symbol, 0, 0))
            planner.resync_position(row.net_quantity, row.position_version, now)
            self._wake(symbol)
        self._updates_after = last_seq
        self.log("mm_positions_resynced", reason=why, last_seq=last_seq,
                 versions={s: r.position_version for s, r in rows.items()})

    async def _fills_loop(self) -> None:
        """This peer's fills as the exchange creates them: each one triggers a replacement."""
        failures = 0
        while True:
            path = f"/fills?after={self._fills_after}&wait={LONG_POLL}"
            _, read = await self._long_poll("exchange", path, mm_answers.fills)
            if read is None:
                failures += 1
                await self._retry_after(failures)
                continue
            failures = 0
            notices, next_after = read
            now = self.clock()
            for f in notices:
                if f.holder != self.name or f.symbol not in self.planners or f.quote_id is None:
                    continue
                self.stats.fills += 1
                self.log("mm_fill", fill_id=f.fill_id, symbol=f.symbol, side=f.side, quantity=f.quantity,
                         price=f.price, quote_id=f.quote_id, epoch=f.epoch)
                self.planners[f.symbol].on_fill(f.quote_id, now)
                self._reserve_early(f.symbol)
                self._wake(f.symbol)
            self._fills_after = next_after

    async def _prices_loop(self) -> None:
        while True:
            answer = await self._call("exchange", "GET", "/prices")
            read = None
            if answer is not None and answer.status == 200:
                read = self._read("exchange", "GET", "/prices", answer, mm_answers.prices)
            if read is not None:
                now = self.clock()
                for symbol, price in read.items():
                    planner = self.planners.get(symbol)
                    if planner is not None and planner.reference_price != price:
                        planner.on_reference_price(price, now)
                        self._wake(symbol)
            await trio.sleep(PRICE_POLL)

    async def leave(self) -> None:
        """Before the peer leaves the cluster: give every symbol back (a hand-over, so the next
        owner need not wait for a lease to run out) and wait until the exchange has them all.
        Bounded by the caller; whatever is not released by then expires with its lease."""
        self._leaving = True
        self._view_changed.set()
        if self.authority is None:
            return
        before = self.stats.releases
        busy = (Phase.HELD, Phase.RELEASING, Phase.CLAIMING)
        while any(self.authority.phase(s) in busy for s in self.symbols):
            await self._phases_changed.wait()
        self.log("mm_left", released=self.stats.releases - before)

    # --- reading ------------------------------------------------------------------------------

    def authority_view(self) -> list[dict[str, Any]]:
        return self.authority.snapshot(self.clock()) if self.authority is not None else []

    def quotes_view(self) -> list[dict[str, Any]]:
        out = []
        for symbol, planner in self.planners.items():
            a = planner.active
            if a is None:
                continue
            out.append({"symbol": symbol, "quote_id": a.quote_id, "epoch": planner.epoch, **a.terms.to_json(),
                        "reservation_id": self.reservations.get(symbol), "position_version": a.position_version,
                        "reference_price": a.reference_price, "sent_at": a.sent_at})
        return out


def _grant(answer: Answer | None) -> dict[str, Any]:
    """The `grant` field of a quote PUT: the ledger's signed grant in its reservation answer,
    passed on as it came; nothing when there is none (an insecure ledger)."""
    grant = mm_answers.grant_of(answer.body) if answer is not None else None
    return {} if grant is None else {"grant": grant}


async def _either(a: trio.Event, b: trio.Event) -> None:
    """Return when either event is set."""
    if a.is_set() or b.is_set():
        return
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, a)
        nursery.start_soon(wait, b)
