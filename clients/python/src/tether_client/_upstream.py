"""The client's half of the upstream guarantee (docs/PROTOCOL.md §12): the
messages not yet acked, their seqs, and what a welcome, an ``up_ack`` and an
``end`` do to them. No sockets here: the client takes stamped frames from it
once a connection is welcomed."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator

from ._errors import UpstreamError, UpstreamReason
from ._events import InDoubt, InDoubtPolicy, Payload, UpMessage, UpWelcome
from ._frames import stamp


@dataclass(frozen=True)
class Upstream:
    """Opts in to the upstream guarantee and sets its limits."""

    #: At most this many messages wait for their ack, sent or not. A full buffer makes ``send()`` wait.
    max_unacked: int = 1000
    #: At most this many payload bytes (UTF-8 for text) wait for their ack;
    #: one larger message is taken when the buffer is empty.
    max_unacked_bytes: int = 1 << 20
    #: What to do with messages in doubt after tether stopped without a drain.
    in_doubt: InDoubtPolicy = "report"

    def __post_init__(self) -> None:
        if self.max_unacked < 1 or self.max_unacked_bytes < 1:
            raise ValueError("max_unacked and max_unacked_bytes must be at least 1")
        if self.in_doubt not in ("report", "resend", "drop"):
            raise ValueError(f"in_doubt must be report, resend or drop, not {self.in_doubt!r}")


@dataclass(frozen=True)
class UpstreamStats:
    """Upstream counters (all zero without the upstream option)."""

    #: Messages waiting for their ack, sent or not.
    unacked: int = 0
    #: Their payload bytes.
    unacked_bytes: int = 0
    #: Stamped messages written to tether connections, resends included.
    sent: int = 0
    #: Messages acked (their receipts completed).
    acked: int = 0
    #: Messages sent again after a reconnect.
    resends: int = 0
    #: Messages found in doubt, whatever the policy did with them.
    in_doubt: int = 0
    #: Receipts failed with ``dropped``.
    dropped: int = 0
    #: Receipts failed with ``ended``.
    ended: int = 0
    #: Connections tether closed with 4003 or 4004 (a bug of this client).
    rejected: int = 0
    #: The highest seq tether acked in the current session.
    acked_seq: int = 0
    #: The seq the next message sent will carry.
    next_seq: int = 1
    #: The backend connection (welcome ``up.conn``) of the last welcome.
    conn: int | None = None


class Receipt:
    """Awaiting it returns once tether acked the message (written to the
    backend connection), or raises :class:`UpstreamError` with the reason it
    will not be. Not awaiting it does not cancel the message."""

    __slots__ = ("_fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self._fut = fut

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.shield(self._fut).__await__()

    def done(self) -> bool:
        """True once acked or failed."""
        return self._fut.done()

    def result(self) -> None:
        """Returns if acked; raises :class:`UpstreamError` if failed, ``asyncio.InvalidStateError`` if pending."""
        return self._fut.result()


def _settled(fut: asyncio.Future[None]) -> None:
    # A receipt nobody awaits is not an error: every failure is also an event
    # (End, InDoubt) or the application's own doing (close).
    if not fut.cancelled():
        fut.exception()


def _size(data: Payload) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


class _Entry:
    __slots__ = ("data", "size", "seq", "last_seq", "conn", "fut")

    def __init__(self, data: Payload, fut: asyncio.Future[None]) -> None:
        self.data = data
        self.size = _size(data)
        # The seq it carries on the current numbering; None: (re)send it.
        self.seq: int | None = None
        # The seq it was last sent with, for errors and reports.
        self.last_seq: int | None = None
        # The backend connection (up.conn) it was last sent for.
        self.conn: int | None = None
        self.fut = fut

    def finish(self, reason: UpstreamReason | None) -> None:
        if self.fut.done():
            return
        if reason is None:
            self.fut.set_result(None)
        else:
            self.fut.set_exception(UpstreamError(reason, self.last_seq, self.data))


class Full(Exception):
    """No room in the buffer now."""


class UpBuffer:
    """The unacked messages, in seq order: ``entries[:stamped]`` carry a seq
    of the current numbering (sent, waiting for their ack), the rest are to
    be sent, stamped from ``next``."""

    def __init__(self, cfg: Upstream, on_work: Callable[[], None]) -> None:
        self.cfg = cfg
        self._on_work = on_work
        self._entries: deque[_Entry] = deque()
        self._stamped = 0
        self._bytes = 0
        self._next = 1
        self._acked = 0
        # The backend connection of the live, welcomed connection: nothing is sent without one.
        self._live: int | None = None
        self._last_conn: int | None = None
        self.stopped: UpstreamReason | None = None
        self._stats = UpstreamStats()
        self._changed = asyncio.Event()

    def _count(self, **add: int) -> None:
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in add.items()})

    def _notify(self) -> None:
        # Wakes every waiter (room, flush): each checks its own condition again.
        self._changed.set()
        self._changed = asyncio.Event()

    def try_push(self, data: Payload) -> Receipt:
        """Queues a message if there is room; raises :class:`Full`, or
        :class:`UpstreamError` once stopped."""
        if self.stopped is not None:
            raise UpstreamError(self.stopped, None, data)
        size = _size(data)
        fits = len(self._entries) < self.cfg.max_unacked and (
            not self._entries or self._bytes + size <= self.cfg.max_unacked_bytes
        )
        if not fits:
            raise Full()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_settled)
        self._entries.append(_Entry(data, fut))
        self._bytes += size
        self._on_work()
        return Receipt(fut)

    async def push(self, data: Payload) -> Receipt:
        """Waits for room, then queues (order: as these calls return)."""
        while True:
            changed = self._changed
            try:
                return self.try_push(data)
            except Full:
                await changed.wait()

    async def flush(self) -> None:
        """Waits until nothing waits for an ack."""
        while self._entries:
            await self._changed.wait()

    def has_unsent(self) -> bool:
        return self._live is not None and self._stamped < len(self._entries)

    def take(self, limit: int) -> list[Payload]:
        """Stamps up to ``limit`` unsent messages for the live connection."""
        if self._live is None:
            return []
        out: list[Payload] = []
        while len(out) < limit and self._stamped < len(self._entries):
            e = self._entries[self._stamped]
            e.seq = e.last_seq = self._next
            e.conn = self._live
            out.append(stamp(self._next, e.data))
            self._next += 1
            self._stamped += 1
        self._count(sent=len(out))
        return out

    def welcome(self, other_session: bool, up: UpWelcome) -> InDoubt | None:
        """A welcome with ``up`` (§12, "What a client does with it");
        ``other_session``: not the session the sent messages were stamped for
        (a new one after a reset, or a gap's new session; tokens cannot tell,
        they change on every resume). Returns the in-doubt report, if
        anything is in doubt, after applying the policy."""
        # Seqs of another session mean nothing to this one.
        other = other_session
        doubts: list[_Entry] = []
        kept: deque[_Entry] = deque()
        stamped = 0
        acked = resends = 0
        for i, e in enumerate(self._entries):
            if i >= self._stamped or e.seq is None:
                kept.append(e)  # not sent yet
                continue
            if other:
                doubts.append(e)
            elif e.seq <= up.acked:
                acked += 1
                self._bytes -= e.size
                e.finish(None)
            elif e.seq < up.next:
                # Accepted: queued or written on the backend connection (the
                # old one if it changed); tether acks it once written.
                stamped += 1
                kept.append(e)
            elif e.conn == up.conn or up.exact:
                # Never reached tether, or never written anywhere: send again.
                resends += 1
                e.seq = None
                kept.append(e)
            else:
                doubts.append(e)
        report = None
        if doubts:
            policy = self.cfg.in_doubt
            report = InDoubt(
                tuple(UpMessage(e.last_seq or 0, e.data) for e in doubts),
                policy,
                "new_session" if other else "crash",
            )
            self._count(in_doubt=len(doubts))
            if policy == "resend":
                resends += len(doubts)
                for e in doubts:
                    e.seq = None
                # Back in send order: everything not settled, as it was queued.
                kept = deque(e for e in self._entries if not e.fut.done())
            else:
                if policy == "drop":
                    self._count(dropped=len(doubts))
                for e in doubts:
                    self._bytes -= e.size
                    e.finish("dropped" if policy == "drop" else "in_doubt")
        self._entries = kept
        self._stamped = stamped
        self._next = up.next
        self._acked = up.acked if other else max(self._acked, up.acked)
        self._live = self._last_conn = up.conn
        self._count(acked=acked, resends=resends)
        self._stats = replace(self._stats, acked_seq=self._acked)
        self._notify()
        self._on_work()
        return report

    def ack(self, seq: int) -> None:
        """``up_ack``: everything up to ``seq`` was written."""
        self._acked = max(self._acked, seq)
        n = 0
        while self._stamped > 0 and self._entries:
            e = self._entries[0]
            if e.seq is None or e.seq > seq:
                break
            self._entries.popleft()
            self._stamped -= 1
            self._bytes -= e.size
            n += 1
            e.finish(None)
        self._count(acked=n)
        self._stats = replace(self._stats, acked_seq=self._acked)
        self._notify()

    def end(self, acked: int | None) -> None:
        """The session ended; ``end.up.acked`` says what was written, the rest
        never will be. Without it, what was sent and not acked is in doubt."""
        if acked is not None:
            self.ack(acked)
        doubtful = 0 if acked is not None else self._stamped
        if self.stopped is None:
            self.stopped = "ended"
        for i, e in enumerate(self._entries):
            if i < doubtful:
                self._count(in_doubt=1)
                e.finish("in_doubt")
            else:
                self._count(ended=1)
                e.finish("ended")
        self._clear()

    def disconnected(self) -> None:
        """The connection dropped: nothing is sent until the next welcome."""
        self._live = None

    def rejected(self) -> None:
        """tether closed the connection with 4003 or 4004."""
        self._count(rejected=1)

    def stop(self, reason: UpstreamReason) -> None:
        """The client stopped: fail what is left."""
        if self.stopped is None:
            self.stopped = reason
        self._live = None
        for e in self._entries:
            e.finish(reason)
        self._clear()

    def _clear(self) -> None:
        self._entries = deque()
        self._stamped = 0
        self._bytes = 0
        self._notify()

    def stats(self) -> UpstreamStats:
        return replace(
            self._stats,
            unacked=len(self._entries),
            unacked_bytes=self._bytes,
            next_seq=self._next,
            conn=self._last_conn,
        )
