"""The job lifecycle: one home for a job from admission to delivery, and across restarts.

`states` holds the state machine; the other modules are imported by name (this package re-exports nothing, so
that providers and storage can import `bot.lifecycle.states` without pulling in the runner).
"""
