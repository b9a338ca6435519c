"""Threads for CPU work on pictures, with finishing served before preparing.

A finish turns a result the member has already paid for into their delivery; a prepare only starts a new job.
Under a burst there is more picture work than CPU, and a plain FIFO pool made every finished job wait behind
the whole backlog of new ones (bench/bench_bot.py: completion -> final edit grew to seconds with 200 jobs in
flight). Here a free thread always takes the most urgent waiting work, oldest first within a kind; new jobs
wait a little longer in "preparing" instead, which also slows the rate at which more results arrive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


NICENESS = 10  # how far below the event loop the picture threads run, in Linux nice steps
_JOIN_TIMEOUT = 10.0  # the longest a closing pool waits for the work under way (a 12 MP finish takes ~1 s)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def lower_priority() -> None:
    """Run this thread below the event loop: Linux schedules threads on their own, and picture work that took its
    fair share of the CPU from the loop delayed polls, downloads and Discord replies by a second under load."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the threads keep the loop's priority
        pass


class Work(enum.IntEnum):
    """What a piece of picture work is for; lower runs first."""

    FINISH = 0  # a provider's result on its way to the member
    AFTERWARDS = 1  # a sent job's preview (it holds the job's decoded upload until it is drawn)
    PREPARE = 2  # checking and sizing the pictures of a new job


_Item = tuple[int, int, "concurrent.futures.Future[Any] | None", "Callable[[], Any] | None"]
_STOP = -1  # sorts before any work: shutdown is not kept waiting by a backlog


class PicturePool:
    """`threads` worker threads taking the most urgent waiting callable first (started on first use)."""

    def __init__(self, threads: int, name: str = "fillbot-pictures") -> None:
        self._size = threads
        self._name = name
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()

    async def run(self, work: Work, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in a pool thread; cancelling the caller drops it if it has not started."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the picture pool is shut down")
            self._start_threads()
            self._queue.put((int(work), next(self._seq), future, functools.partial(fn, *args, **kwargs)))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # at once, not on a later turn of the loop: a thread may be about to take it
            raise

    def shutdown(self) -> None:
        """Stop the threads once their current work ends; waiting work is cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put((_STOP, next(self._seq), None, None))

    async def aclose(self) -> None:
        """`shutdown`, then wait (up to 10 s) for the work under way to end: the threads are daemons, and a process
        exiting while one ran inside OpenCV with the GIL released aborted in OpenCV's teardown."""
        self.shutdown()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for thread in list(self._threads):
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))

    def _start_threads(self) -> None:
        while len(self._threads) < self._size:
            thread = threading.Thread(target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self) -> None:
        lower_priority()
        while True:
            _work, _seq, future, call = self._queue.get()
            if future is None or call is None:
                self._cancel_waiting()
                return
            if not future.set_running_or_notify_cancel():
                continue  # its caller was cancelled while it waited
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting caller, as concurrent.futures does
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, call

    def _cancel_waiting(self) -> None:
        """Cancel the work still queued, leaving the other threads' stop marks in place."""
        stops: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[2] is None:
                stops.append(item)
            else:
                item[2].cancel()
        for item in stops:
            self._queue.put(item)
