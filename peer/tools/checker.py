"""The invariant checker: reads what a run left behind and says, per invariant, held or violated.

What it is for: `murmur check DATA_DIR`. It re-derives each invariant (docs/invariants.md) from the
exchange's tape and the ledger's database alone, independently of the code that wrote them: it
does not replay `ExchangeCore`, it rebuilds quote lifetimes from the records (activation, TTL,
refresh, replace, withdrawal, cancel, expiry, fills), so a bug in the core is not also a bug in
its judge. Each check returns a `Verdict` with counts and, when violated, the evidence: tape
seqs, quote ids, epochs, fill ids.

Beside the verdicts it measures invariant 6 as a figure (`quote_liveness`): per symbol, the gaps
during which none of its quotes was live, each with the faults of `<data-dir>/faults.jsonl` that
were active then. A gap is not a violation: how long is too long depends on the faults injected,
so the bound is stated by whoever reads the figure (the scenario tests, docs/BENCH.md).

It must never write to the files it reads (the tape is opened read-only, the database with
`mode=ro`), and never call an invariant held when its input is missing: that is "not checked".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from peer.faults.journal import FaultInterval

MAX_EVIDENCE = 20
# A fill the ledger does not have, older than this while the ledger was answering others, was
# not delivered: the exchange's outbox retries within seconds, so only a refusal keeps it out.
DELIVERY_BOUND = 10.0


@dataclass
class Verdict:
    invariant: str  # "1", "2", ... as numbered in docs/invariants.md
    check: str
    held: bool | None  # None: not checked (its input is missing)
    counts: dict[str, int] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    note: str = ""

    def violate(self, text: str) -> None:
        self.held = False
        if len(self.evidence) < MAX_EVIDENCE:
            self.evidence.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "check": self.check,
            "status": {True: "held", False: "violated", None: "not checked"}[self.held],
            "counts": self.counts,
            "evidence": self.evidence,
            **({"note": self.note} if self.note else {}),
        }


@dataclass
class _LiveQuote:
    quote_id: str
    epoch: int
    holder: str
    expires_at: float
    bid_left: int
    ask_left: int
    since_seq: int

    def live_at(self, t: float) -> bool:
        return t < self.expires_at and (self.bid_left > 0 or self.ask_left > 0)


@dataclass
class TapeFacts:
    """What the ledger checks need from the tape: its fills and how far the ledger acknowledged."""

    fills: dict[str, dict[str, Any]] = field(default_factory=dict)  # fill_id -> fill
    fill_order: list[str] = field(default_factory=list)
    ledger_acked: int = 0  # fills with seq <= this were acknowledged by the ledger
    acks: list[tuple[float, int]] = field(default_factory=list)  # (at, up_to) of each ack record

    quotes: dict[str, dict[str, Any]] = field(default_factory=dict)  # quote_id -> put_quote args + at
    # For liveness: quote_id -> its live spans [start, end, why it ended] (a refresh after a lapse
    # starts a new one); end is the expiry ("ttl") unless the quote ended earlier: the reason the
    # tape gives ("released", "lease-expired", "superseded-by-epoch-N", ...), "replaced",
    # "cancelled" or "filled" (in full).
    spans: dict[str, list[list[Any]]] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)  # the genesis record's, in its order
    started_at: float | None = None  # the genesis record's time
    last_at: float | None = None  # the last record's time: the end of the history

    def acked_by(self, t: float) -> int:
        """The acknowledged position as of time t (the ledger may be a snapshot older than the tape)."""
        return max((up_to for at, up_to in self.acks if at <= t), default=0)


def check_tape(records: Iterable[dict[str, Any]]) -> tuple[list[Verdict], TapeFacts]:
    """Invariants 1 and 2 (exchange half) over the tape's records, in seq order."""
    overlap = Verdict("1", "quotes of at most one epoch are live per symbol at every point", True)
    grow = Verdict("1", "accepted claims carry epochs that only grow, per symbol", True)
    fenced = Verdict("1", "every fill executed a quote that was live, of the symbol's live epoch", True)
    unique = Verdict("2", "every fill on the tape has a unique fill_id and the fill seqs run 1, 2, 3...", True)
    authorized = Verdict("1", "every accepted quote operation carried the symbol's held epoch and holder, "
                              "its lease live", True)
    # Per symbol, rebuilt from the claims, renewals and releases alone: [epoch, holder, held, lease end].
    held: dict[str, list[Any]] = {}
    lease = math.inf
    n_quote_ops = 0
    facts = TapeFacts()
    ttl: float | None = None
    live: dict[str, dict[str, _LiveQuote]] = defaultdict(dict)  # symbol -> quote_id -> quote
    epochs: dict[str, int] = {}
    n_records = n_quotes = n_claims = 0

    def end(symbol: str | None, quote_id: str, at: float, reason: str) -> None:
        for sym in [symbol] if symbol else list(live):
            if live[sym].pop(quote_id, None) is not None and quote_id in facts.quotes:
                facts.quotes[quote_id].setdefault("ended_at", at)
                span = facts.spans[quote_id][-1]
                if at < span[1]:  # otherwise its TTL had run out first (a late tick, say)
                    span[1:] = [at, reason]

    def note_fills(rec: dict[str, Any], at: float) -> None:
        for f in rec.get("fills") or []:
            fid = f["fill_id"]
            if fid in facts.fills:
                unique.violate(f"seq {rec['seq']}: fill {fid} was already recorded")
                continue
            expected = len(facts.fill_order) + 1
            if f.get("seq") != expected:
                unique.violate(f"seq {rec['seq']}: fill {fid} has fill seq {f.get('seq')}, expected {expected}")
            facts.fills[fid] = f
            facts.fill_order.append(fid)
            quote = live[f["symbol"]].get(f["quote_id"])
            if quote is None or not quote.live_at(at):
                fenced.violate(f"seq {rec['seq']}: fill {fid} executed quote {f['quote_id']}, which was not live")
                continue
            other = {q.epoch for q in live[f["symbol"]].values() if q.live_at(at)} - {quote.epoch}
            if other or f["epoch"] != quote.epoch:
                fenced.violate(f"seq {rec['seq']}: fill {fid} of epoch {f['epoch']} while epochs {sorted(other)} live")
            side = "bid_left" if f["side"] == "buy" else "ask_left"
            setattr(quote, side, getattr(quote, side) - f["quantity"])
            if getattr(quote, side) < 0:
                fenced.violate(f"seq {rec['seq']}: fill {fid} took more than quote {quote.quote_id} offered")
            if quote.bid_left <= 0 and quote.ask_left <= 0:
                end(f["symbol"], quote.quote_id, at, "filled")  # filled in full: nothing of it is live

    for rec in records:
        n_records += 1
        kind = rec.get("type")
        at = rec.get("at", 0.0)
        facts.last_at = at if facts.last_at is None else max(facts.last_at, at)
        if kind == "genesis":
            ttl = float(rec["quote_ttl"])
            lease = float(rec.get("lease_duration", math.inf))
            facts.started_at = at
            facts.symbols = [s for s in rec.get("symbols") or [] if isinstance(s, str)]
            continue
        if kind == "ledger_ack":
            facts.ledger_acked = max(facts.ledger_acked, int(rec["up_to"]))
            facts.acks.append((at, int(rec["up_to"])))
            continue
        accepted = rec.get("accepted")
        symbol = rec.get("symbol")
        # Ends first: a record's withdrawals and replacements happen before what it adds.
        for ended in (rec.get("withdrawn") or []) + (rec.get("ended") or []):
            end(symbol, ended["quote_id"], at, str(ended.get("reason") or ended.get("state") or "ended"))
        if rec.get("replaced"):
            end(symbol, rec["replaced"]["quote_id"], at, "replaced")
        if accepted and kind in ("put_quote", "cancel_quote"):
            n_quote_ops += 1
            args = rec["args"]
            auth = held.get(symbol)
            if auth is None or (args.get("epoch"), args.get("holder")) != (auth[0], auth[1]) or not auth[2] \
                    or at >= auth[3]:
                authorized.violate(
                    f"seq {rec['seq']}: {kind} of {symbol} by {args.get('holder')} at epoch {args.get('epoch')} "
                    "accepted while " + ("no claim was held" if auth is None else
                                         f"{auth[1]} held epoch {auth[0]}" + ("" if auth[2] else " (released)")
                                         + (f", its lease over at {auth[3]:.3f}" if at >= auth[3] else "")))
        if kind == "claim" and accepted:
            held[symbol] = [rec["args"]["epoch"], rec["args"]["holder"], True, at + lease]
        elif kind == "renew" and accepted and symbol in held:
            held[symbol][3] = at + lease
        elif kind == "release" and accepted and symbol in held:
            held[symbol][2] = False
        if kind == "claim" and accepted:
            n_claims += 1
            epoch = rec["args"]["epoch"]
            if symbol in epochs and epoch <= epochs[symbol]:
                grow.violate(f"seq {rec['seq']}: {symbol} claimed at epoch {epoch} after epoch {epochs[symbol]}")
            epochs[symbol] = max(epoch, epochs.get(symbol, epoch))
        elif kind == "cancel_quote" and accepted:
            args = rec["args"]
            for q in list(live[symbol].values()):
                if q.epoch == args["epoch"] and q.holder == args["holder"]:
                    end(symbol, q.quote_id, at, "cancelled")
        elif kind == "put_quote" and accepted:
            args = rec["args"]
            if ttl is None:
                overlap.violate(f"seq {rec['seq']}: a quote before the genesis record (no TTL known)")
                ttl = float("inf")
            qid = args["quote_id"]
            # A quote with a grant ends at the grant's expiry at the latest (book/exchange.py).
            grant = args.get("grant")
            until = at + ttl if not isinstance(grant, dict) else min(at + ttl, float(grant["expires_at"]))
            if rec.get("reason") == "refreshed" and qid in live[symbol]:
                live[symbol][qid].expires_at = until
                facts.quotes[qid]["expires_at"] = until
                span = facts.spans[qid][-1]
                if at <= span[1]:
                    span[1] = until
                else:  # refreshed after its TTL ran out: it was not live in between
                    facts.spans[qid].append([at, until, "ttl"])
            else:
                n_quotes += 1
                live[symbol][qid] = _LiveQuote(qid, args["epoch"], args["holder"], until,
                                               args["bid_quantity"], args["ask_quantity"], rec["seq"])
                facts.quotes[qid] = {**args, "at": at, "expires_at": until, "seq": rec["seq"]}
                facts.spans[qid] = [[at, until, "ttl"]]
            epochs_live = {q.epoch: q.quote_id for q in live[symbol].values() if q.live_at(at)}
            if len(epochs_live) > 1:
                overlap.violate(
                    f"seq {rec['seq']}: {symbol} has live quotes of epochs "
                    + ", ".join(f"{e} ({qid})" for e, qid in sorted(epochs_live.items()))
                )
        note_fills(rec, at)

    overlap.counts = {"records": n_records, "quotes": n_quotes, "symbols": len(live)}
    grow.counts = {"accepted_claims": n_claims}
    fenced.counts = {"fills": len(facts.fill_order)}
    unique.counts = {"fills": len(facts.fill_order), "ledger_acked": facts.ledger_acked}
    authorized.counts = {"quote_operations": n_quote_ops}
    return [overlap, grow, authorized, fenced, unique], facts


# --- liveness: the gaps during which a symbol had no live quote ----------------------------------


@dataclass
class QuoteGap:
    """A stretch of time after a symbol's first quote during which none of its quotes was live."""

    symbol: str
    start: float
    end: float | None  # None: still open at the end of the tape
    duration: float  # to `end`, or to the end of the tape while open
    quote_ended: str = ""  # why the last live quote ended: "ttl", "released", "lease-expired", "filled", ...
    faults: list[str] = field(default_factory=list)  # summaries of the faults active at some point of it

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "start": self.start, "end": self.end, "duration": self.duration,
                "open": self.end is None, "quote_ended": self.quote_ended, "faults": self.faults}


@dataclass
class SymbolLiveness:
    symbol: str
    first_quote_at: float | None  # None: never quoted (the start-up before it is not a gap)
    spans: list[tuple[float, float]]  # merged live spans [start, end); the last may reach past the tape
    gaps: list[QuoteGap]

    @property
    def longest(self) -> QuoteGap | None:
        return max(self.gaps, key=lambda g: g.duration, default=None)

    def gaps_over(self, seconds: float) -> list[QuoteGap]:
        return [g for g in self.gaps if g.duration >= seconds]

    def to_json(self) -> dict[str, Any]:
        longest = self.longest
        return {"first_quote_at": self.first_quote_at, "gap_count": len(self.gaps),
                "unquoted_s": sum(g.duration for g in self.gaps),
                "longest_gap": longest.to_json() if longest else None,
                "gaps": [g.to_json() for g in self.gaps]}


@dataclass
class Liveness:
    """Invariant 6 as a figure: per symbol, the gaps in its quoting over the tape. Not a verdict."""

    started_at: float | None  # the tape's genesis
    end_at: float  # the tape's last record: open gaps are measured to it
    symbols: dict[str, SymbolLiveness]

    @property
    def longest(self) -> QuoteGap | None:
        return max((g for s in self.symbols.values() for g in s.gaps), key=lambda g: g.duration, default=None)

    def to_json(self) -> dict[str, Any]:
        longest = self.longest
        return {"started_at": self.started_at, "end_at": self.end_at,
                "longest_gap": longest.to_json() if longest else None,
                "symbols": {name: s.to_json() for name, s in self.symbols.items()}}


def quote_liveness(facts: TapeFacts, faults: Iterable[FaultInterval] = (), end_at: float | None = None) -> Liveness:
    """The gaps in each symbol's quoting, from the spans `check_tape` rebuilt, each annotated with
    the faults (`peer.faults.journal.fault_intervals`) active at some point of it.

    A symbol's quoting is the union of its quotes' live spans; spans that touch (a replacement
    ends the old quote at the instant the new one starts) leave no gap. Every gap longer than
    zero is kept, however short; what to list is the reader's choice (`SymbolLiveness.gaps_over`).
    `end_at`: the end of the history (default: the tape's last record)."""
    faults = list(faults)
    if end_at is None:
        end_at = facts.last_at if facts.last_at is not None else 0.0
    by_symbol: dict[str, list[tuple[float, float, str]]] = {s: [] for s in facts.symbols}
    for qid, q in facts.quotes.items():
        spans = by_symbol.setdefault(q["symbol"], [])
        spans += [(s, e, why) for s, e, why in facts.spans.get(qid, []) if e > s]
    symbols: dict[str, SymbolLiveness] = {}
    for symbol, spans in by_symbol.items():
        merged: list[tuple[float, float, str]] = []  # (start, end, why the quote that ended it ended)
        for s, e, why in sorted(spans):
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1] = (merged[-1][0], e, why)
            else:
                merged.append((s, e, why))
        gaps = [QuoteGap(symbol, a[1], b[0], b[0] - a[1], a[2]) for a, b in zip(merged, merged[1:], strict=False)]
        if merged and merged[-1][1] < end_at:
            gaps.append(QuoteGap(symbol, merged[-1][1], None, end_at - merged[-1][1], merged[-1][2]))
        for g in gaps:
            g.faults = list(dict.fromkeys(iv.summary for iv in faults if iv.overlaps(g.start, g.end)))
        symbols[symbol] = SymbolLiveness(symbol, merged[0][0] if merged else None,
                                         [(s, e) for s, e, _ in merged], gaps)
    return Liveness(facts.started_at, end_at, symbols)


def requoted_within(liveness: Liveness, t: float) -> dict[str, float | None]:
    """Per symbol, how long after time t it was next quoted: 0 if a quote of it was live at t,
    None if it was not quoted again before the end of the tape (or never quoted at all)."""
    out: dict[str, float | None] = {}
    for symbol, s in liveness.symbols.items():
        out[symbol] = None
        for i, (start, end) in enumerate(s.spans):
            if i == len(s.spans) - 1 and end >= liveness.end_at:
                end = math.inf  # live at the end of the tape: what came after is unknown, not a gap
            if start <= t < end:
                out[symbol] = 0.0
                break
            if start > t:
                out[symbol] = start - t
                break
    return out


# --- the ledger ------------------------------------------------------------------------------------

FILL_FIELDS = ("fill_id", "seq", "order_id", "symbol", "side", "quantity", "price", "quote_id", "epoch", "holder",
               "reservation_id", "created_at")


def check_ledger(conn: Any, facts: TapeFacts | None, limit: int, snapshot_at: float = math.inf,
                 delivery_bound: float = DELIVERY_BOUND,
                 ledger_clock: Callable[[float], float] | None = None) -> list[Verdict]:
    """Invariants 2 (ledger half), 3 and 4 over the ledger's database (an sqlite3 connection
    with `row_factory = sqlite3.Row`), cross-checked with the tape's facts when there are some.

    `snapshot_at`: when the ledger's snapshot was taken, for a running cluster. The tape is read
    after it, so it may hold more; what happened after the snapshot is not judged against it.

    `ledger_clock`: maps a time the ledger recorded to the exchange's clock, where the two are
    compared (a reservation covering a quote, a fill's delivery). None when they share a clock,
    as under `murmur launch`; the simulation, which knows the ledger's drift, passes its inverse."""
    once = Verdict("2", "the ledger holds each fill once, as the exchange created it, and every acknowledged one", True)
    derived = Verdict("3", "net_quantity is the signed sum of the fills; versions rise by one per fill", True)
    limited = Verdict("4", f"active reservations never held more than {limit} per side", True)
    backed = Verdict("4", "every quote was live only while a granted reservation covered it", True)

    rows = conn.execute(f"SELECT update_seq, position_version, net_quantity, {', '.join(FILL_FIELDS)} "
                        "FROM fills ORDER BY update_seq").fetchall()
    distinct = conn.execute("SELECT COUNT(DISTINCT fill_id) FROM fills").fetchone()[0]
    if distinct != len(rows):
        once.violate(f"{len(rows) - distinct} fill ids appear more than once")
    running: dict[str, tuple[int, int, str]] = {}  # symbol -> (net, version, last fill)
    for i, row in enumerate(rows, start=1):
        if row["update_seq"] != i:
            derived.violate(f"update_seq {row['update_seq']} where {i} was next: a gap in the commit order")
        net, version, _ = running.get(row["symbol"], (0, 0, ""))
        net += row["quantity"] if row["side"] == "buy" else -row["quantity"]
        version += 1
        if (row["net_quantity"], row["position_version"]) != (net, version):
            derived.violate(f"fill {row['fill_id']}: recorded net {row['net_quantity']} version "
                            f"{row['position_version']}, the fills give net {net} version {version}")
            net, version = row["net_quantity"], row["position_version"]
        running[row["symbol"]] = (net, version, row["fill_id"])
        if facts is not None:
            tape_fill = facts.fills.get(row["fill_id"])
            if tape_fill is None:
                once.violate(f"fill {row['fill_id']} is in the ledger but not on the exchange's tape")
            else:
                diff = [k for k in FILL_FIELDS if tape_fill.get(k) != row[k]]
                if diff:
                    once.violate(f"fill {row['fill_id']} differs from the tape in {', '.join(diff)}")
    positions = {r["symbol"]: r for r in conn.execute("SELECT * FROM positions")}
    for symbol, (net, version, last) in running.items():
        p = positions.get(symbol)
        if p is None or (p["net_quantity"], p["position_version"], p["last_fill_id"]) != (net, version, last):
            got = None if p is None else (p["net_quantity"], p["position_version"], p["last_fill_id"])
            derived.violate(f"position {symbol} is {got}, the fills give {(net, version, last)}")
    for symbol in set(positions) - set(running):
        derived.violate(f"position {symbol} exists with no fills")
    in_ledger = {r["fill_id"] for r in rows}
    delivered = Verdict("2", f"every fill reached the ledger within {delivery_bound:g} s while the ledger was "
                             "reachable", True)
    if facts is not None:
        _check_delivery(conn, facts, in_ledger, delivered, snapshot_at, delivery_bound, ledger_clock)
    else:
        delivered.held = None
        delivered.note = "no tape: fills are created on the exchange's tape"
    if facts is not None:
        acked = facts.acked_by(snapshot_at)
        missing = [fid for fid in facts.fill_order if facts.fills[fid]["seq"] <= acked and fid not in in_ledger]
        for fid in missing:
            once.violate(f"fill {fid} was acknowledged to the exchange but is not in the ledger")
        once.counts = {"ledger_fills": len(rows), "tape_fills": len(facts.fills), "acknowledged": acked,
                       "not_yet_delivered": sum(1 for fid in facts.fill_order if fid not in in_ledger)}
    else:
        once.counts = {"ledger_fills": len(rows)}
        once.note = "no tape: checked the ledger alone"
    derived.counts = {"fills": len(rows), "symbols": len(running)}

    _check_exposure(conn, limit, limited)
    if facts is None:
        backed.held = None
        backed.note = "no tape: quotes are on the exchange's tape"
    else:
        _check_backing(conn, facts, backed, snapshot_at, ledger_clock)
    return [once, delivered, derived, limited, backed]


def _check_delivery(conn: Any, facts: TapeFacts, in_ledger: set[str], verdict: Verdict, snapshot_at: float,
                    bound: float, ledger_clock: Callable[[float], float] | None) -> None:
    """A fill on the tape that the ledger lacks is a violation once it is older than `bound` at a
    time the ledger was demonstrably reachable: it recorded a fill, granted a reservation or
    counted a fill against one, or the exchange recorded its acknowledgement. (A ledger that was
    down since has no such time, and its missing fills are only "not yet delivered".) Times are
    both peers' wall clocks: on several machines, `bound` must cover their skew."""
    last = max((at for at, _ in facts.acks), default=-math.inf)
    for sql in ("SELECT MAX(recorded_at) FROM fills", "SELECT MAX(created_at) FROM reservations",
                "SELECT MAX(applied_at) FROM reservation_fills"):
        value = conn.execute(sql).fetchone()[0]
        if value is not None:
            last = max(last, ledger_clock(value) if ledger_clock else value)
    last = min(last, snapshot_at)
    late = 0
    for fid in facts.fill_order:
        if fid in in_ledger:
            continue
        created = facts.fills[fid].get("created_at")
        if isinstance(created, int | float) and created + bound < last:
            late += 1
            verdict.violate(f"fill {fid} (fill seq {facts.fills[fid].get('seq')}) created at {created:.6f} is not "
                            f"in the ledger, which was reachable until {last:.6f}: stuck in the exchange's outbox "
                            "(see docs/runbook.md, 'Fills not delivered')")
    verdict.counts = {"not_delivered_past_bound": late}
    if last > -math.inf:
        verdict.counts["ledger_last_seen"] = int(last)


def _check_exposure(conn: Any, limit: int, verdict: Verdict) -> None:
    """At every grant, the remaining quantities of the reservations active then are within the
    limit: a sweep over grants, fills applied to reservations, and ends (expiry or release)."""
    events: list[tuple[float, int, str, Any]] = []  # (time, order at equal times, kind, data)
    n = 0
    for r in conn.execute("SELECT reservation_id, created_at, expires_at, ended_at, reserved_bid_quantity, "
                          "reserved_ask_quantity FROM reservations WHERE decision != 'rejected'"):
        n += 1
        end = min(r["expires_at"], r["ended_at"] if r["ended_at"] is not None else math.inf)
        events.append((r["created_at"], 2, "grant", (r["reservation_id"], r["reserved_bid_quantity"],
                                                     r["reserved_ask_quantity"])))
        events.append((end, 0, "end", r["reservation_id"]))
    for f in conn.execute("SELECT reservation_id, applied_at, side, quantity FROM reservation_fills"):
        events.append((f["applied_at"], 1, "fill", (f["reservation_id"], 0 if f["side"] == "buy" else 1,
                                                    f["quantity"])))
    events.sort(key=lambda e: (e[0], e[1]))
    remaining: dict[str, list[int]] = {}
    used = [0, 0]
    worst = [0, 0]
    for t, _, kind, data in events:
        if kind == "grant":
            rid, bid, ask = data
            remaining[rid] = [bid, ask]
            used[0] += bid
            used[1] += ask
            worst = [max(worst[0], used[0]), max(worst[1], used[1])]
            if used[0] > limit or used[1] > limit:
                verdict.violate(f"after granting {rid} at {t:.6f}: bid {used[0]}, ask {used[1]} reserved")
        elif kind == "fill":
            rid, side, qty = data
            left = remaining.get(rid)
            if left is not None:
                taken = min(qty, left[side])
                left[side] -= taken
                used[side] -= taken
        else:
            left = remaining.pop(data, None)
            if left is not None:
                used[0] -= left[0]
                used[1] -= left[1]
    verdict.counts = {"reservations": n, "peak_bid": worst[0], "peak_ask": worst[1]}


def _check_backing(conn: Any, facts: TapeFacts, verdict: Verdict, snapshot_at: float,
                   ledger_clock: Callable[[float], float] | None) -> None:
    reservations = {r["reservation_id"]: r for r in conn.execute("SELECT * FROM reservations")}
    later = 0
    for qid, q in facts.quotes.items():
        if q["at"] >= snapshot_at:
            later += 1  # activated after the ledger's snapshot: its reservation may be newer too
            continue
        rid = q.get("reservation_id")
        r = reservations.get(rid) if rid else None
        if r is None:
            verdict.violate(f"quote {qid} (tape seq {q['seq']}) went live with no reservation ({rid!r})")
            continue
        if r["decision"] == "rejected" or r["quote_id"] != qid:
            verdict.violate(f"quote {qid} used reservation {rid}, which was {r['decision']} for {r['quote_id']}")
            continue
        if q["bid_quantity"] > r["reserved_bid_quantity"] or q["ask_quantity"] > r["reserved_ask_quantity"]:
            verdict.violate(f"quote {qid} offered {q['bid_quantity']}/{q['ask_quantity']}, reservation {rid} "
                            f"granted {r['reserved_bid_quantity']}/{r['reserved_ask_quantity']}")
        # Judged up to the snapshot: a refresh and its reservation's renewal after it are unseen.
        live_until = min(q.get("ended_at", math.inf), q["expires_at"], snapshot_at)
        granted = r["created_at"]
        covered_until = min(r["expires_at"], r["ended_at"] if r["ended_at"] is not None else math.inf)
        if ledger_clock is not None:
            granted, covered_until = ledger_clock(granted), ledger_clock(covered_until)
        if granted > q["at"] or covered_until < live_until:
            verdict.violate(f"quote {qid} was live from {q['at']:.6f} to {live_until:.6f}; reservation {rid} "
                            f"covered {granted:.6f} to {covered_until:.6f}")
    verdict.counts = {"quotes": len(facts.quotes) - later, "reservations": len(reservations)}
    if later:
        verdict.counts["after_snapshot"] = later
