"""SIGTERM (a CI job's timeout, `kill`, make's stop) in the middle of a build: mkerofs stops as
on Ctrl-C (exit status 143, one line): no temporary image left, an existing image untouched, and
no process of its own (compression workers, copiers, the scout, a metadata part) left running.
SIGKILL of the build's process, which nothing can handle: its compression workers see it gone
and end (they held its stdout and stderr: a caller reading them waited for ever)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.run import leftovers, mkerofs_command, mkerofs_env, wait_until_writing


def _source(src: Path) -> None:
    """Enough compressible work (~1 s) for the signal to come while the build runs."""
    src.mkdir()
    block = os.urandom(1 << 16)
    for d in range(40):
        (src / f"d{d:02}").mkdir()
        for i in range(12):
            with open(src / f"d{d:02}" / f"f{i:02}", "wb") as f:
                for k in range(16):
                    f.write(block[k * 97 + i:] + block[:k * 97 + i] + bytes(1 << 15))


def _group(pgid: int) -> list[int]:
    """The processes still in process group `pgid`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(pid))
    return found


def _stop(pgid: int) -> None:
    for pid in _group(pgid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("args", [["-zlz4"], []], ids=["compressed", "plain"])
@pytest.mark.parametrize("present", [False, True], ids=["no-image", "existing-image"])
def test_terminated_build_leaves_nothing(tmp_path, args, present):
    _source(tmp_path / "src")
    image = tmp_path / "out.erofs"
    for _attempt in range(3):
        if present:
            image.write_bytes(b"old image" * 1000)
        elif image.exists():
            image.unlink()
        p = subprocess.Popen(mkerofs_command() + args + [str(image), str(tmp_path / "src")],
                             env=mkerofs_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            wait_until_writing(p, tmp_path, ("src", image.name), settle=0.1)
            if p.poll() is not None:
                continue                                # (done before the signal: again)
            p.send_signal(signal.SIGTERM)
            try:
                _out, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                _stop(p.pid)            # (orphans hold its stdout open: communicate waits)
                p.communicate()
                pytest.fail("mkerofs did not exit within 30 s of SIGTERM")
            time.sleep(0.5)                 # (a process it killed may take a moment to go)
            left = _group(p.pid)
        finally:
            _stop(p.pid)
        if p.returncode != 0:
            break
    else:
        pytest.fail("three builds ended before SIGTERM reached them; enlarge the source")
    assert left == [], "processes of the build left running"
    assert p.returncode == 143, (p.returncode, err)
    assert err.strip().endswith("mkerofs: terminated"), err
    assert "Traceback" not in err, err
    assert leftovers(tmp_path, keep=["src"] + ([image.name] if present else [])) == []
    if present:
        assert image.read_bytes() == b"old image" * 1000


def test_killed_build_leaves_no_worker(tmp_path):
    _source(tmp_path / "src")
    image = tmp_path / "out.erofs"
    p = subprocess.Popen(mkerofs_command() + ["-zlz4", str(image), str(tmp_path / "src")],
                         env=mkerofs_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None and len(_group(p.pid)) < 3:
            time.sleep(0.005)                   # (the workers are forked)
        if p.poll() is not None:
            pytest.skip("the build ended before its workers could be seen")
        p.kill()
        try:
            p.communicate(timeout=30)       # (ends once no process holds stdout/stderr)
        except subprocess.TimeoutExpired:
            pytest.fail("the build's workers still hold its output 30 s after it was killed")
        deadline = time.monotonic() + 10
        while _group(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group(p.pid) == [], "workers of a killed build left running"
    finally:
        _stop(p.pid)
