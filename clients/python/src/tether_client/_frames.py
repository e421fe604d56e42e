"""Reading tether's stamps and control frames (docs/PROTOCOL.md §4, §7), and
stamping the client's own messages (§12)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Union

from ._errors import ProtocolError
from ._events import Gap, Outcome, Payload, Replay, UpWelcome, Welcome

#: tether's ``stamp.mode``; mode ``none`` has no control frames and is not supported.
StampMode = Literal["prefix", "json"]

_OUTCOMES: tuple[Outcome, ...] = ("new", "resumed", "restarted", "gap")
# Seqs are u64 on the wire.
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Data:
    """A data frame."""

    seq: int
    data: Payload


@dataclass(frozen=True)
class EndFrame:
    """``end``, with ``up.acked`` on an opted-in connection."""

    code: int
    reason: str
    up_acked: int | None


@dataclass(frozen=True)
class UpAck:
    """``up_ack``: client messages up to ``seq`` were written to the backend."""

    seq: int


@dataclass(frozen=True)
class DrainingFrame:
    """``draining``."""


@dataclass(frozen=True)
class Unknown:
    """A control type this client does not know: ignored, as the contract asks."""


Frame = Union[Data, Welcome, Gap, EndFrame, UpAck, DrainingFrame, Unknown]


def parse(raw: str | bytes, mode: StampMode = "prefix", json_field: str = "seq") -> Frame:
    """Reads one message from tether."""
    if isinstance(raw, bytes):
        if len(raw) < 8:
            raise ProtocolError("binary frame shorter than its 8-byte stamp")
        return Data(int.from_bytes(raw[:8], "big"), raw[8:])
    if raw.startswith("#"):
        return _control(raw[1:])
    if mode == "json" and raw.startswith("{"):
        return _json_stamp(raw, json_field)
    head, colon, rest = raw.partition(":")
    seq = _seq(head) if colon else None
    if seq is None:
        if mode == "prefix" and raw.startswith("{"):
            raise ProtocolError("JSON frame in prefix mode: is tether's stamp.mode json?")
        raise ProtocolError("text frame without a seq stamp")
    return Data(seq, rest)


def stamp(seq: int, data: Payload) -> Payload:
    """An upstream message with its seq stamp: ``17:hello`` for text, 8 bytes
    of big-endian seq before a binary payload (the downstream prefix form)."""
    if not 1 <= seq <= _U64:
        raise ValueError(f"bad upstream seq {seq}")
    if isinstance(data, str):
        return f"{seq}:{data}"
    return seq.to_bytes(8, "big") + data


def _seq(s: str) -> int | None:
    # Decimal digits only: int() would also take a sign, spaces and underscores.
    if not s or not s.isascii() or not s.isdigit():
        return None
    n = int(s)
    return n if n <= _U64 else None


def _json_stamp(s: str, field: str) -> Data:
    # tether inserts `"field":N` right after the `{`, so the payload comes
    # back by cutting that member out, without a parse.
    head = "{" + json.dumps(field) + ":"
    if not s.startswith(head):
        raise ProtocolError("JSON frame without the stamp field first")
    rest = s[len(head) :]
    digits = 0
    while digits < len(rest) and "0" <= rest[digits] <= "9":
        digits += 1
    seq = _seq(rest[:digits])
    after = rest[digits : digits + 1]
    if seq is None or after not in (",", "}"):
        raise ProtocolError("malformed JSON stamp")
    return Data(seq, "{" + (rest[digits + 1 :] if after == "," else rest[digits:]))


def _int(v: object) -> int | None:
    # bool is an int in Python; JSON true is not a number.
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64 else None


def _need_int(obj: dict[str, object], key: str, what: str) -> int:
    v = _int(obj.get(key))
    if v is None:
        raise ProtocolError(f"{what} without a valid {key}")
    return v


def _control(text: str) -> Frame:
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("control frame is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("control frame without a type")
    kind = msg["type"]
    if kind == "welcome":
        return _welcome(msg)
    if kind == "gap":
        return _gap(msg, mid_stream=True)
    if kind == "draining":
        return DrainingFrame()
    if kind == "up_ack":
        return UpAck(_need_int(msg, "seq", "up_ack"))
    if kind == "end":
        code = _int(msg.get("code"))
        if code is None or code > 0xFFFF:
            raise ProtocolError("end without a code")
        reason = msg.get("reason")
        up = msg.get("up")
        acked = _need_int(up, "acked", "end.up") if isinstance(up, dict) else None
        return EndFrame(code, reason if isinstance(reason, str) else "", acked)
    return Unknown()


def _welcome(msg: dict[str, object]) -> Welcome:
    session = msg.get("session")
    if not isinstance(session, str) or not session:
        raise ProtocolError("welcome without a session")
    outcome = next((o for o in _OUTCOMES if o == msg.get("outcome")), None)
    if outcome is None:
        raise ProtocolError(f"welcome with outcome {msg.get('outcome')!r}")
    replay = None
    r = msg.get("replay")
    if isinstance(r, dict):
        replay = Replay(_need_int(r, "from", "replay"), _need_int(r, "to", "replay"))
    g = msg.get("gap")
    gap = _gap(g, mid_stream=False) if isinstance(g, dict) else None
    u = msg.get("up")
    up = None
    if isinstance(u, dict):
        nxt, acked, conn = (_need_int(u, k, "welcome.up") for k in ("next", "acked", "conn"))
        exact = u.get("exact")
        if nxt < 1 or acked >= nxt or not isinstance(exact, bool):
            raise ProtocolError(f"malformed up object in the welcome: {u!r}")
        up = UpWelcome(nxt, acked, conn, exact)
    return Welcome(session, outcome, replay, gap, up)


def _gap(g: dict[str, object], mid_stream: bool) -> Gap:
    reason = g.get("reason")
    if not isinstance(reason, str):
        raise ProtocolError("gap report without a reason")
    lost = g.get("lost")
    if not isinstance(lost, dict):
        raise ProtocolError("gap report without lost")
    last = lost.get("to")
    return Gap(
        reason=reason,
        requested_offset=_need_int(g, "requested_offset", "gap report"),
        first_available=_need_int(g, "first_available", "gap report"),
        lost_first=_need_int(lost, "from", "gap report"),
        lost_last=None if last is None else _need_int(lost, "to", "gap report"),
        mid_stream=mid_stream,
        new_session=reason != "trimmed",
    )
