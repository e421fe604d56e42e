"""Errors of this package."""

from __future__ import annotations

from typing import Literal

from ._events import Payload

#: Why an upstream message will not be acked.
UpstreamReason = Literal["ended", "in_doubt", "dropped", "closed", "taken_over", "disabled"]

_WHY: dict[str, str] = {
    "ended": "the session ended before it was written",
    "in_doubt": "it is in doubt: tether lost the backend connection without a drain, "
    "it may or may not have been written",
    "dropped": "it was in doubt and dropped (in_doubt='drop')",
    "closed": "the client stopped before tether acked it",
    "taken_over": "another connection took the session over before tether acked it",
    "disabled": "the client was made without the upstream option",
}


class TetherError(Exception):
    """The base of this package's errors."""


class ProtocolError(TetherError):
    """tether sent something this client cannot read (often: the wrong
    ``stamp_mode``). The client closes the connection (4000) and stops."""


class QueueFull(TetherError):
    """``send_nowait``: the send queue (or the upstream buffer) is full."""


class Stopped(TetherError):
    """``send_nowait``: the client has stopped (closed, ended, taken over)."""


class UpstreamError(TetherError):
    """An upstream message that tether did not ack, and why; the payload comes back."""

    def __init__(self, reason: UpstreamReason, seq: int | None, data: Payload) -> None:
        at = f" {seq}" if seq else ""
        super().__init__(f"upstream message{at} not acked: {_WHY[reason]}")
        #: ``ended``, ``in_doubt``, ``dropped``, ``closed``, ``taken_over`` or ``disabled``.
        self.reason: UpstreamReason = reason
        #: The seq it was last sent with; None if it was never sent.
        self.seq = seq
        #: The message as given to ``send()``.
        self.data = data
