"""Worker processes take batches from one queue: a slow batch holds up no other.  A pool whose
workers died, or are stopped, is aborted in bounded time and leaves no thread of this process
running (a thread left would make every later build copy files in threads: util.can_fork).

Also: bytes_address (the address of a bytes object's contents, handed to LZ4) agrees with
ctypes.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from dataclasses import dataclass

import pytest

from mkerofs.codecs import registry
from mkerofs.codecs.buffers import bytes_address
from mkerofs.util import can_fork
from mkerofs.writer import compress as z
from mkerofs.writer import workers as zw
from support.threads import settled

DATA = b"mkerofs worker pool " * 1000        # compressible, more than a block


@dataclass(frozen=True)
class _Given:
    """A FileJob reader returning bytes it carries (picklable: it crosses to the workers)."""
    data: bytes

    def __call__(self, offset: int, length: int, last: bool) -> bytes:
        return self.data[offset:offset + length]


@dataclass(frozen=True)
class _Gated(_Given):
    """... only once the file `gate` exists."""
    gate: str = ""

    def __call__(self, offset: int, length: int, last: bool) -> bytes:
        while not os.path.exists(self.gate):
            time.sleep(0.01)
        return super().__call__(offset, length, last)


def _work(read) -> zw._Work:
    return zw._Work(read, len(DATA), 32, (), 0, len(DATA), True, True)


@pytest.mark.skipif("lz4" not in registry.available(), reason="liblz4 not available")
@pytest.mark.skipif(not can_fork(), reason="worker processes are forked")
def test_batches_go_to_the_worker_that_is_free(tmp_path):
    cfg = z.CompressConfig.from_options("lz4", 4096, 4096)
    gate = tmp_path / "open"
    # (the gate opens by itself after a while, so that a pool that did hand batches to the
    # blocked worker fails the assertion below instead of hanging)
    timer = threading.Timer(60, gate.touch)
    timer.start()
    pool = zw._ProcessPool(cfg, 2, None)
    try:
        slow = pool.submit([_work(_Gated(DATA, str(gate)))])
        quick = [pool.submit([_work(_Given(DATA))]) for _ in range(6)]
        results = [pool.result(bid) for bid in quick]
        assert not gate.exists(), "batches waited behind the blocked one"
        gate.touch()
        slow_result = pool.result(slow)
        blocked = pool.owner[slow]
        assert all(pool.owner[bid] != blocked for bid in quick)
        # each is the file's layout for block 0 (its bytes stay in the worker)
        assert all(type(res[0]) is tuple for res in results + [slow_result])
        for bid in quick + [slow]:
            pool.write(bid, [])
        pool.close()
    except BaseException:
        pool.abort()
        raise
    finally:
        timer.cancel()


@pytest.mark.skipif("lz4" not in registry.available(), reason="liblz4 not available")
@pytest.mark.parametrize("state", ["dead", "stopped"])
def test_abort_ends_every_thread_whatever_the_workers_state(state):
    if not (settled() and can_fork()):
        pytest.skip("other threads run in the test process: no worker process may be forked")
    cfg = z.CompressConfig.from_options("lz4", 4096, 4096)
    pool = zw._ProcessPool(cfg, 2, None)
    pids = [proc.pid for proc in pool.procs]
    try:
        os.kill(pids[0], signal.SIGKILL)
        os.kill(pids[1], signal.SIGSTOP if state == "stopped" else signal.SIGKILL)
        pool.procs[0].join(10)
        big = _Given(os.urandom(1 << 20))       # far more than a pipe holds, per batch
        for _ in range(4):
            pool.submit([zw._Work(big, len(big.data), 32, (), 0, len(big.data), True, True)])
    finally:
        # (in a thread of its own: an abort that hangs fails here instead of hanging the run)
        aborting = threading.Thread(target=pool.abort, daemon=True)
        aborting.start()
        aborting.join(30)
        if aborting.is_alive():         # (then its workers are not reaped: their pids are theirs)
            for proc in pool.procs:
                proc.kill()
    assert not aborting.is_alive(), "abort hangs"
    assert settled(), f"threads left running: {threading.enumerate()}"
    assert all(not proc.is_alive() for proc in pool.procs)


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 100, os.urandom(5000)])
def test_bytes_address_is_where_ctypes_finds_the_contents(data):
    assert bytes_address(data) == ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    if data:
        assert ctypes.string_at(bytes_address(data), len(data)) == data
