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

What mkerofs stores this way today, each file as in mkfs.erofs with one chunk covering it (the
smallest power of two at least a block that holds it; several only when the format's largest
chunk is smaller than the file):

* regular files whose bytes are nowhere (--tar=headerball: walk.DataRef with no path) and not
  empty: every entry a hole, no data blocks at all;
* --tar=i: regular files whose bytes stay in the tar (DataRef.indexed).  Without a MAPFILE the
  block size is the tar's 512 bytes and the tar is extra device 1: 8-byte chunk indexes name
  device 1 and the block of the file's data in the tar (48-bit ones when the tar is larger
  than 2 TiB).  With --tar=i,MAPFILE there is no device: a 4-byte block map points into a
  "blob" reserved in the image as a hole, each file's data rounded up to blocks, in tar order
  (`TarIndex.blob`), and the MAPFILE says which ranges of the tar belong where (`map_line`).

mkfs.erofs 1.9.3 sets EROFS_FEATURE_INCOMPAT_CHUNKED_FILE only for --chunksize; its --tar=i
images (like its headerballs) have chunk-based inodes without it.  mkerofs sets it for
headerballs and, as mkfs.erofs, not for --tar=i: a kernel that reads device tables (5.16) reads
chunks too (5.15).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..ondisk import format as fmt
from .plan import PlannedInode
from .walk import SourceInode


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


def _set_map(node: PlannedInode, layout: ChunkLayout, blkaddrs: Sequence[int | None],
             device_id: int = 0) -> None:
    node.datalayout = fmt.EROFS_INODE_CHUNK_BASED
    node.i_u = layout.chunkformat
    # inodes start on a 32-byte slot: the map's alignment is known before the inode is placed
    node.inline = layout.encode_map(node.meta_size_before_inline, blkaddrs, device_id)
    node.inline_len = len(node.inline)


def make_hole_file(node: PlannedInode, blkszbits: int) -> None:
    """Make `node` (a regular file that reads as zeros) chunk-based with only holes."""
    layout = ChunkLayout(node.size, blkszbits, covering_chunkbits(node.size, blkszbits))
    _set_map(node, layout, [None] * layout.count)


def make_indexed_file(node: PlannedInode, blkszbits: int, start: int, device_id: int) -> None:
    """Make `node` chunk-based over consecutive blocks from `start`: of extra device
    `device_id` (8-byte chunk indexes), or of the image (device 0: a block map)."""
    chunkbits = covering_chunkbits(node.size, blkszbits)
    layout = ChunkLayout(node.size, blkszbits, chunkbits)
    step = 1 << (chunkbits - blkszbits)
    blkaddrs = [start + i * step for i in range(layout.count)]
    if device_id:
        layout = ChunkLayout(node.size, blkszbits, chunkbits, indexes=True,
                             wide=needs_wide(blkaddrs))
    _set_map(node, layout, blkaddrs, device_id)


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


@dataclass
class TarIndex:
    """--tar=i: what the tar told about where the files' bytes are."""
    files: list[SourceInode]        # regular files in tar order, replaced ones too
    tar_bytes: int                  # the archive up to the end of its end-of-archive marker

    def blob(self, block_size: int) -> tuple[dict[SourceInode, int], int]:
        """--tar=i,MAPFILE: each indexed file's first block in the blob and the blob's length
        in blocks.  As mkfs.erofs: in tar order, each file rounded up to whole blocks, room kept
        for a file a later entry replaced."""
        starts, blocks = {}, 0
        for src in self.files:
            if src.data is not None and src.data.indexed:
                starts[src] = blocks
                blocks += -(-src.st.st_size // block_size)
        return starts, blocks


def index_tar_files(inodes: Iterable[PlannedInode], blkszbits: int,
                    blob: dict[SourceInode, int] | None, blob_start: int = 0
                    ) -> list[tuple[PlannedInode, int]]:
    """Make every non-empty regular file whose bytes stay in the tar chunk-based: over device 1
    at the tar's own blocks (`blob` None: the block size is the tar's 512 bytes), or over the
    image's blocks `blob_start` + `blob[file]`.  Returns those files with their first block,
    in `inodes` order."""
    done = []
    for node in inodes:
        ref = node.src.data
        if ref is None or not ref.indexed or not node.size or \
                node.ftype != fmt.EROFS_FT_REG_FILE:
            continue
        if blob is None:
            assert not ref.offset & ((1 << blkszbits) - 1), "tar data is block-aligned"
            start, device_id = ref.offset >> blkszbits, 1
        else:
            start, device_id = blob_start + blob[node.src], 0
        make_indexed_file(node, blkszbits, start, device_id)
        done.append((node, start))
    return done


def map_line(start: int, size: int, tar_offset: int, block_size: int) -> str:
    """The MAPFILE line of a file of `size` bytes at block `start` of the blob
    (--tar=i,MAPFILE), as mkfs.erofs 1.9.3 writes it: the block and the block count in hex,
    where the file's data starts in the (decompressed) tar in hex, and, if its last block is
    not full, the zero bytes that pad it, in decimal."""
    line = f"{start:08x} {-(-size // block_size):8x} {tar_offset:08x}"
    zeroed = -size % block_size
    return f"{line} {zeroed:08d}\n" if zeroed else line + "\n"
