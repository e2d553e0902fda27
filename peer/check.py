"""The invariant checker: reads what a run left behind and says, per invariant, held or violated.

What it is for: `murmur check DATA_DIR`. It re-derives each invariant of MISSION.md from the
exchange's tape and the ledger's database alone, independently of the code that wrote them: it
does not replay `ExchangeCore`, it rebuilds quote lifetimes from the records (activation, TTL,
refresh, replace, withdrawal, cancel, expiry, fills), so a bug in the core is not also a bug in
its judge. Each check returns a `Verdict` with counts and, when violated, the evidence: tape
seqs, quote ids, epochs, fill ids.

It must never write to the files it reads (the tape is opened read-only, the database with
`mode=ro`), and never call an invariant held when its input is missing: that is "not checked".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_EVIDENCE = 20


@dataclass
class Verdict:
    invariant: str  # "1", "2", ... as numbered in MISSION.md
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
    quotes: dict[str, dict[str, Any]] = field(default_factory=dict)  # quote_id -> put_quote args + at


def check_tape(records: Iterable[dict[str, Any]]) -> tuple[list[Verdict], TapeFacts]:
    """Invariants 1 and 2 (exchange half) over the tape's records, in seq order."""
    overlap = Verdict("1", "quotes of at most one epoch are live per symbol at every point", True)
    grow = Verdict("1", "accepted claims carry epochs that only grow, per symbol", True)
    fenced = Verdict("1", "every fill executed a quote that was live, of the symbol's live epoch", True)
    unique = Verdict("2", "every fill on the tape has a unique fill_id and the fill seqs run 1, 2, 3...", True)
    facts = TapeFacts()
    ttl: float | None = None
    live: dict[str, dict[str, _LiveQuote]] = defaultdict(dict)  # symbol -> quote_id -> quote
    epochs: dict[str, int] = {}
    n_records = n_quotes = n_claims = 0

    def end(symbol: str | None, quote_id: str) -> None:
        for sym in [symbol] if symbol else list(live):
            live[sym].pop(quote_id, None)

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

    for rec in records:
        n_records += 1
        kind = rec.get("type")
        at = rec.get("at", 0.0)
        if kind == "genesis":
            ttl = float(rec["quote_ttl"])
            continue
        if kind == "ledger_ack":
            facts.ledger_acked = max(facts.ledger_acked, int(rec["up_to"]))
            continue
        accepted = rec.get("accepted")
        symbol = rec.get("symbol")
        # Ends first: a record's withdrawals and replacements happen before what it adds.
        for ended in (rec.get("withdrawn") or []) + (rec.get("ended") or []):
            end(symbol, ended["quote_id"])
        if rec.get("replaced"):
            end(symbol, rec["replaced"]["quote_id"])
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
                    end(symbol, q.quote_id)
        elif kind == "put_quote" and accepted:
            args = rec["args"]
            if ttl is None:
                overlap.violate(f"seq {rec['seq']}: a quote before the genesis record (no TTL known)")
                ttl = float("inf")
            qid = args["quote_id"]
            if rec.get("reason") == "refreshed" and qid in live[symbol]:
                live[symbol][qid].expires_at = at + ttl
            else:
                n_quotes += 1
                live[symbol][qid] = _LiveQuote(qid, args["epoch"], args["holder"], at + ttl,
                                               args["bid_quantity"], args["ask_quantity"], rec["seq"])
                facts.quotes[qid] = {**args, "at": at, "expires_at": at + ttl, "seq": rec["seq"]}
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
    return [overlap, grow, fenced, unique], facts
