"""Shared pieces of the reader tests: a small source tree, base images built from it by mkerofs,
a map of where things are in an image, and `exercise()`, which touches every part of the
reader API the way a command-line tool would and lets only ImageError through.

The hostile images themselves are in cases.py: each is a base image plus a named mutation and
the problem the reader must name.  Mutated images that once made the reader fail go there as
new cases (or as raw files `*.erofs` in this folder, which test_reader_fuzz.py replays).
"""
from __future__ import annotations

import os
import random
import struct
from pathlib import Path

from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image, ImageError, Inode

CORPUS_DIR = Path(__file__).resolve().parent

# base images for hostile cases and fuzzing: name -> mkerofs options
BASE_OPTIONS = {
    "plain": ["-x1"],
    "lz4": ["-zlz4"],
    "lz4hc-ztail": ["-zlz4hc", "-C16384", "-Eztailpacking"],
    "legacy": ["-zlz4hc", "-C16384", "-Elegacy-compress"],
    "lzma": ["-zlzma"],
    "deflate": ["-zdeflate"],
    "zstd": ["-zzstd"],
    "b512": ["-b512", "-zlz4hc", "-C2048"],
    "prefixes": ["--xattr-prefix=user.sh", "-x1"],
    "fragments": ["-zlz4hc", "-Efragments"],
    "dedupe": ["-zlz4hc", "-Ededupe", "-Elegacy-compress"],
}
# options mkerofs may not know yet (the base is then left out, with its cases)
OPTIONAL_BASES = {"fragments", "dedupe"}
FIXED = ["-T0", "-Uclear", "--quiet"]

_WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"\n"]


def text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += rng.choice(_WORDS) + b" "
    return bytes(out[:size])


def make_small_tree(root: Path) -> Path:
    """A few KiB of everything: compressible and random files, a multi-extent file, nested
    directories, a symlink, a hard link, a fifo and xattrs (inline, shared, on directories)."""
    rng = random.Random(20240601)
    root.mkdir(parents=True, exist_ok=True)
    (root / "d" / "e").mkdir(parents=True)
    (root / "a").write_bytes(text(rng, 10000))
    (root / "b").write_bytes(rng.randbytes(5000))
    (root / "d" / "c").write_bytes(text(rng, 300))
    (root / "d" / "e" / "f").write_bytes(text(rng, 70000))
    (root / "d" / "e" / "g").write_bytes(rng.randbytes(9000) + text(rng, 9000))
    os.symlink("a", root / "d" / "lnk")
    os.link(root / "a", root / "d" / "hard")
    os.mkfifo(root / "d" / "fifo")
    os.setxattr(root / "a", "user.shared", b"1" * 30)
    os.setxattr(root / "b", "user.shared", b"1" * 30)
    os.setxattr(root / "d" / "c", "user.shared", b"1" * 30)
    os.setxattr(root / "d", "user.dir", b"v")
    try:
        os.setxattr(root / "d" / "e", "trusted.big", b"z" * 200)
    except PermissionError:             # trusted.* needs CAP_SYS_ADMIN
        os.setxattr(root / "d" / "e", "user.big", b"z" * 200)
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9), follow_symlinks=False)
    os.utime(root, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    return root


class Layout:
    """Where things are in a pristine image, found with the reader itself."""

    def __init__(self, data: bytes):
        self.data = data
        with Image(data) as img:
            self.block_size = img.block_size
            self.root_nid = img.root_nid
            self.meta = img.superblock.meta_blkaddr * img.block_size
            self.inodes: dict[bytes, Inode] = dict(img.walk())
            self.extents = {p: img.extents(i) for p, i in self.inodes.items()}
            self.dirents = {p: img._dirents(i) for p, i in self.inodes.items() if i.is_dir()}
            self.packed = img.packed_inode
            self.lclusters = {}
            for p, i in self.inodes.items():
                if i.compressed and i.size:
                    _ext, header, lc = img._compressed(i)
                    self.lclusters[p] = (header, lc)

    def inode(self, path: bytes) -> Inode:
        return self.inodes[path]

    def dir_block(self, path: bytes) -> int:
        """Byte offset of the first directory block of `path`."""
        return self.extents[path][0].physical

    def map_header(self, path: bytes) -> int:
        return fmt.round_up(self.inode(path).data_pos, 8)

    def full_index(self, path: bytes, lcn: int) -> int:
        return fmt.z_erofs_full_index_start(self.inode(path).data_pos) + 8 * lcn


def put(data: bytearray, pos: int, fmt_: str, *values) -> None:
    struct.pack_into(fmt_, data, pos, *values)


def fix_checksum(data: bytearray) -> None:
    """Recompute the superblock checksum so that checks behind it are reached."""
    if len(data) < fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE:
        return
    sb = fmt.SuperBlock.unpack(bytes(data[fmt.EROFS_SUPER_OFFSET:fmt.EROFS_SUPER_OFFSET + 128]))
    if not sb.feature_compat & fmt.EROFS_FEATURE_COMPAT_SB_CHKSUM or not 9 <= sb.blkszbits <= 16:
        return
    span = fmt.sb_checksum_span(1 << sb.blkszbits)
    if fmt.EROFS_SUPER_OFFSET + span > len(data):
        return
    raw = bytearray(data[fmt.EROFS_SUPER_OFFSET:fmt.EROFS_SUPER_OFFSET + span])
    raw[4:8] = bytes(4)
    put(data, fmt.EROFS_SUPER_OFFSET + 4, "<I", fmt.erofs_crc32c(bytes(raw)))


def exercise(data: bytes, *, read_limit: int = 4 << 20, walk_limit: int = 5000) -> list[str]:
    """Open, list, read, stat and verify everything the way the command-line tools do; return
    every ImageError message and verify() problem.  Anything else propagates (a test failure)."""
    messages: list[str] = []
    try:
        img = Image(data)
    except ImageError as e:
        return [str(e)]
    with img:
        img.features()
        img.algorithms()
        _ = img.checksum_ok
        seen = 0
        try:
            for _path, inode in img.walk():
                seen += 1
                if seen > walk_limit:
                    break
                messages.extend(_touch(img, inode, read_limit))
        except ImageError as e:
            messages.append(str(e))
        for path in ("/d/e/f", "d/lnk"):
            try:
                img.lookup(path)
            except ImageError as e:
                messages.append(str(e))
        for path in ("/nonexistent", "/a/x"):     # must fail, and only with ImageError
            try:
                img.lookup(path)
            except ImageError:
                pass
        messages.extend(img.verify())
    return messages


def _touch(img: Image, inode: Inode, read_limit: int) -> list[str]:
    out = []
    for call in (img.xattrs, img.extents):
        try:
            call(inode)
        except ImageError as e:
            out.append(str(e))
    try:
        if inode.is_reg():
            got = 0
            for piece in img.iter_data(inode, 1 << 16):
                got += len(piece)
                if got > read_limit:
                    break
            img.read(inode, max(inode.size // 2, 0), 5000)
        elif inode.is_lnk():
            img.readlink(inode)
        elif inode.is_dir():
            img.listdir(inode)
    except ImageError as e:
        out.append(str(e))
    return out
