"""Claims of queued jobs by job workers (`Storage.claim_next_queued`): each provider account's limit across
every process, fair order between servers and members, canceled jobs first, and leases of dead claimers."""

from __future__ import annotations

import dataclasses

from bot.lifecycle.states import State
from bot.storage import Storage
from tests.core.test_storage import T0, Clock, clock, job, store

__all__ = ["clock", "store"]  # the fixtures, shared with the storage suite (and its backends)

LIMIT = {"bfl": 2}


async def test_a_provider_at_its_limit_gives_out_nothing_until_a_slot_frees(store: Storage, clock: Clock) -> None:
    await store.create_job(job("run1", status="running", owner="w1"))
    await store.create_job(job("run2", status="submitting", owner="w2"))
    await store.create_job(job("wait", owner=None, lease_until=None))
    assert await store.claim_next_queued("discord", "w3", T0 + 30, LIMIT) is None
    await store.move_job("run1", "w1", State.SUCCEEDED)
    claimed = await store.claim_next_queued("discord", "w3", T0 + 30, LIMIT)
    assert claimed is not None and claimed.id == "wait" and claimed.owner == "w3"
    # The claimed job holds the freed slot while its lease lives, so nothing else goes...
    clock.advance(1)
    await store.create_job(job("next", owner=None, lease_until=None))
    assert await store.claim_next_queued("discord", "w4", T0 + 30, LIMIT) is None
    # ...until its claimer stops renewing: then the slot is free and the job itself can be claimed again (the
    # oldest waiting one).
    clock.advance(30)
    again = await store.claim_next_queued("discord", "w4", T0 + 61, LIMIT)
    assert again is not None and again.id == "wait"


async def test_a_job_the_provider_runs_holds_its_slot_even_when_its_process_died(store: Storage, clock: Clock) -> None:
    await store.create_job(job("run1", status="running", owner="dead"))
    await store.create_job(job("run2", status="running", owner="dead"))
    await store.create_job(job("wait", owner=None, lease_until=None))
    clock.advance(300)  # the leases of "dead" ran out long ago; the provider is still running its two jobs
    assert await store.claim_next_queued("discord", "w", T0 + 330, LIMIT) is None


async def test_canceled_jobs_are_claimed_first_even_at_the_limit(store: Storage) -> None:
    for n in range(2):
        await store.create_job(job(f"run{n}", status="running", owner="w1"))
    await store.create_job(job("wait", owner=None, lease_until=None))
    await store.create_job(job("stop", owner=None, lease_until=None))
    assert await store.request_cancel("stop")
    claimed = await store.claim_next_queued("discord", "w2", T0 + 30, LIMIT)
    assert claimed is not None and claimed.id == "stop" and claimed.cancel_requested_at is not None
    assert await store.claim_next_queued("discord", "w2", T0 + 30, LIMIT) is None


async def test_the_server_with_fewest_jobs_at_the_provider_goes_first_then_the_member(
    store: Storage, clock: Clock
) -> None:
    await store.create_job(job("busy-run", status="running", owner="w", guild_id=10, user_id=1))
    for n, (guild, user) in enumerate([(10, 2), (10, 1), (20, 3), (None, 4)]):
        clock.now = T0 + n
        await store.create_job(job(f"q{n}", owner=None, lease_until=None, guild_id=guild, user_id=user))
    limit = {"bfl": 10}
    order = []
    for _ in range(4):
        claimed = await store.claim_next_queued("discord", "w", T0 + 60, limit)
        assert claimed is not None
        order.append(claimed.id)
    # Server 20 and the DM (a server of its own) have nothing at the provider: first, oldest first. Then server
    # 10: both of its members' jobs wait behind its running one; member 2 has none running, so goes before 1.
    assert order == ["q2", "q3", "q0", "q1"]


async def test_jobs_handed_off_by_a_front_process_are_claimable_and_others_are_not(store: Storage) -> None:
    await store.create_job(dataclasses.replace(job("prep", owner="front"), status=State.PREPARING.value))
    await store.create_job(dataclasses.replace(job("mine", owner="front"), status=State.PREPARING.value))
    assert await store.claim_next_queued("discord", "w", T0 + 30, LIMIT) is None
    await store.queue_job("prep", "front", b"png", None, (), hand_off=True)
    await store.queue_job("mine", "front", b"png", None, ())  # a single process keeps running its own
    claimed = await store.claim_next_queued("discord", "w", T0 + 30, LIMIT)
    assert claimed is not None and claimed.id == "prep"
    assert await store.claim_next_queued("discord", "w", T0 + 30, LIMIT) is None
    assert [r.id for r in await store.claimable_jobs("discord", queued=False)] == []
