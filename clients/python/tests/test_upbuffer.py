"""The upstream buffer's reaction to welcomes, acks, ends and stops (§12),
without sockets."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine

import pytest

from tether_client import InDoubtPolicy, Receipt, UpMessage, Upstream, UpstreamError, UpWelcome
from tether_client._upstream import Full, UpBuffer


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(fn())


def reason(r: Receipt) -> str:
    if not r.done():
        return "pending"
    try:
        r.result()
    except UpstreamError as e:
        return e.reason
    return "ok"


def buf(policy: InDoubtPolicy = "report", **kw: int) -> UpBuffer:
    return UpBuffer(Upstream(in_doubt=policy, **kw), lambda: None)


def test_sent_messages_are_stamped_in_order_and_acked_cumulatively() -> None:
    async def t() -> None:
        b = buf()
        rs = [b.try_push(f"p{i}") for i in range(1, 5)]
        assert b.take(10) == [], "nothing is sent before a welcome"
        assert b.welcome(False, UpWelcome(1, 0, 7, True)) is None
        assert b.take(3) == ["1:p1", "2:p2", "3:p3"]
        assert b.take(3) == ["4:p4"]
        b.ack(2)
        assert [reason(r) for r in rs] == ["ok", "ok", "pending", "pending"]
        s = b.stats()
        assert (s.unacked, s.acked, s.acked_seq, s.next_seq, s.sent) == (2, 2, 2, 5, 4)

    run(t)


def test_a_welcome_on_the_same_connection_resends_from_next() -> None:
    async def t() -> None:
        b = buf()
        rs = [b.try_push(f"p{i}") for i in range(1, 6)]
        b.welcome(False, UpWelcome(1, 0, 7, True))
        b.take(10)
        b.disconnected()
        # tether acked 1, accepted 2..3 (queued), never got 4..5.
        assert b.welcome(False, UpWelcome(4, 1, 7, False)) is None
        assert b.take(10) == ["4:p4", "5:p5"]
        assert [reason(r) for r in rs] == ["ok"] + ["pending"] * 4
        b.ack(5)
        assert [reason(r) for r in rs] == ["ok"] * 5
        assert b.stats().resends == 2

    run(t)


@pytest.mark.parametrize("policy", ["report", "resend", "drop"])
def test_after_a_crash_what_was_sent_on_the_old_connection_from_next_on_is_in_doubt(policy: InDoubtPolicy) -> None:
    async def t() -> None:
        b = buf(policy)
        rs = [b.try_push(f"p{i}") for i in range(1, 6)]
        b.welcome(False, UpWelcome(1, 0, 7, True))
        b.take(4)  # p5 not sent
        b.disconnected()
        report = b.welcome(False, UpWelcome(3, 2, 8, False))
        assert report is not None
        assert (report.messages, report.policy, report.cause) == (
            (UpMessage(3, "p3"), UpMessage(4, "p4")), policy, "crash")
        if policy == "resend":
            assert b.take(10) == ["3:p3", "4:p4", "5:p5"]
            assert [reason(r) for r in rs] == ["ok", "ok", "pending", "pending", "pending"]
        else:
            assert b.take(10) == ["3:p5"], "new messages continue at next"
            failed = "in_doubt" if policy == "report" else "dropped"
            assert [reason(r) for r in rs] == ["ok", "ok", failed, failed, "pending"]
        assert b.stats().in_doubt == 2

    run(t)


def test_exact_means_never_written_and_a_new_session_puts_everything_sent_in_doubt() -> None:
    async def t() -> None:
        b = buf()
        rs = [b.try_push(f"p{i}") for i in range(1, 4)]
        b.welcome(False, UpWelcome(1, 0, 7, True))
        b.take(10)
        assert b.welcome(False, UpWelcome(2, 1, 8, True)) is None  # a drain: exact
        assert b.take(10) == ["2:p2", "3:p3"]
        report = b.welcome(True, UpWelcome(1, 0, 9, True))
        assert report is not None and report.cause == "new_session"
        assert [m.seq for m in report.messages] == [2, 3]
        assert [reason(r) for r in rs] == ["ok", "in_doubt", "in_doubt"]

    run(t)


def test_end_fails_what_was_not_written_and_stop_fails_the_rest() -> None:
    async def t() -> None:
        b = buf()
        rs = [b.try_push(f"p{i}") for i in range(1, 4)]
        b.welcome(False, UpWelcome(1, 0, 7, True))
        b.take(2)
        b.end(1)
        assert [reason(r) for r in rs] == ["ok", "ended", "ended"]
        with pytest.raises(UpstreamError) as e:
            b.try_push("late")
        assert (e.value.reason, e.value.seq, e.value.data) == ("ended", None, "late")
        c = buf()
        r = c.try_push(b"\x01")
        c.stop("closed")
        assert reason(r) == "closed"

    run(t)


def test_the_bounds_make_push_wait_and_one_large_message_still_goes() -> None:
    async def t() -> None:
        b = buf(max_unacked=2, max_unacked_bytes=10)
        b.try_push("a")
        b.try_push("b")
        with pytest.raises(Full):
            b.try_push("c")
        waiting = asyncio.ensure_future(b.push("c"))
        await asyncio.sleep(0)
        assert not waiting.done()
        b.welcome(False, UpWelcome(1, 0, 7, True))
        b.take(10)
        b.ack(1)
        r = await asyncio.wait_for(waiting, 5)
        assert reason(r) == "pending"
        big = buf(max_unacked_bytes=4)
        big.try_push("ééé")  # 6 bytes of UTF-8: alone in an empty buffer
        with pytest.raises(Full):
            big.try_push("x")
        assert big.stats().unacked_bytes == 6

    run(t)
