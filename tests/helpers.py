"""Reusable helpers for the mkerofs test-suite.

* running the CLI (``run_mkerofs``),
* mounting an image with the kernel (``kernel_mount``),
* comparing a source tree with a mounted image (``compare_trees``),
* building source trees with every interesting case (``make_*``),
* reading the superblock / inodes of an image without the kernel
  (``read_superblock``, ``ErofsImage``),
* running Debian's ``fsck.erofs`` (``fsck_erofs``).

Everything works on bytes paths internally so that names that are not
valid UTF-8 survive.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

REPO = Path(__file__).resolve().parent.parent

PathLike = Union[str, bytes, os.PathLike]

BLOCK_SIZES = (512, 1024, 2048, 4096)
EROFS_MAGIC = 0xE0F5E1E2
SB_OFFSET = 1024

# mtimes used by the tree builders: all in the past or far in the future so
# that they never coincide with the build time of a test run.
BASE_MTIME_NS = 1_500_000_000 * 10**9          # 2017-07-14
FIXED_T = 1_234_567_890                         # a -T value no source file has


def fsb(p: PathLike) -> bytes:
    """Any path-like to bytes."""
    return os.fsencode(p)


def show(p: PathLike) -> str:
    """Readable form of a (possibly non-UTF-8) path."""
    return repr(fsb(p))[2:-1]


# ---------------------------------------------------------------------------
# running mkerofs
# ---------------------------------------------------------------------------

def mkerofs_command() -> list[str]:
    """The command that runs mkerofs. ``MKEROFS_CMD`` overrides it (e.g. to
    point the suite at a real mkfs.erofs for cross-checking)."""
    override = os.environ.get("MKEROFS_CMD")
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "mkerofs"]


def mkerofs_env(env: Optional[dict] = None) -> dict:
    """Environment for a mkerofs run: the inherited one without
    SOURCE_DATE_EPOCH (tests must be deterministic), the repo on
    PYTHONPATH, then ``env`` on top (a value of None removes a variable)."""
    full = dict(os.environ)
    full.pop("SOURCE_DATE_EPOCH", None)
    pp = full.get("PYTHONPATH")
    full["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    return full


def run_mkerofs(*args, env: Optional[dict] = None, check: bool = True,
                cwd: Optional[PathLike] = None, timeout: float = 1800,
                input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run ``python -m mkerofs ARGS``; stdout/stderr are captured as text
    (undecodable bytes escaped). With check=True a non-zero exit raises an
    AssertionError that shows the command and its output."""
    cmd = mkerofs_command() + [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run(cmd, env=mkerofs_env(env), cwd=cwd, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       input=input)
    r.stdout = r.stdout.decode("utf-8", "backslashreplace")
    r.stderr = r.stderr.decode("utf-8", "backslashreplace")
    if check and r.returncode != 0:
        raise AssertionError(
            f"mkerofs failed (exit {r.returncode}): {shlex.join(map(os.fsdecode, cmd))}\n"
            f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}")
    return r


def build_image(image: PathLike, source: PathLike, *args, env=None,
                check=True, **kw) -> subprocess.CompletedProcess:
    """run_mkerofs(*args, IMAGE, SOURCE)."""
    return run_mkerofs(*args, image, source, env=env, check=check, **kw)


def assert_clean_failure(r: subprocess.CompletedProcess, *,
                         mentions: Sequence[str] = (),
                         mentions_any: Sequence[str] = (),
                         image: Optional[PathLike] = None,
                         image_before: Optional[bytes] = None) -> str:
    """Check the error contract: non-zero exit, exactly one non-empty line on
    stderr, no Python traceback, the message mentions every string of
    ``mentions`` and at least one of ``mentions_any`` (case-insensitive),
    and the image either does not exist (``image_before`` None) or still
    holds exactly ``image_before``. Returns the message line."""
    problems = []
    if r.returncode == 0:
        problems.append("exit status 0 for a failing build")
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        problems.append("a Python traceback was printed")
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    if len(lines) != 1:
        problems.append(f"expected exactly one line on stderr, got {len(lines)}")
    msg = lines[0] if lines else ""
    low = r.stderr.lower()
    for m in mentions:
        if m.lower() not in low:
            problems.append(f"stderr does not mention {m!r}")
    if mentions_any and not any(m.lower() in low for m in mentions_any):
        problems.append(f"stderr mentions none of {list(mentions_any)!r}")
    if image is not None:
        if image_before is None:
            if os.path.lexists(image):
                problems.append(f"image {show(image)} was left behind")
        else:
            try:
                now = Path(os.fsdecode(image)).read_bytes()
            except OSError as e:
                now = None
                problems.append(f"existing image {show(image)} is gone: {e}")
            if now is not None and now != image_before:
                problems.append(f"existing image {show(image)} was modified")
    if problems:
        raise AssertionError("; ".join(problems) +
                             f"\n--- exit {r.returncode} ---\n--- stdout ---\n"
                             f"{r.stdout}\n--- stderr ---\n{r.stderr}")
    return msg


def leftovers(folder: PathLike, keep: Iterable[str] = ()) -> list[str]:
    """Entries of ``folder`` other than ``keep`` (to spot temporary files)."""
    keep = set(keep)
    return sorted(n for n in os.listdir(os.fsdecode(folder)) if n not in keep)


# ---------------------------------------------------------------------------
# kernel mount, loop devices, fsck
# ---------------------------------------------------------------------------

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
        import time
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
            import time
            time.sleep(0.2)


@contextlib.contextmanager
def tmpfs_mount(size: str = "1m") -> Iterator[Path]:
    """A small tmpfs (to provoke ENOSPC); always unmounted."""
    mnt = tempfile.mkdtemp(prefix="mkerofs-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                        "tmpfs", mnt], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        os.rmdir(mnt)
        raise MountError(f"tmpfs mount failed: {r.stderr.strip()}")
    try:
        yield Path(mnt)
    finally:
        _umount(mnt)
        os.rmdir(mnt)


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


# ---------------------------------------------------------------------------
# image parsing without the kernel
# ---------------------------------------------------------------------------

def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Raw CRC32C (Castagnoli) update as the kernel's crc32c(): no final
    inversion; erofs uses crc32c(~0, sb, len)."""
    table = _crc32c_table()
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


_CRC_TABLE: list[int] = []


def _crc32c_table() -> list[int]:
    if not _CRC_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    return _CRC_TABLE


@dataclass
class Superblock:
    magic: int
    checksum: int
    feature_compat: int
    blkszbits: int
    sb_extslots: int
    root_nid: int
    inos: int
    epoch: int
    fixed_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    feature_incompat: int
    build_time: int
    raw: bytes

    @property
    def block_size(self) -> int:
        return 1 << self.blkszbits

    @property
    def label(self) -> bytes:
        return self.volume_name.split(b"\0", 1)[0]

    @property
    def uuid_obj(self) -> uuidlib.UUID:
        return uuidlib.UUID(bytes=self.uuid)

    @property
    def has_sb_checksum(self) -> bool:
        return bool(self.feature_compat & 0x1)

    @property
    def mkfs_time(self) -> int:
        """Build time in seconds (epoch + build_time as in erofs-utils 1.9)."""
        return self.epoch + self.build_time


def read_superblock(image: PathLike, offset: int = 0) -> Superblock:
    with open(image, "rb") as f:
        f.seek(offset + SB_OFFSET)
        raw = f.read(128)
    if len(raw) < 128:
        raise AssertionError(f"{show(image)}: too short for an erofs superblock")
    (magic, checksum, compat, blkszbits, extslots, rootnid, inos, epoch,
     fixed_nsec, blocks, meta, xattr) = struct.unpack_from("<IIIBBHQQIIII", raw, 0)
    uuid = raw[48:64]
    name = raw[64:80]
    incompat, = struct.unpack_from("<I", raw, 80)
    build_time, = struct.unpack_from("<I", raw, 108)
    return Superblock(magic, checksum, compat, blkszbits, extslots, rootnid, inos,
                      epoch, fixed_nsec, blocks, meta, xattr, uuid, name,
                      incompat, build_time, raw)


def superblock_checksum_ok(image: PathLike, offset: int = 0) -> bool:
    """Recompute the superblock CRC32C as the kernel does."""
    sb = read_superblock(image, offset)
    length = sb.block_size
    if length > SB_OFFSET:
        length -= SB_OFFSET
    with open(image, "rb") as f:
        f.seek(offset + SB_OFFSET)
        buf = bytearray(f.read(length))
    buf[4:8] = b"\0\0\0\0"
    return crc32c(bytes(buf)) == sb.checksum


@dataclass
class InodeInfo:
    path: bytes
    nid: int
    extended: bool
    layout: int          # 0 flat plain, 2 flat inline, ...
    mode: int
    size: int
    nlink: int
    uid: int
    gid: int
    mtime: Optional[int]
    mtime_nsec: Optional[int]
    xattr_icount: int
    raw_blkaddr: int


class ErofsImage:
    """A minimal reader for uncompressed (non-48-bit) erofs images: enough
    to list inodes with their on-disk form (compact/extended) and data
    layout (plain/inline)."""

    FLAT_PLAIN, FLAT_INLINE = 0, 2

    def __init__(self, image: PathLike, offset: int = 0):
        self.path = image
        self.offset = offset
        self.sb = read_superblock(image, offset)
        if self.sb.magic != EROFS_MAGIC:
            raise AssertionError(f"bad magic {self.sb.magic:#x}")
        self.bs = self.sb.block_size
        self.f = open(image, "rb")

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _read(self, pos: int, n: int) -> bytes:
        self.f.seek(self.offset + pos)
        b = self.f.read(n)
        if len(b) != n:
            raise AssertionError(f"short read at {pos}")
        return b

    def inode(self, nid: int, path: bytes = b"/") -> InodeInfo:
        pos = self.sb.meta_blkaddr * self.bs + nid * 32
        head = self._read(pos, 64)
        fmt, icount, mode = struct.unpack_from("<HHH", head, 0)
        extended = bool(fmt & 1)
        layout = (fmt >> 1) & 7
        if extended:
            size, = struct.unpack_from("<Q", head, 8)
            u, = struct.unpack_from("<I", head, 16)
            uid, gid = struct.unpack_from("<II", head, 24)
            mtime, nsec, nlink = struct.unpack_from("<QII", head, 32)
        else:
            nlink, size = struct.unpack_from("<HI", head, 6)
            mtime_rel, = struct.unpack_from("<I", head, 12)
            u, = struct.unpack_from("<I", head, 16)
            uid, gid = struct.unpack_from("<HH", head, 24)
            mtime, nsec = self.sb.epoch + mtime_rel, self.sb.fixed_nsec
        return InodeInfo(path, nid, extended, layout, mode, size, nlink, uid, gid,
                         mtime, nsec, icount, u)

    def data(self, ino: InodeInfo) -> bytes:
        """Whole data of an uncompressed inode (small files only)."""
        isize = 64 if ino.extended else 32
        xsize = 12 + (ino.xattr_icount - 1) * 4 if ino.xattr_icount else 0
        if ino.layout == self.FLAT_PLAIN:
            return self._read(ino.raw_blkaddr * self.bs, ino.size) if ino.size else b""
        if ino.layout == self.FLAT_INLINE:
            full = ino.size // self.bs * self.bs
            head = self._read(ino.raw_blkaddr * self.bs, full) if full else b""
            ipos = self.sb.meta_blkaddr * self.bs + ino.nid * 32 + isize + xsize
            return head + self._read(ipos, ino.size - full)
        raise AssertionError(f"unsupported data layout {ino.layout} for {ino.path!r}")

    def dirents(self, ino: InodeInfo) -> list[tuple[bytes, int, int]]:
        data = self.data(ino)
        out = []
        for start in range(0, len(data), self.bs):
            blk = data[start:start + self.bs]
            _, nameoff0, _, _ = struct.unpack_from("<QHBB", blk, 0)
            n = nameoff0 // 12
            for i in range(n):
                nid, nameoff, ftype, _ = struct.unpack_from("<QHBB", blk, i * 12)
                if i + 1 < n:
                    end = struct.unpack_from("<H", blk, (i + 1) * 12 + 8)[0]
                    name = blk[nameoff:end]
                else:
                    name = blk[nameoff:].split(b"\0", 1)[0]
                out.append((name, nid, ftype))
        return out

    def walk(self) -> dict[bytes, InodeInfo]:
        """{b'/' or b'/a/b': InodeInfo} for every reachable inode."""
        res: dict[bytes, InodeInfo] = {}
        root = self.inode(self.sb.root_nid, b"/")
        res[b"/"] = root
        stack = [(b"", root)]
        while stack:
            prefix, d = stack.pop()
            for name, nid, _ in self.dirents(d):
                if name in (b".", b".."):
                    continue
                p = prefix + b"/" + name
                ino = self.inode(nid, p)
                res[p] = ino
                if stat.S_ISDIR(ino.mode):
                    stack.append((p, ino))
        return res


def image_inodes(image: PathLike, offset: int = 0) -> dict[bytes, InodeInfo]:
    with ErofsImage(image, offset) as img:
        return img.walk()


# ---------------------------------------------------------------------------
# comparing a source tree with a mount
# ---------------------------------------------------------------------------

@dataclass
class Expect:
    """What the image should contain relative to the source tree."""
    timestamp: Optional[int] = None      # -T N (all-time): every mtime is N s, 0 ns
    clamp: Optional[int] = None          # SOURCE_DATE_EPOCH: mtime >= clamp -> clamp, 0 ns
    compact_mtime: Optional[int] = None  # --ignore-mtime / force-inode-compact: inodes that
                                         # can be compact get this mtime (0 ns); inodes that
                                         # must be extended (big uid/gid/size/nlink) keep theirs
    all_root: bool = False
    force_uid: Optional[int] = None
    force_gid: Optional[int] = None
    uid_offset: int = 0
    gid_offset: int = 0
    hard_dereference: bool = False
    exclude_paths: Sequence[PathLike] = ()     # relative to the source
    exclude_regexes: Sequence[str] = ()        # re.search on the relative path
    check_root_mtime: bool = True
    xattrs: bool = False

    def uid(self, st) -> int:
        base = 0 if self.all_root else (self.force_uid if self.force_uid is not None
                                         else st.st_uid)
        return (base + self.uid_offset) & 0xFFFFFFFF

    def gid(self, st) -> int:
        base = 0 if self.all_root else (self.force_gid if self.force_gid is not None
                                         else st.st_gid)
        return (base + self.gid_offset) & 0xFFFFFFFF

    def excluded(self, rel: bytes) -> bool:
        paths = {fsb(p).strip(b"/") for p in self.exclude_paths}
        if rel in paths:
            return True
        s = os.fsdecode(rel)
        return any(re.search(rx, s) for rx in self.exclude_regexes)


def _walk(root: bytes, expect: Optional[Expect] = None) -> dict[bytes, os.stat_result]:
    """{relative path (b'' for the root): lstat} of a tree, pruning excluded
    entries (and their subtrees)."""
    out = {b"": os.lstat(root)}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            r = rel + b"/" + name if rel else name
            if expect is not None and expect.excluded(r):
                continue
            st = os.lstat(os.path.join(root, r))
            out[r] = st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)
    return out


_ZERO = bytes(4 << 20)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Data extents of a file via SEEK_DATA/SEEK_HOLE (whole file if the
    filesystem does not report holes)."""
    ranges = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size)))
            pos = end
    except OSError:
        return [(0, size)]
    return ranges


def compare_file_data(a: PathLike, b: PathLike, size: int, chunk: int = 4 << 20) -> Optional[str]:
    """Compare the first ``size`` bytes of two files chunk by chunk; holes
    of ``a`` (SEEK_DATA) are checked against zeros in ``b`` without reading
    ``a``. Returns None or a description of the first difference."""
    fa = os.open(a, os.O_RDONLY)
    fb = os.open(b, os.O_RDONLY)
    try:
        ranges = _data_ranges(fa, size) if size > (64 << 20) else [(0, size)]
        pos = 0
        segments = []
        for s, e in ranges:
            if s > pos:
                segments.append((pos, s, False))
            segments.append((s, e, True))
            pos = e
        if pos < size:
            segments.append((pos, size, False))
        for s, e, is_data in segments:
            p = s
            while p < e:
                n = min(chunk, e - p)
                db = os.pread(fb, n, p)
                if len(db) != n:
                    return f"short read in image at {p} ({len(db)} of {n})"
                if is_data:
                    da = os.pread(fa, n, p)
                    if len(da) != n:
                        return f"short read in source at {p}"
                    if da != db:
                        off = next(i for i in range(n) if da[i] != db[i])
                        return f"data differs at byte {p + off}"
                elif db != _ZERO[:n]:
                    off = next(i for i in range(n) if db[i])
                    return f"hole not zero at byte {p + off}"
                p += n
        if os.pread(fb, 1, size):
            return "image file has data past its size"
        return None
    finally:
        os.close(fa)
        os.close(fb)


def _xattrs(path: bytes) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def _type_name(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), f"type {stat.S_IFMT(mode):o}")


def _needs_extended(st, uid: int, gid: int, nlink: int) -> bool:
    return (not stat.S_ISDIR(st.st_mode) and st.st_size > 0xFFFFFFFF) or \
        uid > 0xFFFF or gid > 0xFFFF or nlink > 0xFFFF


def tree_differences(src: PathLike, mnt: PathLike, *, expect: Optional[Expect] = None,
                     xattrs: Optional[bool] = None, **kw) -> list[str]:
    """Every difference between a source tree and a mounted image, as
    readable strings (empty list: identical). See compare_trees."""
    if expect is None:
        expect = Expect(**kw)
    elif kw:
        raise TypeError("give either expect= or keyword expectations, not both")
    if xattrs is not None:
        expect.xattrs = xattrs
    src_b, mnt_b = fsb(src), fsb(mnt)
    s_tree = _walk(src_b, expect)
    m_tree = _walk(mnt_b)
    diffs: list[str] = []

    def name(rel):
        return "/" + show(rel) if rel else "/ (root)"

    for rel in sorted(set(s_tree) - set(m_tree)):
        diffs.append(f"{name(rel)}: missing from the image")
    for rel in sorted(set(m_tree) - set(s_tree)):
        why = " (should have been excluded)" if expect.excluded(rel) else ""
        diffs.append(f"{name(rel)}: in the image but not in the source{why}")
    for p in expect.exclude_paths:
        rel = fsb(p).strip(b"/")
        if os.path.lexists(os.path.join(mnt_b, rel)):
            diffs.append(f"/{show(rel)}: excluded path present in the image")

    # expected link counts: links inside the (filtered) tree
    groups: dict[tuple, list[bytes]] = {}
    subdirs: dict[bytes, int] = {}
    for rel, st in s_tree.items():
        if stat.S_ISDIR(st.st_mode):
            subdirs.setdefault(rel, 0)
            if rel:
                parent = rel.rpartition(b"/")[0]
                subdirs[parent] = subdirs.get(parent, 0) + 1
        else:
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)

    def exp_nlink(rel, st):
        if stat.S_ISDIR(st.st_mode):
            return 2 + subdirs.get(rel, 0)
        if expect.hard_dereference:
            return 1
        return len(groups[(st.st_dev, st.st_ino)])

    for rel in sorted(set(s_tree) & set(m_tree)):
        s, m = s_tree[rel], m_tree[rel]
        sp, mp = os.path.join(src_b, rel), os.path.join(mnt_b, rel)
        n = name(rel)
        if stat.S_IFMT(s.st_mode) != stat.S_IFMT(m.st_mode):
            diffs.append(f"{n}: type {_type_name(m.st_mode)} in the image, "
                         f"{_type_name(s.st_mode)} in the source")
            continue
        if stat.S_IMODE(s.st_mode) != stat.S_IMODE(m.st_mode):
            diffs.append(f"{n}: mode {stat.S_IMODE(m.st_mode):04o}, expected "
                         f"{stat.S_IMODE(s.st_mode):04o}")
        uid, gid = expect.uid(s), expect.gid(s)
        if m.st_uid != uid:
            diffs.append(f"{n}: uid {m.st_uid}, expected {uid}")
        if m.st_gid != gid:
            diffs.append(f"{n}: gid {m.st_gid}, expected {gid}")
        nl = exp_nlink(rel, s)
        if m.st_nlink != nl:
            diffs.append(f"{n}: nlink {m.st_nlink}, expected {nl}")
        # mtime
        if rel or expect.check_root_mtime:
            if expect.timestamp is not None:
                want = expect.timestamp * 10**9
            elif expect.compact_mtime is not None and not _needs_extended(s, uid, gid, nl):
                want = expect.compact_mtime * 10**9
            elif expect.clamp is not None and s.st_mtime_ns >= expect.clamp * 10**9:
                want = expect.clamp * 10**9
            else:
                want = s.st_mtime_ns
            if m.st_mtime_ns != want:
                diffs.append(f"{n}: mtime {m.st_mtime_ns} ns, expected {want} ns")
        if stat.S_ISREG(s.st_mode):
            if m.st_size != s.st_size:
                diffs.append(f"{n}: size {m.st_size}, expected {s.st_size}")
            else:
                d = compare_file_data(sp, mp, s.st_size)
                if d:
                    diffs.append(f"{n}: {d}")
        elif stat.S_ISLNK(s.st_mode):
            ts, tm = os.readlink(sp), os.readlink(mp)
            if ts != tm:
                diffs.append(f"{n}: symlink target differs ({len(tm)} bytes "
                             f"{show(tm[:60])!r}..., expected {len(ts)} bytes {show(ts[:60])!r}...)")
            if m.st_size != s.st_size:
                diffs.append(f"{n}: symlink size {m.st_size}, expected {s.st_size}")
        elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            if m.st_rdev != s.st_rdev:
                diffs.append(f"{n}: rdev {os.major(m.st_rdev)}:{os.minor(m.st_rdev)}, "
                             f"expected {os.major(s.st_rdev)}:{os.minor(s.st_rdev)}")
        elif stat.S_ISFIFO(s.st_mode) or stat.S_ISSOCK(s.st_mode):
            if m.st_size != 0:
                diffs.append(f"{n}: size {m.st_size}, expected 0")
        if expect.xattrs:
            xs, xm = _xattrs(sp), _xattrs(mp)
            if xs != xm:
                diffs.append(f"{n}: xattrs {sorted(xm)} differ from the source's {sorted(xs)}"
                             + ("" if set(xs) != set(xm) else " (values)"))

    # hard-link groups: same source inode <=> same image inode
    common = {r for r in set(s_tree) & set(m_tree)
              if not stat.S_ISDIR(s_tree[r].st_mode)}
    by_img: dict[int, set] = {}
    for r in common:
        by_img.setdefault(m_tree[r].st_ino, set()).add(r)
    for members in groups.values():
        members = [r for r in members if r in common]
        if len(members) < 2:
            continue
        inos = {m_tree[r].st_ino for r in members}
        if expect.hard_dereference:
            if len(inos) != len(members):
                diffs.append(f"hard links {[show(r) for r in members]} share inodes in the "
                             "image despite --hard-dereference")
        elif len(inos) != 1:
            diffs.append(f"hard links {[show(r) for r in members]} are "
                         f"{len(inos)} different inodes in the image")
    for ino, members in by_img.items():
        src_inodes = {(s_tree[r].st_dev, s_tree[r].st_ino) for r in members}
        if len(src_inodes) > 1 or (expect.hard_dereference and len(members) > 1):
            diffs.append(f"unrelated files {[show(r) for r in sorted(members)]} share "
                         f"inode {ino} in the image")
    return diffs


def compare_trees(src: PathLike, mnt: PathLike, *, expect: Optional[Expect] = None,
                  xattrs: Optional[bool] = None, **kw) -> None:
    """Walk ``src`` and ``mnt`` (os.lstat, bytes paths) and fail with a list
    of every difference in type, size, data, mode (incl. suid/sgid/sticky),
    uid/gid (after Expect's transforms), mtime in ns (or the fixed time),
    symlink target, rdev, nlink (links inside the tree; dirs 2 + subdirs),
    hard-link grouping and, with xattrs=True, extended attributes.
    Excluded paths (Expect.exclude_paths / exclude_regexes) must be absent.
    Expectations are given as ``expect=Expect(...)`` or as keywords."""
    diffs = tree_differences(src, mnt, expect=expect, xattrs=xattrs, **kw)
    if diffs:
        head = diffs[:300]
        more = f"\n... and {len(diffs) - 300} more" if len(diffs) > 300 else ""
        raise AssertionError(f"{len(diffs)} difference(s) between {show(src)} and the "
                             f"image mounted at {show(mnt)}:\n  " + "\n  ".join(head) + more)


# ---------------------------------------------------------------------------
# tree builders
# ---------------------------------------------------------------------------

def _rand_bytes(n: int, seed) -> bytes:
    return random.Random(seed).randbytes(n)


def write_file(path: PathLike, size: int, seed=None, *, pattern: Optional[bytes] = None) -> None:
    """A file of ``size`` bytes: deterministic pseudo-random data (seed
    defaults to the path) or a repeated pattern."""
    if pattern is not None:
        data = (pattern * (size // len(pattern) + 1))[:size]
    else:
        data = _rand_bytes(size, seed if seed is not None else fsb(path))
    with open(path, "wb") as f:
        f.write(data)


def make_socket(path: PathLike) -> None:
    """A UNIX socket node at ``path`` (bound via a relative name so long
    directories do not hit the 108-byte sun_path limit)."""
    path = fsb(path)
    d, n = os.path.split(path)
    old = os.open(".", os.O_RDONLY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(d or b".")
        s.bind(n)
    finally:
        s.close()
        os.fchdir(old)
        os.close(old)


def mtime_for(rel: bytes, i: int = 0) -> int:
    """A deterministic, varied mtime in ns for a relative path: mostly in
    2017-2020 with nanoseconds, some after 2038 and far future."""
    h = int.from_bytes(hashlib.sha256(rel + b"#%d" % i).digest()[:8], "little")
    kind = h % 10
    ns = (h >> 8) % 10**9
    if kind == 0:
        sec = 2**31 + (h >> 40) % 10**6         # just after 2038-01-19
    elif kind == 1:
        sec = 4_102_444_800 + (h >> 40) % 10**6  # after 2100
    elif kind == 2:
        ns = 0
        sec = BASE_MTIME_NS // 10**9 + (h >> 40) % 10**8
    else:
        sec = BASE_MTIME_NS // 10**9 + (h >> 40) % 10**8
    return sec * 10**9 + ns


def set_tree_times(root: PathLike, fixed: Optional[dict] = None) -> None:
    """Give every entry of the tree (root included, children before their
    directory) a deterministic mtime from mtime_for(); ``fixed`` maps
    relative bytes paths to explicit ns values. Keeps the trees free of
    mtimes equal to the build time of a test run."""
    root = fsb(root)
    fixed = {fsb(k): v for k, v in (fixed or {}).items()}
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            entries.append(os.path.relpath(full, root))
    entries.sort(key=lambda r: r.count(b"/"), reverse=True)
    for rel in entries + [b""]:
        full = os.path.join(root, rel) if rel else root
        ns = fixed.get(rel, mtime_for(rel))
        os.utime(full, ns=(ns, ns), follow_symlinks=False)


def boundary_sizes(block_sizes: Sequence[int] = BLOCK_SIZES) -> list[int]:
    """File sizes around block boundaries for every block size, with tails
    that do/don't fit next to a 32- or 64-byte inode."""
    sizes = {0, 1, 2, 31, 32, 33, 63, 64, 65, 100, 255, 256, 257}
    for bs in block_sizes:
        for k in (1, 2, 3):
            for d in (-65, -64, -63, -33, -32, -31, -1, 0, 1, 31, 32, 33):
                sizes.add(k * bs + d)
        sizes.add(bs // 2)
    return sorted(s for s in sizes if s >= 0)


def make_size_files(d: PathLike, block_sizes: Sequence[int] = BLOCK_SIZES) -> list[bytes]:
    d = fsb(d)
    os.makedirs(d, exist_ok=True)
    names = []
    for size in boundary_sizes(block_sizes):
        n = b"size_%06d" % size
        write_file(os.path.join(d, n), size)
        names.append(n)
    return names


def make_symlinks(d: PathLike, lengths: Optional[Sequence[int]] = None) -> None:
    """Symlinks whose targets are 1..4095 bytes long."""
    d = fsb(d)
    os.makedirs(d, exist_ok=True)
    if lengths is None:
        lengths = sorted({1, 2, 30, 59, 60, 61, 100, 255, 256, 511, 512, 513, 1000,
                          1023, 1024, 1025, 2000, 2047, 2048, 2049, 3000, 4000,
                          4031, 4032, 4033, 4063, 4064, 4065, 4094, 4095})
    for n in lengths:
        target = (b"t/" * (n // 2 + 1))[:n - 1] + b"x" if n > 1 else b"x"
        os.symlink(target, os.path.join(d, b"link_%04d" % n))


def make_full_tree(root: PathLike, *, xattrs: bool = False, big_ids: bool = True,
                   block_sizes: Sequence[int] = BLOCK_SIZES) -> Path:
    """A source tree with every case mkerofs must handle (see the module
    docstring of test_kernel_core). ``big_ids`` gives some entries
    uid/gid up to 2**32-2 (leave it off for -Eforce-inode-compact)."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    j = lambda *p: os.path.join(root, *[fsb(x) for x in p])

    # regular files of many sizes and contents
    make_size_files(j("sizes"), block_sizes)
    os.makedirs(j("files"))
    write_file(j("files", "empty"), 0)
    write_file(j("files", "zeros_8k"), 8192, pattern=b"\0")
    write_file(j("files", "text"), 5000, pattern=b"hello erofs\n")
    write_file(j("files", "medium"), 3 * 1024 * 1024 + 17)
    with open(j("files", "sparse_10m"), "wb") as f:       # holes inside
        f.truncate(10 * 1024 * 1024 + 123)
        f.seek(4096 * 3 + 5)
        f.write(b"data in the middle")
        f.seek(10 * 1024 * 1024)
        f.write(b"tail")
    with open(j("files", "hole_at_end"), "wb") as f:
        f.write(b"start")
        f.truncate(70000)

    # modes incl. suid/sgid/sticky
    os.makedirs(j("modes"))
    for mode in (0o000, 0o400, 0o644, 0o755, 0o777, 0o4755, 0o2755, 0o6711,
                 0o1755, 0o7777, 0o4000, 0o2000):
        p = j("modes", "f%04o" % mode)
        write_file(p, 10)
        os.chmod(p, mode)
    for mode in (0o700, 0o755, 0o1777, 0o2775, 0o3777, 0o000):
        p = j("modes", "d%04o" % mode)
        os.mkdir(p)
        write_file(os.path.join(p, b"inner"), 3)
        os.chmod(p, mode)

    # special files
    os.makedirs(j("special"))
    for nm, kind, maj, mnr in (("null", stat.S_IFCHR, 1, 3),
                               ("tty0", stat.S_IFCHR, 4, 0),
                               ("sda", stat.S_IFBLK, 8, 0),
                               ("big_major", stat.S_IFCHR, 300, 5),
                               ("big_minor", stat.S_IFBLK, 259, 70000),
                               ("max_both", stat.S_IFCHR, 4095, 0xFFFFF),
                               ("minor_256", stat.S_IFBLK, 7, 256),
                               ("zero_zero", stat.S_IFCHR, 0, 0)):
        os.mknod(j("special", nm), kind | 0o640, os.makedev(maj, mnr))
    os.mkfifo(j("special", "fifo"), 0o620)
    make_socket(j("special", "socket"))
    os.chmod(j("special", "socket"), 0o755)

    # symlinks
    make_symlinks(j("symlinks"))
    os.symlink(b"/absolute/target", j("symlinks", "abs"))
    os.symlink(b"../files/text", j("symlinks", "rel"))
    os.symlink(b"dangling-nowhere", j("symlinks", "dangling"))
    os.symlink(b"\xff\xfe non-utf8 target", j("symlinks", "nonutf8"))

    # hard links (across directories, to special files and symlinks)
    os.makedirs(j("links", "a"))
    os.makedirs(j("links", "b"))
    write_file(j("links", "a", "three"), 12345)
    os.link(j("links", "a", "three"), j("links", "b", "three_2"))
    os.link(j("links", "a", "three"), j("links", "three_3"))
    write_file(j("links", "a", "empty"), 0)
    os.link(j("links", "a", "empty"), j("links", "b", "empty_2"))
    os.symlink(b"shared-symlink-target", j("links", "a", "sym"))
    os.link(j("links", "a", "sym"), j("links", "b", "sym_2"), follow_symlinks=False)
    os.mkfifo(j("links", "a", "fifo"))
    os.link(j("links", "a", "fifo"), j("links", "b", "fifo_2"))
    os.mknod(j("links", "a", "dev"), stat.S_IFCHR | 0o600, os.makedev(10, 200))
    os.link(j("links", "a", "dev"), j("links", "b", "dev_2"))
    write_file(j("links", "a", "small"), 7)
    for i in range(5):
        os.link(j("links", "a", "small"), j("links", "b", "small_%d" % i))

    # ownership incl. big ids
    os.makedirs(j("owners"))
    ids = [(0, 0), (1, 2), (1000, 1000), (65534, 65534), (65535, 65535)]
    if big_ids:
        ids += [(65536, 65537), (100000, 5), (7, 2**31), (2**32 - 2, 2**32 - 2)]
    for uid, gid in ids:
        p = j("owners", "f_%d_%d" % (uid, gid))
        write_file(p, 20)
        os.chown(p, uid, gid)
    os.mkdir(j("owners", "dir_owned"))
    os.chown(j("owners", "dir_owned"), 1234, 4321)
    os.symlink(b"x", j("owners", "sym_owned"))
    os.chown(j("owners", "sym_owned"), 4242, 2424, follow_symlinks=False)
    if big_ids:
        os.symlink(b"y", j("owners", "sym_bigid"))
        os.chown(j("owners", "sym_bigid"), 2**32 - 2, 70000, follow_symlinks=False)

    # a few nested and empty directories
    os.makedirs(j("nested", "a", "b", "c", "d"))
    os.makedirs(j("nested", "empty"))
    for i in range(5):
        os.mkdir(j("nested", "a", "sub%d" % i))
    write_file(j("nested", "a", "b", "c", "d", "leaf"), 42)

    if xattrs:
        add_xattrs(root)

    set_tree_times(root)
    return Path(os.fsdecode(root))


def add_xattrs(root: PathLike) -> None:
    """user./trusted. xattrs of several sizes (for the xattr issue)."""
    root = fsb(root)
    j = lambda *p: os.path.join(root, *[fsb(x) for x in p])
    os.setxattr(j("files", "text"), "user.small", b"v")
    os.setxattr(j("files", "text"), "user.empty", b"")
    os.setxattr(j("files", "text"), "user.big", b"x" * 3000)
    os.setxattr(j("files", "empty"), "trusted.t", b"\0\1\2")
    os.setxattr(j("nested"), "user.dir", b"on a dir")
    os.setxattr(j("symlinks", "abs"), "trusted.sym", b"on a symlink",
                follow_symlinks=False)
    for i in range(20):
        os.setxattr(j("links", "a", "three"), f"user.shared{i}", b"same value")
        os.setxattr(j("sizes", "size_000001"), f"user.shared{i}", b"same value")


def make_big_dir(root: PathLike, n: int = 5000, *, name_len_cycle: int = 40) -> list[bytes]:
    """A directory with ``n`` entries (names of varying length so the
    dirents span many blocks; a few subdirs, symlinks and fifos among the
    files). Returns the names."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    names = []
    for i in range(n):
        pad = b"_" * (i % name_len_cycle)
        nm = b"e%05d%s" % (i, pad)
        p = os.path.join(root, nm)
        if i % 500 == 1:
            os.mkdir(p)
        elif i % 500 == 2:
            os.symlink(b"target%d" % i, p)
        elif i % 500 == 3:
            os.mkfifo(p)
        elif i % 100 == 4:
            write_file(p, i % 700)
        else:
            open(p, "wb").close()
        names.append(nm)
    set_tree_times(root)
    return names


def make_deep_tree(root: PathLike, depth: int = 300) -> bytes:
    """Nested directories ``depth`` levels deep, each with a file; a file
    and a symlink at the bottom. Returns the relative path of the deepest
    directory."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    rel = b""
    for i in range(depth):
        rel = os.path.join(rel, b"d%03d" % i) if rel else b"d%03d" % i
        os.mkdir(os.path.join(root, rel))
        write_file(os.path.join(root, rel, b"f"), i % 50)
    write_file(os.path.join(root, rel, b"bottom"), 4097)
    os.symlink(b"../" * 5 + b"f", os.path.join(root, rel, b"up"))
    set_tree_times(root)
    return rel


def names_tree_names() -> list[bytes]:
    """Awkward but valid file names."""
    names = [
        b"a" * 255,                                  # longest name
        b"b" * 254,
        "é".encode() * 127 + b"x",                   # 255 bytes, multi-byte UTF-8
        "日本語".encode() * 28 + b"abc",             # 255 bytes
        b"\xff\xfe\xfd",                             # not UTF-8
        b"caf\xe9",                                  # latin-1
        b"\x80",
        b"mixed\xc3\x28bad",
        b"!a", b"#", b"+", b"-a", b",", b"%", b"&", b"'quote", b'"dq',
        b" leading space", b"trailing space ", b"\ttab", b"new\nline",
        b"\x01ctrl", b"\x7f",
        b"...", b"..a", b".a", b".hidden", b"a.", b"a..b",
        b"a", b"aa", b"aaa", b"a.b", b"a-b", b"a_b", b"A", b"B", b"Z", b"z",
        b"0", b"00", b"9", b"~", b"{}", b"[x]", b"*", b"?", b"\\", b"|", b":", b";",
        b"=", b"@", b"^", b"`",
    ]
    return names


def make_names_tree(root: PathLike) -> list[bytes]:
    """A directory of awkward names (255 bytes, non-UTF-8, names sorting
    before '.', control characters), each as a file, plus a subdirectory
    with the same names as directories and a few as symlinks."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    names = names_tree_names()
    for i, nm in enumerate(names):
        write_file(os.path.join(root, nm), i * 37 % 300)
    sub = os.path.join(root, b"dirs")
    os.mkdir(sub)
    for nm in names:
        os.mkdir(os.path.join(sub, nm))
    syms = os.path.join(root, b"syms")
    os.mkdir(syms)
    for nm in names[:12]:
        os.symlink(nm, os.path.join(syms, nm))
    set_tree_times(root)
    return names


def make_big_sparse_file(path: PathLike, size: int = 4 * 2**30 + 4096 + 123) -> None:
    """A sparse file just over 4 GiB with data at the start, around the
    4 GiB boundary and at the end."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"begin" * 100)
        f.seek(2**32 - 10)
        f.write(b"across-4GiB-boundary")
        f.seek(size - 7)
        f.write(b"the end")


def copy_tree(src: PathLike, dst: PathLike, *, reverse: bool = True) -> None:
    """Copy a tree with all metadata (types, data, modes, owners, ns mtimes,
    rdev, hard links), creating the entries of every directory in reverse
    name order by default, so that readdir order (and inode numbers) differ
    from the original's while the content is identical."""
    src, dst = fsb(src), fsb(dst)
    links: dict[tuple, bytes] = {}
    dirs: list[tuple[bytes, os.stat_result]] = []

    def meta(path, st):
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

    def rec(s, d, st):
        os.mkdir(d)
        dirs.append((d, st))
        for name in sorted(os.listdir(s), reverse=reverse):
            sp, dp = os.path.join(s, name), os.path.join(d, name)
            cst = os.lstat(sp)
            mode = cst.st_mode
            if stat.S_ISDIR(mode):
                rec(sp, dp, cst)
                continue
            key = (cst.st_dev, cst.st_ino)
            if cst.st_nlink > 1 and key in links:
                os.link(links[key], dp, follow_symlinks=False)
                continue
            if stat.S_ISREG(mode):
                with open(sp, "rb") as fi, open(dp, "wb") as fo:
                    shutil.copyfileobj(fi, fo, 1 << 20)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), dp)
            elif stat.S_ISSOCK(mode):
                make_socket(dp)
            else:
                os.mknod(dp, mode, cst.st_rdev)
            meta(dp, cst)
            links[key] = dp

    rec(src, dst, os.lstat(src))
    for d, st in reversed(dirs):
        meta(d, st)


def posix_regex_search(pattern: Union[str, bytes], subject: Union[str, bytes]) -> Optional[bool]:
    """Ground truth for --exclude-regex: glibc's regcomp(REG_EXTENDED |
    REG_NOSUB) + regexec, in the "C" locale as mkfs.erofs runs (it never
    calls setlocale). Returns None when regcomp rejects the pattern."""
    import ctypes
    import locale
    libc = ctypes.CDLL(None)
    REG_EXTENDED, REG_NOSUB = 1, 8
    buf = ctypes.create_string_buffer(512)          # > sizeof(regex_t)
    old = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "C")
        if libc.regcomp(buf, fsb(pattern) if isinstance(pattern, str) else pattern,
                        REG_EXTENDED | REG_NOSUB) != 0:
            return None
        try:
            return libc.regexec(buf, fsb(subject), ctypes.c_size_t(0), None, 0) == 0
        finally:
            libc.regfree(buf)
    finally:
        locale.setlocale(locale.LC_ALL, old)
