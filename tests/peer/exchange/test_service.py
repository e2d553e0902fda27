"""The exchange role: commands made durable on the tape, replayed on restart; the fill outbox."""

from __future__ import annotations

import shutil
from functools import partial

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from book.exchange import ExchangeCore
from peer.backoff import Backoff
from peer.exchange.outbox import deliver_fills
from peer.exchange.service import TAPE_FILE, ExchangeService, TapeDivergence
from peer.exchange.tape import TapeError, TapeReader, open_for_append
from peer.http.client import Answer
from peer.http.endpoints import serve_http
from peer.tools.processes import poll_until
from tests.conftest import FakeClock


async def started(nursery, path, clock, **kw) -> ExchangeService:
    service = ExchangeService(path, symbols=["AAPL", "MSFT"], clock=clock, lease_duration=5.0, **kw)
    await nursery.start(service.run)
    return service


async def trade(service: ExchangeService, clock: FakeClock) -> None:
    assert (await service.command("claim", {"symbol": "AAPL", "holder": "mm-1", "epoch": 7}))["accepted"]
    clock.t += 0.1
    q = await service.command("put_quote", {"symbol": "AAPL", "holder": "mm-1", "epoch": 7, "seq": 1, "quote_id": "q1",
                                            "bid_price": 99, "bid_quantity": 5, "ask_price": 101, "ask_quantity": 5,
                                            "reservation_id": "r1"})
    assert q["reason"] == "activated"
    clock.t += 0.1
    for i in range(3):
        answer = await service.command("submit_order", {"order_id": f"b{i}", "symbol": "AAPL", "side": "buy",
                                                        "type": "limit", "quantity": 1, "limit_price": 101})
        assert len(answer["fills"]) == 1


async def test_restart_rebuilds_epochs_quotes_book_and_fills_from_the_tape(tmp_path, clock):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path, clock)
            await trade(service, clock)
            before = {
                "fills": [f.to_json() for f in service.core.fills],
                "authority": service.core.authority["AAPL"].to_json(clock.t),
                "depth": service.core.books["AAPL"].depth(),
                "quote": service.core.quote_view("AAPL", clock.t),
            }
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            again = await started(nursery, tmp_path, clock)
            assert again.counters["replayed"] >= 5
            assert [f.to_json() for f in again.core.fills] == before["fills"]
            assert again.core.authority["AAPL"].to_json(clock.t) == before["authority"]
            assert again.core.books["AAPL"].depth() == before["depth"]
            assert again.core.quote_view("AAPL", clock.t) == before["quote"]
            # Epochs survive: a claim at the old epoch is stale after the restart too.
            clock.t += 10
            stale = await again.command("claim", {"symbol": "AAPL", "holder": "mm-2", "epoch": 7})
            assert stale["reason"] == "stale-epoch"
            nursery.cancel_scope.cancel()


async def test_fill_ids_carry_the_instance_and_differ_across_fresh_tapes(tmp_path, clock):
    ids = []
    for sub in ("a", "b"):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path / sub, clock)
            await trade(service, clock)
            ids.append({f.fill_id for f in service.core.fills})
            nursery.cancel_scope.cancel()
    assert ids[0].isdisjoint(ids[1])


async def test_claim_records_the_membership_verdict_so_replay_agrees(tmp_path, clock):
    alive = {"mm-1": True}
    async with trio.open_nursery() as nursery:
        service = await started(nursery, tmp_path, clock, is_alive=lambda n: alive.get(n, False))
        await service.command("claim", {"symbol": "AAPL", "holder": "mm-1", "epoch": 1})
        alive["mm-1"] = False  # the exchange's view now holds mm-1 dead
        taken = await service.command("claim", {"symbol": "AAPL", "holder": "mm-2", "epoch": 2})
        assert taken["reason"] == "claimed"
        nursery.cancel_scope.cancel()
    alive["mm-1"] = True  # the view changed since; replay must still reproduce the takeover
    async with trio.open_nursery() as nursery:
        again = await started(nursery, tmp_path, clock, is_alive=lambda n: alive.get(n, False))
        assert again.core.authority["AAPL"].holder == "mm-2"
        nursery.cancel_scope.cancel()


async def test_outbox_delivers_every_fill_in_order_until_acknowledged_and_resumes_after_restart(tmp_path, clock):
    received: list[str] = []
    failures = {"left": 2}

    async def ledger(request: Request) -> JSONResponse:
        if failures["left"]:
            failures["left"] -= 1
            return JSONResponse({"error": "starting"}, status_code=503)
        received.extend(f["fill_id"] for f in (await request.json())["fills"])
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/fills", ledger, methods=["POST"])])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, app, ("127.0.0.1", 0), trio.Event())
            service = await started(nursery, tmp_path, clock)
            await nursery.start(deliver_fills, service, lambda: url)
            await trade(service, clock)
            await poll_until(lambda: service.ledger_acked >= 3, 5, "three fills acknowledged")
            assert received == [f.fill_id for f in service.core.fills]
            assert service.outbox_stats["failures"] == 2
            # The ack's tape record is written while the next batch goes out (a crash may lose
            # it); wait for it, so the restart below starts from it.

            def ack_on_tape() -> bool:
                return any(r["type"] == "ledger_ack" and r["up_to"] == 3
                           for r in TapeReader(tmp_path / "exchange.tape").records())

            await poll_until(lambda: trio.to_thread.run_sync(ack_on_tape), 5, "the ack on the tape")
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, app, ("127.0.0.1", 0), trio.Event())
            again = await started(nursery, tmp_path, clock)
            assert again.ledger_acked == 3, "the acknowledged position is on the tape"
            await nursery.start(deliver_fills, again, lambda: url)
            clock.t += 0.1
            answer = await again.command("submit_order", {"order_id": "b9", "symbol": "AAPL", "side": "buy",
                                                          "type": "limit", "quantity": 1, "limit_price": 101})
            assert answer["fills"]
            await poll_until(lambda: again.ledger_acked >= 4, 5, "the new fill acknowledged")
            assert len(received) == 4 and len(set(received)) == 4, "nothing acknowledged was sent again"
            nursery.cancel_scope.cancel()


async def test_ticker_withdraws_a_quote_whose_lease_ran_out(tmp_path, clock):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path, clock)
            await trade(service, clock)
            clock.t += 6.0  # past the 5 s lease
            service._ticker_wakeup.set()
            await poll_until(lambda: not service.core.active_quotes, 5, "the quote withdrawn")
            assert service.core.quotes["q1"].ended_reason == "lease-expired"
            nursery.cancel_scope.cancel()


async def test_command_batch_runs_in_order_is_durable_together_and_answers_bad_ones_with_their_error(tmp_path, clock):
    from book.exchange import CommandError
    from peer.exchange.tape import TapeReader

    async with trio.open_nursery() as nursery:
        service = await started(nursery, tmp_path, clock)
        order = {"symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 1, "limit_price": 100}
        answers = await service.command_batch([
            ("submit_order", {"order_id": "a", **order}),
            ("submit_order", {"order_id": "b", **order, "quantity": "many"}),
            ("cancel_order", {"order_id": "a"}),
        ])
        assert answers[0]["accepted"] and isinstance(answers[1], CommandError) and answers[2]["reason"] == "cancelled"
        assert service.tape.durable_seq == service.tape.last_seq
        nursery.cancel_scope.cancel()
    records = await trio.to_thread.run_sync(lambda: list(TapeReader(tmp_path / "exchange.tape").records()))
    kinds = [(r["type"], r["args"].get("order_id")) for r in records if r["type"] != "genesis"]
    assert kinds == [("submit_order", "a"), ("cancel_order", "a")]


async def test_a_ledger_that_refuses_a_batch_outright_raises_an_alarm_until_a_batch_gets_through(tmp_path, clock):
    # The outbox once retried a 400 forever with nothing said: ledger_acked stood still unseen.
    refuse = {"on": True}
    received: list[str] = []

    async def ledger(request: Request) -> JSONResponse:
        if refuse["on"]:
            return JSONResponse({"error": "price: must be at most 9007199254740991", "field": "price"},
                                status_code=400)
        received.extend(f["fill_id"] for f in (await request.json())["fills"])
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/fills", ledger, methods=["POST"])])
    lines: list[dict] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, app, ("127.0.0.1", 0), trio.Event())
            service = await started(nursery, tmp_path, clock)
            service.log = lambda event, **kw: lines.append({"event": event, **kw})
            await nursery.start(partial(deliver_fills, service, lambda: url, retry=Backoff(first=0.05, cap=0.05)))
            await trade(service, clock)
            await poll_until(lambda: service.outbox_stats.get("refusals", 0) >= 3, 5, "three refusals")
            alarm = service.alarms()["outbox-refused"]
            assert alarm["status"] == 400 and alarm["fill_seq"] == 1 and "price" in alarm["answer"]
            assert service.status()["outbox"]["pending"] == 3 and service.ledger_acked == 0
            assert [x["event"] for x in lines].count("outbox_alarm") == 1, "logged once, counted each time"
            refuse["on"] = False
            await poll_until(lambda: service.ledger_acked >= 3, 5, "the fills acknowledged at last")
            assert service.alarms() == {} and received == [f.fill_id for f in service.core.fills]
            assert "outbox_alarm_cleared" in [x["event"] for x in lines]
            nursery.cancel_scope.cancel()


async def test_the_outbox_closes_the_client_of_a_ledger_that_moved(tmp_path, clock):
    posted: list[str] = []
    closed: list[str] = []

    class Recorder:
        """A client for one ledger URL: the first ledger is down (503), the second takes fills."""

        def __init__(self, url: str) -> None:
            self.url = url

        async def post(self, path: str, json=None) -> Answer:
            posted.append(self.url)
            return Answer(503 if self.url.endswith("a") else 200, {}, b"{}")

        async def aclose(self) -> None:
            closed.append(self.url)

    where = {"url": "http://ledger-a"}
    async with trio.open_nursery() as nursery:
        service = await started(nursery, tmp_path, clock)
        await nursery.start(partial(deliver_fills, service, lambda: where["url"], client_factory=Recorder,
                                    retry=Backoff(first=0.01, cap=0.01)))
        await trade(service, clock)
        await poll_until(lambda: "http://ledger-a" in posted, 5, "a batch offered to the first ledger")
        where["url"] = "http://ledger-b"
        await poll_until(lambda: service.ledger_acked >= 3, 5, "the fills acknowledged by the second")
        assert closed == ["http://ledger-a"], "the first ledger's client is closed once it is not used"
        nursery.cancel_scope.cancel()
    assert closed == ["http://ledger-a", "http://ledger-b"]


# --- a tape whose records are CRC-valid but mean nothing: refused by name, never another exception ------

_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=4) | st.sampled_from(["AAPL", "mm-1", "buy", "limit", 1, 5, 100]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_ARG_NAMES = ["order_id", "symbol", "side", "type", "quantity", "limit_price", "holder", "epoch", "seq", "quote_id",
              "bid_price", "bid_quantity", "ask_price", "ask_quantity", "reservation_id", "holder_alive"]
_records = st.fixed_dictionaries(
    {"type": st.sampled_from([*ExchangeCore.COMMANDS, "genesis", "ledger_ack", "other"])},
    optional={"args": _values | st.dictionaries(st.sampled_from(_ARG_NAMES), _values, max_size=6),
              "at": _values, "accepted": _values, "reason": _values, "up_to": _values, "symbols": _values,
              "instance": _values, "quote_ttl": _values, "lease_duration": _values, "seed": _values},
)
_GENESIS = {"type": "genesis", "at": 1_700_000_000.0, "instance": "abcd1234", "symbols": ["AAPL", "MSFT"],
            "seed": 1, "quote_ttl": 30.0, "lease_duration": 5.0}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_records, min_size=1, max_size=4), genesis_first=st.booleans())
def test_replaying_a_tape_of_malformed_records_raises_only_tape_divergence(tmp_path, records, genesis_first):
    directory = tmp_path / "hyp"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    with open_for_append(directory / TAPE_FILE) as w:
        w.append_many(([_GENESIS] if genesis_first else []) + records)
    service = ExchangeService(directory, symbols=["AAPL", "MSFT"])
    try:
        service._replay()
    except (TapeDivergence, TapeError) as exc:
        assert len(str(exc)) < 2000
        return
    if service.core is not None:
        service.core.check_invariants(1_700_000_000.0)


def test_a_command_record_the_core_now_refuses_stops_the_replay_by_name(tmp_path):
    """A tape written with wider bounds (an order at 2**53 ticks) cannot be replayed: refused."""
    order = {"order_id": "o1", "symbol": "AAPL", "side": "buy", "type": "limit", "quantity": 1,
             "limit_price": 2**53}
    with open_for_append(tmp_path / TAPE_FILE) as w:
        w.append_many([_GENESIS, {"type": "submit_order", "at": 1_700_000_001.0, "args": order, "accepted": True,
                                  "reason": "resting"}])
    with pytest.raises(TapeDivergence, match=r"record 2 \('submit_order'\) cannot be replayed: CommandError"):
        ExchangeService(tmp_path)._replay()
