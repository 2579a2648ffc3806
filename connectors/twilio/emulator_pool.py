"""Reused daemon threads for the Twilio emulator's message progress (status callbacks).

A new thread per message cost more CPU than the message's own work at benchmark rates. Threads are
now kept and reused; the pool grows while every thread is busy (a slow webhook target ties up only
the messages posting to it, as with a thread each) and a thread idle for a minute ends. They are
daemons, like the threads they replace, so a process never waits for a pending callback to exit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0


class WorkerPool:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, minus jobs queued and not yet taken
        self._started = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on a free thread, or a new one if none is free."""
        with self._lock:
            grow = self._idle <= 0
            self._idle -= 1
            if grow:
                self._started += 1
                number = self._started
        if grow:
            threading.Thread(target=self._work, daemon=True, name=f"{self.name}-{number}").start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # still unclaimed: no job is counted on this thread
                        self._idle -= 1
                        return
                job = self._jobs.get()  # a job was counted on this thread just now: take it
            try:
                job()
            except Exception:
                log.exception("emulator job failed")


POOL = WorkerPool("twilio-emulator-progress")
