"""The client against a real tether, a real backend and a TCP proxy that the
tests cut: resume, dedup, gaps, end, takeover, draining, resets."""

from __future__ import annotations

import contextlib
import time
from typing import Literal

from support import (
    FAST, IMMEDIATE, Backend, CutProxy, Tether, async_test, bounded, next_event, next_message, poll, welcome,
)

from tether_client import (
    Disconnected, Draining, End, Gap, Message, Reset, TakenOver, TetherClient, Welcome,
)


@async_test
async def test_every_seq_exactly_once_in_order_across_12_cuts(scope: contextlib.AsyncExitStack) -> None:
    frames, cuts_wanted = 3000, 12
    started = time.monotonic()
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(f"ws://127.0.0.1:{proxy.port}/feed", backoff=IMMEDIATE)
    scope.push_async_callback(client.detach)
    assert (await welcome(client)).outcome == "new"
    conn = await backend.next_conn()
    conn.send_range(1, frames)

    seqs: list[int] = []
    cuts = replayed = 0
    welcomes = 1
    cut_at = 0  # a cut counts only on a connection welcomed since the last one
    every = frames * 9 // 10 // cuts_wanted  # cut points over the first 90% of the stream
    while len(seqs) < frames:
        ev = await next_event(client)
        if isinstance(ev, Message):
            assert ev.data == f"m{ev.seq}"
            replayed += ev.replay
            seqs.append(ev.seq)
        elif isinstance(ev, Welcome):
            assert ev.outcome == "resumed", ev
            welcomes += 1
        else:
            assert isinstance(ev, Disconnected), ev
        due = cuts < cuts_wanted and len(seqs) >= (cuts + 1) * every
        if due and welcomes > cut_at and client.state == "open":
            # Every other cut is a blackout first: tether's frames in flight are lost.
            if await proxy.cut(blackout=0.05 if cuts % 2 else 0.0) > 0:
                cuts += 1
                cut_at = welcomes

    assert seqs == list(range(1, frames + 1)), "every seq once, in order"
    assert cuts == cuts_wanted
    assert backend.accepted == 1, "the backend connection survived every cut"
    assert client.offset == frames - 1, "the last message is acknowledged at the next read"
    # The last cut can come after the client received the whole stream but
    # before the test read it all: the resume then replays frames that sit
    # queued behind seq `frames`, counted as received but not yet as
    # duplicates. One more frame, read to the end, flushes them through.
    conn.send_range(frames + 1, 1)
    while True:
        ev = await next_event(client)
        if isinstance(ev, Message):
            assert ev.seq <= frames + 1, ev
            if ev.seq == frames + 1:
                break
    stats = client.stats()
    assert stats.delivered == frames + 1
    assert stats.received == frames + 1 + stats.duplicates
    print(
        f"\ncut test: frames {frames}, cuts {cuts}, connections {welcomes}, received {stats.received}, "
        f"duplicates dropped {stats.duplicates}, delivered {stats.delivered}, lost 0, replayed {replayed}, "
        f"{time.monotonic() - started:.2f} s"
    )


@async_test
async def test_a_gap_names_the_lost_range_then_the_end(scope: contextlib.AsyncExitStack) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url, max_session_frames=10)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(f"ws://127.0.0.1:{proxy.port}/feed", backoff=FAST, max_failed_resumes=1_000_000)
    scope.push_async_callback(client.detach)
    await welcome(client)
    conn = await backend.next_conn()
    conn.send_range(1, 5)
    for seq in range(1, 6):
        assert (await next_message(client)).seq == seq
    client.ack()
    assert client.offset == 5

    # A tunnel: the connection drops and stays down while 200 more frames
    # arrive; retention keeps at least the last 10 (trimmed in chunks of 64,
    # so at most 74).
    proxy.blocked = True
    assert await proxy.cut() == 1
    conn.send_range(6, 200)
    await tether.journaled(205)
    proxy.blocked = False

    w = await welcome(client)
    assert w.outcome == "gap"
    gap = await next_event(client)
    assert isinstance(gap, Gap), gap
    assert gap == w.gap
    assert (gap.reason, gap.new_session, gap.mid_stream) == ("trimmed", False, False)
    first = gap.first_available
    assert 205 - 74 + 1 <= first <= 205 - 10 + 1, first
    assert (gap.requested_offset, gap.lost_first, gap.lost_last) == (5, 6, first - 1)
    for seq in range(first, 206):
        m = await next_message(client)
        assert (m.seq, m.replay) == (seq, True)
    assert client.offset == 204

    await conn.close(1000, "bye")
    assert await next_event(client) == End(1000, "bye")
    with contextlib.suppress(StopAsyncIteration):
        ev = await bounded("the iteration's end", client.__anext__())
        raise AssertionError(f"expected the end of the iteration, got {ev!r}")
    assert client.state == "ended"


@async_test
async def test_takeover_stops_the_first_client_and_close_ends_the_session(scope: contextlib.AsyncExitStack) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    url = f"{tether.url}/feed"
    a = TetherClient(url, backoff=FAST)
    scope.push_async_callback(a.detach)
    w = await welcome(a)
    assert w.outcome == "new"
    conn = await backend.next_conn()
    conn.send_range(1, 3)
    for seq in (1, 2, 3):
        assert (await next_message(a)).seq == seq
    a.ack()

    assert a.token is not None
    b = TetherClient(url, backoff=FAST, resume=(a.token, a.offset))
    scope.push_async_callback(b.detach)
    wb = await welcome(b)
    assert wb.outcome == "resumed"
    assert wb.session != w.session, "every resume brings the session's next token"
    assert await next_event(a) == TakenOver()
    with contextlib.suppress(StopAsyncIteration):
        await bounded("a's end", a.__anext__())
        raise AssertionError("a goes on after the takeover")
    assert a.state == "taken_over"

    # b carries on where a stopped, and sends to the backend.
    conn.send_range(4, 1)
    assert (await next_message(b)).seq == 4
    b.send_nowait("hello")
    assert await conn.next_received() == "hello"
    await b.close("done")
    assert await bounded("the backend's close", conn.closed) == (1000, "done")
    assert b.state == "closed"


@async_test
async def test_draining_then_1012_and_the_session_restarts(scope: contextlib.AsyncExitStack) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    client = TetherClient(f"{tether.url}/feed", backoff=FAST, max_failed_resumes=1_000_000)
    scope.push_async_callback(client.detach)
    await welcome(client)
    conn = await backend.next_conn()
    conn.send_range(1, 3)
    for seq in (1, 2, 3):
        assert (await next_message(client)).seq == seq
    # The events are read after the restart, by when the client may have
    # resumed: acknowledge 3 first, or it comes again (and is dropped).
    client.ack()
    await tether.restart()
    assert await next_event(client) == Draining()
    ev = await next_event(client)
    assert isinstance(ev, Disconnected) and "1012" in ev.error, ev
    w = await welcome(client)
    assert w.outcome == "restarted", "a new backend connection for the same session"
    conn = await backend.next_conn()
    conn.send_range(4, 1)
    m = await next_message(client)
    assert (m.seq, m.data) == (4, "m4"), "the numbering continues"
    assert client.stats().duplicates == 0


@async_test
async def test_a_refused_resume_resets_and_json_stamps(scope: contextlib.AsyncExitStack) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url, stamp="json")
    url = f"{tether.url}/feed"
    first = TetherClient(url, stamp_mode="json")
    w = await welcome(first)
    await backend.next_conn()
    await first.detach()
    # An offset ahead of the session: 409, which no retry fixes.
    client = TetherClient(url, stamp_mode="json", backoff=FAST, resume=(w.session, 99))
    scope.push_async_callback(client.detach)
    while True:
        ev = await next_event(client)
        if isinstance(ev, Reset):
            break
        assert isinstance(ev, Disconnected), ev
    assert ev == Reset("refused", 409, 1, 99)
    assert (await welcome(client)).outcome == "new"
    conn = await backend.next_conn()
    await conn.ws.send('{"a":1}')
    await conn.ws.send("m2")  # not JSON: the prefix form in json mode too
    m1, m2 = await next_message(client), await next_message(client)
    assert (m1.seq, m1.data, m2.seq, m2.data) == (1, '{"a":1}', 2, "m2")


@async_test
async def test_a_resume_brings_back_what_was_not_acknowledged_and_it_is_dropped(
    scope: contextlib.AsyncExitStack,
) -> None:
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(f"ws://127.0.0.1:{proxy.port}/feed", backoff=FAST)
    scope.push_async_callback(client.detach)
    await welcome(client)
    conn = await backend.next_conn()
    conn.send_range(1, 20, batch=20)
    assert (await next_message(client)).seq == 1
    client.ack()

    # 2..=20 are received and wait unread; the client resumes with offset 1
    # before the application reads on.
    async def received_all() -> bool:
        return client.stats().received == 20

    async def resumed() -> bool:
        return client.stats().connections == 2

    await poll("20 frames received", received_all)
    assert await proxy.cut() == 1
    await poll("the resume", resumed)
    for seq in range(2, 21):
        assert (await next_message(client)).seq == seq
    w = await welcome(client)
    assert w.outcome == "resumed"
    assert w.replay is not None and (w.replay.first, w.replay.last) == (2, 20)
    assert client.offset == 20, "acknowledged by the read that got the welcome"
    conn.send_range(21, 1)
    m = await next_message(client)
    assert (m.seq, m.replay) == (21, False)
    stats = client.stats()
    assert (stats.received, stats.duplicates, stats.delivered) == (40, 19, 21)


@async_test
async def test_tokens_rotate_and_a_superseded_one_is_refused(scope: contextlib.AsyncExitStack) -> None:
    """Every welcome brings a new token and the client resumes with the
    latest (in Sec-WebSocket-Protocol, or Tether-Session with
    token_in="header"); once it did, the first token gets 401."""
    modes: tuple[Literal["protocol", "header"], ...] = ("protocol", "header")
    for token_in in modes:
        backend = await Backend.start(scope)
        tether = await Tether.start(scope, backend.url)
        proxy = await CutProxy.start(scope, tether.data_port)
        url = f"ws://127.0.0.1:{proxy.port}/feed"
        a = TetherClient(url, backoff=FAST, token_in=token_in)
        scope.push_async_callback(a.detach)
        tokens = [(await welcome(a)).session]
        await backend.next_conn()
        for _ in range(2):
            assert await proxy.cut() == 1
            w = await welcome(a)
            assert w.outcome == "resumed", (token_in, w)
            assert a.token == w.session
            tokens.append(w.session)
        assert len(set(tokens)) == 3, token_in
        # a resumed with tokens[1]: tokens[0] is superseded.
        thief = TetherClient(url, backoff=FAST, resume=(tokens[0], 0))
        scope.push_async_callback(thief.detach)
        while True:
            ev = await next_event(thief)
            if isinstance(ev, Reset):
                break
            assert isinstance(ev, Disconnected), ev
        assert (ev.reason, ev.status) == ("refused", 401), token_in
        # Given up, it starts a session of its own: a's is not taken over.
        assert (await welcome(thief)).outcome == "new"
        assert backend.accepted == 2
        assert a.state == "open", token_in
