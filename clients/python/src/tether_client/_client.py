"""The client: one tether session that reconnects and resumes on its own."""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
import ssl as _ssl
from collections import deque
from typing import Callable, Iterable, Literal, Mapping, Union

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from ._backoff import Backoff
from ._channel import Channel
from ._errors import ProtocolError, QueueFull, Stopped, UpstreamError, UpstreamReason
from ._events import (
    Disconnected, Draining, End, Event, Gap, Message, Payload, Reset, State, Stats, TakenOver,
    UpstreamRejected, Welcome,
)
from ._frames import Data, DrainingFrame, EndFrame, StampMode, UpAck, parse
from ._upstream import Full, Receipt, UpBuffer, Upstream, UpstreamStats

#: Upstream messages written per turn of the writer, between reads.
_UP_BATCH = 64
_TERMINAL: tuple[State, ...] = ("ended", "taken_over", "closed")
# (epoch, event) or a fatal error for the application.
_Item = Union[tuple[int, Event], ProtocolError]


class TetherClient:
    """A tether session: an async iterator of :data:`Event` s that connects,
    reconnects with backoff and resumes until :meth:`close`, an :class:`End`
    or a :class:`TakenOver`. Made inside a running event loop, it starts at
    once. A resume sends the token of the last welcome (tokens rotate on
    every resume) in ``Sec-WebSocket-Protocol`` (``tether.v1``,
    ``tether.session.<token>``, after ``subprotocols``; tether removes both
    before the backend sees them), or with ``token_in="header"`` in
    ``Tether-Session``; the offset in ``Tether-Offset``.

    A :class:`Message` is acknowledged (its seq becomes the offset of the
    next resume) when the application asks for the next event, or calls
    :meth:`ack`. Seqs not above the last one yielded are dropped as
    duplicates, so each seq is yielded once, in order.

    With ``upstream``, messages to the backend carry the upstream guarantee
    (docs/PROTOCOL.md §12): see :meth:`send`.
    """

    def __init__(
        self,
        url: str,
        *,
        stamp_mode: StampMode = "prefix",
        json_field: str = "seq",
        backoff: Backoff = Backoff(),
        max_failed_resumes: int = 8,
        send_queue: int = 100,
        buffer: int = 256,
        connect_timeout: float = 10.0,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] = (),
        token_in: Literal["protocol", "header"] = "protocol",
        resume: tuple[str, int] | None = None,
        upstream: Upstream | None = None,
        ssl: _ssl.SSLContext | None = None,
        max_message_bytes: int | None = 64 << 20,
        ping_interval: float | None = 20.0,
        random: Callable[[], float] | None = None,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        if token_in not in ("protocol", "header"):
            raise ValueError(f"token_in must be protocol or header, not {token_in!r}")
        if stamp_mode not in ("prefix", "json"):
            raise ValueError(f"stamp_mode must be prefix or json, not {stamp_mode!r}")
        #: tether's URL.
        self.url = url
        self._mode: StampMode = stamp_mode
        self._field = json_field
        self._backoff = backoff
        self._max_failed = max(1, max_failed_resumes)
        self._send_queue = max(1, send_queue)
        self._connect_timeout = connect_timeout
        self._headers = list(headers.items() if isinstance(headers, Mapping) else headers)
        self._subprotocols = [Subprotocol(p) for p in subprotocols]
        self._token_in = token_in
        self._ssl = ssl
        self._max_size = max_message_bytes
        self._ping_interval = ping_interval
        self._random = random or _random.Random().random
        self._token: str | None = resume[0] if resume else None
        # Last seq acknowledged by the application: the offset of the next resume.
        self._offset = resume[1] if resume else 0
        # Last seq yielded (≥ offset): anything not above is a duplicate.
        self._last = self._offset
        # Bumped when the session changes (a new session after a gap, a
        # reset): what was queued from the old one is dropped.
        self._epoch = 0
        self._pending: tuple[int, int] | None = None
        self._state: State = "connecting"
        self._closing = False
        self._received = self._duplicates = self._delivered = self._connections = 0
        self._chan: Channel[_Item] = Channel(buffer)
        self._outbox: deque[Payload] = deque()
        self._work = asyncio.Event()
        self._up = UpBuffer(upstream, self._work.set) if upstream else None
        self._ws: ClientConnection | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    # -- what the application reads --------------------------------------

    @property
    def state(self) -> State:
        """``connecting``, ``open``, ``reconnecting``, ``ended``, ``taken_over`` or ``closed``."""
        return self._state

    @property
    def offset(self) -> int:
        """The last seq acknowledged: persist it with :attr:`token` to resume later (``resume=``)."""
        return self._offset

    @property
    def token(self) -> str | None:
        """The session token (None before the first welcome)."""
        return self._token

    def stats(self) -> Stats:
        """Downstream counters."""
        return Stats(self._received, self._duplicates, self._delivered, self._connections)

    def upstream_stats(self) -> UpstreamStats:
        """Upstream counters (all zero without ``upstream``)."""
        return self._up.stats() if self._up else UpstreamStats()

    def ack(self) -> None:
        """Acknowledges the last message yielded now rather than at the next read."""
        if self._pending is not None:
            epoch, seq = self._pending
            self._pending = None
            if epoch == self._epoch and seq > self._offset:
                self._offset = seq

    def __aiter__(self) -> TetherClient:
        return self

    async def __anext__(self) -> Event:
        # Asking for more means the application is done with the last message.
        self.ack()
        while True:
            item = await self._chan.get()
            if item is None:
                raise StopAsyncIteration
            if isinstance(item, ProtocolError):
                raise item
            epoch, ev = item
            if isinstance(ev, Message):
                if epoch != self._epoch:
                    continue  # from a session given up: in the reported lost range
                if ev.seq <= self._last:
                    self._duplicates += 1
                    continue
                self._last = ev.seq
                self._delivered += 1
                self._pending = (epoch, ev.seq)
            elif isinstance(ev, Gap) and epoch == self._epoch and not ev.new_session:
                # Skipping the trimmed range keeps the next resume from reporting it again.
                skip = ev.first_available - 1
                self._offset = max(self._offset, skip)
                self._last = max(self._last, skip)
            return ev

    async def __aenter__(self) -> TetherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.detach()

    # -- sending ----------------------------------------------------------

    async def send(self, data: str | bytes | bytearray | memoryview) -> Receipt:
        """Queues a message for the backend under the upstream guarantee.
        Waits while ``max_unacked`` messages or ``max_unacked_bytes`` wait for
        their ack (never drops), then returns a :class:`Receipt`: awaiting it
        returns once tether acked the message (written to the backend
        connection) or raises :class:`UpstreamError`. Messages go out in the
        order these calls return, stamped with the session's seqs, and are
        sent again after a drop from the welcome's ``up.next``.

        Raises :class:`UpstreamError` at once without ``upstream``
        (``disabled``), after the end (``ended``) or once stopped."""
        payload = _payload(data)
        if self._up is None:
            raise UpstreamError("disabled", None, payload)
        if self._closing and self._up.stopped is None:
            raise UpstreamError("closed", None, payload)
        return await self._up.push(payload)

    def send_nowait(self, data: str | bytes | bytearray | memoryview) -> None:
        """Sends a message, or queues it (up to ``send_queue``) until the next
        welcome. Without ``upstream`` there is no delivery guarantee: a
        message in flight when the connection drops is lost, unreported.
        With it, the message goes through the upstream buffer (no receipt).

        Raises :class:`QueueFull` or :class:`Stopped`."""
        payload = _payload(data)
        if self._closing or self._state in _TERMINAL:
            raise Stopped("the client has stopped")
        if self._up is not None:
            try:
                self._up.try_push(payload)
            except Full:
                raise QueueFull("the upstream buffer is full") from None
            except UpstreamError:
                raise Stopped("the client has stopped") from None
            return
        if len(self._outbox) >= self._send_queue:
            raise QueueFull("the send queue is full")
        self._outbox.append(payload)
        self._work.set()

    async def flush(self) -> None:
        """Waits until no upstream message waits for its ack (acked or failed)."""
        if self._up is not None:
            await self._up.flush()

    # -- stopping ---------------------------------------------------------

    async def close(self, reason: str = "") -> None:
        """Ends the session (close 1000: tether ends it at the backend too)
        and stops. Upstream messages not acked by then fail with ``closed``.
        While disconnected there is nobody to tell: tether orphans the
        session after its ``session.linger``."""
        await self._shutdown(1000, reason)

    async def detach(self) -> None:
        """Stops without ending the session (close 1001): tether keeps it for
        ``session.linger``, resumable with ``resume=(token, offset)``.
        Leaving ``async with`` does this."""
        await self._shutdown(1001, "detached")

    async def _shutdown(self, code: int, reason: str) -> None:
        first = not self._closing
        self._closing = True
        self._chan.release()
        ws = self._ws
        if first and ws is not None and self._state not in _TERMINAL:
            # Acks still count while tether answers the close: the reader sees them.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code, reason), 5)
        if not self._task.done():
            # Connecting or waiting out a backoff: nothing to tell tether.
            # Otherwise the reader stops at tether's close, or after 5 s.
            if ws is None or not (await asyncio.wait({self._task}, timeout=5))[0]:
                self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._state not in _TERMINAL:
            self._state = "closed"

    # -- the connection task ---------------------------------------------

    async def _put(self, epoch: int, ev: Event) -> None:
        await self._chan.put((epoch, ev))

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            if self._state not in _TERMINAL:
                self._state = "closed"
            if self._up is not None:
                reason: UpstreamReason = "taken_over" if self._state == "taken_over" else "closed"
                self._up.stop(reason)
            self._outbox.clear()
            self._chan.close()

    def _request_headers(self) -> list[tuple[str, str]]:
        headers = list(self._headers)
        if self._token is not None:
            if self._token_in == "header":
                headers.append(("Tether-Session", self._token))
            headers.append(("Tether-Offset", str(self._offset)))
        if self._up is not None:
            headers.append(("Tether-Up", "seq"))
        return headers

    def _offered(self) -> list[Subprotocol] | None:
        """The application's subprotocols, then tether's with the token
        (docs/PROTOCOL.md §2): it never goes in the URL."""
        offered = list(self._subprotocols)
        if self._token is not None and self._token_in == "protocol":
            offered += [Subprotocol("tether.v1"), Subprotocol(f"tether.session.{self._token}")]
        return offered or None

    async def _loop(self) -> None:
        attempt = failed = 0
        while not self._closing:
            self._state = "connecting"
            resuming = self._token is not None
            refused: int | None = None
            welcomed = False
            try:
                ws = await connect(
                    self.url,
                    additional_headers=self._request_headers(),
                    subprotocols=self._offered(),
                    compression=None,  # tether negotiates no extensions
                    open_timeout=self._connect_timeout,
                    ping_interval=self._ping_interval,
                    max_size=self._max_size,
                    ssl=self._ssl,
                )
            except InvalidStatus as e:
                refused = e.response.status_code
                body = e.response.body.decode("utf-8", "replace")
                error = f"refused: {refused} {body}"
            except (OSError, asyncio.TimeoutError, WebSocketException) as e:
                error = str(e) or type(e).__name__
            else:
                self._ws = ws
                try:
                    exit = await self._connection(ws)
                finally:
                    self._ws = None
                    if self._up is not None:
                        self._up.disconnected()
                if exit is None:
                    return
                error, welcomed = exit
            if self._closing:
                return
            if welcomed:
                attempt = failed = 0
            elif resuming:
                # A resume that never got its welcome failed. A refusal that
                # no retry can change gives the session up at once.
                failed += 1
                definitive = refused in (400, 401, 409)
                if definitive or failed >= self._max_failed:
                    info = Reset(
                        "refused" if definitive else "failed_resumes",
                        refused if definitive else None,
                        failed,
                        self._offset,
                    )
                    self._token = None
                    self._offset = self._last = 0
                    self._epoch += 1
                    failed = 0
                    await self._put(self._epoch, info)
            retry_in = self._backoff.delay(attempt, self._random())
            attempt += 1
            self._state = "reconnecting"
            await self._put(self._epoch, Disconnected(error, retry_in))
            await asyncio.sleep(retry_in)

    async def _connection(self, ws: ClientConnection) -> tuple[str, bool] | None:
        """One connection, from the upgrade to its end: None to stop, else
        (why it dropped, whether it was welcomed) to reconnect."""
        welcomed = ended = False
        replay_to = 0
        writer: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as e:
                    return await self._closed(e, welcomed, ended)
                try:
                    frame = parse(raw, self._mode, self._field)
                except ProtocolError as err:
                    await self._fatal(ws, err)
                    return None
                if isinstance(frame, Data):
                    self._received += 1
                    await self._put(self._epoch, Message(frame.seq, frame.data, frame.seq <= replay_to))
                elif isinstance(frame, Welcome):
                    welcomed = True
                    replay_to = frame.replay.last if frame.replay else 0
                    new_session = frame.gap is not None and frame.gap.new_session
                    self._token = frame.session
                    if new_session:
                        self._epoch += 1
                        self._offset = self._last = 0
                    in_doubt = None
                    if self._up is not None:
                        if frame.up is None:
                            # Stamped messages would reach the backend stamped.
                            await self._fatal(ws, ProtocolError(
                                "tether accepted no upstream guarantee (no `up` in the welcome): "
                                "is it older than this client?"))
                            return None
                        # A new session (after a reset) or a gap's: seqs restart.
                        in_doubt = self._up.welcome(new_session or frame.outcome == "new", frame.up)
                    self._connections += 1
                    self._state = "open"
                    epoch = self._epoch
                    await self._put(epoch, frame)
                    if frame.gap is not None:
                        await self._put(epoch, frame.gap)
                    if in_doubt is not None:
                        await self._put(epoch, in_doubt)
                    writer = asyncio.get_running_loop().create_task(self._writer(ws))
                elif isinstance(frame, UpAck):
                    if self._up is not None:
                        self._up.ack(frame.seq)
                elif isinstance(frame, Gap):
                    await self._put(self._epoch, frame)
                elif isinstance(frame, DrainingFrame):
                    await self._put(self._epoch, Draining())
                elif isinstance(frame, EndFrame):
                    ended = True
                    self._state = "ended"
                    self._outbox.clear()
                    if self._up is not None:
                        self._up.end(frame.up_acked)
                    await self._put(self._epoch, End(frame.code, frame.reason))
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _closed(self, e: ConnectionClosed, welcomed: bool, ended: bool) -> tuple[str, bool] | None:
        code = e.rcvd.code if e.rcvd is not None else None
        reason = e.rcvd.reason if e.rcvd is not None else ""
        if self._closing:
            return None
        if ended:
            self._state = "ended"
            return None
        if code == 4001:
            self._state = "taken_over"
            await self._put(self._epoch, TakenOver())
            return None
        if self._up is not None and code in (4003, 4004):
            self._up.rejected()
            await self._put(self._epoch, UpstreamRejected(code, reason))
        return (f"closed {code} {reason}".rstrip() if code is not None else str(e)), welcomed

    async def _fatal(self, ws: ClientConnection, err: ProtocolError) -> None:
        # A wrong stamp mode would misread every frame: stop rather than guess.
        self._state = "closed"
        self._closing = True
        self._chan.release()
        await self._chan.put(err)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(4000, "client protocol error"), 5)

    async def _writer(self, ws: ClientConnection) -> None:
        """Sends, once the connection is welcomed: plain messages queued, then
        upstream messages not sent on it yet, in order."""
        up = self._up
        with contextlib.suppress(ConnectionClosed):
            while True:
                if self._outbox:
                    await ws.send(self._outbox.popleft())
                    continue
                frames = up.take(_UP_BATCH) if up is not None else []
                for f in frames:
                    await ws.send(f)
                if frames:
                    await asyncio.sleep(0)  # let reads (acks) take turns
                    continue
                self._work.clear()
                if self._outbox or (up is not None and up.has_unsent()):
                    continue
                await self._work.wait()


def _payload(data: str | bytes | bytearray | memoryview) -> Payload:
    # A copy: a caller reusing its buffer must not change a message awaiting resend.
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError("send() takes str, bytes, bytearray or memoryview")
