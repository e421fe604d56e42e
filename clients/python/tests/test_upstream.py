"""The upstream guarantee (docs/PROTOCOL.md §12) against a real tether, a
real backend that records what it reads, and a TCP proxy that the tests cut."""

from __future__ import annotations

import asyncio
import contextlib
import time

from support import (
    FAST, IMMEDIATE, Backend, BackendConn, CutProxy, Tether, async_test, bounded, next_event, poll, welcome,
)

from tether_client import (
    Disconnected, Draining, End, InDoubt, Payload, Receipt, TetherClient, UpMessage, Upstream, UpstreamError,
    Welcome,
)


def payload(i: int) -> Payload:
    """Message ``i``: text ``u<i>``, every 7th binary (its 8-byte index and 0xff)."""
    return i.to_bytes(8, "big") + b"\xff" if i % 7 == 0 else f"u{i}"


async def outcome(r: Receipt) -> UpstreamError | None:
    try:
        await bounded("a receipt", r)
    except UpstreamError as e:
        return e
    return None


async def drain_events(client: TetherClient, seen: list[object]) -> None:
    """Keeps reading the client's events (acks arrive on the same connection)."""
    async for ev in client:
        seen.append(ev)


def index(m: str | bytes | None) -> int:
    assert isinstance(m, str), m
    return int(m[1:])


@async_test
async def test_sends_reach_the_backend_once_in_order_across_12_cuts(scope: contextlib.AsyncExitStack) -> None:
    n, cuts_wanted = 3000, 12
    started = time.monotonic()
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(f"ws://127.0.0.1:{proxy.port}/feed", backoff=IMMEDIATE, upstream=Upstream())
    scope.push_async_callback(client.detach)
    assert (await welcome(client)).outcome == "new"
    conn = await backend.next_conn()
    events: list[object] = []
    reader = asyncio.ensure_future(drain_events(client, events))

    # The sender cuts when asked, right after queueing a batch: the cut
    # races the batch's bytes on their way to tether, and every other cut
    # is a blackout that loses them.
    cut_asked = asyncio.Event()
    cuts = 0

    async def sender() -> list[Receipt]:
        nonlocal cuts
        receipts = []
        cut_at = 0
        for i in range(1, n + 1):
            receipts.append(await client.send(payload(i)))
            if i % 10 == 0:
                welcomed = client.stats().connections
                if cut_asked.is_set() and welcomed > cut_at and client.state == "open":
                    if await proxy.cut(blackout=0.02 if cuts % 2 else 0.0) > 0:
                        cut_asked.clear()
                        cuts += 1
                        cut_at = welcomed
                await asyncio.sleep(0.001)  # pacing, not synchronisation
        return receipts

    sending = asyncio.ensure_future(sender())
    got: list[str | bytes] = []
    every = n * 6 // 10 // cuts_wanted  # all cuts in the first 60% of the stream
    asked = 0
    while len(got) < n:
        m = await conn.next_received()
        assert m is not None, "the backend connection lasts"
        got.append(m)
        if asked < cuts_wanted and len(got) >= (asked + 1) * every and not cut_asked.is_set():
            asked += 1
            cut_asked.set()
    receipts = await bounded("every send", sending)
    failures = [e for e in [await outcome(r) for r in receipts] if e is not None]
    assert failures == [], failures[:3]
    assert got == [payload(i) for i in range(1, n + 1)], "each message once, in order"
    # Nothing was written but these: the next message is the next the backend reads.
    await bounded("the last ack", await client.send("last"))
    assert await conn.next_received() == "last"
    assert cuts == cuts_wanted
    assert backend.accepted == 1, "the backend connection survived every cut"
    s = client.upstream_stats()
    assert (s.unacked, s.unacked_bytes, s.acked, s.acked_seq, s.next_seq) == (0, 0, n + 1, n + 1, n + 2)
    assert (s.in_doubt, s.dropped, s.ended, s.rejected) == (0, 0, 0, 0)
    assert s.sent == n + 1 + s.resends, "every write but the resends is a first send"
    assert s.resends > 0, "the cuts lost messages on their way, and they were sent again"
    welcomes = [e for e in events if isinstance(e, Welcome)]
    assert len(welcomes) >= cuts and all(w.outcome == "resumed" for w in welcomes)
    assert all(isinstance(e, (Welcome, Disconnected)) for e in events), events
    reader.cancel()
    print(
        f"\nupstream cut test: messages {n}, cuts {cuts}, connections {len(welcomes) + 1}, sent {s.sent}, "
        f"resends {s.resends}, written to the backend {len(got)} (once each, in order), "
        f"{time.monotonic() - started:.2f} s"
    )


@async_test
async def test_the_backend_ending_the_session_fails_what_was_not_written(scope: contextlib.AsyncExitStack) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(
        f"ws://127.0.0.1:{proxy.port}/feed", backoff=FAST, max_failed_resumes=1_000_000, upstream=Upstream()
    )
    scope.push_async_callback(client.detach)
    await welcome(client)
    conn = await backend.next_conn()
    for i in (1, 2, 3):
        await bounded("an ack", await client.send(f"a{i}"))
        assert await conn.next_received() == f"a{i}"

    # Offline, the client queues two more; meanwhile the backend ends the session.
    proxy.blocked = True
    assert await proxy.cut() == 1
    assert isinstance(await next_event(client), Disconnected)
    r4 = await client.send("a4")
    r5 = await client.send(b"\x04\x05")
    await conn.close(1000, "bye")
    assert await conn.next_received() is None
    proxy.blocked = False

    while not isinstance(ev := await next_event(client), Welcome):
        assert isinstance(ev, Disconnected), ev
    assert ev.outcome == "resumed"
    assert await next_event(client) == End(1000, "bye")
    e4, e5 = await outcome(r4), await outcome(r5)
    # The welcome does not say that the session ended: the client may send
    # a4 and a5 between the welcome and the end (tether drops them, after_end).
    assert e4 is not None and (e4.reason, e4.data) == ("ended", "a4") and e4.seq in (None, 4)
    assert e5 is not None and (e5.reason, e5.data) == ("ended", b"\x04\x05") and e5.seq in (None, 5)
    try:
        await client.send("late")
        raise AssertionError("send after the end")
    except UpstreamError as e:
        assert (e.reason, e.seq, e.data) == ("ended", None, "late")
    assert client.state == "ended"
    s = client.upstream_stats()
    assert (s.acked, s.acked_seq, s.ended, s.unacked, s.in_doubt) == (3, 3, 2, 0, 0)

@async_test
async def test_after_a_drain_nothing_is_in_doubt_and_each_message_is_written_once(
    scope: contextlib.AsyncExitStack,
) -> None:
    n = 2000
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    client = TetherClient(f"{tether.url}/feed", backoff=FAST, max_failed_resumes=1_000_000, upstream=Upstream())
    scope.push_async_callback(client.detach)
    await welcome(client)
    old = await backend.next_conn()
    events: list[object] = []
    reader = asyncio.ensure_future(drain_events(client, events))
    async def sender() -> list[Receipt]:
        return [await client.send(f"d{i}") for i in range(1, n + 1)]

    queued = asyncio.ensure_future(sender())
    written: list[str | bytes | None] = []
    while len(written) < 500:
        written.append(await old.next_received())
    await tether.restart()  # SIGTERM: tether drains (its mark is exact), and comes back
    while (m := await old.next_received()) is not None:
        written.append(m)
    new = await backend.next_conn()
    receipts = await bounded("every send queued", queued)
    assert [await outcome(r) for r in receipts] == [None] * n
    while len(written) < n:
        written.append(await new.next_received())
    assert written == [f"d{i}" for i in range(1, n + 1)], "once each, in order, across two backend connections"
    await bounded("the last ack", await client.send("d0"))
    assert await new.next_received() == "d0", "nothing more"
    s = client.upstream_stats()
    assert (s.unacked, s.acked, s.in_doubt, s.dropped) == (0, n + 1, 0, 0)
    kinds = [type(e) for e in events if not isinstance(e, Disconnected)]
    assert kinds == [Draining, Welcome], events
    reader.cancel()


@async_test
async def test_close_fails_what_was_not_acked_and_without_opting_in_nothing_changes(
    scope: contextlib.AsyncExitStack,
) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(
        f"ws://127.0.0.1:{proxy.port}/feed", backoff=FAST, max_failed_resumes=1_000_000, upstream=Upstream()
    )
    await welcome(client)
    conn = await backend.next_conn()
    await bounded("an ack", await client.send("c1"))
    assert await conn.next_received() == "c1"
    proxy.blocked = True
    assert await proxy.cut() == 1
    assert isinstance(await next_event(client), Disconnected)
    r2 = await client.send("c2")
    await client.close("done")
    e = await outcome(r2)
    assert e is not None and (e.reason, e.seq, e.data) == ("closed", None, "c2")
    try:
        await client.send("c3")
        raise AssertionError("send after close")
    except UpstreamError as e3:
        assert (e3.reason, e3.data) == ("closed", "c3")
    s = client.upstream_stats()
    assert (s.acked, s.unacked, s.sent) == (1, 0, 1)

    # Without opting in: plain messages, no stamps, no receipts.
    proxy.blocked = False
    plain = TetherClient(tether.url, backoff=FAST)
    scope.push_async_callback(plain.detach)
    await welcome(plain)
    conn = await backend.next_conn()
    plain.send_nowait("as is")
    plain.send_nowait(b"\x01\x02")
    assert (await conn.next_received(), await conn.next_received()) == ("as is", b"\x01\x02")
    try:
        await plain.send("x")
        raise AssertionError("send() without upstream")
    except UpstreamError as e4:
        assert (e4.reason, e4.data) == ("disabled", "x")
