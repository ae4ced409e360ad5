"""The start-up heap is frozen out of full collections (bus.heap)."""

from __future__ import annotations

import gc
import subprocess
import sys

from tests.support.paths import ROOT


def test_freezing_moves_the_live_start_up_objects_out_of_collections():
    # In a child process: freezing is for the rest of a process's life.
    code = (
        "import gc, workers.app\n"
        "from bus.heap import freeze_startup_heap\n"
        "frozen = freeze_startup_heap()\n"
        "assert frozen == gc.get_freeze_count() > 10_000, frozen\n"
        "assert len(gc.get_objects()) < frozen / 10, len(gc.get_objects())\n"
    )
    env = {"MESSAGE_BUS_SECRET": "unit-secret-0123456789", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert gc.get_freeze_count() == 0  # this process untouched
