"""The exchange's rules as one core: books, authority fencing, quotes, fills — no I/O.

What it is for: every decision the exchange peer makes. Each command (`submit_order`,
`cancel_order`, `claim`, `renew`, `release`, `put_quote`, `cancel_quote`, `tick`) takes its
arguments and `now`, changes the state, and returns an answer dict with `accepted` and `reason`.
`execute(type, args, now)` is the same thing by name, which is what the tape replays: given the
same commands at the same instants, a fresh core reaches the same state (same epochs, same book,
same fill ids). That is how the exchange survives a restart.

Invariant 1 lives here: on accepting a claim with a new epoch, every quote of an older epoch is
withdrawn in the same step, and every quote operation is fenced by (holder, epoch, seq), so quotes
of at most one epoch are ever live for a symbol (`check_invariants`).

Invariant 4 is enforced here too, when the shell hands a quote its reservation's `grant`: the
terms the ledger signed (reservation_id, quote_id, holder, symbol, reserved bid and ask
quantities, expires_at), which the shell verified (peer/http/signing.py) before the command was
run or taped. A quote must match its grant, stay within its quantities, and ends no later than
its expires_at. A quote with no grant (an insecure cluster, where nothing can be verified) is
taken as before.

It must never do I/O, sleep, read a clock or draw randomness, nor verify a signature; the
membership verdict a claim needs ("is the current holder alive in my view?") is an argument too,
and so are a grant's verified terms.
"""

from __future__ import annotations

import inspect
from typing import Any

from book import bounds
from book.authority import AuthorityTable
from book.fills import Fill, Quote, QuoteState
from book.orderbook import OrderBook
from book.orders import BookError, Execution, Kind, Order, Side, Status

QUOTE_TTL = 30.0
LEASE_DURATION = 2.0


class CommandError(bounds.FieldError):
    """A command whose arguments are malformed (bad types, unknown symbol): nothing changes."""


def _int(args: dict, name: str, *, positive: bool = True) -> int:
    """A counter (epoch, seq): within book.bounds.MAX_COUNT."""
    return bounds.count(args.get(name), name, minimum=1 if positive else 0, error=CommandError)


def _str(args: dict, name: str, *, optional: bool = False) -> str | None:
    v = args.get(name)
    if v is None and optional:
        return None
    return bounds.ident(v, name, error=CommandError)


GRANT_TERMS = ("reservation_id", "quote_id", "holder", "symbol", "bid_quantity", "ask_quantity", "expires_at")


def _grant(grant: Any) -> dict | None:
    """A grant's verified terms, checked for shape (the tape replays them as they came)."""
    if grant is None:
        return None
    if not isinstance(grant, dict) or set(grant) != set(GRANT_TERMS):
        raise CommandError("grant", f"must be an object of exactly {', '.join(GRANT_TERMS)}")
    for name in ("reservation_id", "quote_id", "holder", "symbol"):
        bounds.ident(grant[name], f"grant.{name}", error=CommandError)
    for name in ("bid_quantity", "ask_quantity"):
        bounds.quantity(grant[name], f"grant.{name}", minimum=0, error=CommandError)
    bounds.seconds(grant["expires_at"], "grant.expires_at", error=CommandError)
    return grant


def _answer(accepted: bool, reason: str, **data: Any) -> dict[str, Any]:
    return {"accepted": accepted, "reason": reason, **data}


class ExchangeCore:
    COMMANDS = ("submit_order", "cancel_order", "claim", "renew", "release", "put_quote", "cancel_quote", "tick")

    def __init__(self, symbols: list[str], *, quote_ttl: float = QUOTE_TTL, lease_duration: float = LEASE_DURATION,
                 fill_prefix: str = "F"):
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be a non-empty list of distinct names")
        for s in symbols:
            bounds.symbol(s, "symbols", error=lambda field, message: ValueError(f"{field}: {message}"))
        self.symbols = list(symbols)
        self.quote_ttl = quote_ttl
        self.books = {s: OrderBook(s) for s in symbols}
        self.authority = AuthorityTable(symbols, lease_duration)
        self.active_quotes: dict[str, Quote] = {}
        self.quotes: dict[str, Quote] = {}  # every quote ever accepted, by id
        self.fills: list[Fill] = []
        self.trades = 0  # external-vs-external executions: no market maker involved, no fill
        self.orders: dict[str, Order] = {}  # external orders by id (live and finished)
        self._order_requests: dict[str, tuple] = {}  # order_id -> (fingerprint, answer)
        self._quote_answers: dict[str, tuple] = {}  # symbol -> ((epoch, seq, fingerprint), answer)
        self._leg_quote: dict[str, Quote] = {}  # leg order_id -> quote
        self.commands = 0
        # Fill ids carry the exchange instance (from its tape's genesis record), so a fresh tape
        # can never mint an id the ledger already holds for another fill.
        self.fill_prefix = fill_prefix

    # --- dispatch (what the tape replays) ------------------------------------------------------

    def execute(self, kind: str, args: dict[str, Any], now: float) -> dict[str, Any]:
        if type(kind) is not str or kind not in self.COMMANDS:
            raise CommandError("type", f"unknown command {bounds.short(kind)}")
        if not isinstance(args, dict):
            raise CommandError("args", "must be a map of the command's arguments")
        allowed = _ARGUMENTS[kind]
        for name in args:
            if name not in allowed:
                raise CommandError(bounds.field_name(name), f"unknown field; allowed: {', '.join(allowed)}")
        self.commands += 1
        return getattr(self, kind)(now=now, **args)

    # --- external orders ----------------------------------------------------------------------

    def submit_order(self, *, now: float, order_id: Any = None, symbol: Any = None, side: Any = None,
                     type: Any = "limit", quantity: Any = None, limit_price: Any = None) -> dict:
        order_id = _str({"order_id": order_id}, "order_id")
        if "/" in order_id:
            # "/" is reserved for the legs of quotes ("{quote_id}/buy"): no external id may collide.
            raise CommandError("order_id", "must not contain '/'")
        fingerprint = (symbol, side, type, quantity, limit_price)
        seen = self._order_requests.get(order_id)
        if seen is not None:
            if seen[0] == fingerprint:
                return {**seen[1], "duplicate": True}
            return _answer(False, "conflict", order_id=order_id,
                           detail="order_id already used with different content")
        symbol = self._known_symbol(symbol)
        try:
            side_v = Side(side)
        except ValueError:
            raise CommandError("side", "must be 'buy' or 'sell'") from None
        try:
            kind_v = Kind(type)
        except ValueError:
            raise CommandError("type", "must be 'limit' or 'market'") from None
        order = Order(order_id, symbol, side_v, kind_v, quantity, limit_price, now)
        try:
            order.validate()
        except BookError as exc:
            field = getattr(exc, "field", None) or "quantity"
            raise CommandError(field, str(exc).removeprefix(f"{field}: ")) from None
        book = self.books[symbol]
        executions = book.submit(order, now)
        fills = self._record_executions(executions, now)
        self._settle_withdrawn(book)
        self.orders[order_id] = order
        answer = _answer(
            order.status is not Status.REJECTED,
            "no-liquidity" if order.status is Status.REJECTED else order.status.value,
            order=order.to_json(),
            fills=[f.to_json() for f in fills],
        )
        self._order_requests[order_id] = (fingerprint, answer)
        return answer

    def cancel_order(self, *, now: float, order_id: Any = None) -> dict:
        order_id = _str({"order_id": order_id}, "order_id")
        order = self.orders.get(order_id)
        if order is None:
            return _answer(False, "unknown-order", order_id=order_id)
        if not order.status.is_live:
            return _answer(False, f"already-{order.status.value}", order=order.to_json())
        self.books[order.symbol].cancel(order_id)
        return _answer(True, "cancelled", order=order.to_json())

    # --- authority ----------------------------------------------------------------------------

    def claim(self, *, now: float, symbol: Any = None, holder: Any = None, epoch: Any = None,
              holder_alive: bool = True) -> dict:
        symbol, holder, epoch = self._fence_args(symbol, holder, epoch)
        decision = self.authority.claim(symbol, holder, epoch, now, bool(holder_alive))
        withdrawn = []
        if decision.reason == "claimed":
            q = self.active_quotes.get(symbol)
            if q is not None and q.epoch < epoch:
                # Invariant 1: the old epoch's quote dies in the same step the new epoch is born.
                withdrawn.append(self._end_quote(q, QuoteState.WITHDRAWN, f"superseded-by-epoch-{epoch}"))
        return _answer(decision.accepted, decision.reason, authority=self.authority[symbol].to_json(now),
                       withdrawn=withdrawn)

    def renew(self, *, now: float, symbol: Any = None, holder: Any = None, epoch: Any = None) -> dict:
        symbol, holder, epoch = self._fence_args(symbol, holder, epoch)
        decision = self.authority.renew(symbol, holder, epoch, now)
        return _answer(decision.accepted, decision.reason, authority=self.authority[symbol].to_json(now))

    def release(self, *, now: float, symbol: Any = None, holder: Any = None, epoch: Any = None) -> dict:
        symbol, holder, epoch = self._fence_args(symbol, holder, epoch)
        decision = self.authority.release(symbol, holder, epoch, now)
        withdrawn = []
        q = self.active_quotes.get(symbol)
        if decision.reason == "released" and q is not None:
            withdrawn.append(self._end_quote(q, QuoteState.WITHDRAWN, "released"))
        return _answer(decision.accepted, decision.reason, authority=self.authority[symbol].to_json(now),
                       withdrawn=withdrawn)

    # --- quotes -------------------------------------------------------------------------------

    def put_quote(self, *, now: float, symbol: Any = None, holder: Any = None, epoch: Any = None,
                  seq: Any = None, quote_id: Any = None, bid_price: Any = None, bid_quantity: Any = None,
                  ask_price: Any = None, ask_quantity: Any = None, reservation_id: Any = None,
                  grant: Any = None) -> dict:
        symbol, holder, epoch = self._fence_args(symbol, holder, epoch)
        seq = _int({"seq": seq}, "seq")
        quote_id = _str({"quote_id": quote_id}, "quote_id")
        terms = {"bid_price": bid_price, "bid_quantity": bid_quantity, "ask_price": ask_price, "ask_quantity": ask_quantity}
        bp, ap = (bounds.price(terms[k], k, error=CommandError) for k in ("bid_price", "ask_price"))
        bq, aq = (bounds.quantity(terms[k], k, minimum=0, error=CommandError) for k in ("bid_quantity", "ask_quantity"))
        if bq == 0 and aq == 0:
            raise CommandError("bid_quantity", "a quote needs a bid or an ask quantity")
        if bp >= ap:
            raise CommandError("ask_price", "must be above bid_price")
        reservation_id = _str({"reservation_id": reservation_id}, "reservation_id", optional=True)
        grant = _grant(grant)
        fingerprint = (epoch, seq, holder, quote_id, bp, bq, ap, aq, reservation_id,
                       None if grant is None else grant["expires_at"])
        retry = self._retry(symbol, "put", fingerprint)
        if retry is not None:
            return retry
        decision = self.authority.check_quote_op(symbol, holder, epoch, seq, now)
        if not decision:
            return _answer(False, decision.reason, authority=self.authority[symbol].to_json(now))
        expires_at = now + self.quote_ttl
        if grant is not None:
            refused = self._outside_grant(grant, symbol, holder, quote_id, reservation_id, bq, aq, now)
            if refused is not None:
                return refused
            # A quote never outlives its reservation: it ends at the grant's expiry at the latest.
            expires_at = min(expires_at, grant["expires_at"])
        active = self.active_quotes.get(symbol)
        if active is not None and active.quote_id == quote_id:
            if not active.same_terms(bp, bq, ap, aq):
                return _answer(False, "quote-id-reused", detail="a replace needs a new quote_id")
            # A refresh: same quote, same terms, a new TTL; the legs keep their time priority.
            active.expires_at = expires_at
            active.seq = seq
            for leg in active.legs:
                leg.expires_at = active.expires_at
            self.authority.accept_seq(symbol, seq)
            return self._remember(symbol, "put", fingerprint, _answer(True, "refreshed", quote=active.to_json()))
        if quote_id in self.quotes:
            return _answer(False, "quote-id-reused", detail="quote_id belongs to an earlier quote")
        replaced = None
        if active is not None:
            replaced = self._end_quote(active, QuoteState.REPLACED, f"replaced-by-{quote_id}")
        quote = Quote(quote_id, symbol, holder, epoch, seq, bp, bq, ap, aq, reservation_id, now, expires_at)
        self.quotes[quote_id] = quote
        self.active_quotes[symbol] = quote
        self.authority.accept_seq(symbol, seq)
        book = self.books[symbol]
        fills: list[Fill] = []
        # Both legs exist before either is placed: a bid that fills completely on arrival must
        # not make the quote look finished while its ask is still to be placed.
        for side, price, qty in ((Side.BUY, bp, bq), (Side.SELL, ap, aq)):
            if qty:
                leg = Order(f"{quote_id}/{side.value}", symbol, side, Kind.LIMIT, qty, price, now,
                            quote_id=quote_id, epoch=epoch, expires_at=quote.expires_at)
                quote.legs.append(leg)
                self._leg_quote[leg.order_id] = quote
        for leg in quote.legs:
            fills += self._record_executions(book.submit(leg, now), now)
        self._settle_withdrawn(book)
        self._maybe_filled(quote)
        answer = _answer(True, "activated", quote=quote.to_json(), replaced=replaced, fills=[f.to_json() for f in fills])
        return self._remember(symbol, "put", fingerprint, answer)

    def cancel_quote(self, *, now: float, symbol: Any = None, holder: Any = None, epoch: Any = None,
                     seq: Any = None) -> dict:
        symbol, holder, epoch = self._fence_args(symbol, holder, epoch)
        seq = _int({"seq": seq}, "seq")
        fingerprint = (epoch, seq, holder)
        retry = self._retry(symbol, "cancel", fingerprint)
        if retry is not None:
            return retry
        decision = self.authority.check_quote_op(symbol, holder, epoch, seq, now)
        if not decision:
            return _answer(False, decision.reason, authority=self.authority[symbol].to_json(now))
        self.authority.accept_seq(symbol, seq)
        active = self.active_quotes.get(symbol)
        if active is None:
            return self._remember(symbol, "cancel", fingerprint, _answer(True, "no-active-quote"))
        ended = self._end_quote(active, QuoteState.CANCELLED, "cancelled-by-holder")
        return self._remember(symbol, "cancel", fingerprint, _answer(True, "cancelled", quote=ended))

    # --- time ---------------------------------------------------------------------------------

    def tick(self, *, now: float) -> dict:
        """Withdraw quotes whose TTL or whose holder's lease ran out."""
        ended = []
        for symbol, quote in list(self.active_quotes.items()):
            if now >= quote.expires_at:
                ended.append(self._end_quote(quote, QuoteState.EXPIRED, "ttl"))
            elif not self.authority[symbol].is_live(now):
                ended.append(self._end_quote(quote, QuoteState.WITHDRAWN, "lease-expired"))
        return _answer(True, "ticked", ended=ended)

    def next_deadline(self) -> float:
        """The earliest instant at which `tick` would change something."""
        deadlines = [float("inf")]
        for symbol, q in self.active_quotes.items():
            deadlines.append(min(q.expires_at, self.authority[symbol].lease_expires_at))
        return min(deadlines)

    # --- reading ------------------------------------------------------------------------------

    def fills_after(self, seq: int, limit: int = 1000) -> list[Fill]:
        return self.fills[max(0, seq) : max(0, seq) + limit]

    def quote_view(self, symbol: str, now: float) -> dict | None:
        q = self.active_quotes.get(symbol)
        return q.to_json(now) if q is not None else None

    def check_invariants(self, now: float) -> None:
        """Invariant 1 and the book's own: raises AssertionError naming what broke."""
        for symbol, book in self.books.items():
            book.check_invariants()
            epochs = {o.epoch for o in book.live_orders() if o.is_quote}
            assert len(epochs) <= 1, f"{symbol}: quotes of epochs {sorted(epochs)} live at once"
            if epochs:
                (epoch,) = epochs
                assert epoch == self.authority[symbol].epoch, f"{symbol}: live quote of epoch {epoch}, current is {self.authority[symbol].epoch}"
                q = self.active_quotes.get(symbol)
                assert q is not None and q.epoch == epoch, f"{symbol}: live legs without an active quote"

    # --- internals ----------------------------------------------------------------------------

    def _known_symbol(self, symbol: Any) -> str:
        if type(symbol) is not str or symbol not in self.books:
            raise CommandError("symbol", f"unknown symbol {bounds.short(symbol)}")
        return symbol

    def _fence_args(self, symbol: Any, holder: Any, epoch: Any) -> tuple[str, str, int]:
        symbol = self._known_symbol(symbol)
        holder = _str({"holder": holder}, "holder")
        epoch = _int({"epoch": epoch}, "epoch")
        return symbol, holder, epoch

    @staticmethod
    def _outside_grant(grant: dict, symbol: str, holder: str, quote_id: str, reservation_id: str | None,
                       bq: int, aq: int, now: float) -> dict | None:
        """Why a quote does not fit its reservation's grant (an answer), or None if it does."""
        mine = {"reservation_id": reservation_id, "quote_id": quote_id, "holder": holder, "symbol": symbol}
        wrong = sorted(k for k, v in mine.items() if grant[k] != v)
        if wrong:
            return _answer(False, "grant-mismatch", detail=f"the grant is for another {', '.join(wrong)}")
        if bq > grant["bid_quantity"] or aq > grant["ask_quantity"]:
            return _answer(False, "beyond-grant",
                           detail=f"quote {bq}/{aq}, granted {grant['bid_quantity']}/{grant['ask_quantity']}")
        if now >= grant["expires_at"]:
            return _answer(False, "grant-expired", detail="the reservation's grant has expired")
        return None

    def _retry(self, symbol: str, op: str, fingerprint: tuple) -> dict | None:
        # The same request again (a client retry after a timeout): the same answer, no change.
        last = self._quote_answers.get(symbol)
        if last is not None and last[0] == (op, fingerprint):
            return {**last[1], "duplicate": True}
        return None

    def _remember(self, symbol: str, op: str, fingerprint: tuple, answer: dict) -> dict:
        self._quote_answers[symbol] = ((op, fingerprint), answer)
        return answer

    def _end_quote(self, quote: Quote, state: QuoteState, reason: str) -> dict:
        book = self.books[quote.symbol]
        for leg in quote.legs:
            if leg.status.is_live:
                book.cancel(leg.order_id)
        quote.state = state
        quote.ended_reason = reason
        if self.active_quotes.get(quote.symbol) is quote:
            del self.active_quotes[quote.symbol]
        return {"quote_id": quote.quote_id, "epoch": quote.epoch, "state": state.value, "reason": reason,
                "reservation_id": quote.reservation_id}

    def _maybe_filled(self, quote: Quote) -> None:
        pending = (Status.NEW, Status.RESTING, Status.PARTIALLY_FILLED)
        if quote.state is QuoteState.ACTIVE and quote.legs and not any(leg.status in pending for leg in quote.legs):
            quote.state = QuoteState.FILLED
            quote.ended_reason = "filled"
            if self.active_quotes.get(quote.symbol) is quote:
                del self.active_quotes[quote.symbol]

    def _settle_withdrawn(self, book: OrderBook) -> None:
        # Expired legs the book met while matching never executed; their quote has expired.
        for leg in book.pop_withdrawn():
            quote = self._leg_quote.get(leg.order_id)
            if quote is not None and quote.state is QuoteState.ACTIVE:
                self._end_quote(quote, QuoteState.EXPIRED, "ttl")

    def _record_executions(self, executions: list[Execution], now: float) -> list[Fill]:
        fills = []
        for ex in executions:
            leg = ex.maker if ex.maker.is_quote else (ex.taker if ex.taker.is_quote else None)
            if leg is None:
                self.trades += 1
                continue
            other = ex.taker if leg is ex.maker else ex.maker
            quote = self._leg_quote[leg.order_id]
            seq = len(self.fills) + 1
            fill = Fill(f"{self.fill_prefix}{seq:010d}", other.order_id, leg.symbol, leg.side.value, ex.quantity, ex.price,
                        quote.quote_id, quote.epoch, quote.holder, quote.reservation_id, now, seq)
            self.fills.append(fill)
            fills.append(fill)
            self._maybe_filled(quote)
        return fills


# The arguments each command takes (besides `now`): anything else is refused, by name.
_ARGUMENTS: dict[str, tuple[str, ...]] = {
    kind: tuple(p for p in inspect.signature(getattr(ExchangeCore, kind)).parameters if p not in ("self", "now"))
    for kind in ExchangeCore.COMMANDS
}
