"""Placing polls from a job's readings: the end is found within a fraction of a step, with no more requests."""

from __future__ import annotations

import math
import random

import pytest

from bot.lifecycle.pacing import MARGIN, Pace
from bot.lifecycle.states import State
from bot.providers.base import Status, Window

LATENCY = 0.004  # a poll's time in flight; the provider looks at the job half-way


class SteppedJob:
    """A provider job sampling `steps` steps at a steady pace from `begins`, reporting what tqdm shows: the steps
    left at that pace, the one under way partly done."""

    def __init__(self, begins: float, steps: int, step: float) -> None:
        self.begins, self.steps, self.step = begins, steps, step
        self.ends = begins + steps * step

    def look(self, at: float) -> Status:
        if at >= self.ends:
            return Status(State.SUCCEEDED)
        done = max(0, math.floor((at - self.begins) / self.step))
        left = self.steps - done
        return Status(State.RUNNING, progress=done / self.steps,
                      ends_in=Window((left - 1) * self.step, left * self.step))


def run(job: SteppedJob, first_poll: float, beat: list[float], latency: float = LATENCY) -> tuple[float, int]:
    """Poll `job` as the runner does (the regular beat, moved by `Pace.next_poll`): when its end was seen, and after
    how many polls."""
    pace = Pace(0.0)
    read_at, polls = 0.0, 0
    at = first_poll
    while True:
        polls += 1
        status = job.look(at + latency / 2)
        received = at + latency
        if status.state.terminal:
            return received, polls
        pace.read(at, received, status)
        read_at = received
        planned = read_at + beat[min(polls, len(beat) - 1)]
        at = max(pace.next_poll(planned, read_at), read_at)


BEAT = [1.0, 1.6, 2.0]  # POLL_INTERVAL 1 s, backoff 1.6, capped at 2 s while running


def test_a_reading_is_a_window_one_step_wide_around_the_end() -> None:
    job = SteppedJob(begins=0.1, steps=28, step=0.07)
    pace = Pace(0.0)
    pace.read(1.0, 1.0 + LATENCY, job.look(1.002))
    ends_by = pace.ends_by()
    assert ends_by is not None and job.ends <= ends_by <= job.ends + 0.07 + LATENCY


def test_readings_narrow_the_window_and_a_changed_pace_starts_again() -> None:
    job = SteppedJob(begins=0.0, steps=28, step=0.1)
    pace = Pace(0.0)
    pace.read(1.01, 1.01, job.look(1.01))  # 10 done, the 11th under way: ends within (2.71, 2.81]
    pace.read(1.58, 1.58, job.look(1.58))  # 15 done, the 16th under way: ends within (2.78, 2.88]
    assert pace.ends_by() == pytest.approx(2.81)
    assert pace.next_poll(planned=4.0, now=1.6) == pytest.approx(2.81 + MARGIN)  # 30 ms wide: no probe
    slower = SteppedJob(begins=0.0, steps=28, step=0.15)  # the pace changed: the new window lies outside
    pace.read(2.0, 2.0, slower.look(2.0))
    assert pace.ends_by() == pytest.approx(2.0 + (28 - 13) * 0.15)


def test_a_wide_window_is_probed_in_its_middle_at_most_twice_before_the_end_poll() -> None:
    job = SteppedJob(begins=0.08, steps=28, step=0.16)  # ends at 4.56
    pace = Pace(0.0)
    pace.read(1.05, 1.05, job.look(1.05))  # 6 done, the 7th under way: ends within (4.41, 4.57]
    assert pace.next_poll(planned=5.0, now=1.1) == pytest.approx(4.49)
    pace.read(4.49, 4.49, job.look(4.49))  # the 28th under way: (4.41, 4.57] ∩ (4.49, 4.65]
    assert pace.next_poll(planned=5.0, now=4.49) == pytest.approx(4.53)  # 80 ms wide: probed again
    pace.read(4.53, 4.53, job.look(4.53))  # still the 28th: (4.49, 4.57] ∩ (4.53, 4.69]
    assert pace.next_poll(planned=5.0, now=4.53) == pytest.approx(4.57 + MARGIN)  # 40 ms wide, but probed twice


def test_a_regular_poll_moves_later_to_halve_the_window() -> None:
    job = SteppedJob(begins=0.0, steps=100, step=0.1)
    pace = Pace(0.0)
    pace.read(1.02, 1.02, job.look(1.02))  # ends within (9.92, 10.02]: the middle 9.97
    at = pace.next_poll(planned=3.0, now=1.02)
    assert 3.0 <= at <= 3.1 and (9.97 - at) / 0.1 == pytest.approx(round((9.97 - at) / 0.1))
    pace.read(at, at, job.look(at))
    ends_by = pace.ends_by()
    assert ends_by is not None and job.ends <= ends_by and ends_by == pytest.approx(9.97 if job.ends <= 9.97 else 10.02)


def test_an_overdue_window_or_no_reading_leaves_the_beat() -> None:
    pace = Pace(0.0)
    assert pace.next_poll(planned=2.0, now=0.5) == 2.0
    pace.read(1.0, 1.0, Status(State.RUNNING, ends_in=Window(0.0, 0.1)))
    assert pace.next_poll(planned=3.0, now=1.2) == 3.0  # it should have ended at 1.1: the beat finds out
    pace.read(1.3, 1.3, Status(State.RUNNING, progress=1.0))  # sampling done, decoding: no window any more
    assert pace.next_poll(planned=3.3, now=1.3) == pytest.approx(1.3 + 0.25)  # a look soon after, then the beat
    pace.read(1.55, 1.55, Status(State.RUNNING, progress=1.0))
    assert pace.ends_by() is None and pace.next_poll(planned=3.55, now=1.55) == 3.55


def test_without_a_pace_the_end_is_extrapolated_from_two_readings() -> None:
    pace = Pace(started=0.0)
    pace.read(1.0, 1.0, Status(State.RUNNING, progress=0.25))
    assert pace.ends_by() == pytest.approx(4.0)
    assert pace.next_poll(planned=6.0, now=1.0) == pytest.approx(4.0 + MARGIN)
    pace.read(2.0, 2.0, Status(State.RUNNING, progress=0.25))  # no movement: nothing to go by
    assert pace.ends_by() is None and pace.next_poll(planned=4.0, now=2.0) == 4.0
    pace.read(3.0, 3.0, Status(State.RUNNING, progress=0.98))  # 0.73 in 2 s since the last move
    assert pace.ends_by() == pytest.approx(3.0 + 0.02 * 2 / 0.73)
    assert pace.next_poll(planned=9.0, now=3.0) == pytest.approx(3.0 + 0.25)  # never sooner than a quarter second


@pytest.mark.parametrize(("duration", "steps"), [(2.0, 28), (10.0, 28), (10.0, 50), (30.0, 28)])
def test_the_end_is_found_within_a_fraction_of_a_step_with_no_more_polls(duration: float, steps: int) -> None:
    """Over many phases: the poll that sees the result comes on average within a quarter step of the end (half a
    step without the window's narrowing), and a 10 s job still takes at most the 6 polls of the plain beat."""
    rng = random.Random(11)
    step = duration / steps
    late, polls = [], []
    for _ in range(400):
        job = SteppedJob(begins=rng.uniform(0.0, 0.05), steps=steps, step=step * rng.uniform(0.98, 1.02))
        seen, count = run(job, first_poll=1.0, beat=BEAT)
        assert seen >= job.ends
        late.append(seen - job.ends)
        polls.append(count)
    assert sum(late) / len(late) <= step / 4 + MARGIN + LATENCY
    assert max(late) <= step + MARGIN + LATENCY
    if duration == 10.0:
        assert max(polls) <= 6


@pytest.mark.parametrize("latency", [0.01, 0.03, 0.08])
def test_a_longer_job_gets_no_more_polls_than_the_beat_however_slow_the_network(latency: float) -> None:
    """Only a short job's window is probed: a 10 s job keeps the plain beat's 6 polls (1, 2.6, 4.6, 6.6, 8.6 s and
    its end) even when each request takes long enough to keep its window wide."""
    rng = random.Random(5)
    for _ in range(400):
        job = SteppedJob(begins=rng.uniform(-0.03, 0.05), steps=28, step=10.0 / 28)
        seen, count = run(job, first_poll=1.0, beat=BEAT, latency=latency)
        assert seen >= job.ends and count <= 6


def test_a_window_wide_only_by_a_slow_reading_gets_no_probe() -> None:
    """A probe cuts the window where the provider looked, somewhere in its flight: a window hardly wider than the
    last reading's flight is not narrowed by one, so none is sent (a slow network would pay for nothing)."""
    job = SteppedJob(begins=0.0, steps=28, step=0.02)  # 20 ms steps: the flight, 60 ms, dominates the window
    pace = Pace(0.0)
    pace.read(0.30, 0.36, job.look(0.33))
    ends_by = pace.ends_by()
    assert ends_by == pytest.approx(0.60)  # 12 steps left: within (0.30 + 0.22, 0.36 + 0.24], 80 ms wide
    assert pace.next_poll(planned=2.0, now=0.36) == pytest.approx(ends_by + MARGIN)
    fast = Pace(0.0)
    fast.read(0.33, 0.33, SteppedJob(begins=0.0, steps=28, step=0.08).look(0.33))  # 80 ms wide by its steps
    fast_ends_by = fast.ends_by()
    assert fast_ends_by is not None and fast.next_poll(planned=3.0, now=0.33) < fast_ends_by
