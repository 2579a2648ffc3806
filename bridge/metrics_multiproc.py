"""prometheus-client's multiprocess mode for ``textback serve`` (gunicorn, several workers).

prometheus_client picks its value store when it is first imported, so the directory must be in
``PROMETHEUS_MULTIPROC_DIR`` before any gunicorn worker imports it: :func:`gunicorn_options` runs
in the master, before the fork, and nothing here imports prometheus_client at module level.

- ``PROMETHEUS_MULTIPROC_DIR`` unset: a fresh temporary directory per run, removed on exit.
- set: that directory, emptied of earlier runs' ``*.db`` files at start and kept on exit.

A worker that exits (crash, ``max_requests``, a reload) keeps its counters; ``child_exit`` only
drops its live-gauge files, as prometheus-client asks.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("textback.metrics")


def prepare() -> tuple[Path, bool]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory. Returns it and whether we own it."""
    if "bridge.metrics" in sys.modules:
        log.warning("bridge.metrics was imported before the multiprocess directory was set")
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        owned = False
    else:
        path = Path(tempfile.mkdtemp(prefix="textback-metrics-"))
        owned = True
    os.environ[ENV] = str(path)
    return path, owned


def gunicorn_options() -> dict[str, Any]:
    """Prepare the directory and return the gunicorn hooks that look after it."""
    path, owned = prepare()

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(path))

    def on_exit(_server: Any) -> None:
        if owned:
            shutil.rmtree(path, ignore_errors=True)

    return {"child_exit": child_exit, "on_exit": on_exit}
