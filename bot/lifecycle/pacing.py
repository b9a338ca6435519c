"""When to look at a running job next. A job that reports its progress says when it ends; polling then, instead
of on a fixed beat, shows the result sooner with no more requests.

A provider that knows its pace (tqdm's speed in Replicate's logs) tells the end within one step: the steps left
are known, the part of the one under way is not. Each reading is such a window; intersecting them narrows it, and
the polls are placed to halve it (`Pace.next_poll`), so the end poll is late by a fraction of a step, not half of
one on average.
"""

from __future__ import annotations

from bot.providers.base import Status

# Poll this long after the latest end: covers the clocks' noise (the window already allows for the request's
# time in flight).
MARGIN = 0.01
# Without a window, the end is extrapolated from two readings; a poll before this long after the last one costs a
# request and tells little.
_MIN_POLL = 0.25
# A probe in the middle of the window costs half a request on average (none when the job was already done) and
# cuts the expected lateness by a quarter of the width: worth it from this width on, at most this often per window,
# and only for a window one regular reading made (a short job). A longer job's regular polls, moved to halve its
# window, narrow it for free; probing what they left cost a 10 s job a seventh poll once requests took 20 ms.
_PROBE_WIDTH = 0.03
_PROBES = 2
# A regular poll may move this much later to the moment its reading halves the window: the percentage shown stays
# within the poll cap plus this.
_MAX_SHIFT = 0.5


class Pace:
    """Where a running job's end is headed, from its readings (clock times throughout)."""

    def __init__(self, started: float) -> None:
        self.started = started  # when the provider got the job: the first reading's progress counts from here
        self._last: tuple[float, float] | None = None  # (time, progress) of the last reading that moved
        self._guess: float | None = None  # the end extrapolated from two readings, for providers that tell no pace
        self._soonest = 0.0
        self._latest: float | None = None  # the window (_soonest, _latest], when the provider tells its pace
        self._step = 0.0  # one step at that pace: the width of a single reading's window
        self._probes = 0  # probes of the current window (at most _PROBES: bounds the requests they add)
        self._probing = False  # the poll under way is a probe
        self._beat = 0  # the window's readings that were not probes: only a window of one gets probed
        self._read_at = 0.0
        self._flight = 0.0  # how long the last reading was in flight: a window is never much narrower

    def read(self, sent: float, received: float, status: Status) -> None:
        """Take in a fresh reading, asked for at `sent` and answered at `received` (the provider looked at the job
        somewhere between the two)."""
        self._read_at = received
        self._flight = received - sent
        probe, self._probing = self._probing, False
        self._extrapolate(received, status.progress)
        window = status.ends_in
        if window is None:
            self._latest = None
            return
        self._step = window.latest - window.soonest
        soonest, latest = sent + window.soonest, received + window.latest
        if self._latest is not None and soonest < self._latest and latest > self._soonest:
            soonest, latest = max(soonest, self._soonest), min(latest, self._latest)
            self._beat += 0 if probe else 1
        else:  # the first window, or one disjoint from the last: the pace changed, this reading alone holds
            self._probes, self._beat = 0, 1
        self._soonest, self._latest = soonest, latest

    def _extrapolate(self, now: float, progress: float | None) -> None:
        self._guess = None
        if progress is None:
            return
        before_at, before = self._last or (self.started, 0.0)
        if progress <= before or now <= before_at:
            return  # no movement to measure (or the same reading again)
        self._last = (now, progress)
        self._guess = now + (1.0 - progress) * (now - before_at) / (progress - before)

    def ends_by(self) -> float | None:
        """When the job should be done at the latest, if its readings tell."""
        return self._latest if self._latest is not None else self._guess

    def next_poll(self, planned: float, now: float) -> float:
        """When to poll instead of at `planned` (the regular beat); the poll is taken to happen then."""
        if self._latest is None:
            if self._guess is None:
                return planned
            return min(planned, max(self._guess + MARGIN, self._read_at + _MIN_POLL))
        if self._latest <= now:
            return planned  # overdue: the pace was not kept; the beat finds out
        middle = (self._soonest + self._latest) / 2
        if self._latest + MARGIN <= planned:  # it ends before the next regular poll: find the end
            # A probe cuts the window where the provider looked, somewhere in the request's flight: it narrows
            # only the part of the window wider than that.
            wide = self._latest - self._soonest - self._flight > _PROBE_WIDTH
            if wide and middle > now and self._probes < _PROBES and self._beat == 1:
                self._probes += 1
                self._probing = True
                return middle
            return self._latest + MARGIN
        # A reading at time t cuts the window where the end is a whole number of steps after t: move the regular
        # poll to the next moment that cut falls in the middle.
        shift = (middle - planned) % self._step if self._step > 0 else 0.0
        return planned + shift if shift <= _MAX_SHIFT else planned
