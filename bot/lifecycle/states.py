"""The states a job moves through, and the only moves allowed between them, written once as data.

Every status change goes through `check_move`, so a late or repeated update (a queue position published after
the create left, a poll answer after a cancel) can never move a job backwards. Providers report the
provider-side subset (`STARTING` … the outcomes); the rest belong to the bot.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PREPARING = "preparing"  # admitted and recorded; pictures being downloaded and checked
    QUEUED = "queued"  # pictures stored, waiting for a provider slot: nothing has been sent
    SUBMITTING = "submitting"  # the create request may have left: never sent a second time
    STARTING = "starting"  # the provider has the job (its handle is stored), not running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the outputs are downloaded and stored with the job
    FAILED = "failed"
    MODERATED = "moderated"
    CANCELED = "canceled"
    EXPIRED = "expired"  # finished, but its outputs are gone (retention ran out)
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in OUTCOMES

    @property
    def may_be_at_provider(self) -> bool:
        """True once the create request may have left: from here on the job is never submitted again."""
        return self in (State.SUBMITTING, State.STARTING, State.RUNNING)


OUTCOMES = frozenset({State.SUCCEEDED, State.FAILED, State.MODERATED, State.CANCELED, State.EXPIRED,
                      State.TIMED_OUT})
ACTIVE = frozenset(State) - OUTCOMES

# The allowed moves. Outcomes are final; everything else only moves forward.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PREPARING: frozenset({State.QUEUED, State.FAILED, State.CANCELED}),
    State.QUEUED: frozenset({State.SUBMITTING, State.FAILED, State.CANCELED}),
    State.SUBMITTING: frozenset({State.STARTING, State.RUNNING}) | OUTCOMES,
    State.STARTING: frozenset({State.RUNNING}) | OUTCOMES,
    State.RUNNING: OUTCOMES,
    **{outcome: frozenset() for outcome in OUTCOMES},
}


class IllegalMove(Exception):
    """A status change the state machine does not allow (a stale or repeated update)."""


def allowed(current: State, new: State) -> bool:
    return new in TRANSITIONS[current]


def check_move(current: State, new: State) -> None:
    if new is not current and not allowed(current, new):
        raise IllegalMove(f"{current} -> {new}")
