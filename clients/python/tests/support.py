"""A real tether (``TETHER_BIN``), a real websockets backend and a TCP proxy
that the tests cut, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tether_client import Backoff, Disconnected, Event, Message, TetherClient, Welcome

T = TypeVar("T")

#: Every await of a test is bounded by this (seconds).
BOUND = 60.0
#: Reconnect at once: tests do not wait out a backoff.
IMMEDIATE = Backoff(initial=0.0, max=0.0)
FAST = Backoff(initial=0.01, max=0.1)

TestFn = Callable[[contextlib.AsyncExitStack], Coroutine[Any, Any, None]]


def async_test(fn: TestFn) -> Callable[[], None]:
    """Runs an async test in a fresh event loop; ``scope`` closes what it started."""

    def run() -> None:
        async def main() -> None:
            async with contextlib.AsyncExitStack() as scope:
                await fn(scope)

        asyncio.run(asyncio.wait_for(main(), 4 * BOUND))

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


async def bounded(what: str, aw: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(aw, BOUND)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out: {what}") from None


async def poll(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """For conditions with no event to await (a process's readiness, a metric)."""

    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.02)  # polling what we do not control

    await bounded(what, loop())


async def next_event(client: TetherClient) -> Event:
    ev = await bounded("the next event", client.__anext__())
    return ev


async def welcome(client: TetherClient) -> Welcome:
    """The next welcome, skipping failed attempts."""
    while True:
        ev = await next_event(client)
        if isinstance(ev, Welcome):
            return ev
        assert isinstance(ev, Disconnected), f"expected a welcome, got {ev!r}"


async def next_message(client: TetherClient) -> Message:
    while True:
        ev = await next_event(client)
        if isinstance(ev, Message):
            return ev


_given: set[int] = set()


def free_port() -> int:
    """A loopback port below Linux's ephemeral range, so that no outgoing
    connection takes it while a tether restarts on it."""
    while True:
        port = random.randrange(12_000, 32_000)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port


def tether_bin() -> str:
    path = os.environ.get("TETHER_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "/var/tmp/tether-target"), "release", "tether"
    )
    assert os.access(path, os.X_OK), f"{path} is missing: build tether or set TETHER_BIN"
    return path


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    text = data.decode("utf-8", "replace")
    return int(text[9:12]), text.partition("\r\n\r\n")[2]


class Tether:
    """A tether process on its own journal, restartable on the same ports."""

    def __init__(self, upstream: str, stamp: str, max_session_frames: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tether-py-")
        self.data_port, self.admin_port = free_port(), free_port()
        self.url = f"ws://127.0.0.1:{self.data_port}"
        self.config = Path(self._dir.name) / "tether.toml"
        self.config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.data_port}"\n'
            f'admin_listen = "127.0.0.1:{self.admin_port}"\n'
            f'upstream = "{upstream}"\nshutdown_grace = "5s"\n'
            f'[stamp]\nmode = "{stamp}"\n'
            f'[journal]\ndata_dir = "{Path(self._dir.name) / "journal"}"\n'
            f"max_session_frames = {max_session_frames}\n"
            f'[log]\nlevel = "warn"\n'
        )
        self.proc: asyncio.subprocess.Process | None = None

    @staticmethod
    async def start(
        scope: contextlib.AsyncExitStack, upstream: str, stamp: str = "prefix", max_session_frames: int = 100_000
    ) -> Tether:
        t = Tether(upstream, stamp, max_session_frames)
        scope.push_async_callback(t.stop)
        await t._spawn()
        return t

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            tether_bin(), "--config", str(self.config), stdin=asyncio.subprocess.DEVNULL
        )
        proc = self.proc

        async def ready() -> bool:
            assert proc.returncode is None, f"tether exited at start: {proc.returncode}"
            with contextlib.suppress(OSError, ValueError):
                return (await http_get(self.admin_port, "/readyz"))[0] == 200
            return False

        await poll("tether /readyz", ready)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._dir.cleanup()

    async def kill_and_restart(self) -> None:
        """SIGKILL (no drain: the journal as a crash leaves it), then the same tether again."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        await self._spawn()

    async def restart(self) -> None:
        """SIGTERM (tether drains: ``draining``, then close 1012), then the same tether again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await bounded("tether to exit", self.proc.wait()) == 0, "tether exits 0 after draining"
        await self._spawn()

    async def metric(self, name: str) -> float:
        _, body = await http_get(self.admin_port, "/metrics")
        for line in body.splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
        return 0.0

    async def journaled(self, n: int) -> None:
        async def done() -> bool:
            return await self.metric("tether_journal_appends_total") >= n

        await poll(f"{n} journal appends", done)


class BackendConn:
    """One backend WebSocket connection (tether's upstream side)."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        #: Every data message the backend read, in order; None once the connection ended.
        self.received: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        #: The close frame tether sent (code, reason), or None without one.
        self.closed: asyncio.Future[tuple[int, str] | None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    def send_range(self, first: int, count: int, batch: int = 10) -> None:
        """Sends ``m<first>`` … in the background, pausing 1 ms after each batch."""

        async def go() -> None:
            with contextlib.suppress(ConnectionClosed):
                for i in range(first, first + count):
                    await self.ws.send(f"m{i}")
                    if (i - first + 1) % batch == 0:
                        await asyncio.sleep(0.001)  # pacing, not synchronisation

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    async def next_received(self) -> str | bytes | None:
        return await bounded("a message at the backend", self.received.get())

    async def serve(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for m in self.ws:
                self.received.put_nowait(m)
        rcvd = self.ws.protocol.close_rcvd
        if not self.closed.done():
            self.closed.set_result((rcvd.code, rcvd.reason) if rcvd is not None else None)
        self.received.put_nowait(None)


class Backend:
    """A websockets server that hands each connection to the test."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue[BackendConn] = asyncio.Queue()
        self.accepted = 0
        self.url = ""
        self._server: Server | None = None

    @staticmethod
    async def start(scope: contextlib.AsyncExitStack) -> Backend:
        b = Backend()
        b._server = await serve(b._handle, "127.0.0.1", 0, compression=None, max_size=None)
        scope.push_async_callback(b._stop)
        port = next(iter(b._server.sockets)).getsockname()[1]
        b.url = f"ws://127.0.0.1:{port}"
        return b

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, ws: ServerConnection) -> None:
        self.accepted += 1
        conn = BackendConn(ws)
        self.conns.put_nowait(conn)
        await conn.serve()

    async def next_conn(self) -> BackendConn:
        return await bounded("a backend connection", self.conns.get())


_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.transport.abort()


class CutProxy:
    """A TCP proxy in front of tether that the tests cut as real networks do:
    during a blackout the bytes in flight are lost, then both sides get a
    reset; while blocked, new connections are reset at once."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = 0
        self.blocked = False
        self._dark = False
        self._live: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Task[None]]] = []
        self._server: asyncio.Server | None = None

    @staticmethod
    async def start(scope: contextlib.AsyncExitStack, target_port: int) -> CutProxy:
        p = CutProxy(target_port)
        p._server = await asyncio.start_server(p._accept, "127.0.0.1", 0)
        p.port = p._server.sockets[0].getsockname()[1]
        scope.push_async_callback(p._stop)
        return p

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._dark or self.blocked:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            _reset(writer)
            return

        async def both() -> None:
            # Either direction ending ends both.
            a = asyncio.ensure_future(self._pipe(reader, up_writer))
            b = asyncio.ensure_future(self._pipe(up_reader, writer))
            try:
                await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                a.cancel()
                b.cancel()
                writer.close()
                up_writer.close()

        task = asyncio.ensure_future(both())
        self._live = [c for c in self._live if not c[2].done()]
        self._live.append((writer, up_writer, task))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._dark:
                    continue  # lost in flight
                writer.write(data)
                await writer.drain()

    async def cut(self, blackout: float = 0.0) -> int:
        """Goes dark for ``blackout`` seconds (bytes in flight are lost), then
        resets every live connection on both sides. Returns how many were cut."""
        self._dark = True
        if blackout:
            await asyncio.sleep(blackout)  # the length of the fault, not a wait for an event
        live = [c for c in self._live if not c[2].done()]
        self._live = []
        for client, upstream, task in live:
            _reset(client)
            _reset(upstream)
            task.cancel()
        self._dark = False
        return len(live)
