"""The picture pool: finishing runs before preparing, cancelled work never runs, errors reach the caller."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from bot.picture_pool import NICENESS, PicturePool, Work


async def _queued(pool: PicturePool, count: int) -> None:
    """One turn of the loop: each new task queues its work before its first await."""
    await asyncio.sleep(0)
    assert pool._queue.qsize() == count


async def _occupied(pool: PicturePool, gate: threading.Event) -> asyncio.Task[None]:
    """The pool's only thread held by a piece of work until `gate` is set."""
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait()

    blocker = asyncio.create_task(pool.run(Work.PREPARE, hold))
    await asyncio.to_thread(started.wait)
    return blocker


async def test_finishing_goes_before_waiting_preparations_which_keep_their_order() -> None:
    """Finishes first, then the previews of jobs already sent (each holds a decoded upload until drawn), then new
    preparations, oldest first within a kind."""
    pool = PicturePool(1)
    gate = threading.Event()
    blocker = await _occupied(pool, gate)
    ran: list[str] = []
    tasks = [
        asyncio.create_task(pool.run(Work.PREPARE, ran.append, "prepare 1")),
        asyncio.create_task(pool.run(Work.AFTERWARDS, ran.append, "preview 1")),
        asyncio.create_task(pool.run(Work.PREPARE, ran.append, "prepare 2")),
        asyncio.create_task(pool.run(Work.FINISH, ran.append, "finish 1")),
        asyncio.create_task(pool.run(Work.AFTERWARDS, ran.append, "preview 2")),
        asyncio.create_task(pool.run(Work.FINISH, ran.append, "finish 2")),
    ]
    await _queued(pool, 6)
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert ran == ["finish 1", "finish 2", "preview 1", "preview 2", "prepare 1", "prepare 2"]
    pool.shutdown()


async def test_cancelled_waiting_work_never_runs_and_results_and_errors_reach_the_caller() -> None:
    pool = PicturePool(1)
    gate = threading.Event()
    blocker = await _occupied(pool, gate)
    ran: list[str] = []
    dropped = asyncio.create_task(pool.run(Work.PREPARE, ran.append, "dropped"))
    def keep() -> int:
        ran.append("kept")
        return 42

    kept = asyncio.create_task(pool.run(Work.PREPARE, keep))
    await _queued(pool, 2)
    dropped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropped
    gate.set()
    assert await kept == 42
    await blocker
    with pytest.raises(ZeroDivisionError):
        await pool.run(Work.FINISH, lambda: 1 / 0)
    assert ran == ["kept"]
    pool.shutdown()


async def test_shutdown_cancels_waiting_work_stops_every_thread_and_refuses_more() -> None:
    pool = PicturePool(2)
    gate = threading.Event()
    first = await _occupied(pool, gate)
    second = await _occupied(pool, gate)
    waiting = asyncio.create_task(pool.run(Work.FINISH, lambda: "never"))
    await _queued(pool, 1)
    pool.shutdown()
    gate.set()
    await asyncio.gather(first, second)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for thread in pool._threads:
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.run(Work.PREPARE, lambda: None)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are a Linux/Unix feature")
async def test_picture_threads_run_below_the_event_loop() -> None:
    pool = PicturePool(1)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = await pool.run(Work.PREPARE, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert theirs == min(own + NICENESS, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the loop's thread is untouched
    pool.shutdown()


async def test_closing_waits_for_the_work_under_way() -> None:
    """A process must not exit while a picture thread (a daemon) is still inside native code: closing the pool
    returns only once the work under way has ended."""
    pool = PicturePool(1)
    gate = threading.Event()
    blocker = await _occupied(pool, gate)
    closing = asyncio.create_task(pool.aclose())
    done, _ = await asyncio.wait({closing}, timeout=0.2)  # it never ends while the work is held
    assert not done
    gate.set()
    await closing
    assert not pool._threads[0].is_alive()
    await blocker
