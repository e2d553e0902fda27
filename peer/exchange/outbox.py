"""The exchange's fill outbox: every fill reaches the ledger, in order, until acknowledged.

What it is for: at-least-once delivery of fills to the ledger peer (found through membership:
the alive member with role `ledger`). Fills are durable on the exchange's tape before they
exist for anyone, so the tape is the outbox; the acknowledged position (`ledger_acked`) is a tape
record too, so a restarted exchange resumes where the ledger last confirmed. That record is
written while the next batch goes out, not waited for: a crash may lose the last one, and then
a few acknowledged fills are sent again, which the ledger answers as duplicates. The ledger makes
delivery exactly once by `fill_id`. Batches are sent in fill order and the cursor only moves
past a fill the ledger acknowledged.

A refusal that retrying cannot change (a 4xx other than 408 and 429: the ledger says the batch
itself is wrong) is an alarm: logged once as `outbox_alarm` with the ledger's answer, counted,
shown in `/status` (`alarms`), `/exchange` and `murmur top`, and retried at the slowest pace
until the operator mends the cause; `outbox_alarm_cleared` when a batch gets through again.
See docs/runbook.md, "Fills not delivered".

It must never skip a fill, reorder fills, or move the cursor on anything but a 2xx answer that
covers the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from peer.backoff import Backoff
from peer.exchange.service import ExchangeService
from peer.http.client import HttpClient, HttpError

BATCH = 200
# Sending again after a failure: from 50 ms up to 2 s while the ledger is away or refusing load.
# No jitter: there is one exchange, so there is nobody to fall in lock-step with.
RETRY = Backoff(first=0.05, cap=2.0)


def is_permanent(status: int) -> bool:
    """A refusal that the same request will meet again: the ledger judged the batch, not its load."""
    return 400 <= status < 500 and status not in (408, 429)


async def deliver_fills(
    service: ExchangeService,
    ledger_url: Callable[[], str | None],
    *,
    client_factory: Callable[[str], HttpClient] | None = None,
    retry: Backoff = RETRY,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run forever: push unacknowledged fills to the ledger, backing off while it is away."""
    # One keep-alive client, for the ledger's current URL (it may come back at another address:
    # then the old client is closed and a new one made).
    clients: dict[str, HttpClient] = {}
    make = client_factory or (lambda url: HttpClient(url, max_connections=1, timeout=5.0))
    service.outbox_stats.update(batches=0, delivered=0, failures=0, refusals=0)
    task_status.started()
    try:
        async with trio.open_nursery() as acks:
            await _deliver(service, ledger_url, clients, make, retry, acks)
    finally:
        with trio.CancelScope(shield=True):
            for c in clients.values():
                await c.aclose()


async def _deliver(
    service: ExchangeService,
    ledger_url: Callable[[], str | None],
    clients: dict[str, HttpClient],
    make: Callable[[str], HttpClient],
    retry: Backoff,
    acks: trio.Nursery,
) -> None:
    failures = 0
    while True:
        core = service.core
        assert core is not None
        pending = core.fills_after(service.ledger_acked, BATCH)
        if not pending:
            await service.fill_added.wait()
            continue
        url = ledger_url()
        if url is None:
            failures += 1
            await trio.sleep(retry.delay(failures))
            continue
        client = clients.get(url)
        if client is None:
            # The ledger moved (or came back at another address): the old one's kept-alive
            # connections are of no more use, so they are closed, not left open until exit.
            for gone in list(clients):
                await clients.pop(gone).aclose()
            client = clients[url] = make(url)
        try:
            r = await client.post("/fills", json={"fills": [f.to_json() for f in pending]})
            ok = r.status // 100 == 2
        except HttpError as exc:
            ok, r = False, None
            service.log("outbox_error", ledger=url, error=str(exc)[:200])
        if not ok:
            service.outbox_stats["failures"] += 1
            if r is not None and is_permanent(r.status):
                service.outbox_stats["refusals"] += 1
                _raise_alarm(service, url, r.status, r.body, pending[0].seq, pending[0].fill_id)
                # Retrying at once changes nothing: the slowest pace, until someone mends it.
                failures = max(failures, retry.attempts_to_cap - 1)
            elif r is not None:
                service.log("outbox_refused", ledger=url, status=r.status,
                            body=r.body[:300].decode("utf-8", "replace"))
            failures += 1
            await trio.sleep(retry.delay(failures))
            continue
        if service.outbox_alarm is not None:
            service.log("outbox_alarm_cleared", **service.outbox_alarm)
            service.outbox_alarm = None
        failures = 0
        service.outbox_stats["batches"] += 1
        service.outbox_stats["delivered"] += len(pending)
        # The cursor moves now; its tape record is written while the next batch goes out.
        # Losing that record in a crash only means sending a few fills again, which the
        # ledger answers as duplicates: the wait for its fsync is not worth a delivery's time.
        record = service.note_ledger_ack(pending[-1].seq)
        if record is not None:
            acks.start_soon(service.persist, record)


def _raise_alarm(service: ExchangeService, url: str, status: int, body: bytes, seq: int, fill_id: str) -> None:
    """Set the outbox alarm; log it when it is new or names another fill or answer."""
    text = body[:300].decode("utf-8", "replace")
    alarm = service.outbox_alarm
    if alarm is not None and (alarm["status"], alarm["fill_seq"]) == (status, seq):
        alarm["attempts"] += 1
        return
    service.outbox_alarm = {"status": status, "fill_seq": seq, "fill_id": fill_id, "answer": text,
                            "ledger": url, "since": service.clock(), "attempts": 1}
    service.log("outbox_alarm", reason="ledger-refused-batch", ledger=url, status=status, fill_seq=seq,
                fill_id=fill_id, answer=text, pending_from=seq)
