"""Chunk-based regular files (EROFS_INODE_CHUNK_BASED): the chunk size and the map of a file.

The kernel's rules (fs/erofs/erofs_fs.h, inode.c erofs_read_inode, data.c erofs_map_blocks):

* A chunk-based inode cuts its file into chunks of 2^chunkbits bytes, chunkbits = the block size
  bits + (0 .. EROFS_CHUNK_FORMAT_BLKBITS_MASK); the last chunk may be short.  Its i_u holds the
  chunk format: that difference in the low bits, EROFS_CHUNK_FORMAT_INDEXES for 8-byte chunk
  indexes (which also name a device) instead of 4-byte block map entries, and
  EROFS_CHUNK_FORMAT_48BIT for 48-bit addresses in those indexes.
* Chunk n is described by entry n of the map, which begins right after the inode and its xattrs
  rounded up to one entry (format.chunk_map_start).  An entry holding EROFS_NULL_ADDR (masked to
  the entry's address width) is a hole: the chunk reads as zeros and takes no block; any other
  address is the first of the blocks holding the chunk, on the primary device for a block map.
* The kernel reads one entry at a time and every entry is aligned to its size, so an entry never
  crosses a block boundary, while the map as a whole may.
* An image with chunk-based inodes sets EROFS_FEATURE_INCOMPAT_CHUNKED_FILE, so a kernel without
  the format refuses to mount it instead of failing on those files.  (mkfs.erofs 1.9.3 sets the
  bit only for --chunksize; its --tar=headerball images have chunk-based inodes without it.)

What mkerofs stores this way today: regular files whose bytes are nowhere (--tar=headerball:
walk.DataRef with no path) and not empty.  As in mkfs.erofs, such a file gets one chunk covering
it (the smallest power of two at least a block that holds it; several only when the format's
largest chunk is smaller than the file), every entry a hole: no data blocks at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..ondisk import format as fmt
from .plan import PlannedInode


@dataclass(frozen=True, slots=True)
class ChunkLayout:
    """How a file of `size` bytes is cut into chunks and how its map is stored."""
    size: int
    blkszbits: int
    chunkbits: int
    indexes: bool = False           # 8-byte chunk indexes rather than a 4-byte block map
    wide: bool = False              # 48-bit block addresses in the chunk indexes

    def __post_init__(self) -> None:
        extra = self.chunkbits - self.blkszbits
        assert 0 <= extra <= fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK, "chunk size out of range"
        assert self.indexes or not self.wide, "48-bit addresses need chunk indexes"

    @property
    def chunkformat(self) -> int:
        """The inode's i_u (erofs_inode_chunk_info.format)."""
        extra = self.chunkbits - self.blkszbits
        return extra | (fmt.EROFS_CHUNK_FORMAT_INDEXES if self.indexes else 0) | \
            (fmt.EROFS_CHUNK_FORMAT_48BIT if self.wide else 0)

    @property
    def count(self) -> int:
        return -(-self.size >> self.chunkbits)

    def encode_map(self, inode_end: int, blkaddrs: Sequence[int | None],
                   device_id: int = 0) -> bytes:
        """What follows the inode and xattrs ending at byte `inode_end` (its position in the
        image, or any number with the same alignment): the padding up to the first entry, then
        an entry per chunk, a block address or None for a hole.  `device_id` (chunk indexes
        only) names where the blocks are: 0 the image, n the device table's slot n."""
        assert len(blkaddrs) == self.count
        assert self.indexes or device_id == 0, "a block map addresses the image only"
        pad = bytes(fmt.chunk_map_start(inode_end, self.chunkformat) - inode_end)
        if not self.indexes:
            null = fmt.EROFS_NULL_ADDR_32
            return pad + fmt.pack_block_map([null if a is None else a for a in blkaddrs])
        limit = 1 << (48 if self.wide else 32)
        null = limit - 1
        entry = fmt.EROFS_INODE_CHUNK_INDEX.pack
        out = [pad]
        for a in blkaddrs:
            if a is None:
                # (the kernel looks only at the address for a hole; device 0 as mkfs.erofs)
                out.append(entry(null >> 32, 0, null & 0xFFFFFFFF))
            else:
                assert a < null, "block address too wide for this chunk format"
                out.append(entry(a >> 32, device_id, a & 0xFFFFFFFF))
        return b"".join(out)


def needs_wide(blkaddrs: Iterable[int | None]) -> bool:
    """True if some address does not fit a 32-bit chunk index (EROFS_CHUNK_FORMAT_48BIT)."""
    return any(a is not None and a >= fmt.EROFS_NULL_ADDR_32 for a in blkaddrs)


def covering_chunkbits(size: int, blkszbits: int) -> int:
    """The chunk bits of one chunk covering `size` bytes: the smallest power of two holding
    them, at least a block, at most the largest chunk the format can name."""
    return min(max((size - 1).bit_length(), blkszbits),
               blkszbits + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK)


def make_hole_file(node: PlannedInode, blkszbits: int) -> None:
    """Make `node` (a regular file that reads as zeros) chunk-based with only holes."""
    layout = ChunkLayout(node.size, blkszbits, covering_chunkbits(node.size, blkszbits))
    node.datalayout = fmt.EROFS_INODE_CHUNK_BASED
    node.i_u = layout.chunkformat
    # inodes start on a 32-byte slot: the map's alignment is known before the inode is placed
    node.inline = layout.encode_map(node.meta_size_before_inline, [None] * layout.count)
    node.inline_len = len(node.inline)


def make_hole_files(inodes: Iterable[PlannedInode], blkszbits: int) -> bool:
    """Make every non-empty regular file whose bytes are nowhere (tar headerball entries) a
    chunk-based file of holes, so it takes no data blocks; True if there was one."""
    found = False
    for node in inodes:
        ref = node.src.data
        if ref is not None and ref.path is None and not ref.in_image and node.size and \
                node.ftype == fmt.EROFS_FT_REG_FILE:
            make_hole_file(node, blkszbits)
            found = True
    return found
