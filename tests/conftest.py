"""pytest configuration for the mkerofs suite.

Layout: support/ (the oracle parser, running mkerofs, mounts, tree builders, tree comparison),
unit/ (no image needed), reader/ (mkerofs.reader and mkerofs-read), writer/ (building images:
the CLI, output targets, --verify), kernel/ (images mounted by the kernel). Test files have
unique basenames: the folders are not packages.

Markers (registered here):
  kernel  - needs root and a kernel that mounts erofs images
  loop    - needs loop devices (losetup)
  fsck    - needs Debian's fsck.erofs
  root    - needs root (bind/tmpfs mounts)
  slow    - expensive (the >4 GiB sparse file); deselect with -m "not slow"

When a requirement is missing the test is skipped with the reason, unless
MKEROFS_REQUIRE_KERNEL=1 is set: then it fails instead (for CI machines
that are supposed to have everything).
"""
from __future__ import annotations

import functools
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.mounts import MountError, assert_fsck_ok, kernel_mount, loop_device  # noqa: E402
from support.oracle import EROFS_MAGIC  # noqa: E402


def pytest_configure(config):
    for line in (
        "kernel: needs root and a kernel able to mount erofs",
        "loop: needs loop block devices (losetup)",
        "fsck: needs fsck.erofs (Debian erofs-utils)",
        "root: needs root privileges (mounts)",
        "slow: expensive test (e.g. >4 GiB sparse file); deselect with -m 'not slow'",
    ):
        config.addinivalue_line("markers", line)


def _require() -> bool:
    return os.environ.get("MKEROFS_REQUIRE_KERNEL", "") not in ("", "0")


def _unavailable(reason: str):
    if _require():
        pytest.fail(f"{reason} (MKEROFS_REQUIRE_KERNEL=1 set, so this is an error)")
    pytest.skip(reason)


def _tiny_erofs_image() -> bytes:
    """A minimal valid erofs image (4 KiB blocks, one empty root directory),
    crafted by hand so that probing the kernel depends on nothing else."""
    img = bytearray(4096)
    root_nid = 36                       # inode at byte 1152, right after the sb
    sb = struct.pack("<IIIBBHQQIIII", EROFS_MAGIC, 0, 0, 12, 0, root_nid,
                     1, 0, 0, 1, 0, 0)
    img[1024:1024 + len(sb)] = sb
    names = b"..."                      # "." then ".."
    dirents = struct.pack("<QHBB", root_nid, 24, 2, 0) + struct.pack("<QHBB", root_nid, 25, 2, 0)
    dsize = len(dirents) + len(names)
    inode = struct.pack("<HHHHIIIIHHI", 2 << 1, 0, 0o40755, 2, dsize, 0, 0, 0, 0, 0, 0)
    pos = root_nid * 32
    img[pos:pos + 32] = inode
    img[pos + 32:pos + 32 + dsize] = dirents + names
    return bytes(img)


@functools.lru_cache(maxsize=None)
def kernel_problem() -> str | None:
    """None if erofs images can be mounted here, else the reason."""
    if os.geteuid() != 0:
        return "not root: kernel mounts need root"
    with open("/proc/filesystems") as f:
        if not any(line.split()[-1:] == ["erofs"] for line in f):
            # may still be a module that mount(8) can load; try anyway
            pass
    with tempfile.TemporaryDirectory(prefix="mkerofs-probe-") as d:
        img = os.path.join(d, "probe.erofs")
        with open(img, "wb") as f:
            f.write(_tiny_erofs_image())
        try:
            with kernel_mount(img) as mnt:
                if os.listdir(mnt) != []:
                    return "probe image mounted but looks wrong"
        except MountError as e:
            return f"the kernel cannot mount erofs: {e}"
    return None


@functools.lru_cache(maxsize=None)
def loop_problem() -> str | None:
    if os.geteuid() != 0:
        return "not root: loop devices need root"
    if shutil.which("losetup") is None:
        return "losetup not found"
    with tempfile.TemporaryDirectory(prefix="mkerofs-probe-") as d:
        f = os.path.join(d, "backing")
        with open(f, "wb") as fh:
            fh.truncate(1 << 20)
        try:
            with loop_device(f) as dev:
                if not os.path.exists(dev):
                    return f"losetup returned {dev!r}, which does not exist"
        except MountError as e:
            return f"no loop devices: {e}"
    return None


@functools.lru_cache(maxsize=None)
def fsck_problem() -> str | None:
    if shutil.which("fsck.erofs") is None:
        return "fsck.erofs not found (apt-get install erofs-utils)"
    return None


@functools.lru_cache(maxsize=None)
def root_problem() -> str | None:
    return None if os.geteuid() == 0 else "not root"


_CHECKS = {"kernel": kernel_problem, "loop": loop_problem, "fsck": fsck_problem,
           "root": root_problem}


def pytest_runtest_setup(item):
    for name, check in _CHECKS.items():
        if item.get_closest_marker(name) is not None:
            problem = check()
            if problem:
                _unavailable(problem)


@pytest.fixture
def kernel():
    """Skip (or fail with MKEROFS_REQUIRE_KERNEL=1) unless erofs images can
    be mounted; returns support.mounts.kernel_mount."""
    problem = kernel_problem()
    if problem:
        _unavailable(problem)
    return kernel_mount


@pytest.fixture
def loop():
    """Returns support.mounts.loop_device (a context manager) if loop devices work."""
    problem = loop_problem()
    if problem:
        _unavailable(problem)
    return loop_device


@pytest.fixture
def fsck():
    """Returns support.mounts.assert_fsck_ok if fsck.erofs is installed."""
    problem = fsck_problem()
    if problem:
        _unavailable(problem)
    return assert_fsck_ok


@pytest.fixture
def as_root():
    problem = root_problem()
    if problem:
        _unavailable(problem)


@pytest.fixture
def src(tmp_path) -> Path:
    """An empty source directory (tmp_path/src)."""
    p = tmp_path / "src"
    p.mkdir()
    return p


@pytest.fixture
def image(tmp_path) -> Path:
    """Where to write the image: beside the tree, not inside it."""
    return tmp_path / "image.erofs"
