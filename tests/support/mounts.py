"""Mounting images with the kernel, loop devices, tmpfs and bind mounts (all need root), and
Debian's ``fsck.erofs`` as a second opinion. Every context manager always cleans up."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .paths import PathLike, show


class MountError(RuntimeError):
    """The kernel could not mount an image (message includes dmesg tail)."""


def dmesg_tail(n: int = 5) -> str:
    try:
        r = subprocess.run(["dmesg"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=20)
        return "\n".join(r.stdout.decode(errors="replace").splitlines()[-n:])
    except Exception as e:  # pragma: no cover - diagnostics only
        return f"(dmesg unavailable: {e})"


def _umount(path: str) -> None:
    for args in (["umount", path], ["umount", path], ["umount", "-l", path]):
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode == 0 or not os.path.ismount(path):
            return
        time.sleep(0.2)


@contextlib.contextmanager
def kernel_mount(image: PathLike, *, offset: Optional[int] = None,
                 options: Sequence[str] = ()) -> Iterator[Path]:
    """Mount ``image`` (file or block device) read-only as erofs into a
    fresh temporary directory and yield its Path; always unmounts.
    ``offset`` mounts the filesystem found ``offset`` bytes into a file
    (through a loop device set up by mount(8)). Raises MountError with the
    reason (not root, mount(8) message plus ``dmesg | tail -5``)."""
    if os.geteuid() != 0:
        raise MountError("kernel mount needs root (euid is %d)" % os.geteuid())
    if shutil.which("mount") is None:
        raise MountError("mount(8) not found")
    mnt = tempfile.mkdtemp(prefix="mkerofs-mnt-")
    opts = ["ro", *options]
    if offset:
        opts.append(f"offset={offset}")
    cmd = ["mount", "-t", "erofs", "-o", ",".join(opts), os.fsdecode(image), mnt]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        os.rmdir(mnt)
        raise MountError(
            f"mount of {show(image)} failed (exit {r.returncode}): "
            f"{r.stderr.decode(errors='replace').strip()}\n"
            f"dmesg | tail -5:\n{dmesg_tail(5)}")
    try:
        yield Path(mnt)
    finally:
        _umount(mnt)
        try:
            os.rmdir(mnt)
        except OSError:
            pass


@contextlib.contextmanager
def loop_device(backing: PathLike, *, read_only: bool = False,
                offset: Optional[int] = None) -> Iterator[str]:
    """``losetup -f --show`` over ``backing``; yields /dev/loopN and always
    detaches it."""
    cmd = ["losetup", "-f", "--show"]
    if read_only:
        cmd.append("-r")
    if offset:
        cmd += ["-o", str(offset)]
    r = subprocess.run(cmd + [os.fsdecode(backing)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise MountError(f"losetup failed: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        for _ in range(10):
            d = subprocess.run(["losetup", "-d", dev], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
            if d.returncode == 0:
                break
                time.sleep(0.2)


@contextlib.contextmanager
def mount_with_devices(image: PathLike, devices: Sequence[PathLike]) -> Iterator[Path]:
    """Mount `image` with ``-o device=`` each of `devices` (files, put on read-only loop
    devices: util-linux mount wants block devices there)."""
    with contextlib.ExitStack() as stack:
        loops = [stack.enter_context(loop_device(d, read_only=True)) for d in devices]
        yield stack.enter_context(kernel_mount(image, options=[f"device={l}" for l in loops]))


@contextlib.contextmanager
def _mounted_at_temp(args: Sequence[str], what: str, prefix: str) -> Iterator[Path]:
    """``mount ARGS DIR`` on a fresh temporary DIR; always unmounted and removed."""
    mnt = tempfile.mkdtemp(prefix=prefix)
    r = subprocess.run(["mount", *args, mnt], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        os.rmdir(mnt)
        raise MountError(f"{what} mount failed: {r.stderr.strip()}")
    try:
        yield Path(mnt)
    finally:
        _umount(mnt)
        os.rmdir(mnt)


def tmpfs_mount(size: str = "1m"):
    """A small tmpfs (to provoke ENOSPC); always unmounted."""
    return _mounted_at_temp(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs"], "tmpfs",
                            "mkerofs-tmpfs-")


def loop_fs_mount(backing: PathLike, fstype: str):
    """The filesystem image file ``backing`` mounted read-write (through a loop device)."""
    return _mounted_at_temp(["-t", fstype, "-o", "loop", os.fsdecode(backing)], fstype,
                            f"mkerofs-{fstype}-")


def overlay_mount(*lowers: PathLike):
    """A read-only overlayfs of the directories ``lowers`` (uppermost first)."""
    lowerdir = ":".join(os.fsdecode(p) for p in lowers)
    return _mounted_at_temp(["-t", "overlay", "-o", f"lowerdir={lowerdir}", "overlay"],
                            "overlay", "mkerofs-ovl-")


@contextlib.contextmanager
def bind_mount(source: PathLike, target: PathLike) -> Iterator[None]:
    r = subprocess.run(["mount", "--bind", os.fsdecode(source), os.fsdecode(target)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise MountError(f"bind mount failed: {r.stderr.strip()}")
    try:
        yield
    finally:
        _umount(os.fsdecode(target))


def block_device_size(dev: PathLike) -> int:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def file_digest(path: PathLike, length: Optional[int] = None) -> str:
    """sha256 of a file or device (first ``length`` bytes if given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while True:
            n = 1 << 20 if left is None else min(1 << 20, left)
            if n == 0:
                break
            b = f.read(n)
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h.hexdigest()


def fsck_erofs(image: PathLike, *, extract: bool = True) -> subprocess.CompletedProcess:
    """Run Debian's ``fsck.erofs`` on ``image`` (with ``--extract`` it also
    decodes every file). Returns the CompletedProcess (text output).

    NOTE: Debian 12 ships erofs-utils 1.5, which predates several features:
    it only accepts block size == PAGE_SIZE (4096 here), knows nothing of
    48-bit layouts, metabox, etc.  Use ``fsck_unsupported`` to tell a tool
    limitation from a real corruption report."""
    cmd = ["fsck.erofs"]
    if extract:
        cmd.append("--extract")
    cmd.append(os.fsdecode(image))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r.stdout = r.stdout.decode(errors="replace")
    r.stderr = r.stderr.decode(errors="replace")
    return r


def fsck_unsupported(r: subprocess.CompletedProcess) -> bool:
    """True when fsck.erofs 1.5 failed only because it does not support the
    image's block size (a limitation of the old tool, not a bad image)."""
    out = (r.stdout + r.stderr).lower()
    return r.returncode != 0 and ("isn't supported" in out or "not supported" in out) \
        and "blksize" in out


def assert_fsck_ok(image: PathLike, block_size: int = 4096) -> bool:
    """fsck.erofs must pass; for block sizes fsck 1.5 cannot handle it must
    at least fail only for that reason. Returns True if fsck really ran."""
    r = fsck_erofs(image)
    if r.returncode == 0:
        return True
    if block_size != os.sysconf("SC_PAGE_SIZE") and fsck_unsupported(r):
        return False
    raise AssertionError(f"fsck.erofs failed (exit {r.returncode}) on {show(image)}:\n"
                         f"{r.stdout}\n{r.stderr}")
