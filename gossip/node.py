"""The trio shell around the SWIM core: it moves bytes, keeps time and reports events.

What it is for: one `GossipNode` per peer, over any `Transport` (real UDP/TCP or the simulated
network). It feeds inbound packets and timer expiries to the core with `trio.current_time()` as
`now`, sends what the core asks, runs push-pull exchanges in the background, and hands every
membership event to its subscribers. Started with `nursery.start(node.run)`, which reports the
gossip address; cancellation stops it.

It must never make a protocol decision: if a rule is needed, it belongs in `core.py`. And no
input from one peer may end it: the core drops malformed input itself, and should the core still
raise on one packet or one push-pull (a bug), that one input is dropped, counted in
`dropped_error` and reported to `on_error`, and the node goes on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

from gossip.config import DEFAULT_CLUSTER, GossipConfig
from gossip.core import Exchange, Swim
from gossip.transport import Transport, TransportError
from gossip.types import Address, Member, MemberEvent


class GossipNode:
    def __init__(
        self,
        transport: Transport,
        config: GossipConfig,
        name: str,
        incarnation: int = 1,
        meta: dict[str, Any] | None = None,
        seeds: list[Address] | None = None,
        seed: int | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
        on_incarnation: Callable[[int], None] | None = None,
        on_error: Callable[[str, Address, BaseException], None] | None = None,
        cluster: str = DEFAULT_CLUSTER,
    ):
        self.transport = transport
        self.config = config
        self.name = name
        self.cluster = cluster
        self._initial_incarnation = incarnation
        self._meta = dict(meta or {})
        self._seeds = list(seeds or [])
        self._rng = random.Random(seed)
        self._on_event = on_event
        self._on_incarnation = on_incarnation
        self._on_error = on_error
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self.core: Swim | None = None
        self._wakeup = trio.Event()
        self._sleeping_until = -float("inf")
        self._nursery: trio.Nursery | None = None
        self._persisted_incarnation = incarnation
        # One sender task drains this, so the core's outputs never wait on the network.
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[tuple[bytes, Address]](10_000)
        self.dropped_outbound = 0
        self.dropped_error = 0
        # Set after every flush of the core's output, then replaced: what `leave` waits on.
        self._flushed = trio.Event()

    # --- reading ------------------------------------------------------------------------------

    def _need_core(self) -> Swim:
        if self.core is None:
            raise RuntimeError("the gossip node is not running yet")
        return self.core

    @property
    def incarnation(self) -> int:
        return self.core.incarnation if self.core else self._initial_incarnation

    @property
    def addr(self) -> Address:
        return self.transport.local_addr

    @property
    def health(self) -> int:
        return self.core.awareness.score if self.core else 0

    def members(self) -> list[Member]:
        return self._need_core().members()

    def counts(self) -> dict[str, int]:
        return self._need_core().counts()

    def stats(self) -> dict[str, int]:
        if self.core is None:
            return {}
        return {
            **self.core.stats(),
            "dropped_outbound": self.dropped_outbound,
            "dropped_error": self.dropped_error,
            "local_health": self.core.awareness.score,
        }

    # --- calls --------------------------------------------------------------------------------

    def update_meta(self, meta: dict[str, Any]) -> None:
        core = self._need_core()
        core.update_meta(meta, trio.current_time())
        self._flush()

    def add_seeds(self, addrs: list[Address]) -> None:
        """New seeds (from discovery): joined at once if we know nobody, else kept for reconnects."""
        if self.core is None:
            self._seeds.extend(a for a in addrs if a not in self._seeds)
            return
        alone = self.core.counts()["alive"] + self.core.counts()["suspect"] <= 1
        new = [a for a in addrs if a not in self._seeds]
        self._seeds.extend(new)
        if new and alone:
            self.core.join(new, trio.current_time())
        else:
            self.core.add_seeds(new)
        self._flush()

    async def leave(self) -> None:
        """Announce a graceful leave and wait until the news has been sent a few times.

        The caller bounds the wait (`move_on_after`): with nobody to tell it returns at once.
        """
        core = self._need_core()
        core.leave(trio.current_time())
        self._flush()
        while core.pending_broadcasts() and core.counts()["alive"] + core.counts()["suspect"] > 0:
            # Broadcasts go out on gossip ticks; each flush is a chance that the last one went.
            await self._flushed.wait()
        if core.counts()["alive"] + core.counts()["suspect"] > 0:
            # The last transmissions went out just now: stay one gossip interval so that the
            # members they reached relay the leave before this process stops answering probes
            # (otherwise a member that has not heard yet suspects it first).
            await trio.sleep(self.config.gossip_interval)

    def subscribe(self, buffer: int = 1000) -> trio.MemoryReceiveChannel[MemberEvent]:
        send, recv = trio.open_memory_channel[MemberEvent](buffer)
        self._subscribers.append(send)
        return recv

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        self.core = Swim(
            self.config,
            self.name,
            self.transport.local_addr,
            incarnation=self._initial_incarnation,
            meta=self._meta,
            rng=self._rng,
            now=trio.current_time(),
            cluster=self.cluster,
        )
        self.transport.set_stream_handler(self._answer_exchange)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._seeds:
                self.core.join(self._seeds, trio.current_time())
            self._flush()
            nursery.start_soon(self._send_loop)
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._timer_loop)
            task_status.started(self.transport.local_addr)

    async def _receive_loop(self) -> None:
        core = self._need_core()
        while True:
            data, sender = await self.transport.recv_packet()
            try:
                core.receive_packet(data, sender, trio.current_time())
            except Exception as exc:
                self._input_failed("packet", sender, exc)
            self._flush()

    def _input_failed(self, what: str, sender: Address, exc: Exception) -> None:
        """The core raised on one peer's input: drop that input, count it, report it, go on."""
        self.dropped_error += 1
        if self._on_error is not None:
            try:
                self._on_error(what, sender, exc)
            except Exception:
                pass  # a failing reporter must not end the node either

    async def _timer_loop(self) -> None:
        core = self._need_core()
        while True:
            self._wakeup = trio.Event()
            self._sleeping_until = core.next_deadline()
            if self._sleeping_until > trio.current_time():
                with trio.move_on_at(self._sleeping_until):
                    await self._wakeup.wait()
            else:
                # Never spin without a checkpoint, even if a deadline stays in the past.
                await trio.lowlevel.checkpoint()
            self._sleeping_until = -float("inf")
            core.handle_timer(trio.current_time())
            self._flush()

    def _flush(self) -> None:
        """Send what the core produced and hand its events on. Never blocks."""
        core = self.core
        if core is None:
            return
        for data, addr in core.pop_packets():
            self._send_soon(data, addr)
        for exchange in core.pop_exchanges():
            if self._nursery is not None:
                self._nursery.start_soon(self._run_exchange, exchange)
        for event in core.pop_events():
            if self._on_event is not None:
                self._on_event(event)
            for channel in list(self._subscribers):
                try:
                    channel.send_nowait(event)
                except trio.WouldBlock:
                    pass  # a slow reader misses events rather than stalling the protocol
                except trio.BrokenResourceError:
                    self._subscribers.remove(channel)
        self._flushed.set()
        self._flushed = trio.Event()
        if core.incarnation > self._persisted_incarnation:
            self._persisted_incarnation = core.incarnation
            if self._on_incarnation is not None:
                self._on_incarnation(core.incarnation)
        # A packet or a call may have moved the next deadline earlier than the timer sleeps for.
        if core.next_deadline() < self._sleeping_until:
            self._wakeup.set()

    def _send_soon(self, data: bytes, addr: Address) -> None:
        try:
            self._outbox_send.send_nowait((data, addr))
        except trio.WouldBlock:
            self.dropped_outbound += 1  # UDP semantics: an overfull send queue loses packets

    async def _send_loop(self) -> None:
        async for data, addr in self._outbox_recv:
            await self.transport.send_packet(data, addr)

    async def _run_exchange(self, exchange: Exchange) -> None:
        core = self._need_core()
        try:
            with trio.fail_after(self.config.stream_timeout):
                answer = await self.transport.exchange(exchange.addr, exchange.data)
        except (TransportError, trio.TooSlowError, ValueError):  # ValueError: our state is over MAX_STREAM
            core.exchange_failed(exchange, trio.current_time())
            self._flush()
            return
        try:
            core.receive_state(answer, exchange.addr, trio.current_time(), respond=False,
                               joining=exchange.joining)
        except Exception as exc:
            self._input_failed("push-pull answer", exchange.addr, exc)
        self._flush()

    async def _answer_exchange(self, data: bytes, sender: Address) -> bytes:
        core = self._need_core()
        try:
            answer = core.receive_state(data, sender, trio.current_time(), respond=True)
        except Exception as exc:
            self._input_failed("push-pull request", sender, exc)
            answer = None
        self._flush()
        if answer is None:
            raise TransportError("malformed push-pull state")
        return answer
