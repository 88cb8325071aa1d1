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

* A block address of 2^32 or more needs EROFS_CHUNK_FORMAT_48BIT in 8-byte indexes, and the
  image EROFS_FEATURE_INCOMPAT_48BIT: kernels from 6.15 read such indexes whatever the
  superblock says; older ones refuse to mount an image with the bit, and without it mount the
  image and then fail on the file.  mkerofs stores them only with
  -E48bit (check_wide); mkfs.erofs 1.9.3 writes them into --blobdev images without the bit.

What mkerofs stores this way:

* Regular files whose bytes are nowhere (--tar=headerball: walk.DataRef with no path) and not
  empty.  As in mkfs.erofs, such a file gets one chunk covering it (the smallest power of two at
  least a block that holds it; several only when the format's largest chunk is smaller than the
  file), every entry a hole: no data blocks at all (make_hole_files).
* With --chunksize (or -Ededupe without -z: chunks of one block), every regular file with data
  that is stored uncompressed (chunk_file, ChunkStore).  As mkfs.erofs 1.9.3 does: each chunk is
  stored once, later copies pointing at the first (mkfs.erofs finds them by SHA-256; mkerofs
  by a 64-bit hash, then compares the bytes with those stored: the same chunks, 48 bytes of
  memory less a chunk); a chunk wholly inside a hole of the source (SEEK_DATA) and a full
  chunk of zeros are holes; a file without data is one chunk of holes.  (-E^dedupe stores every chunk, zeros too, holes of the source excepted.)
  Then runs of chunks that follow each other on the device (or are all holes) are merged: the
  inode's chunk size becomes the largest power of two that divides the length of every run
  (merged_chunks), so it can exceed --chunksize.  A chunk's last block is padded with zeros;
  there is no inline tail.  The blocks are in the image's data area, or on an extra device
  (--blobdev, devices.BlobFile: 8-byte indexes naming device 1).
* --tar=i: regular files whose bytes stay in the tar (DataRef.indexed), each with one chunk
  covering it (as a headerball file).  Without a MAPFILE the
  block size is the tar's 512 bytes and the tar is extra device 1: 8-byte chunk indexes name
  device 1 and the block of the file's data in the tar (48-bit ones for data past 2 TiB,
  which only -E48bit allows: check_wide, build._tar_as_device).  With --tar=i,MAPFILE there is no device: a 4-byte block map points into a
  "blob" reserved in the image as a hole, each file's data rounded up to blocks, in tar order
  (`TarIndex.blob`), and the MAPFILE says which ranges of the tar belong where (`map_lines`).
* Rebuild mode without --clean (writer/layers.py): regular files whose bytes stay in a source
  EROFS image (DataRef.layer, a LayerChunks): 8-byte chunk indexes naming that image's device
  slot (its place on the command line) and blocks of that image; one chunk covering a
  FLAT_PLAIN file (as mkfs.erofs), the source's own chunks for a chunk-based one.

mkfs.erofs 1.9.3 sets EROFS_FEATURE_INCOMPAT_CHUNKED_FILE only for --chunksize; its --tar=i
images (like its headerballs) have chunk-based inodes without it.  mkerofs sets it for
headerballs and, as mkfs.erofs, not for --tar=i: a kernel that reads device tables (5.16) reads
chunks too (5.15).
"""
from __future__ import annotations

import errno
import functools
import os
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence

import xxhash

from ..errors import BuildError
from ..ondisk import format as fmt
from ..util import open_path
from .walk import IndexedRef, LayerRef, OffsetRef, TreeInode


@dataclass(frozen=True, slots=True)
class ChunkLayout:
    """How a file of `size` bytes is cut into chunks and how its map is stored.  (A layout
    shared by files of the same chunk count, cached_layout, has size count << chunkbits.)"""
    size: int
    blkszbits: int
    chunkbits: int
    indexes: bool = False           # 8-byte chunk indexes rather than a 4-byte block map
    wide: bool = False              # 48-bit block addresses in the chunk indexes
    # (derived, once: a layout may encode many files' maps)
    chunkformat: int = field(init=False)    # the inode's i_u (erofs_inode_chunk_info.format)
    count: int = field(init=False)          # chunks, so map entries
    step: int = field(init=False)           # blocks a chunk
    null: int = field(init=False)           # a hole's address, also the first one too wide
    # the zeros before the map of an inode (and xattrs) ending at byte e: pads[e % len(pads)]
    pads: tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        extra = self.chunkbits - self.blkszbits
        assert 0 <= extra <= fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK, "chunk size out of range"
        assert self.indexes or not self.wide, "48-bit addresses need chunk indexes"
        chunkformat = extra | (fmt.EROFS_CHUNK_FORMAT_INDEXES if self.indexes else 0) | (
            fmt.EROFS_CHUNK_FORMAT_48BIT if self.wide else 0)
        object.__setattr__(self, "chunkformat", chunkformat)
        object.__setattr__(self, "count", -(-self.size >> self.chunkbits))
        object.__setattr__(self, "step", 1 << extra)
        object.__setattr__(self, "null",
                           fmt.EROFS_NULL_ADDR & ((1 << (48 if self.wide else 32)) - 1))
        object.__setattr__(self, "pads", tuple(
            bytes(fmt.chunk_map_start(end, chunkformat) - end)
            for end in range(fmt.chunk_map_unit(chunkformat))))

    def encode_map(self, inode_end: int, blkaddrs: Sequence[int | None],
                   device_id: int = 0) -> bytes:
        """What follows the inode and xattrs ending at byte `inode_end` (its position in the
        image, or any number with the same alignment): the padding up to the first entry, then
        an entry per chunk, a block address or None for a hole.  `device_id` (chunk indexes
        only) names where the blocks are: 0 the image, n the device table's slot n."""
        assert len(blkaddrs) == self.count
        assert self.indexes or device_id == 0, "a block map addresses the image only"
        pad = self.pads[inode_end % len(self.pads)]
        if not self.indexes:
            if None in blkaddrs:
                null = self.null
                blkaddrs = [null if a is None else a for a in blkaddrs]
            return pad + fmt.pack_block_map(blkaddrs)
        null = self.null
        assert all(a is None or a < null for a in blkaddrs), \
            "block address too wide for this chunk format"
        entry = fmt.EROFS_INODE_CHUNK_INDEX.pack
        # (the kernel looks only at the address for a hole; device 0 as mkfs.erofs)
        hole = entry(null >> 32, 0, null & 0xFFFFFFFF)
        return pad + b"".join([hole if a is None else entry(a >> 32, device_id, a & 0xFFFFFFFF)
                               for a in blkaddrs])

    def encode_run(self, inode_end: int, start: int, device_id: int = 0) -> bytes:
        """encode_map of chunks that follow one another from block `start` (a file that is
        one run of blocks: its map is an arithmetic progression), with no loop per chunk."""
        pad = self.pads[inode_end % len(self.pads)]
        if not self.indexes:
            assert not device_id, "a block map addresses the image only"
            return pad + fmt.pack_block_map_run(start, self.step, self.count)
        assert start + (self.count - 1) * self.step < self.null, \
            "block address too wide for this chunk format"
        return pad + fmt.pack_chunk_index_run(start, self.step, self.count, device_id)


@functools.lru_cache(maxsize=1024)
def cached_layout(count: int, blkszbits: int, chunkbits: int, indexes: bool = False,
                  wide: bool = False) -> ChunkLayout:
    """The layout of every file of `count` chunks of 2^chunkbits bytes (the size itself
    matters to no map: one layout serves them all, not one a file)."""
    return ChunkLayout(count << chunkbits, blkszbits, chunkbits, indexes, wide)


def needs_wide(blkaddrs: Iterable[int | None]) -> bool:
    """True if some address does not fit a 32-bit chunk index (EROFS_CHUNK_FORMAT_48BIT)."""
    top = fmt.EROFS_NULL_ADDR_32
    for a in blkaddrs:              # (a loop: most maps have one entry, a generator costs more)
        if a is not None and a >= top:
            return True
    return False


def covering_chunkbits(size: int, blkszbits: int) -> int:
    """The chunk bits of one chunk covering `size` bytes: the smallest power of two holding
    them, at least a block, at most the largest chunk the format can name."""
    return min(max((size - 1).bit_length(), blkszbits),
               blkszbits + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK)


def make_hole_file(node: TreeInode, blkszbits: int) -> None:
    """Make `node` (a regular file that reads as zeros) chunk-based with only holes."""
    layout = ChunkLayout(node.size, blkszbits, covering_chunkbits(node.size, blkszbits))
    set_chunk_map(node, layout, [None] * layout.count)


def make_hole_files(inodes: Iterable[TreeInode], blkszbits: int) -> bool:
    """Make every non-empty regular file whose bytes are nowhere (tar headerball entries) a
    chunk-based file of holes, so it takes no data blocks; True if there was one."""
    found = False
    for node in inodes:
        ref = node.data
        if ref is not None and ref.path is None and not ref.in_image and ref.layer is None \
                and node.size and node.ftype == fmt.EROFS_FT_REG_FILE:
            make_hole_file(node, blkszbits)
            found = True
    return found


# -- --tar=i: files whose bytes stay in the tar ---------------------------------------------

def make_indexed_file(node: TreeInode, blkszbits: int, start: int, device_id: int) -> None:
    """Make `node` chunk-based over consecutive blocks from `start`: of extra device
    `device_id` (8-byte chunk indexes), or of the image (device 0: a block map)."""
    size = node.size
    chunkbits = covering_chunkbits(size, blkszbits)
    count = -(-size >> chunkbits)
    # the addresses rise: the last one says whether they all fit 32 bits (needs_wide)
    last = start + ((count - 1) << (chunkbits - blkszbits))
    layout = cached_layout(count, blkszbits, chunkbits, device_id != 0,
                           device_id != 0 and last >= fmt.EROFS_NULL_ADDR_32)
    set_chunk_run(node, layout, start, device_id)


@functools.lru_cache(maxsize=16)
def one_chunk_layouts(blkszbits: int, indexes: bool) -> dict[int, ChunkLayout]:
    """The layout of a file of one chunk covering it (no 48-bit addresses), by the bit length
    of its size - 1, for every size one chunk can cover: a dict look-up a file."""
    most = blkszbits + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK
    return {bits: cached_layout(1, blkszbits, max(bits, blkszbits), indexes)
            for bits in range(most + 1)}


@dataclass
class TarIndex:
    """--tar=i: what the tar told about where the files' bytes are."""
    files: list[TreeInode]          # regular files in tar order, replaced ones too (only
                                    # with a MAPFILE, whose blob they make; else empty)
    tar_bytes: int                  # the archive up to the end of its end-of-archive marker

    def blob(self, block_size: int) -> tuple[dict[TreeInode, int], int]:
        """--tar=i,MAPFILE: each indexed file's first block in the blob and the blob's length
        in blocks.  As mkfs.erofs: in tar order, each file rounded up to whole blocks, room kept
        for a file a later entry replaced."""
        starts, blocks = {}, 0
        for src in self.files:
            if src.data is not None and src.data.indexed:
                starts[src] = blocks
                blocks += -(-src.size // block_size)
        return starts, blocks


# what index_tar_files(let_go=True) leaves an indexed file for its data: where its bytes are
# is in its chunk index now
_INDEXED = IndexedRef(b"", 0)


def index_tar_files(inodes: Iterable[TreeInode], blkszbits: int,
                    blob: dict[TreeInode, int] | None, blob_start: int = 0,
                    let_go: bool = False) -> list[tuple[TreeInode, int]]:
    """Make every non-empty regular file whose bytes stay in the tar chunk-based: over device 1
    at the tar's own blocks (`blob` None: the block size is the tar's 512 bytes), or over the
    image's blocks `blob_start` + `blob[file]`.  Returns those files with their first block,
    in `inodes` order, for the blob's MAPFILE; without a blob, nothing (a tuple and an int a
    file, ~5 MiB at the build's peak for 50,000 files, that nothing reads).  `let_go` (when
    nothing reads the files' bytes later: no --verify, no MAPFILE): each file's IndexedRef is
    replaced by one shared _INDEXED once its map is made (80 bytes a file with its offset)."""
    done = [] if blob is not None else None
    device_id = 1 if blob is None else 0
    one_chunk = one_chunk_layouts(blkszbits, device_id != 0)
    blkmask = (1 << blkszbits) - 1
    reg = fmt.EROFS_FT_REG_FILE
    for node in inodes:
        ref = node.data
        size = node.size
        if ref is None or not ref.indexed or not size or node.ftype != reg:
            continue
        if blob is None:
            assert not ref.offset & blkmask, "tar data is block-aligned"
            start = ref.offset >> blkszbits
        else:
            start = blob_start + blob[node]
        layout = one_chunk.get((size - 1).bit_length())
        if layout is None or start >= fmt.EROFS_NULL_ADDR_32:
            make_indexed_file(node, blkszbits, start, device_id)     # several chunks, or wide
        elif device_id:
            _set_one_chunk(node, layout, start, device_id)      # (nearly every file)
        else:
            set_chunk_run(node, layout, start, device_id)
        if done is not None:
            done.append((node, start))
        if let_go:
            node.data = _INDEXED
    return done if done is not None else []


class PendingIndexes(NamedTuple):
    """--tar=i without a MAPFILE: the files of one chunk (nearly every file) whose chunk index
    is packed only as their inode is written (meta.put_inodes, by whichever of the two
    processes writes it: no bytes object a file, and that work off the one core that places
    the inodes), made chunk-based by defer_tar_indexes.  Each has for `inline` one of two
    strings of zeros, as long as its index with its padding (`marks`: none, 4 bytes), shared:
    placing the inode knows its size, put_inodes knows by the string's identity that the
    index is its to pack (the metadata image is zeros: the padding is there).  The file keeps
    its OffsetRef, the index is of block ref >> `blkszbits` of device `device_id`."""
    marks: tuple[bytes, bytes]
    blkszbits: int
    device_id: int


def defer_tar_indexes(inodes: Sequence[TreeInode], blkszbits: int, tar_bytes: int,
                      let_go: bool = False) -> PendingIndexes | None:
    """index_tar_files without a blob, in which every file of one chunk whose ref is an
    OffsetRef (every one a tar's reader makes) is only made chunk-based: its index is left
    to put_inodes (PendingIndexes; None: none is).  A file of several chunks, a tar
    reaching block 2^32 (48-bit indexes) and other refs go index_tar_files's way."""
    if max(tar_bytes - 1, 0) >> blkszbits >= fmt.EROFS_NULL_ADDR_32:    # (a file's last start)
        index_tar_files(inodes, blkszbits, None, let_go=let_go)
        return None
    index_size = fmt.EROFS_INODE_CHUNK_INDEX.size
    pending = PendingIndexes((bytes(index_size), bytes(index_size + 4)), blkszbits, 1)
    unpadded, padded = pending.marks
    # (the inode and its xattr ibody are 4-aligned: the index follows it, or 4 bytes of zeros)
    one_chunk = one_chunk_layouts(blkszbits, True)
    formats = [one_chunk[bits].chunkformat for bits in range(len(one_chunk))]
    chunk_based, reg = fmt.EROFS_INODE_CHUNK_BASED, fmt.EROFS_FT_REG_FILE
    others = []
    offset_ref = None               # (the class of the refs met, one for the tar: the test)
    for node in inodes:
        ref = node.data
        if ref is None:
            continue
        if type(ref) is not offset_ref:
            if not ref.indexed:
                continue
            if not isinstance(ref, OffsetRef):
                others.append(node)
                continue
            offset_ref = type(ref)
        size = node.size
        if not size or node.ftype != reg:
            continue
        bits = (size - 1).bit_length()
        if bits >= len(formats):
            others.append(node)     # (several chunks: over 2^31 blocks)
            continue
        node.datalayout = chunk_based
        node.i_u = formats[bits]
        node.entries = padded if node.meta_size_before_inline & 4 else unpadded  # (`inline`)
    if others:
        index_tar_files(others, blkszbits, None, let_go=let_go)
    return pending


def map_lines(placed: Iterable[tuple[TreeInode, int]], block_size: int) -> list[str]:
    """The MAPFILE's lines (--tar=i,MAPFILE) of the files index_tar_files placed, as mkfs.erofs
    1.9.3 writes them: a file's block in the blob and its block count in hex, where its data
    starts in the (decompressed) tar in hex, and, if its last block is not full, the zero
    bytes that pad it, in decimal.  (%-formatting: twice as fast as f-strings here.)"""
    lines = []
    for node, start in placed:
        size = node.size
        zeroed = -size % block_size
        if zeroed:
            lines.append("%08x %8x %08x %08d\n" % (start, -(-size // block_size),
                                                   node.data.offset, zeroed))
        else:
            lines.append("%08x %8x %08x\n" % (start, size // block_size, node.data.offset))
    return lines


# -- rebuild mode: files whose bytes stay in a source EROFS image (writer/layers.py) -----------

class LayerChunks(NamedTuple):
    """The chunk map of a file whose bytes stay in a source image: `blkaddrs` in that image's
    blocks (None: a hole), on extra device `device_id`; a range when several chunks follow one
    another (a flat file: its map is encoded at once).  blkaddrs None: one chunk that is not a
    hole (nearly every file), at the byte address the file's DataRef.offset holds, the
    LayerChunks shared by every such file (one_chunk_on): nothing is made a file beyond its
    DataRef."""
    device_id: int
    chunkbits: int
    blkaddrs: tuple[int | None, ...] | range | None


@functools.lru_cache(maxsize=None)
def one_chunk_on(device_id: int, chunkbits: int) -> LayerChunks:
    """The LayerChunks of every file of one chunk of 2^chunkbits bytes on `device_id` (its
    address: the DataRef's offset)."""
    return LayerChunks(device_id, chunkbits, None)


# what a file of one chunk in a source image has for its data once its chunk index is made:
# where its bytes are is in that index now (its own LayerRef, 48 bytes and a 32-byte offset
# a file, let go); path None and a layer: neither copied nor a file of zeros
_POINTED = LayerRef(0, ())


def index_layer_files(inodes: Iterable[TreeInode], blkszbits: int,
                      wide_ok: bool = False) -> bool:
    """Make every regular file whose bytes stay in a source image (DataRef.layer) chunk-based
    over that image's device; True if there was one.  (`wide_ok`: as ChunkStore.)  A file of
    one chunk (nearly every one) is left with _POINTED for its data."""
    found = False
    one_chunk = one_chunk_layouts(blkszbits, True)
    null = fmt.EROFS_NULL_ADDR_32
    reg = fmt.EROFS_FT_REG_FILE
    for node in inodes:
        ref = node.data
        if ref is None or ref.layer is None or node.ftype != reg:
            continue
        found = True
        if ref is _POINTED:                     # (indexed already)
            continue
        device_id, chunkbits, blkaddrs = ref.layer
        if blkaddrs is None:                    # one chunk at ref.offset (nearly every file)
            start = ref.offset >> blkszbits
            if start < null:
                _set_one_chunk(node, one_chunk[chunkbits], start, device_id)
                node.data = _POINTED
                continue
            blkaddrs = (start,)                 # (past 32 bits: a map of one wide entry)
        elif type(blkaddrs) is range and blkaddrs:
            last = blkaddrs[-1]
            if last >= null:
                check_wide(node.display_path(), True, wide_ok)
            set_chunk_run(node, cached_layout(len(blkaddrs), blkszbits, chunkbits, True,
                                              last >= null), blkaddrs[0], device_id)
            continue
        wide = needs_wide(blkaddrs)
        if wide:
            check_wide(node.display_path(), True, wide_ok)
        set_chunk_map(node, cached_layout(len(blkaddrs), blkszbits, chunkbits, True, wide),
                      blkaddrs, device_id)
    return found


def _set_one_chunk(node: TreeInode, layout: ChunkLayout, start: int, device_id: int) -> None:
    """set_chunk_run of a file of one chunk (`layout` has chunk indexes) from block `start`,
    below 2^32: its one index packed here (a file of a layer or of --tar=i's tar: two calls
    fewer a file)."""
    pads = layout.pads
    node.datalayout = fmt.EROFS_INODE_CHUNK_BASED
    node.i_u = layout.chunkformat
    node.inline = inline = pads[node.meta_size_before_inline % len(pads)] + \
        _CHUNK_INDEX(0, device_id, start)


_CHUNK_INDEX = fmt.EROFS_INODE_CHUNK_INDEX.pack


# -- chunk-based files with data (--chunksize, -Ededupe without -z) ----------------------------

_WINDOW = 1 << 20       # bytes read at once; smaller chunks are hashed out of one read
_ZEROS = bytes(_WINDOW)
_NEW = object()         # ChunkStore._known: not seen yet
_HOLE = 0               # ChunkStore._known: a chunk of zeros, stored nowhere
_KEY_SHIFT = 4          # a hash's top 60 bits: a key of ChunkTable


class ChunkTable:
    """A table from a chunk's key (an int below 2^64) to an int, for the chunks of a build:
    keys and values in insertion order in two arrays of 64-bit ints, and an index of their
    positions (+ 1, 0: a free slot) by key, open addressing at most half full.  About 30 bytes
    a chunk, where a dict of ints took 110 (24.6 MiB for the 222,000 chunks of -Ededupe on the
    bench tree).  A key is added once (`add`: the caller looked it up first).  `expected`
    keys (at most EXPECTED_MAX: a sparse file's holes count there too) are indexed without
    growing the index, whose every growth places all keys again."""

    _WIDE = (1 << 64) - 1           # a value too wide for its array: in _wide
    EXPECTED_MAX = 1 << 18          # (an index of 2 MiB)

    def __init__(self, expected: int = 0) -> None:
        self._keys = array("Q")
        self._values = array("Q")
        self._wide: dict[int, int] = {}     # position -> a value of 2^64 - 1 or more
        self._reindex(max(10, (2 * min(expected, self.EXPECTED_MAX) - 1).bit_length()))

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: int, default=None):
        slots, keys, mask = self._slots, self._keys, self._mask
        i = key & mask
        pos = slots[i]
        while pos:
            if keys[pos - 1] == key:
                value = self._values[pos - 1]
                return value if value != self._WIDE else self._wide[pos - 1]
            i = (i + 1) & mask
            pos = slots[i]
        return default

    def add(self, key: int, value: int) -> None:
        keys = self._keys
        if len(keys) >= self._room:
            self._reindex(self._mask.bit_length() + 1)
        if value >= self._WIDE:
            self._wide[len(keys)] = value
            value = self._WIDE
        keys.append(key)
        self._values.append(value)
        slots, mask = self._slots, self._mask
        i = key & mask
        while slots[i]:
            i = (i + 1) & mask
        slots[i] = len(keys)

    def _reindex(self, bits: int) -> None:
        """A new index of 2^bits slots (4 bytes each while positions fit)."""
        self._mask = (1 << bits) - 1
        self._room = 1 << (bits - 1)
        code = "I" if bits <= 32 else "Q"
        self._slots = slots = array(code, bytes(array(code).itemsize << bits))
        mask = self._mask
        for pos, key in enumerate(self._keys, 1):
            i = key & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = pos


class ChunkSink(Protocol):
    """Where new chunks go: consecutive blocks handed out, then written (a byte position)."""

    def allocate(self, nblocks: int) -> int: ...

    def align(self, nblocks: int) -> None:
        """Let the next allocation begin at a multiple of nblocks (--dsunit)."""

    def pwrite(self, data, pos: int) -> None: ...

    def pread(self, n: int, pos: int) -> bytes:
        """What was written at `pos`."""


class ImageBlocks:
    """The image's own data area as a ChunkSink (chunk addresses on device 0)."""

    def __init__(self, data):          # a data.DataArea
        self.allocate = data.allocate
        self.pwrite = data.out.pwrite
        self.pread = data.out.pread
        self._data = data

    def align(self, nblocks: int) -> None:
        self._data.rewind(fmt.round_up(self._data.next_block, nblocks))


class ChunkStore:
    """Stores chunks in `sink`, each distinct one once: a table from a chunk's hash to where it
    is stored, whose bytes are compared with the chunk's before it is taken (a hash of 64 bits
    may collide; a digest of 256 bits as the key would cost 48 more bytes a chunk).

    `device_id` is what the chunk indexes name (0: the image, n: the device table's slot n);
    `indexes` asks for 8-byte indexes on the image as well (-Eforce-chunk-indexes);
    `expected`: about how many chunks will be stored (ChunkTable)."""

    def __init__(self, sink: ChunkSink, blkszbits: int, chunkbits: int, *,
                 indexes: bool = False, device_id: int = 0, dedupe: bool = True,
                 dsunit: int = 1, wide_ok: bool = False, expected: int = 0):
        assert blkszbits <= chunkbits <= blkszbits + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK
        self.sink = sink
        self.dsunit = dsunit
        self._align_next = False
        self.blkszbits = blkszbits
        self.chunkbits = chunkbits
        self.indexes = indexes or device_id != 0
        self.device_id = device_id
        self.dedupe = dedupe
        self.wide_ok = wide_ok          # -E48bit: chunks may lie past 2^32 blocks
        # hash >> _KEY_SHIFT -> the first chunk stored with it: its first block << _lenbits |
        # its length (the last chunk of a file may be short, never empty), _HOLE for a chunk
        # of zeros; _others: the further ones, in the unlikely case that different chunks
        # share a key
        self._known = ChunkTable(expected if dedupe else 0)
        self._others: dict[int, list[int]] = {}
        self._lenbits = chunkbits + 1
        self.blocks_written = 0
        self.saved_bytes = 0        # bytes of chunks found stored already (or all zeros)
        self.saved_blocks = 0       # the blocks they did not take
        if dedupe and 1 << chunkbits <= _WINDOW:
            # a full chunk of zeros is a hole (larger chunks are checked for zeros as read)
            self._known.add(xxhash.xxh3_64_intdigest(bytes(1 << chunkbits)) >> _KEY_SHIFT, _HOLE)

    def close(self) -> None:
        """After the last file: the table of the chunks stored goes (5.5 MiB of the 222,000
        chunks of -Ededupe on the bench tree, at the build's peak otherwise), the counts stay
        for the report."""
        self._known = self._others = None

    def begin_file(self) -> None:
        """Called before a file's first chunk: with --dsunit, its first new chunk begins at a
        multiple of dsunit blocks (the caller asks for it only when dsunit is at most a
        chunk's blocks: deduplicated chunks then never misalign the ones after them)."""
        self._align_next = self.dsunit > 1

    def _saved(self, nbytes: int) -> None:
        self.saved_bytes += nbytes
        self.saved_blocks += -(-nbytes >> self.blkszbits)

    def _new_blocks(self, nbytes: int) -> int:
        if self._align_next:
            self.sink.align(self.dsunit)
            self._align_next = False
        nblocks = -(-nbytes >> self.blkszbits)
        self.blocks_written += nblocks
        return self.sink.allocate(nblocks)

    def store(self, fd: int, base: int, start: int, end: int, out: list, where: str) -> None:
        """Store bytes [start, end) of the file at `base` in fd (start chunk-aligned; end the
        end of a chunk or of the file), appending each chunk's block address to `out`."""
        if 1 << self.chunkbits <= _WINDOW:
            window = _WINDOW >> self.chunkbits << self.chunkbits
            for pos in range(start, end, window):
                self._store_window(_pread_exact(fd, base + pos, min(window, end - pos), where),
                                   out)
        else:
            for pos in range(start, end, 1 << self.chunkbits):
                out.append(self._store_big(fd, base + pos, min(1 << self.chunkbits, end - pos),
                                           where))

    def _store_window(self, buf: bytes, out: list) -> None:
        """The chunks of `buf`; the new ones written together (their blocks are consecutive)."""
        cs = 1 << self.chunkbits
        view = memoryview(buf)
        known = self._known
        xxh3 = xxhash.xxh3_64_intdigest
        new = []
        first = None
        for pos in range(0, len(buf), cs):
            piece = view[pos:pos + cs]
            if self.dedupe:
                key = xxh3(piece) >> _KEY_SHIFT
                found = known.get(key, _NEW)
                if found is not _NEW:
                    addr = self._find(key, found, lambda v: self._holds(v, piece, new, first))
                    if addr is not _NEW:
                        out.append(addr)
                        self._saved(len(piece))
                        continue
                addr = self._new_blocks(len(piece))
                self._remember(key, found, addr, len(piece))
            else:
                addr = self._new_blocks(len(piece))
            if first is None:
                first = addr
            new.append(piece)
            out.append(addr)
        if new:
            pad = -len(new[-1]) % (1 << self.blkszbits)
            if pad:
                new.append(_ZEROS[:pad])
            # every chunk of the window new, none padded: they are `buf` as read, written
            # without a copy (1 MiB less at the peak, and no memcpy of every byte)
            whole = not pad and len(new) << self.chunkbits >= len(buf)
            self.sink.pwrite(buf if whole else b"".join(new), first << self.blkszbits)

    def _remember(self, key: int, found, addr: int, nbytes: int) -> None:
        """Note the chunk just stored at `addr` under `key` (`found`: what the key had)."""
        value = addr << self._lenbits | nbytes
        if found is _NEW:
            self._known.add(key, value)
        else:
            self._others.setdefault(key, []).append(value)

    def _find(self, key: int, found, same: Callable[[int], bool]):
        """The address (None: a hole) of the chunk under `key` that `same` says holds the
        bytes looked for (`found` is the first); _NEW if none does."""
        for value in (found, *self._others.get(key, ())):
            if same(value):
                return None if value == _HOLE else value >> self._lenbits
        return _NEW

    def _holds(self, value: int, piece, new: list, first: int | None) -> bool:
        """Whether the chunk noted as `value` has the bytes of `piece`: in the sink, or among
        the chunks `new` of this window, stored from block `first` but not written yet."""
        n = len(piece)
        if value == _HOLE:
            return n == 1 << self.chunkbits and _equal(piece, lambda off, k: _ZEROS[:k])
        if value & ((1 << self._lenbits) - 1) != n:
            return False
        addr = value >> self._lenbits
        if first is not None and addr >= first:     # (a window's new chunks are consecutive)
            stored = new[(addr - first) >> (self.chunkbits - self.blkszbits)]
            return _equal(piece, lambda off, k: bytes(stored[off:off + k]))
        pos = addr << self.blkszbits
        return _equal(piece, lambda off, k: self.sink.pread(k, pos + off))

    def _store_big(self, fd: int, pos: int, n: int, where: str) -> int | None:
        """One chunk larger than a read: hashed as read, read again to be written if new."""
        key = None
        if self.dedupe:
            h = xxhash.xxh3_64()
            zeros = True
            for off in range(pos, pos + n, _WINDOW):
                piece = _pread_exact(fd, off, min(_WINDOW, pos + n - off), where)
                h.update(piece)
                zeros = zeros and piece == _ZEROS[:len(piece)]
            if zeros and n == 1 << self.chunkbits:
                self._saved(n)
                return None
            key = h.intdigest() >> _KEY_SHIFT
            found = self._known.get(key, _NEW)
            if found is not _NEW:
                addr = self._find(key, found, lambda v: self._holds_range(v, fd, pos, n, where))
                if addr is not _NEW:
                    self._saved(n)
                    return addr
        addr = self._new_blocks(n)
        if key is not None:
            self._remember(key, found, addr, n)
        dst = addr << self.blkszbits
        for off in range(pos, pos + n, _WINDOW):
            piece = _pread_exact(fd, off, min(_WINDOW, pos + n - off), where)
            if len(piece) % (1 << self.blkszbits):
                piece += _ZEROS[:-len(piece) % (1 << self.blkszbits)]
            self.sink.pwrite(piece, dst + off - pos)
        return addr

    def _holds_range(self, value: int, fd: int, pos: int, n: int, where: str) -> bool:
        """Whether the chunk noted as `value` has the `n` bytes at `pos` of fd."""
        if value == _HOLE or value & ((1 << self._lenbits) - 1) != n:
            return False
        dst = value >> self._lenbits << self.blkszbits
        return all(self.sink.pread(min(_WINDOW, pos + n - off), dst + off - pos) ==
                   _pread_exact(fd, off, min(_WINDOW, pos + n - off), where)
                   for off in range(pos, pos + n, _WINDOW))


_SLICE = 1 << 16        # bytes compared at once: a copy of a whole chunk would raise the peak


def _equal(piece: memoryview, read: Callable[[int, int], bytes]) -> bool:
    """Whether `piece` holds the bytes read(offset, length) gives, compared slice by slice
    (as bytes: a memoryview compares item by item, 40 times slower)."""
    n = len(piece)
    return all(read(off, min(_SLICE, n - off)) == bytes(piece[off:off + _SLICE])
               for off in range(0, n, _SLICE))


def _pread_exact(fd: int, pos: int, n: int, where: str) -> bytes:
    try:
        data = os.pread(fd, n, pos)
        while len(data) < n:
            more = os.pread(fd, n - len(data), pos + len(data))
            if not more:
                raise BuildError(f"{where}: ends inside this file's data (changed during the "
                                 "build?)")
            data += more
    except OSError as err:
        raise BuildError(f"{where}: {err.strerror}") from None
    return data


def data_chunks(fd: int, base: int, size: int, chunkbits: int) -> list[tuple[int, int]]:
    """The runs [first, end) of chunks of the `size` bytes at `base` of fd that hold data;
    every other chunk lies wholly in a hole (SEEK_DATA), or past the data."""
    count = -(-size >> chunkbits)
    runs: list[tuple[int, int]] = []
    chunk = 0
    while chunk < count:
        try:
            data = os.lseek(fd, base + (chunk << chunkbits), os.SEEK_DATA) - base
            hole = os.lseek(fd, base + data, os.SEEK_HOLE) - base if data < size else size
        except OSError as err:
            if err.errno == errno.ENXIO:        # only a hole is left
                break
            runs.append((chunk, count))         # no SEEK_DATA here: all data
            break
        if data >= size:
            break
        first, end = data >> chunkbits, min(count, -(-hole >> chunkbits))
        if runs and runs[-1][1] == first:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((first, end))
        chunk = end
    return runs


def merged_chunks(blkaddrs: list[int | None], chunkbits: int, blkszbits: int, size: int
                  ) -> tuple[int, list[int | None]]:
    """(chunk bits, addresses) with every aligned group of chunks that lie one after the other
    on the device (or are all holes) made one chunk: the largest power of two that divides every
    position where such a run ends, as a chunk may reach past the end of the file."""
    chunkblks = 1 << (chunkbits - blkszbits)
    limit = covering_chunkbits(size, blkszbits)
    breaks = 0                      # OR of the block positions where runs end
    prev = _NEW
    for i, addr in enumerate(blkaddrs):
        if prev is not _NEW and not (addr is None and prev is None or (
                addr is not None and prev is not None and addr == prev + chunkblks)):
            breaks |= i * chunkblks
        prev = addr
    best = limit if not breaks else min(limit, (breaks & -breaks).bit_length() - 1 + blkszbits)
    if best <= chunkbits:
        return chunkbits, blkaddrs
    return best, blkaddrs[::1 << (best - chunkbits)]


def chunk_file(store: ChunkStore, fd: int, base: int, size: int, where: str
               ) -> tuple[ChunkLayout, list[int | None]]:
    """Store the `size` bytes at `base` of fd as chunks; the file's layout and chunk map."""
    bits = store.chunkbits
    runs = data_chunks(fd, base, size, bits)
    if not runs:                    # no data at all: one chunk of holes
        cover = covering_chunkbits(size, store.blkszbits)
        count = -(-size >> cover)
        return cached_layout(count, store.blkszbits, cover, store.indexes), [None] * count
    store.begin_file()
    addrs: list[int | None] = []
    for first, end in runs:
        addrs.extend([None] * (first - len(addrs)))
        store.store(fd, base, first << bits, min(end << bits, size), addrs, where)
    addrs.extend([None] * (-(-size >> bits) - len(addrs)))
    if len(addrs) > 1:              # (one chunk, the common case, is merged with none)
        bits, addrs = merged_chunks(addrs, bits, store.blkszbits, size)
    wide = needs_wide(addrs)
    if wide:
        check_wide(where, store.indexes, store.wide_ok)
    return cached_layout(len(addrs), store.blkszbits, bits, store.indexes, wide), addrs


def check_wide(where: str, indexes: bool, wide_ok: bool) -> None:
    """Refuse a file with a chunk at block 2^32 or later where that cannot be stored: a block
    map holds 32 bits, and 48-bit chunk indexes belong to the 48-bit format (-E48bit): without
    its superblock bit a kernel before 6.15 mounts the image and then fails on the file."""
    if not indexes:
        raise BuildError(f"{where}: a chunk at block 2^32 or later: more than a 32-bit block "
                         "map addresses")
    if not wide_ok:
        raise BuildError(f"{where}: a chunk at block 2^32 or later needs 48-bit block "
                         "addresses (-E48bit)")


def make_chunked(node: TreeInode, store: ChunkStore) -> None:
    """Store the data of the regular file `node` (its own file, or a tar DataRef range) as
    chunks and make it a chunk-based inode."""
    ref = node.data
    path = node.path if ref is None else ref.path
    where = os.fsdecode(path) if ref is None else \
        f"{node.display_path()}: {os.fsdecode(ref.path)}"
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if ref is None else 0)
    try:
        fd = open_path(path, flags)
    except OSError as err:
        raise BuildError(f"{where}: {err.strerror}") from None
    try:
        if ref is None:
            now = os.fstat(fd).st_size
            if now != node.size:
                raise BuildError(f"{where}: file changed during the build (size was "
                                 f"{node.size}, now {now})")
        layout, addrs = chunk_file(store, fd, 0 if ref is None else ref.offset, node.size, where)
        if ref is None and os.pread(fd, 1, node.size):
            raise BuildError(f"{where}: file changed during the build (size is no longer "
                             f"{node.size})")
    except OSError as err:
        raise BuildError(f"{where}: {err.strerror}") from None
    finally:
        os.close(fd)
    set_chunk_map(node, layout, addrs, store.device_id)


def set_chunk_run(node: TreeInode, layout: ChunkLayout, start: int, device_id: int = 0
                  ) -> None:
    """set_chunk_map of a file whose chunks follow one another from block `start`."""
    node.datalayout = fmt.EROFS_INODE_CHUNK_BASED
    node.i_u = layout.chunkformat
    node.inline = layout.encode_run(node.meta_size_before_inline, start, device_id)


def set_chunk_map(node: TreeInode, layout: ChunkLayout, blkaddrs: Sequence[int | None],
                  device_id: int = 0) -> None:
    """Make `node` chunk-based with `layout`, its map after the inode and xattrs."""
    node.datalayout = fmt.EROFS_INODE_CHUNK_BASED
    node.i_u = layout.chunkformat
    # inodes start on a 32-byte slot: the map's alignment is known before the inode is placed
    node.inline = layout.encode_map(node.meta_size_before_inline, blkaddrs,
                                    device_id if layout.indexes else 0)
