"""An asyncio client for tether, the resumable WebSocket proxy.

tether stamps every backend → client message with a sequence number (seq),
journals it, and replays what a reconnecting client missed. This package is
the client half of that contract (docs/PROTOCOL.md in the tether
repository): :class:`TetherClient` connects, reads the welcome, keeps the
token and the offset, resumes after any drop with backoff, drops the
duplicates a resume brings, and yields each message once, in order, among
the session's events. With ``upstream=Upstream()`` it also carries the
upstream guarantee: :meth:`TetherClient.send` keeps each message until
tether acks that it was written to the backend.
"""

from ._backoff import Backoff
from ._client import TetherClient
from ._errors import ProtocolError, QueueFull, Stopped, TetherError, UpstreamError, UpstreamReason
from ._events import (
    Disconnected, Draining, End, Event, Gap, InDoubt, InDoubtPolicy, Message, Outcome, Payload,
    Replay, Reset, State, Stats, TakenOver, UpMessage, UpstreamRejected, UpWelcome, Welcome,
)
from ._frames import StampMode
from ._upstream import Receipt, Upstream, UpstreamStats

__all__ = [
    "Backoff", "Disconnected", "Draining", "End", "Event", "Gap", "InDoubt", "InDoubtPolicy",
    "Message", "Outcome", "Payload", "ProtocolError", "QueueFull", "Receipt", "Replay", "Reset",
    "StampMode", "State", "Stats", "Stopped", "TakenOver", "TetherClient", "TetherError",
    "UpMessage", "UpWelcome", "Upstream", "UpstreamError", "UpstreamReason", "UpstreamRejected",
    "UpstreamStats", "Welcome",
]
