"""Threads of the test process: a build forks its workers and copiers only when no other
thread runs (mkerofs.util.can_fork), and a thread an earlier test left may take a moment to end."""
from __future__ import annotations

import threading
import time


def settled(seconds: float = 2.0) -> bool:
    """Whether this process runs one thread only, waiting up to `seconds` for others to end."""
    deadline = time.monotonic() + seconds
    while threading.active_count() != 1:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
