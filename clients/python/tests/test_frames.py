"""Frame parsing and stamping: every example of docs/PROTOCOL.md §4, §7 and §12."""

from __future__ import annotations

import pytest

from tether_client import Backoff, Gap, ProtocolError, Replay, UpWelcome, Welcome
from tether_client._frames import Data, DrainingFrame, EndFrame, Unknown, UpAck, parse, stamp


def test_prefix_text_and_binary() -> None:
    assert parse("7:hello") == Data(7, "hello")
    assert parse("7:") == Data(7, "")
    assert parse("12:a:b") == Data(12, "a:b")
    assert parse(bytes([0, 0, 0, 0, 0, 0, 1, 2, 1])) == Data(258, b"\x01")
    assert parse(b"\xff" * 8) == Data((1 << 64) - 1, b"")


@pytest.mark.parametrize("raw", ["hello", ":x", "-1:x", "+3:x", "1.5:x", " 1:x", "١:x", "18446744073709551616:x"])
def test_text_without_a_valid_stamp_is_refused(raw: str) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


def test_short_binary_and_json_in_prefix_mode_are_refused() -> None:
    with pytest.raises(ProtocolError, match="8-byte"):
        parse(b"\x00" * 7)
    with pytest.raises(ProtocolError, match="stamp.mode json"):
        parse('{"seq":3,"a":1}')


def test_json_stamps() -> None:
    assert parse('{"seq":3,"a":1}', "json") == Data(3, '{"a":1}')
    assert parse('{"seq":3}', "json") == Data(3, "{}")
    assert parse("3:[1]", "json") == Data(3, "[1]")
    assert parse('3:{"seq":9}', "json") == Data(3, '{"seq":9}')
    assert parse("3:nope", "json") == Data(3, "nope")
    assert parse('{"n":4,"x":[]}', "json", "n") == Data(4, '{"x":[]}')
    for bad in ('{"a":1}', '{"seq":x}', '{"seq":3 }', '{"seq":}'):
        with pytest.raises(ProtocolError):
            parse(bad, "json")


def test_welcome_from_the_protocol_document() -> None:
    w = parse(
        '#{"type":"welcome","v":1,"session":"tok","outcome":"gap","replay":{"from":5,"to":9},'
        '"gap":{"reason":"trimmed","requested_offset":1,"first_available":5,"lost":{"from":2,"to":4}}}'
    )
    gap = Gap("trimmed", 1, 5, 2, 4, mid_stream=False, new_session=False)
    assert w == Welcome("tok", "gap", Replay(5, 9), gap, None)
    w = parse(
        '#{"type":"welcome","v":1,"session":"s","outcome":"resumed","replay":null,"gap":null,'
        '"up":{"next":42,"acked":40,"conn":7364610291,"exact":true}}'
    )
    assert isinstance(w, Welcome) and w.up == UpWelcome(42, 40, 7364610291, True)
    # A u64 conn beyond 2^53 is kept exactly.
    w = parse('#{"type":"welcome","session":"s","outcome":"new","up":{"next":1,"acked":0,'
              '"conn":18446744073709551615,"exact":false}}')
    assert isinstance(w, Welcome) and w.up is not None and w.up.conn == (1 << 64) - 1


def test_control_frames() -> None:
    assert parse('#{"type":"gap","reason":"trimmed","requested_offset":41,"first_available":106,'
                 '"lost":{"from":42,"to":105}}') == Gap("trimmed", 41, 106, 42, 105, True, False)
    assert parse('#{"type":"gap","reason":"expired","requested_offset":3,"first_available":1,'
                 '"lost":{"from":4,"to":null}}') == Gap("expired", 3, 1, 4, None, True, True)
    assert parse('#{"type":"up_ack","seq":41}') == UpAck(41)
    assert parse('#{"type":"draining"}') == DrainingFrame()
    assert parse('#{"type":"end","code":1000,"reason":"bye"}') == EndFrame(1000, "bye", None)
    assert parse('#{"type":"end","code":1000,"reason":"","up":{"acked":41}}') == EndFrame(1000, "", 41)
    assert parse('#{"type":"from_the_future","x":1}') == Unknown()


@pytest.mark.parametrize("raw", [
    "#not json", '#["type"]', '#{"type":1}', '#{"type":"up_ack","seq":-1}', '#{"type":"up_ack","seq":true}',
    '#{"type":"end","reason":"x"}', '#{"type":"welcome","session":"s","outcome":"maybe"}',
    '#{"type":"welcome","session":"s","outcome":"new","up":{"next":1,"acked":1,"conn":1,"exact":true}}',
    '#{"type":"welcome","session":"s","outcome":"new","up":{"next":2,"acked":0,"conn":1}}',
])
def test_malformed_control_frames_are_refused(raw: str) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


def test_upstream_stamps() -> None:
    assert stamp(17, "hello") == "17:hello"
    assert stamp(1, "#{}") == "1:#{}"
    assert stamp(258, b"\x01") == bytes([0, 0, 0, 0, 0, 0, 1, 2, 1])
    with pytest.raises(ValueError):
        stamp(0, "x")


def test_backoff_full_jitter() -> None:
    b = Backoff(initial=0.5, max=30.0, factor=2.0)
    assert b.delay(0, 0.5) == 0.25
    assert b.delay(3, 0.5) == 2.0
    assert b.delay(10, 0.5) == 15.0  # capped at max
    assert b.delay(10_000, 0.999) < 30.0
    assert b.delay(2, 0.0) == 0.0
