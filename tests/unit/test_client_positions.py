"""The client SDK's position tracking and ``--since`` parsing (:mod:`realtime.client_positions`),
and how events print (:meth:`realtime.client_events.Event.to_dict`)."""

from __future__ import annotations

import pytest

from realtime.client_events import Event
from realtime.client_positions import Position, Positions, message_position, parse_since_option


def test_parse_since_option() -> None:
    assert parse_since_option("dream:update.a=7:9f3a1c2e") == ("dream:update.a", Position(7, "9f3a1c2e"))
    assert parse_since_option("dream:job:progress.x=0:e:f") == ("dream:job:progress.x", Position(0, "e:f"))
    for bad in ("dream:update.a", "dream:update.a=7", "=7:e", "dream:update.a=-1:e", "dream:update.a=x:e",
                "dream:update.a=7:", f"dream:update.a=7:{'e' * 65}", f"dream:update.a={2**53}:e"):  # fmt: skip
        with pytest.raises(ValueError, match=r"TOPIC=OFFSET:EPOCH|offset|epoch"):
            parse_since_option(bad)


def test_message_position_needs_an_int_offset_and_a_str_epoch() -> None:
    assert message_position({"offset": 3, "epoch": "e"}) == Position(3, "e")
    assert message_position({}) is None
    assert message_position({"offset": True, "epoch": "e"}) is None
    assert message_position({"offset": "3", "epoch": "e"}) is None
    assert message_position({"offset": 3, "epoch": 5}) is None


def test_duplicates_are_dropped_and_a_new_epoch_replaces_the_position() -> None:
    positions = Positions({"a:b.c": (2, "e1")})
    assert positions.since(["a:b.c", "a:b.d"]) == {"a:b.c": {"offset": 2, "epoch": "e1"}}
    assert [positions.accept("a:b.c", Position(n, "e1")) for n in (1, 2, 3, 3, 4)] == [False, False, True, False, True]
    assert positions.duplicates_dropped == 3
    assert positions.accept("a:b.c", Position(1, "e2"))  # history reset: a new stream
    assert positions.snapshot() == {"a:b.c": Position(2, "e1")}  # what was yielded: not these yet
    assert positions.since(["a:b.c"]) == {"a:b.c": {"offset": 1, "epoch": "e2"}}  # what was read
    positions.yielded("a:b.c", Position(1, "e2"))
    assert positions.snapshot() == {"a:b.c": Position(1, "e2")}
    assert positions.accept("a:b.d", Position(9, "e"), track=False)
    positions.yielded("a:b.d", Position(9, "e"))  # read after its UNLISTEN: not tracked
    assert "a:b.d" not in positions.snapshot()
    positions.forget(["a:b.c", "x:y.z"])
    assert positions.snapshot() == {} and positions.since(["a:b.c"]) == {}


def test_after_a_gap_the_next_publication_is_new_whatever_its_offset() -> None:
    positions = Positions({"a:b.c": (99, "e")})  # ahead of the stream: the server sends GAP
    positions.gap(["a:b.c"])
    assert positions.since(["a:b.c"]) == {"a:b.c": {"offset": 99, "epoch": "e"}}  # kept until replaced
    assert positions.accept("a:b.c", Position(5, "e"))
    assert not positions.accept("a:b.c", Position(5, "e"))  # and then duplicates count again
    assert positions.duplicates_dropped == 1


def test_since_is_checked() -> None:
    with pytest.raises(ValueError, match="offset"):
        Positions({"a:b.c": (-1, "e")})
    with pytest.raises(ValueError, match="epoch"):
        Positions({"a:b.c": (1, "")})


def test_to_dict_adds_offset_epoch_and_reason_when_set() -> None:
    plain = Event("MESSAGE", topic="a:b.c", message="m")
    assert plain.to_dict() == {"type": "MESSAGE", "topic": "a:b.c", "message": "m"}
    kept = Event("MESSAGE", topic="a:b.c", message="m", offset=7, epoch="e")
    assert kept.to_dict() == {"type": "MESSAGE", "topic": "a:b.c", "message": "m", "offset": 7, "epoch": "e"}
    assert Event("GAP", topics=("a:b.c",)).to_dict() == {"type": "GAP", "topics": ["a:b.c"]}
    gap = Event("GAP", topics=("a:b.c",), reason="history_lost")
    assert gap.to_dict() == {"type": "GAP", "topics": ["a:b.c"], "reason": "history_lost"}


def test_realtime_listen_since_is_checked_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["listen", "dream:update.a", "--since", "dream:update.a=seven:e"])
    assert exited.value.code == 2
    assert "--since: 'dream:update.a=seven:e' is not TOPIC=OFFSET:EPOCH" in capsys.readouterr().err
    assert main(["listen", "dream:update.a", "--since", "dream:update.a=1:e", "--since", "dream:update.b=2:e"]) == 2
    assert "--since names topics not listened to: dream:update.b" in capsys.readouterr().err
