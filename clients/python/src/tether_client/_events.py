"""What a :class:`~tether_client.TetherClient` yields: data messages and the
session's events (docs/PROTOCOL.md §6, §7, §12)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

#: How tether answered a connection (the welcome's ``outcome``).
Outcome = Literal["new", "resumed", "restarted", "gap"]

#: ``connecting`` → ``open`` (welcomed) → ``reconnecting`` (backoff) → …;
#: finally ``ended`` (tether's ``end``), ``taken_over`` (close 4001) or
#: ``closed`` (``close()``, ``detach()``, or a frame the client cannot read).
State = Literal["connecting", "open", "reconnecting", "ended", "taken_over", "closed"]

#: What to do with upstream messages in doubt (see :class:`InDoubt`).
InDoubtPolicy = Literal["report", "resend", "drop"]

#: A payload: text as ``str``, binary as ``bytes``.
Payload = Union[str, bytes]


@dataclass(frozen=True)
class Message:
    """One data message of the session, each seq once and in order."""

    #: Its position in the session: 1, 2, 3, …
    seq: int
    #: What the backend sent, without tether's stamp.
    data: Payload
    #: True if tether had journaled it before this connection started.
    replay: bool


@dataclass(frozen=True)
class Replay:
    """Frames ``first..=last`` were journaled when the connection started."""

    first: int
    last: int


@dataclass(frozen=True)
class Gap:
    """Frames the application will never get. ``trimmed`` keeps the session
    (delivery continues at ``first_available``); any other reason
    (``expired``, ``unknown_session``, ``journal_lost``) is a new session
    whose seqs restart at 1. Either way: resync."""

    reason: str
    #: The offset the client resumed with (mid-stream: the last seq sent to this connection).
    requested_offset: int
    #: The next seq that will be delivered.
    first_available: int
    #: First lost seq.
    lost_first: int
    #: Last lost seq; None when tether cannot know (the old session is gone).
    lost_last: int | None
    #: True for a ``gap`` frame while connected, False for the welcome's report.
    mid_stream: bool
    #: True for every reason but ``trimmed``.
    new_session: bool


@dataclass(frozen=True)
class UpWelcome:
    """The welcome's ``up`` object on a connection with the upstream guarantee (§12)."""

    #: The seq tether expects next.
    next: int
    #: Every message with seq ≤ acked was written to the backend connection.
    acked: int
    #: Names the session's current backend connection.
    conn: int
    #: False after tether stopped without a drain: messages sent on the
    #: previous backend connection above ``acked`` may or may not have been written.
    exact: bool


@dataclass(frozen=True)
class Welcome:
    """A connection was established (tether's ``welcome``)."""

    session: str
    outcome: Outcome
    replay: Replay | None
    #: The gap report when ``outcome`` is ``gap`` (also yielded as a :class:`Gap` right after).
    gap: Gap | None
    #: Only with the upstream guarantee.
    up: UpWelcome | None


@dataclass(frozen=True)
class Draining:
    """tether is shutting down; the client resumes after the 1012 close."""


@dataclass(frozen=True)
class Disconnected:
    """The connection dropped (or could not be made); the next attempt is in ``retry_in`` seconds."""

    error: str
    retry_in: float


@dataclass(frozen=True)
class Reset:
    """The client gave its session up; the next connection starts a new one. Resync.

    ``refused``: tether answered a resume with 400, 401 or 409 (``status``),
    which no retry changes. ``failed_resumes``: ``max_failed_resumes``
    attempts in a row got no welcome."""

    reason: Literal["refused", "failed_resumes"]
    status: int | None
    failed_attempts: int
    last_offset: int


@dataclass(frozen=True)
class End:
    """The session ended (the backend closed, or a client ended it with 1000); iteration stops after it."""

    #: The backend's close code (1005: none, 1006: it vanished).
    code: int
    reason: str


@dataclass(frozen=True)
class TakenOver:
    """Another connection resumed this session (close 4001); iteration stops after it."""


@dataclass(frozen=True)
class UpMessage:
    """An upstream message and the seq it was last sent with."""

    seq: int
    data: Payload


@dataclass(frozen=True)
class InDoubt:
    """Upstream messages that may or may not have been written to the
    backend: they were sent on a backend connection that tether lost without
    a drain (``cause="crash"``: kill -9, power loss), or in a session that
    was replaced (``cause="new_session"``). ``policy`` says what the client
    did: ``report`` and ``drop`` failed their receipts (reasons ``in_doubt``
    and ``dropped``), ``resend`` sent them again."""

    messages: tuple[UpMessage, ...]
    policy: InDoubtPolicy
    cause: Literal["crash", "new_session"]


@dataclass(frozen=True)
class UpstreamRejected:
    """tether closed the connection with 4003 (a message without a valid
    stamp) or 4004 (a seq that skipped ahead): a bug of this client. It
    resumes, and resends from the welcome's ``up.next``."""

    code: int
    reason: str


#: Everything the client yields.
Event = Union[
    Message, Welcome, Gap, Draining, Disconnected, Reset, End, TakenOver, InDoubt, UpstreamRejected
]


@dataclass(frozen=True)
class Stats:
    """Counters of the downstream side."""

    #: Data frames received from tether, duplicates included.
    received: int
    #: Frames dropped because their seq was already delivered.
    duplicates: int
    #: Messages yielded to the application.
    delivered: int
    #: Connections welcomed.
    connections: int
