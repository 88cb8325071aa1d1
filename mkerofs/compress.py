"""Compressed regular files: split data into pclusters and describe them with lcluster indexes.

How the kernel reads a compressed inode (fs/erofs/zmap.c), which is what everything here serves:

* The file is cut into *logical clusters* (lclusters) of one block each.  Every lcluster has
  one index entry.  An *extent* (the decompressed bytes of one pcluster) starts at a HEAD entry
  (HEAD1 compressed, PLAIN stored raw) whose `clusterofs` says where in its lcluster the extent
  begins; lclusters that an extent covers completely get NONHEAD entries that point back to the
  head (delta[0]) and forward to the lcluster of the next head (delta[1]).  Hence an lcluster
  can hold the start of at most one extent: every extent but the last must reach past the end
  of the lcluster it starts in.
* A *physical cluster* (pcluster) is a run of whole blocks.  Compressed bytes sit at the END of
  it, the leading bytes are zero (LZ4_0PADDING): the kernel skips zeros at the front of the
  first block to find the stream.  A raw (PLAIN) pcluster is one block holding the extent's
  bytes from its beginning (the "shifted" format), zero-padded at the end.
* With big pclusters (superblock bit 0x2) a pcluster may have several blocks; the block count
  is kept in delta[0] of the first NONHEAD (with Z_EROFS_LI_D0_CBLKCNT set).  A head whose next
  lcluster is not a NONHEAD has a one-block pcluster.
* Index formats: "full" (COMPRESSED_FULL, 8 bytes per lcluster after a 16-byte header) and
  "compact" (COMPRESSED_COMPACT, packs of 2 entries in 8 bytes or 16 entries in 32 bytes that
  keep one base block address per pack; 2-byte packs must be 32-byte aligned, so the area
  opens with a few 4-byte entries, then 2-byte packs, then 4-byte entries again).
* ztailpacking: the last pcluster may be stored inline, right after the index area, as long
  as it does not cross a block boundary.  Its bytes are then exactly the compressed (or raw)
  stream, without padding; the map header keeps its size.

The writer's view:

    cfg = CompressConfig.from_options("lz4hc,12", block_size=4096, pcluster_size=65536)
    for job, layout in compress_files(jobs, cfg, data_area, workers):
        ...   # layout is None: store the file flat; else layout.datalayout/.blocks/.inline

`compress_files` compresses files in 16 MiB segments on a thread pool (the codecs release the
GIL), never holds a whole big file, and writes the pclusters of each file to consecutive blocks
handed out by `data_area.allocate()`, in file order.
"""
from __future__ import annotations

import os
import struct
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from . import compressors
from . import format as fmt

# mkfs.erofs compresses big files in independent segments of this many bytes (one per worker
# job); the last pcluster of a segment ends exactly at the segment's end
SEGMENT_SIZE = 16 << 20
# how much input one pcluster may swallow at most: mkfs.erofs's queue holds about 8 MB, and the
# kernel refuses extents above Z_EROFS_PCLUSTER_MAX_DSIZE (12 MiB)
MAX_EXTENT_INPUT = 8000 << 10
# CBLKCNT has 11 bits for the block count of a pcluster
MAX_PCLUSTER_BLOCKS = fmt.Z_EROFS_LI_D0_CBLKCNT - 1
# The kernel refuses LZ4 configurations of more than Z_EROFS_PCLUSTER_MAX_SIZE / 4 KiB blocks
# per pcluster, whatever the block size ("too large lz4 pclusterblks", seen on Linux 6.18 with
# 4 KiB pages), so LZ4 pclusters stop at 256 blocks even when -C allows more.
MAX_LZ4_PCLUSTER_BLOCKS = fmt.Z_EROFS_PCLUSTER_MAX_SIZE // 4096
LZ4_MAX_DISTANCE = 65535

# z_erofs_map_header: h_reserved1, h_idata_size, h_advise, h_algorithmtype, h_clusterbits
_HEADER = struct.Struct("<HHHBB")
_FULL_HEADER_SIZE = 16              # the map header and 8 reserved bytes before full indexes
_FULL_INDEX = struct.Struct("<HHI")
_FULL_NONHEAD = struct.Struct("<HHHH")

PLAIN = fmt.Z_EROFS_LCLUSTER_TYPE_PLAIN
HEAD1 = fmt.Z_EROFS_LCLUSTER_TYPE_HEAD1
NONHEAD = fmt.Z_EROFS_LCLUSTER_TYPE_NONHEAD
CBLKCNT = fmt.Z_EROFS_LI_D0_CBLKCNT

# extent codes (an array('H') per file, next to the lengths: 6 bytes per extent)
_RAW = 1 << 14
_INLINE = 1 << 15
_BLOCKS_MASK = (1 << 12) - 1


# ---------------------------------------------------------------------------
# configuration and superblock side


def check_pcluster_size(pcluster_size: int, block_size: int) -> None:
    """-C: a whole number of blocks, at most Z_EROFS_PCLUSTER_MAX_SIZE."""
    if pcluster_size < block_size or pcluster_size % block_size:
        raise ValueError(f"invalid physical cluster size {pcluster_size} (-C): a multiple of the "
                         f"block size {block_size}")
    if pcluster_size > fmt.Z_EROFS_PCLUSTER_MAX_SIZE:
        raise ValueError(f"physical cluster size {pcluster_size} (-C) is too large: at most "
                         f"{fmt.Z_EROFS_PCLUSTER_MAX_SIZE} bytes")


@dataclass(frozen=True)
class SuperblockCompression:
    """What a compressed image needs in its superblock."""
    feature_incompat: int       # bits to OR into sb.feature_incompat
    u1: int                     # available_compr_algs (with COMPR_CFGS) or lz4_max_distance
    cfgs: bytes                 # records to store right after the superblock (may be empty)


@dataclass
class CompressConfig:
    compressors: list               # Compressor objects in -z order; the first compresses files
    block_size: int
    pcluster_size: int              # -C: the largest pcluster, in bytes
    legacy_indexes: bool = False    # -Elegacy-compress: full indexes instead of compact ones
    ztailpacking: bool = False      # -Eztailpacking
    segment_size: int = SEGMENT_SIZE
    max_extent_input: int = MAX_EXTENT_INPUT

    def __post_init__(self):
        bs = self.block_size
        if not self.compressors:
            raise ValueError("no compressor given")
        check_pcluster_size(self.pcluster_size, bs)
        if self.segment_size % bs or self.segment_size < self.pcluster_size:
            raise ValueError(f"invalid segment size {self.segment_size}")

    @classmethod
    def from_options(cls, spec: str, block_size: int, pcluster_size: int | None = None, *,
                     legacy_indexes: bool = False, ztailpacking: bool = False) -> "CompressConfig":
        """Build the configuration for mkfs.erofs's -z SPEC [-C SIZE] [-Elegacy-compress]
        [-Eztailpacking].  Raises ValueError (bad spec or size) or
        compressors.CompressorUnavailable."""
        pcs = block_size if pcluster_size is None else pcluster_size
        check_pcluster_size(pcs, block_size)
        specs = compressors.parse_compressor_spec(spec)
        comps = [compressors.make_compressor(s, block_size, pcs) for s in specs]
        return cls(comps, block_size, pcs, legacy_indexes, ztailpacking)

    @property
    def primary(self):
        return self.compressors[0]

    @property
    def pcluster_blocks(self) -> int:
        return self.pcluster_size // self.block_size

    @property
    def uses_lz4(self) -> bool:
        return any(c.algorithm_id == fmt.Z_EROFS_COMPRESSION_LZ4 for c in self.compressors)

    @property
    def max_blocks(self) -> int:
        """Blocks a pcluster of the file compressor may take: -C, but never more than CBLKCNT
        can count, nor (LZ4) more than the kernel accepts."""
        limit = MAX_PCLUSTER_BLOCKS
        if self.primary.algorithm_id == fmt.Z_EROFS_COMPRESSION_LZ4:
            limit = MAX_LZ4_PCLUSTER_BLOCKS
        return min(self.pcluster_blocks, limit)

    @property
    def dest_size(self) -> int:
        return self.max_blocks * self.block_size

    @property
    def big_pcluster(self) -> bool:
        """Superblock bit 0x2, which means both BIG_PCLUSTER and COMPR_CFGS: set for pclusters
        above one block or any algorithm other than LZ4 (so such images always use CBLKCNT)."""
        algs = {c.algorithm_id for c in self.compressors}
        return self.pcluster_blocks > 1 or bool(algs - {fmt.Z_EROFS_COMPRESSION_LZ4})

    def superblock(self, ztailpacking_used: bool) -> SuperblockCompression:
        """Superblock fields; `ztailpacking_used`: whether some inode keeps an inline pcluster."""
        # the LZ4 record announces the largest LZ4 pcluster (the kernel sizes buffers by it)
        blocks = self.pcluster_blocks
        if self.uses_lz4:
            blocks = min(blocks, MAX_LZ4_PCLUSTER_BLOCKS)
        algs, need_cfgs, records = compressors.build_compr_cfgs(
            self.compressors, blocks, fmt.blksz_bits(self.block_size))
        assert need_cfgs == self.big_pcluster
        incompat = fmt.EROFS_FEATURE_INCOMPAT_LZ4_0PADDING
        if need_cfgs:
            incompat |= (fmt.EROFS_FEATURE_INCOMPAT_COMPR_CFGS
                         | fmt.EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER)
        if ztailpacking_used:
            incompat |= fmt.EROFS_FEATURE_INCOMPAT_ZTAILPACKING
        u1 = algs if need_cfgs else LZ4_MAX_DISTANCE
        return SuperblockCompression(incompat, u1, records if need_cfgs else b"")


def sb_compr_cfgs(cfg: CompressConfig, ztailpacking_used: bool) -> tuple[int, int, bytes]:
    """(feature_incompat bits, superblock u1, bytes to place right after the superblock)."""
    s = cfg.superblock(ztailpacking_used)
    return s.feature_incompat, s.u1, s.cfgs


# ---------------------------------------------------------------------------
# pclusters


@dataclass(slots=True)
class Pcluster:
    """One physical cluster and the extent it decompresses to."""
    llen: int                       # decompressed bytes (the extent's length)
    raw: bool                       # stored uncompressed (PLAIN lcluster)
    payload: bytes                  # what goes to disk: whole blocks, or the exact inline bytes
    inline: bool = False            # ztailpacking: kept after the indexes, not in data blocks


def _padded_front(data: bytes, block_size: int) -> bytes:
    pad = -len(data) % block_size
    return bytes(pad) + data if pad else data


def _padded_back(data, block_size: int) -> bytes:
    pad = -len(data) % block_size
    return bytes(data) + bytes(pad) if pad else bytes(data)


# ---------------------------------------------------------------------------
# index geometry (known from the file size alone, before any compression)


def lcluster_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def compact_split(nidx: int, header_end: int) -> tuple[int, int, int]:
    """(4B entries at the start, 2B entries, 4B entries at the end) of a compact index area.

    `header_end` is where the indexes begin (map header position + 8), relative to anything
    32-byte aligned (the inode is): 2B packs must start 32-byte aligned.
    """
    initial = ((32 - header_end % 32) // 4) & 7
    if initial > nidx:
        return 0, 0, nidx
    two = (nidx - initial) // 16 * 16
    return initial, two, nidx - initial - two


def index_area_size(size: int, meta_size: int, cfg: CompressConfig) -> int:
    """Bytes after inode + xattrs up to the end of the indexes (padding, map header, indexes)."""
    nidx = lcluster_count(size, cfg.block_size)
    hdr = fmt.round_up(meta_size, 8)
    if cfg.legacy_indexes:
        return hdr - meta_size + _FULL_HEADER_SIZE + 8 * nidx
    initial, two, end = compact_split(nidx, hdr + 8)
    return hdr - meta_size + 8 + 4 * initial + 2 * two + 4 * fmt.round_up(end, 2)


def inline_room(size: int, meta_size: int, cfg: CompressConfig) -> int:
    """How many bytes an inline tail pcluster may take (0: none).

    The inline pcluster follows the indexes and must not cross a block boundary (the rest of
    the inode's metadata may); nor may it begin exactly at a block boundary: with blocks
    smaller than a page the kernel then looks for the start of the compressed stream in an
    empty window and fails with EFSCORRUPTED (Linux 6.18, 1 KiB blocks; mkfs.erofs never puts
    it there either).  Inodes start 32-byte aligned, so the tail can always begin
    (meta + index area) % 32 bytes (or 32 bytes) into a block: the metadata allocator must
    place the item accordingly (MetaAllocator.place(nbytes, tail)).
    """
    if not cfg.ztailpacking:
        return 0
    used = meta_size + index_area_size(size, meta_size, cfg)
    return cfg.block_size - (used % fmt.EROFS_ISLOT_SIZE or fmt.EROFS_ISLOT_SIZE)


# ---------------------------------------------------------------------------
# compressing one segment


def compress_segment(data, cfg: CompressConfig, *, last: bool, tail_room: int = 0
                     ) -> list[Pcluster]:
    """Cut `data` (one segment of a file, a bytes-like object) into pclusters.

    `last`: this segment ends the file, so its final pcluster may go inline if it takes at most
    `tail_room` bytes.  Thread-safe; the heavy work runs in the codecs without the GIL.

    Follows mkfs.erofs: each pcluster is filled by compress_destsize(); a pcluster that does not
    save a block is replaced by raw one-block extents; the final piece of a segment that fits a
    block is stored raw without trying; with ztailpacking the final piece is compressed (or kept
    raw) inline when that fits.
    """
    comp = cfg.primary
    bs = cfg.block_size
    dest = cfg.dest_size
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    n = len(view)
    out: list[Pcluster] = []
    head = 0
    while head < n:
        rem = n - head
        # with ztailpacking, the rest of the file may go inline if it compresses below a block
        may_inline = last and tail_room > 0
        if rem <= bs and not may_inline:
            out.append(Pcluster(rem, True, _padded_back(view[head:], bs)))
            break
        window = view[head:head + min(rem, cfg.max_extent_input)]
        used, packed = comp.compress_destsize(window, dest)
        if used <= 0:
            raise RuntimeError(f"{comp.name}: compressor consumed nothing")
        csize = len(packed)
        whole = used == rem
        inline_ok = may_inline and whole and csize < bs and csize <= tail_room
        cost = csize if inline_ok else fmt.round_up(csize, bs)
        if cost >= used:
            # no gain: raw blocks instead (the inline tail stays raw if it fits)
            if may_inline and rem < bs and rem <= tail_room:
                out.append(Pcluster(rem, True, bytes(view[head:]), inline=True))
                break
            budget = min(used, dest)
            while True:
                count = min(bs, rem)
                out.append(Pcluster(count, True, _padded_back(view[head:head + count], bs)))
                head += count
                rem -= count
                if budget < bs + count or rem == 0:
                    break
                budget -= count
            continue
        if inline_ok:
            out.append(Pcluster(used, False, packed, inline=True))
            break
        if may_inline and whole and csize % bs and csize > bs:
            # a shorter pcluster may save a block if what it leaves fits inline
            used2, packed2 = comp.compress_destsize(window[:rem], csize // bs * bs)
            left = rem - used2
            if (0 < used2 and len(packed2) + left < fmt.round_up(csize, bs)
                    and left < bs and left <= tail_room):
                used, packed = used2, packed2
        out.append(Pcluster(used, False, _padded_front(packed, bs)))
        head += used
    return out


# ---------------------------------------------------------------------------
# indexes


@dataclass
class CompressedLayout:
    """What the writer stores for a compressed inode."""
    datalayout: int             # EROFS_INODE_COMPRESSED_FULL or _COMPACT
    blocks: int                 # data blocks (the inode's i_u)
    inline: bytes               # padding + map header + indexes + inline pcluster
    advise: int                 # h_advise
    inline_pcluster: bool       # ztailpacking used (superblock ZTAILPACKING bit)
    tail: int = 0               # bytes at the end of `inline` that must stay within one block


@dataclass
class Lclusters:
    """Decoded-form lcluster entries: for heads (lo=clusterofs, hi=blkaddr), for NONHEAD
    (lo=delta[0] possibly with CBLKCNT, hi=delta[1]); `ofs` is the di_clusterofs mkfs.erofs
    writes (the head's clusterofs also on NONHEADs)."""
    types: bytearray = field(default_factory=bytearray)
    lo: array = field(default_factory=lambda: array("H"))
    hi: array = field(default_factory=lambda: array("I"))
    ofs: array = field(default_factory=lambda: array("H"))

    def __len__(self) -> int:
        return len(self.types)

    def add(self, t: int, lo: int, hi: int, ofs: int) -> None:
        self.types.append(t)
        self.lo.append(lo)
        self.hi.append(hi)
        self.ofs.append(ofs)


def lclusters_for(llens: Sequence[int], codes: Sequence[int], start_blk: int,
                  block_size: int, big_pcluster: bool) -> Lclusters:
    """One entry per lcluster for extents laid end to end from offset 0.

    `codes[i]`: pcluster blocks | _RAW | _INLINE.  Pclusters are consecutive from `start_blk`;
    an inline one still advances the address by one block, as mkfs.erofs does (no effect on
    reading: the kernel takes inline data from the inode).
    """
    bs = block_size
    ent = Lclusters()
    types, los, his, ofss = ent.types, ent.lo, ent.hi, ent.ofs
    nonhead = bytes([NONHEAD])
    cap = CBLKCNT - 1
    pos = 0
    blk = start_blk
    last = len(llens) - 1
    tailofs = 0
    for i, llen in enumerate(llens):
        code = codes[i]
        nblocks = code & _BLOCKS_MASK
        c = pos % bs
        d1 = (c + llen) // bs
        types.append(PLAIN if code & _RAW else HEAD1)
        los.append(c)
        his.append(blk)
        ofss.append(c)
        if d1 == 0:
            if i != last:
                raise ValueError(f"extent {i} at {pos} (+{llen}) ends inside its lcluster")
            tailofs = 0
        else:
            k = d1 - 1              # lclusters covered completely after the head: NONHEAD
            if k:
                types.extend(nonhead * k)
                # delta[0]: distance back to the head (CBLKCNT on the first with big pclusters)
                if big_pcluster:
                    los.append(CBLKCNT | nblocks)
                else:
                    los.append(1)
                if k > 1:
                    los.extend(range(2, min(d1, cap + 1)))
                    if d1 > cap + 1:
                        los.extend([cap] * (d1 - cap - 1))
                his.extend(range(k, 0, -1))     # delta[1]: distance to the next head
                ofss.extend([c] * k)
            tailofs = (c + llen) % bs
        blk += 1 if code & _INLINE else nblocks
        pos += llen
    if tailofs:
        # the lcluster where the file ends opens a (virtual) extent at EOF
        ent.add(PLAIN, tailofs, 0, tailofs)
    return ent


def encode_full(ent: Lclusters) -> bytes:
    """Full (legacy) indexes: 8 bytes per lcluster."""
    out = bytearray()
    for t, lo, hi, ofs in zip(ent.types, ent.lo, ent.hi, ent.ofs):
        if t == NONHEAD:
            out += _FULL_NONHEAD.pack(t, ofs, lo, hi)
        else:
            out += _FULL_INDEX.pack(t, ofs, hi)
    return bytes(out)


def encode_compact(ent: Lclusters, header_end: int, start_blk: int, block_size: int,
                   big_pcluster: bool) -> bytes:
    """Compact indexes (COMPACTED_2B): 4B packs to reach 32-byte alignment, 2B packs, 4B packs.

    Each pack stores its entries as (type << lobits | value) bit fields (16 bits in 8-byte
    packs of 2, 14 bits in 32-byte packs of 16) and ends with a le32 base block address.  For
    a head, the kernel adds to that base the blocks of the pclusters whose heads precede it in
    the pack: one per head, or the CBLKCNT count with big pclusters.  For a NONHEAD the field is
    delta[0], except in the last entry of a pack, which keeps delta[1] instead.
    """
    lclusterbits = fmt.blksz_bits(block_size)
    if lclusterbits > 12:
        raise ValueError("compact 2B indexes need lclusters of at most 4 KiB")
    lobits = max(lclusterbits, CBLKCNT.bit_length())
    types, los, his = ent.types, ent.lo, ent.hi
    nidx = len(types)
    initial, two, _end = compact_split(nidx, header_end)
    out = bytearray()
    pack4 = struct.Struct("<HHI").pack
    le32 = struct.Struct("<I").pack
    # The running block address as the decoder counts it.  Without big pclusters every head
    # adds one block and the base is the block of the last head before the pack.  With them,
    # a CBLKCNT entry adds its count, a head adds one only when the previous pcluster had no
    # CBLKCNT (its head was the entry just before), and a pack opening with such a head
    # stores the address after that increment.
    blk = start_blk if big_pcluster else start_blk - 1
    nonhead_mask = CBLKCNT - 1

    def fields(first: int, vcnt: int) -> tuple[list, int]:
        nonlocal blk
        base = blk
        vals = []
        for k in range(vcnt):
            i = first + k
            if i >= nidx:
                vals.append(PLAIN << lobits)        # filler after the last entry
                continue
            t = types[i]
            lo = los[i]
            if t == NONHEAD:
                if lo & CBLKCNT:
                    blk += lo & nonhead_mask
                elif k == vcnt - 1:
                    lo = min(his[i], nonhead_mask)  # the last entry keeps delta[1]
            else:
                if not big_pcluster or (i and types[i - 1] != NONHEAD):
                    blk += 1
                    if big_pcluster and k == 0:
                        base = blk
                hi = his[i]
                if hi and hi != blk:
                    raise AssertionError(f"lcluster {i}: pcluster at {hi}, counted {blk}")
            vals.append((t << lobits) | lo)
        return vals, base & 0xFFFFFFFF

    i = 0
    ntwo = initial + two
    while i < nidx:
        if initial <= i < ntwo:
            vals, base = fields(i, 16)
            bits = 0
            for v in reversed(vals):
                bits = (bits << 14) | v
            out += bits.to_bytes(28, "little")
            out += le32(base)
            i += 16
        else:
            vals, base = fields(i, 2)
            out += pack4(vals[0], vals[1], base)
            i += 2
    return bytes(out)


def build_indexes(llens: Sequence[int], codes: Sequence[int], size: int, start_blk: int,
                  meta_size: int, cfg: CompressConfig, algorithm: int | None = None,
                  idata: bytes = b"") -> tuple[int, bytes, int]:
    """(datalayout, bytes to store after inode + xattrs, h_advise) for extents laid out from
    `start_blk`.  `idata`: the inline tail pcluster (ztailpacking) or b"".

    The bytes: zero padding to 8, the map header, the indexes, then `idata`.
    """
    bs = cfg.block_size
    big = cfg.big_pcluster
    ent = lclusters_for(llens, codes, start_blk, bs, big)
    nidx = lcluster_count(size, bs)
    if len(ent) != nidx:
        raise AssertionError(f"{len(ent)} lcluster entries for {nidx} lclusters")
    hdr = fmt.round_up(meta_size, 8)
    advise = 0
    if cfg.legacy_indexes:
        layout = fmt.EROFS_INODE_COMPRESSED_FULL
        if big:
            advise |= fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1
        body = bytes(8) + encode_full(ent)
    else:
        layout = fmt.EROFS_INODE_COMPRESSED_COMPACT
        advise |= fmt.Z_EROFS_ADVISE_COMPACTED_2B
        if big:
            advise |= fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2
        body = encode_compact(ent, hdr + 8, start_blk, bs, big)
    if idata:
        advise |= fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER
    alg = cfg.primary.algorithm_id if algorithm is None else algorithm
    header = _HEADER.pack(0, len(idata), advise, alg, 0)
    meta = bytes(hdr - meta_size) + header + body + idata
    assert len(meta) - len(idata) == index_area_size(size, meta_size, cfg)
    return layout, meta, advise


# ---------------------------------------------------------------------------
# one file


class FileCompression:
    """Collects the pclusters of one file, segment by segment, and builds its indexes."""

    def __init__(self, size: int, meta_size: int, cfg: CompressConfig):
        self.size = size
        self.meta_size = meta_size
        self.cfg = cfg
        self.tail_room = inline_room(size, meta_size, cfg)
        self.llens = array("I")
        self.codes = array("H")
        self.blocks = 0             # data blocks used so far
        self.idata = b""            # the inline pcluster, if any
        self.done = 0               # bytes of input covered
        # without ztailpacking a file of at most one block takes a block either way: not worth
        # reading (mkfs.erofs compresses it and then falls back to a flat layout)
        self.hopeless = size <= cfg.block_size and not cfg.ztailpacking

    def segments(self) -> list[tuple[int, int, bool]]:
        """(offset, length, last) of each segment of the file."""
        seg = self.cfg.segment_size
        size = self.size
        return [(off, min(seg, size - off), off + seg >= size) for off in range(0, size, seg)]

    def compress(self, data, last: bool) -> list[Pcluster]:
        return compress_segment(data, self.cfg, last=last, tail_room=self.tail_room if last else 0)

    def add(self, pclusters: Iterable[Pcluster]) -> None:
        bs = self.cfg.block_size
        for p in pclusters:
            if self.idata:
                raise ValueError("a pcluster after the inline tail")
            if p.inline:
                self.idata = p.payload
                nblocks = 1
            else:
                nblocks = len(p.payload) // bs
                assert len(p.payload) == nblocks * bs and 1 <= nblocks <= MAX_PCLUSTER_BLOCKS
                self.blocks += nblocks
            self.llens.append(p.llen)
            self.codes.append(nblocks | (_RAW if p.raw else 0) | (_INLINE if p.inline else 0))
            self.done += p.llen

    def saves_space(self) -> bool:
        """mkfs.erofs keeps a compressed file only if data + inline tail + full-index metadata
        take less than the file's size; otherwise the file is stored flat."""
        legacy_meta = _FULL_HEADER_SIZE + 8 * lcluster_count(self.size, self.cfg.block_size)
        return self.blocks * self.cfg.block_size + len(self.idata) + legacy_meta < self.size

    def finish(self, start_blk: int) -> CompressedLayout | None:
        """The layout for data written from `start_blk`, or None when compression saves nothing."""
        if self.done != self.size:
            raise AssertionError(f"pclusters cover {self.done} of {self.size} bytes")
        if not self.saves_space():
            return None
        layout, meta, advise = build_indexes(self.llens, self.codes, self.size, start_blk,
                                             self.meta_size, self.cfg, idata=self.idata)
        return CompressedLayout(layout, self.blocks, meta, advise, bool(self.idata),
                                len(self.idata))


# ---------------------------------------------------------------------------
# many files, on a thread pool


@dataclass
class FileJob:
    key: object                     # the caller's handle (a PlannedInode)
    size: int
    meta_size: int                  # inode + inline xattrs, in bytes
    read: Callable[[int, int, bool], bytes]   # read(offset, length, last) -> exactly length bytes
    # set when the file turned out not worth compressing after some of its pclusters were
    # already written: the blocks handed back hold old bytes (a flat copy must write holes)
    wrote_blocks: bool = False


def read_file_range(path: bytes, size: int, describe: Callable[[str], Exception]
                    ) -> Callable[[int, int, bool], bytes]:
    """A FileJob reader for a file on disk that must keep its size during the build.
    `describe(message)` makes the exception to raise."""

    def read(offset: int, length: int, last: bool) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise describe(err.strerror or str(err)) from None
        try:
            chunks = []
            pos, end = offset, offset + length
            while pos < end:
                chunk = os.pread(fd, min(end - pos, 1 << 24), pos)
                if not chunk:
                    raise describe(f"file changed during the build (ended at byte {pos} of {size})")
                chunks.append(chunk)
                pos += len(chunk)
            if last and os.pread(fd, 1, size):
                raise describe(f"file changed during the build (size is no longer {size})")
        except OSError as err:
            raise describe(err.strerror or str(err)) from None
        finally:
            os.close(fd)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    return read


class _Task:
    __slots__ = ("job", "fc", "offset", "length", "last")

    def __init__(self, job, fc, offset, length, last):
        self.job, self.fc, self.offset, self.length, self.last = job, fc, offset, length, last

    def run(self) -> list[Pcluster] | None:
        if self.fc.hopeless:
            return None
        data = self.job.read(self.offset, self.length, self.last)
        if len(data) != self.length:
            raise AssertionError("short read")
        return self.fc.compress(data, self.last)


def _run_batch(batch: list[_Task]) -> list[list[Pcluster]]:
    return [task.run() for task in batch]


# small files go to the pool in batches: one job per file would spend more time handing work
# between threads (and waiting for the GIL) than compressing
BATCH_BYTES = 1 << 20
BATCH_TASKS = 256


def compress_files(jobs: Iterable[FileJob], cfg: CompressConfig, area, workers: int = 1,
                   max_pending_bytes: int = 256 << 20
                   ) -> Iterator[tuple[FileJob, CompressedLayout | None]]:
    """Compress files and write their pclusters; yield (job, layout) in job order.

    `area` hands out data blocks: `area.allocate(n) -> first block`, `area.next_block`
    (rewound when a file is not worth compressing), `area.out.pwrite(bytes, position)`.
    A file whose layout is None gets no blocks (they are given back, and job.wrote_blocks
    says whether they were written to: then a flat copy there must overwrite holes too).

    Segments (small files batched together) are compressed by `workers` threads, at most
    `max_pending_bytes` of input (and three batches per worker) in flight; results are
    consumed in order, so each file's pclusters land in consecutive blocks.
    """
    bs = cfg.block_size
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    window: deque = deque()             # (batch, future), in job order
    pending_bytes = 0
    max_batches = max(2, 3 * workers)

    def batches() -> Iterator[list[_Task]]:
        batch, nbytes = [], 0
        for job in jobs:
            if job.size <= 0:
                raise ValueError("empty files are not compressed")
            fc = FileCompression(job.size, job.meta_size, cfg)
            for off, length, last in fc.segments():
                batch.append(_Task(job, fc, off, length, last))
                nbytes += 0 if fc.hopeless else length
                if nbytes >= BATCH_BYTES or len(batch) >= BATCH_TASKS:
                    yield batch
                    batch, nbytes = [], 0
        if batch:
            yield batch

    # per-file write state of the file being consumed
    current = {"job": None, "start": 0, "buffer": [], "flushed": False}

    def flush() -> None:
        buf = current["buffer"]
        if not buf:
            return
        payload = b"".join(p.payload for p in buf)
        blk = area.allocate(len(payload) // bs)
        area.out.pwrite(payload, blk * bs)
        current["buffer"] = []
        current["flushed"] = True

    def consume(task: _Task, pcl: list[Pcluster] | None
                ) -> Iterator[tuple[FileJob, CompressedLayout | None]]:
        if pcl is None:                 # not worth trying
            yield task.job, None
            return
        fc = task.fc
        if current["job"] is not task.job:
            current.update(job=task.job, start=area.next_block, buffer=[], flushed=False)
        fc.add(pcl)
        current["buffer"].extend(p for p in pcl if not p.inline)
        if not task.last:
            # keep small files in memory until we know compression pays; flush big ones
            if sum(len(p.payload) for p in current["buffer"]) >= cfg.segment_size:
                flush()
            return
        layout = fc.finish(current["start"])
        if layout is None:
            current["buffer"] = []
            area.next_block = current["start"]
            task.job.wrote_blocks = current["flushed"]
        else:
            flush()
            assert area.next_block == current["start"] + layout.blocks
        current["job"] = None
        yield task.job, layout

    try:
        for batch in batches():
            if pool is None:
                for task in batch:
                    yield from consume(task, task.run())
                continue
            window.append((batch, pool.submit(_run_batch, batch)))
            pending_bytes += sum(t.length for t in batch if not t.fc.hopeless)
            while window and (len(window) >= max_batches or pending_bytes > max_pending_bytes):
                done, future = window.popleft()
                pending_bytes -= sum(t.length for t in done if not t.fc.hopeless)
                for task, pcl in zip(done, future.result()):
                    yield from consume(task, pcl)
        while window:
            done, future = window.popleft()
            for task, pcl in zip(done, future.result()):
                yield from consume(task, pcl)
    finally:
        for _batch, future in window:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
