"""The bounded queue between the connection task and the application."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Channel(Generic[T]):
    """A bounded FIFO whose reader never loses an item to cancellation
    (items leave only synchronously, after the wait), and that the writer
    closes when it is done.

    While it is full, ``put`` waits: the connection task stops reading its
    socket and TCP pushes back on tether. Once ``unbounded`` is set (the
    client is shutting down), ``put`` no longer waits."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[T] = deque()
        self._capacity = max(1, capacity)
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self.unbounded = False

    async def put(self, item: T) -> None:
        while len(self._items) >= self._capacity and not self.unbounded:
            self._writable.clear()
            await self._writable.wait()
        self._items.append(item)
        self._readable.set()

    def release(self) -> None:
        """Stops ``put`` from waiting for room from now on."""
        self.unbounded = True
        self._writable.set()

    def close(self) -> None:
        self.closed = True
        self._readable.set()

    async def get(self) -> T | None:
        """The next item, or None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item
