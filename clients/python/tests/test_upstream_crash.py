"""The upstream guarantee when tether is killed (-9): every message is acked
or reported in doubt, and the in-doubt policies do what they say
(docs/PROTOCOL.md §12)."""

from __future__ import annotations

import asyncio
import contextlib

from support import Backend, BackendConn, CutProxy, FAST, Tether, async_test, bounded, next_event, poll, welcome
from test_upstream import drain_events, index, outcome

from tether_client import (
    Disconnected, InDoubt, InDoubtPolicy, Receipt, TetherClient, UpMessage, Upstream, UpWelcome,
)


async def crash_mid_stream(
    scope: contextlib.AsyncExitStack, policy: str, n: int
) -> tuple[TetherClient, list[Receipt], list[str], BackendConn, int]:
    """Sends n messages and kills tether (-9) after the backend read 500,
    then restarts it on the same journal. Returns what the old backend
    connection read and the new one."""
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    up = Upstream(in_doubt="resend") if policy == "resend" else Upstream()
    client = TetherClient(f"{tether.url}/feed", backoff=FAST, max_failed_resumes=1_000_000, upstream=up)
    scope.push_async_callback(client.detach)
    await welcome(client)
    old = await backend.next_conn()

    async def sender() -> list[Receipt]:
        return [await client.send(f"k{i}") for i in range(1, n + 1)]

    sending = asyncio.ensure_future(sender())
    written: list[str] = []
    while len(written) < 500:
        m = await old.next_received()
        assert isinstance(m, str)
        written.append(m)
    await tether.kill_and_restart()
    while (m := await old.next_received()) is not None:
        assert isinstance(m, str)
        written.append(m)
    new = await backend.next_conn()
    receipts = await bounded("every send queued", sending)
    return client, receipts, written, new, len(written)



@async_test
async def test_after_a_kill_9_every_message_is_acked_or_reported_in_doubt(scope: contextlib.AsyncExitStack) -> None:
    n = 2000
    client, receipts, written, new, on_old = await crash_mid_stream(scope, "report", n)
    w = await welcome(client)
    assert w.outcome == "restarted" and w.up is not None and not w.up.exact
    reported: tuple[UpMessage, ...] = ()
    if client.upstream_stats().in_doubt:
        ev = await next_event(client)
        assert isinstance(ev, InDoubt) and (ev.policy, ev.cause) == ("report", "crash"), ev
        reported = ev.messages
    events: list[object] = []
    reader = asyncio.ensure_future(drain_events(client, events))
    results = [await outcome(r) for r in receipts]
    acked = [i + 1 for i, e in enumerate(results) if e is None]
    doubts = [e for e in results if e is not None]
    assert all(e.reason == "in_doubt" for e in doubts), doubts[:3]
    assert [(e.seq, e.data) for e in doubts] == [(m.seq, m.data) for m in reported]
    # The new connection gets the acked messages the old one did not.
    on_old_set = {index(m) for m in written}
    for _ in range(sum(1 for i in acked if i not in on_old_set)):
        m = await new.next_received()
        assert isinstance(m, str)
        written.append(m)
    await bounded("the last ack", await client.send("k0"))
    assert await new.next_received() == "k0", "nothing more"
    seen = [index(m) for m in written]
    assert all(a < b for a, b in zip(seen, seen[1:])), "in order, none twice"
    assert set(acked) <= set(seen), "every acked message was written"
    doubtful = {index(e.data) for e in doubts if isinstance(e.data, str)}
    assert not doubtful & {index(m) for m in written[on_old:]}, "the new connection got none in doubt"
    assert len(acked) + len(doubts) == n
    s = client.upstream_stats()
    assert (s.unacked, s.acked, s.in_doubt) == (0, len(acked) + 1, len(doubts))
    reader.cancel()
    print(f"\nkill -9: written to the old connection {on_old}, acked {len(acked)}, in doubt {len(doubts)}")



async def crash_while_the_backend_stalls(
    scope: contextlib.AsyncExitStack, policy: InDoubtPolicy, n: int
) -> tuple[TetherClient, UpWelcome, InDoubt, list[Receipt], Backend, BackendConn, int]:
    """Sends n messages (16 KiB each) while the backend does not read, so
    that some are on their way to it, and kills tether (-9) with the client
    cut off; then the same tether again on the same journal, and the
    client's resume: its welcome and its in-doubt report."""
    fill = "x" * (16 * 1024)  # 32 MiB in all: more than the sockets toward the backend hold
    backend = await Backend.start(scope)
    tether = await Tether.start(scope, backend.url)
    proxy = await CutProxy.start(scope, tether.data_port)
    client = TetherClient(
        f"ws://127.0.0.1:{proxy.port}/feed",
        backoff=FAST,
        max_failed_resumes=1_000_000,
        upstream=Upstream(max_unacked=5000, max_unacked_bytes=64 << 20, in_doubt=policy),
    )
    scope.push_async_callback(client.detach)
    await welcome(client)
    conn1 = await backend.next_conn()
    await bounded("an ack", await client.send("m1|"))  # the journal has a mark from the running tether
    conn1.ws.transport.pause_reading()  # the backend stops reading: tether's writes back up
    receipts = [await client.send(f"m{i}|{fill}") for i in range(2, n + 1)]

    async def some_written() -> bool:
        return await tether.metric('tether_upstream_frames_total{result="forwarded"}') >= 4

    await poll("writes to the backend", some_written)
    # Cut the client off first, so that no ack reaches it after the snapshot.
    proxy.blocked = True
    assert await proxy.cut() == 1
    assert isinstance(await next_event(client), Disconnected)
    acked_before = client.upstream_stats().acked_seq
    await tether.kill_and_restart()
    proxy.blocked = False
    w = await welcome(client)
    assert w.outcome == "restarted" and w.up is not None, w
    assert not w.up.exact
    assert w.up.acked >= acked_before and w.up.next == w.up.acked + 1, w.up
    assert w.up.next <= n, f"nothing left in doubt (next {w.up.next}): the backend's sockets took it all"
    # In doubt: what the client had sent on the old connection from next on.
    # What it had not sent yet (its own socket was full) is not in doubt:
    # it goes out on the new connection, stamped from next.
    report = await next_event(client)
    assert isinstance(report, InDoubt), report
    assert (report.policy, report.cause) == (policy, "crash")
    doubtful = list(range(w.up.next, w.up.next + len(report.messages)))
    assert doubtful and [m.seq for m in report.messages] == doubtful
    assert [str(m.data).partition("|")[0] for m in report.messages] == [f"m{i}" for i in doubtful]
    return client, w.up, report, receipts, backend, conn1, acked_before


async def read_until(conn: BackendConn, last: str | None) -> list[str]:
    """What a backend connection reads up to ``last`` (None: its end), without the fill."""
    got: list[str] = []
    while (m := await conn.next_received()) != last:
        assert isinstance(m, str), m
        got.append(m.partition("|")[0])
    return got


@async_test
async def test_kill_9_with_messages_on_their_way_to_the_backend_reports_them_in_doubt(
    scope: contextlib.AsyncExitStack,
) -> None:
    n = 2000
    client, up, report, receipts, backend, conn1, acked_before = await crash_while_the_backend_stalls(
        scope, "report", n
    )
    last = up.next + len(report.messages) - 1
    events: list[object] = []
    reader = asyncio.ensure_future(drain_events(client, events))
    results = [await outcome(r) for r in receipts]
    assert [e.reason if e else "ok" for e in results] == [
        "in_doubt" if up.next <= i <= last else "ok" for i in range(2, n + 1)
    ]

    # The old backend connection got a prefix of what was sent: everything
    # acked and maybe some of what was in doubt, never more.
    conn1.ws.transport.resume_reading()
    got1 = await read_until(conn1, None)
    assert got1 == [f"m{i}" for i in range(1, len(got1) + 1)]
    assert up.acked <= len(got1) <= last, (len(got1), up.acked)

    # The session goes on, with seqs from next: first what was never sent, then a new message.
    conn2 = await backend.next_conn()
    await bounded("the ack", await client.send("after"))
    assert client.upstream_stats().acked_seq == up.next + (n - last)
    got2 = await read_until(conn2, "after")
    assert got2 == [f"m{i}" for i in range(last + 1, n + 1)]
    assert client.upstream_stats().in_doubt == len(report.messages)
    assert not [e for e in events if isinstance(e, InDoubt)], "one report"
    reader.cancel()
    print(
        f"\nkill -9, backend not reading: sent {n}, acked before the kill {acked_before}, "
        f"acked {up.acked}, in doubt {len(report.messages)}, old backend connection read {len(got1)}, "
        f"sent on the new one {len(got2)}"
    )


@async_test
async def test_kill_9_with_policy_resend_sends_the_doubtful_again(scope: contextlib.AsyncExitStack) -> None:
    n = 2000
    client, up, report, receipts, backend, conn1, _ = await crash_while_the_backend_stalls(scope, "resend", n)
    events: list[object] = []
    reader = asyncio.ensure_future(drain_events(client, events))
    assert [await outcome(r) for r in receipts] == [None] * (n - 1), "every receipt acked"
    conn1.ws.transport.resume_reading()
    got1 = await read_until(conn1, None)
    assert got1 == [f"m{i}" for i in range(1, len(got1) + 1)], "old: in order, none twice"
    conn2 = await backend.next_conn()
    await bounded("the ack", await client.send("after"))
    got2 = await read_until(conn2, "after")
    # The new connection reads from next to the end, in order: the doubtful
    # ones again (the old one may have had them too), then the rest.
    assert got2 == [f"m{i}" for i in range(up.next, n + 1)], "new: in order, none twice, nothing skipped"
    twice = len(got1) - up.next + 1
    assert 0 <= twice <= len(report.messages), (twice, len(report.messages))
    s = client.upstream_stats()
    assert (s.unacked, s.acked, s.acked_seq, s.dropped) == (0, n + 1, n + 1, 0)
    assert s.in_doubt == len(report.messages) and s.resends >= s.in_doubt
    assert not [e for e in events if isinstance(e, InDoubt)], "one report"
    reader.cancel()
    print(
        f"\nkill -9, policy resend: in doubt and resent {len(report.messages)}, "
        f"written to both connections {twice}, old read {len(got1)}, new read {len(got2)}"
    )
