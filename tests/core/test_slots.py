"""Provider slots are shared fairly: a busy server or member cannot make everyone else wait behind them."""

from __future__ import annotations

import asyncio

from bot.lifecycle.slots import SlotQueue


async def _served_order(queue: SlotQueue, waiting: list[tuple[str, int | None, int]]) -> list[str]:
    """Queue `waiting` behind a full queue whose job "first" keeps running, then free the other slot again and
    again; the order the waiters were served in."""
    granted: list[str] = []

    async def wait_for_slot(job_id: str, guild: int | None, user: int) -> None:
        await queue.acquire(job_id, (guild, user), lambda _: None)
        granted.append(job_id)

    tasks = [asyncio.create_task(wait_for_slot(*w)) for w in waiting]
    await asyncio.sleep(0)  # every waiter takes its place
    assert len(queue) == len(waiting)
    holder = "other"
    for _ in waiting:
        queue.release(holder)
        await asyncio.sleep(0)
        holder = granted[-1]
    await asyncio.gather(*tasks)
    return granted


async def test_a_busy_server_does_not_starve_a_quiet_one() -> None:
    queue = SlotQueue(2)
    await queue.acquire("first", (1, 10), lambda _: None)  # server 1 runs a job all along
    await queue.acquire("other", (3, 30), lambda _: None)
    waiting = [(f"busy-{n}", 1, 100 + n) for n in range(5)] + [("quiet", 2, 99)]
    order = await _served_order(queue, waiting)
    assert order[0] == "quiet"  # the quiet server is next although it came last
    assert order[1:] == [f"busy-{n}" for n in range(5)]  # FIFO within a server


async def test_members_of_one_server_take_turns() -> None:
    queue = SlotQueue(2)
    await queue.acquire("first", (1, 10), lambda _: None)  # member 10 runs a job all along
    await queue.acquire("other", (3, 30), lambda _: None)
    waiting = [("a1", 1, 10), ("a2", 1, 10), ("a3", 1, 10), ("b1", 1, 20)]
    order = await _served_order(queue, waiting)
    assert order.index("b1") == 0  # member 10 already has a job running: member 20 goes first


async def test_positions_follow_the_fair_order_and_cancel_leaves_the_line() -> None:
    queue = SlotQueue(1)
    await queue.acquire("first", (1, 10), lambda _: None)
    positions: dict[str, int] = {}
    busy = asyncio.create_task(queue.acquire("busy", (1, 11), lambda p: positions.__setitem__("busy", p)))
    await asyncio.sleep(0)
    quiet = asyncio.create_task(queue.acquire("quiet", (2, 12), lambda p: positions.__setitem__("quiet", p)))
    await asyncio.sleep(0)
    assert positions == {"quiet": 1, "busy": 2}
    quiet.cancel()
    await asyncio.gather(quiet, return_exceptions=True)
    assert positions["busy"] == 1 and len(queue) == 1
    queue.release("first")
    await busy
    assert queue.active == 1
