"""The tests' oracle: an EROFS parser written from the kernel's on-disk format and independent
of mkerofs (it imports nothing of it, so a misreading in mkerofs cannot hide the same mistake
here), plus glibc's regex as the ground truth for --exclude-regex.

The parser reads the superblock (and recomputes its CRC32C as the kernel does), and walks the
inodes of uncompressed images: enough to see each inode's on-disk form (compact/extended) and
data layout (plain/inline) and the directory tree.
"""
from __future__ import annotations

import ctypes
import locale
import stat
import struct
import uuid as uuidlib
from dataclasses import dataclass
from typing import Optional, Union

from .paths import PathLike, fsb, show

EROFS_MAGIC = 0xE0F5E1E2
SB_OFFSET = 1024


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


def posix_regex_search(pattern: Union[str, bytes], subject: Union[str, bytes]) -> Optional[bool]:
    """Ground truth for --exclude-regex: glibc's regcomp(REG_EXTENDED |
    REG_NOSUB) + regexec, in the "C" locale as mkfs.erofs runs (it never
    calls setlocale). Returns None when regcomp rejects the pattern."""
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
