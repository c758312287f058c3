"""The subscriber link's rest decision (realtime.read_pacing): pure, times passed in."""

from __future__ import annotations

import pytest

from realtime.read_pacing import PACE_BELOW, REST_GATHERS, WIDE_FANOUT, ReadPacer

INTERVAL = 0.008  # the default WRITE_INTERVAL


def stream(pacer: ReadPacer, rate: float, seconds: float, *, frames: int = 1, start: float = 100.0) -> int:
    """Publications at ``rate``/s, evenly spaced, each read on its own unless the link rests
    (then what arrived meanwhile is read at the rest's end); returns how many rests."""
    rests = 0
    resume = start
    pending = 0
    t = start
    step = 1 / rate
    while t < start + seconds:
        pending += 1
        at = max(t, resume)
        next_arrival = t + step
        if at > t and next_arrival <= resume:  # resting: more arrive before the read
            t = next_arrival
            continue
        assert pacer.read(at, 100 * pending, pending)
        until = pacer.rest_until(at, frames * pending, pending)
        pending = 0
        if until is not None:
            rests += 1
            resume = until
        t = next_arrival
    return rests


@pytest.mark.parametrize("rate", [50, 125, 250, 375])
def test_a_sparse_stream_of_single_deliveries_never_rests(rate: float) -> None:
    """Fewer than four publications per interval, each to one listener (remote control: a
    rest would cost a timer and a wake-up and gather too little to pay for them)."""
    assert stream(ReadPacer(INTERVAL), rate, 1.0) == 0


@pytest.mark.parametrize("rate", [500, 1000, 4000])
def test_a_dense_stream_rests_about_once_per_interval(rate: float) -> None:
    rests = stream(ReadPacer(INTERVAL), rate, 1.0)
    assert 0.8 / INTERVAL <= rests <= 1.0 / INTERVAL + 1


def test_a_wide_fanout_rests_from_two_publications_per_interval() -> None:
    """Each publication reaches WIDE_FANOUT listeners or more: two per rest merge into one
    write per listener, which pays."""
    assert stream(ReadPacer(INTERVAL), 250, 1.0, frames=WIDE_FANOUT) >= 0.8 / INTERVAL
    assert stream(ReadPacer(INTERVAL), 250, 1.0, frames=WIDE_FANOUT - 1) == 0
    assert stream(ReadPacer(INTERVAL), 100, 1.0, frames=1000) == 0  # under two per interval: nothing to merge


def test_an_isolated_burst_does_not_rest() -> None:
    """Four at once after a quiet spell: nothing says more follow."""
    pacer = ReadPacer(INTERVAL)
    assert pacer.read(10.0, 400, 4)
    assert pacer.rest_until(10.0, 4, 4) is None


def test_a_burst_within_a_stream_rests_until_an_interval_after_the_read_began() -> None:
    pacer = ReadPacer(INTERVAL)
    assert pacer.read(10.0, 100, 1) and pacer.rest_until(10.0, 1, 1) is None
    assert pacer.read(10.003, 400, REST_GATHERS)
    assert pacer.rest_until(10.003, REST_GATHERS, REST_GATHERS) == pytest.approx(10.011)


def test_publications_that_delivered_nothing_here_count_for_the_gathering() -> None:
    """Firehose: three of four reads carry other instances' publications; the rest after the
    fourth gathers all of them (each saved wake-up counts, delivered here or not)."""
    pacer = ReadPacer(INTERVAL)
    pacer.read(10.0, 100, 1)
    pacer.rest_until(10.0, 1, 1)
    for k in range(1, 4):
        pacer.read(10.0 + k * 0.001, 100, 1)  # not delivered here: no rest_until
    pacer.read(10.004, 100, 1)
    assert pacer.rest_until(10.004, 1, 1) == pytest.approx(10.012)


def test_a_stalled_loop_reads_its_backlog_at_once() -> None:
    """The previous delivering read 1.25 intervals back or more: no rest, however many came."""
    pacer = ReadPacer(INTERVAL)
    pacer.read(10.0, 100, 1)
    pacer.rest_until(10.0, 1, 1)
    late = 10.0 + 1.3 * INTERVAL
    pacer.read(late, 1000, 10)
    assert pacer.rest_until(late, 10, 10) is None


def test_one_thin_rest_ends_the_rests_only_after_the_interval_before_it_was_thin_too() -> None:
    """The gathering expected is the larger of this rest's and the previous interval's."""
    pacer = ReadPacer(INTERVAL)
    pacer.read(10.0, 100, 1)
    pacer.rest_until(10.0, 1, 1)
    pacer.read(10.002, 800, 8)
    assert pacer.rest_until(10.002, 8, 8) is not None
    pacer.read(10.010, 100, 1)  # a thin rest after a dense interval: rest once more
    assert pacer.rest_until(10.010, 1, 1) is not None
    pacer.read(10.018, 100, 1)  # two thin ones: read as they come
    assert pacer.rest_until(10.018, 1, 1) is None


def test_a_busy_link_is_not_paced() -> None:
    """PACE_BELOW bytes or more in this interval or the previous one: keep reading."""
    pacer = ReadPacer(INTERVAL)
    assert not pacer.read(10.0, PACE_BELOW, 300)
    assert not pacer.read(10.009, 100, 1)  # the previous interval was busy
    assert pacer.read(10.030, 100, 1)  # two quiet intervals later


def test_interval_zero_never_paces() -> None:
    pacer = ReadPacer(0.0)
    assert not pacer.read(10.0, 100, 1)
