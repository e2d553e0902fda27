"""The ledger role (peer/ledger/service.py): group commit, durable answers, the stream, expiry."""

from __future__ import annotations

import json

import pytest
import trio

from ledger.exposure import ReservationRequest
from ledger.store import DB_FILE, LedgerDamaged, LedgerReader, RecordFills, Reserve, validate_fill
from peer.ledger.service import LedgerService, LedgerUnavailable
from peer.logs import JsonLog
from peer.tools.processes import poll_until
from tests.conftest import T0, FakeClock


def fill(n: int, symbol="AAPL", side="buy", quantity=1, reservation_id=None) -> dict:
    return validate_fill({"fill_id": f"F-{n}", "seq": n, "order_id": f"o{n}", "symbol": symbol, "side": side,
                          "quantity": quantity, "price": 100, "quote_id": "q", "reservation_id": reservation_id,
                          "created_at": T0})


async def started(nursery, path, **kw) -> LedgerService:
    service = LedgerService(path, **{"clock": FakeClock(), **kw})
    await nursery.start(service.run)
    return service


async def test_concurrent_requests_share_commits_and_each_is_answered_after_its_own(tmp_path):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path)
            reader = LedgerReader(tmp_path / DB_FILE)
            answers = {}

            async def client(i: int) -> None:
                answers[i] = await service.submit(RecordFills((fill(i, symbol=["AAPL", "MSFT"][i % 2]),)))
                # Answered means committed: another connection already sees it.
                assert reader.fills_after(answers[i]["results"][0]["update_seq"] - 1, 1, 10**9)[0]["fill_id"] == f"F-{i}"

            async with trio.open_nursery() as clients:
                for i in range(1, 201):
                    clients.start_soon(client, i)
            reader.close()
            assert len(answers) == 200 and service.published_seq == 200
            assert service.counters["groups"] < 200, "concurrent requests were group-committed"
            assert service.counters["max_group"] > 1
            assert service.positions["AAPL"].position_version == 100
            nursery.cancel_scope.cancel()


async def test_the_stream_resumes_from_any_point_with_the_tail_or_the_database(tmp_path):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path, tail_size=5)
            for i in range(1, 31):
                await service.submit(RecordFills((fill(i, symbol=["AAPL", "MSFT", "TSLA"][i % 3]),)))
            assert service.tail[0]["seq"] > 1, "the early updates are no longer in memory"
            everything, nxt = await service.updates_after(0, 1000)
            assert [u["seq"] for u in everything] == list(range(1, 31)) and nxt == 30
            page, nxt = await service.updates_after(3, 4)
            assert [u["seq"] for u in page] == [4, 5, 6, 7] and nxt == 7
            only, nxt = await service.updates_after(20, 1000, {"AAPL"})
            assert [u["seq"] for u in only] == [21, 24, 27, 30] and nxt == 30
            versions = [u["position_version"] for u in await service.symbol_updates("MSFT", 0, 1000)]
            assert versions == list(range(1, 11))
            assert [u["position_version"] for u in await service.symbol_updates("MSFT", 7, 1000)] == [8, 9, 10]
            assert await service.symbol_updates("MSFT", 10, 1000) == []
            nursery.cancel_scope.cancel()


async def test_a_restart_serves_the_same_positions_stream_and_reservations(tmp_path):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path)
            for i in range(1, 11):
                await service.submit(RecordFills((fill(i, side="sell", quantity=i),)))
            answer = await service.submit(Reserve(ReservationRequest("q1", "mm-1", "AAPL", 40, 40, ttl=60.0)))
            before = (service.positions, (await service.updates_after(0, 100))[0], service.usage())
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            again = await started(nursery, tmp_path)
            assert again.positions == before[0] and again.positions["AAPL"].net_quantity == -55
            assert (await again.updates_after(0, 100))[0] == before[1]
            assert again.usage().used_bid == 40
            assert (await again.reservation(answer["reservation"]["reservation_id"])).state == "active"
            nursery.cancel_scope.cancel()


async def test_a_reservation_expires_without_anyones_help(tmp_path, clock):
    log_path = tmp_path / "ledger.log"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await started(nursery, tmp_path, clock=clock, sweep_interval=0.01,
                                    log=JsonLog("ledger", stream=None, path=log_path))
            answer = await service.submit(Reserve(ReservationRequest("q1", "mm-1", "AAPL", 100, 100, ttl=5.0)))
            rid = answer["reservation"]["reservation_id"]
            assert service.usage().available_bid == 0
            clock.advance(5.0)
            assert service.usage().available_bid == 100, "it counts for nothing from its expires_at"
            await poll_until(lambda: rid not in service.store.exposure.active, 5, "the sweeper records the expiry")
            assert (await service.reservation(rid)).state == "expired"
            nursery.cancel_scope.cancel()
    lines = [json.loads(line) for line in (await trio.Path(log_path).read_text()).splitlines()]
    ended = [ln for ln in lines if ln["event"] == "ledger_reservation_ended"]
    assert ended and ended[0]["reservation_id"] == rid and ended[0]["state"] == "expired" and ended[0]["reason"] == "ttl"


async def test_a_damaged_database_stops_the_start_with_the_runbook_step_logged(tmp_path):
    await trio.Path(tmp_path / DB_FILE).write_bytes(b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 200)
    log_path = tmp_path / "ledger.log"
    service = LedgerService(tmp_path, log=JsonLog("ledger", stream=None, path=log_path))
    with pytest.raises(LedgerDamaged):
        await service.run()
    refused = [json.loads(x) for x in (await trio.Path(log_path).read_text()).splitlines() if '"ledger_refused"' in x]
    assert refused and "Damaged ledger database" in refused[0]["error"]
    with pytest.raises(LedgerUnavailable):
        await service.submit(RecordFills((fill(1),)))


async def test_a_ledger_peer_serves_the_ledger_api_and_its_limit(tmp_path):
    from functools import partial

    import httpx

    from peer.options import LedgerOptions
    from peer.runner import PeerOptions, run_peer

    opts = PeerOptions(role="ledger", name="ledger", bind=("127.0.0.1", 0), data_dir=tmp_path, profile="local",
                       log_stderr=False, stop_watchdog=None, ledger=LedgerOptions(exposure_limit=7), insecure=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(partial(run_peer, opts))
            async with httpx.AsyncClient(base_url=info["http"]) as client:
                r = await client.post("/fills", json={**fill(1), "created_at": T0})
                assert r.status_code == 200 and r.json()["results"][0]["status"] == "applied"
                assert (await client.get("/exposure")).json()["limit"] == {"bid": 7, "ask": 7}
            nursery.cancel_scope.cancel()
