"""Where each file's data begins in an image, for the tests of --dsunit: flat inodes read with
the independent parser (oracle.py, which reads the block address straight from i_u), compressed
ones through mkerofs.reader's extent map (the oracle does not decode indexes)."""
from __future__ import annotations

import stat

from mkerofs.reader import Image

from .oracle import ErofsImage
from .paths import PathLike

# extents stored in data blocks (not inline after the inode, in the packed inode, nor a hole)
_IN_BLOCKS = {"plain", "interlaced", "compressed"}
_NULL_ADDR_32 = 0xFFFFFFFF


def first_data_blocks(image: PathLike) -> dict[bytes, tuple[int, int]]:
    """{path: (file type bits of st_mode, first data block)} of every inode that keeps data in
    blocks; the first block is the lowest one its data occupies."""
    found = {}
    with Image.open(image) as img:
        bs = img.block_size
        for path, inode in img.walk():
            starts = [e.physical // bs for e in img.extents(inode) if e.kind in _IN_BLOCKS]
            if starts:
                found[path] = (stat.S_IFMT(inode.mode), min(starts))
    return found


def flat_start_blocks(image: PathLike) -> dict[bytes, tuple[int, int]]:
    """{path: (file type bits, i_u)} of every flat inode with blocks, by the oracle alone
    (uncompressed images only)."""
    found = {}
    with ErofsImage(image) as img:
        for path, ino in img.walk().items():
            if ino.layout in (img.FLAT_PLAIN, img.FLAT_INLINE) and \
                    ino.raw_blkaddr != _NULL_ADDR_32 and not (
                    stat.S_ISCHR(ino.mode) or stat.S_ISBLK(ino.mode)):
                found[path] = (stat.S_IFMT(ino.mode), ino.raw_blkaddr)
    return found
