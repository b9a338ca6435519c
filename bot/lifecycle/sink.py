"""What the lifecycle tells a front end, and what the front end answers.

Front ends (the Discord reply, the command line) are sinks: they render `Progress` and the final `Ending`, and
report back with a `Receipt` whether the person now has the outcome. Only then is the job marked delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.lifecycle.states import State
from bot.pipeline import Finished
from bot.storage import OutputMeta


@dataclass(frozen=True)
class Progress:
    """A moment in a job's life, for the live status."""

    job_id: str
    state: State
    elapsed: float
    position: int | None = None  # place in the bot's queue (1 = next) while QUEUED
    progress: float | None = None  # 0..1, only where the provider really reports it


@dataclass(frozen=True)
class Ending:
    """How a job ended, with everything the front end shows. `finished` holds the pictures of a success."""

    job_id: str
    state: State
    message: str | None
    elapsed: float
    finished: Finished | None = None
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Receipt:
    """The front end's answer to an `Ending`. `done` False means "could not show it now; try again later"."""

    done: bool
    outputs: tuple[OutputMeta, ...] = ()
    note: str | None = None  # replaces the stored error text (e.g. "every image was withheld")


class JobSink(Protocol):
    def show(self, progress: Progress) -> None:
        """Render a status change soon; must not block (throttling is the sink's business)."""

    async def deliver(self, ending: Ending) -> Receipt:
        """Show the outcome now; never raises for the front end's own faults."""
