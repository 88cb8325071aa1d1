"""A --tar=i build whose tar headers are read on two cores (writer/tarsplit.py, forced here on
a small tar), interrupted with Ctrl-C while the forked reader runs: one line of error, no
traceback, no image, and the forked process gone (killed and reaped, not left running)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from support.run import leftovers, mkerofs_env

# (the forked reader is made slow, and this process waits in its first look at the pipe:
# the signal comes while both run.  ^C raises KeyboardInterrupt even where the test runs as
# a background job of a shell, which starts it with SIGINT ignored, as Python then leaves it)
_SCRIPT = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from mkerofs.writer import tarsplit
tarsplit._SPLIT_MIN, tarsplit._MIN_GAP = 0, 0
pid_file = sys.argv[1]
run, take = tarsplit._Child.run, tarsplit.SplitTarReader._take_records
def slow_run(self, target):
    time.sleep(120)
    run(self, target)
def waiting(self, wait):
    with open(pid_file, "w") as f:
        f.write(str(self._pid))
    time.sleep(120)
    return take(self, wait)
tarsplit._Child.run, tarsplit.SplitTarReader._take_records = slow_run, waiting
from mkerofs.cli.mkfs import main
sys.argv = ["mkerofs"] + sys.argv[2:]
sys.exit(main())
"""


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3000):
            info = tarfile.TarInfo(f"d/f{i}")
            info.size = i % 300
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return buf.getvalue()


def _gone(pid: int) -> bool:
    """Whether `pid` has ended and been reaped (by its parent, or by init once orphaned),
    within 5 seconds."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.stat(f"/proc/{pid}")
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_sigint_while_the_forked_reader_runs(tmp_path):
    tar = tmp_path / "t.tar"
    tar.write_bytes(_tar())
    image, pid_file = tmp_path / "out.erofs", tmp_path / "pid"
    p = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(pid_file), "--tar=i",
                          "-T0", str(image), str(tar)],
                         env=mkerofs_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and p.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.poll() is None, p.communicate()
        assert pid_file.exists(), "the forked reader was not started within 30 s"
        child = int(pid_file.read_text())
        assert child > 0
        p.send_signal(signal.SIGINT)
        try:
            _out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            with open(f"/proc/{p.pid}/status") as f:
                masks = [line.strip() for line in f if line.startswith(("SigBlk", "SigIgn"))]
            with open(f"/proc/{p.pid}/wchan") as f:
                masks.append(f.read())
            p.kill()
            os.kill(child, signal.SIGKILL)      # (it holds the build's stderr open)
            _out, err = p.communicate()
            pytest.fail(f"mkerofs did not exit within 30 s of SIGINT ({masks}): {err}")
    finally:
        if p.poll() is None:            # (a failed check: no build left sleeping)
            p.kill()
            p.communicate()
    assert p.returncode != 0
    assert "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert leftovers(tmp_path, keep=["t.tar", "pid"]) == []
    if not _gone(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the forked tar reader outlived the build")
