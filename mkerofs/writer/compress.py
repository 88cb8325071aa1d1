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
* Index formats: "full" (COMPRESSED_FULL, 8 bytes per lcluster) and "compact"
  (COMPRESSED_COMPACT, packs with one base block address each); their bytes are
  mkerofs/ondisk/index.py's business.
* ztailpacking: the last pcluster may be stored inline, right after the index area, as long
  as it does not cross a block boundary.  Its bytes are then exactly the compressed (or raw)
  stream, without padding; the map header keeps its size.

Here: the configuration (-z, -C, -E), one segment's pclusters (compress_segment), the indexes
(build_indexes) and one file's bookkeeping (FileCompression).  workers.compress_files runs them
over many files in worker processes and writes the pclusters.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import NamedTuple, Sequence

from ..codecs import registry
from ..codecs.buffers import bytes_address
from ..codecs.spec import parse_compressor_spec
from ..ondisk import format as fmt
from ..ondisk import index
from ..ondisk.index import Lclusters

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
MAX_LZ4_PCLUSTER_BLOCKS = fmt.Z_EROFS_PCLUSTER_MAX_SIZE // fmt.EROFS_MAX_BLOCK_SIZE

PLAIN = index.PLAIN
HEAD1 = index.HEAD1
NONHEAD = index.NONHEAD
CBLKCNT = index.CBLKCNT

# extent codes (an array('H') per file, next to the lengths: 6 bytes per extent)
_FRAGMENT = index.EXTENT_FRAGMENT
_RAW = index.EXTENT_RAW
_INLINE = index.EXTENT_INLINE
_BLOCKS_MASK = index.EXTENT_BLOCKS


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


@dataclass(frozen=True)
class FileProfile:
    """How one file is compressed: its algorithm and largest pcluster (-z, -C, --compress-hints)."""
    compressor: object
    max_blocks: int                 # blocks a pcluster may take
    block_size: int
    key: tuple = ()                 # CompressConfig.profile(*key) gives it (in any process)

    @property
    def algorithm_id(self) -> int:
        return self.compressor.algorithm_id

    @property
    def dest_size(self) -> int:
        return self.max_blocks * self.block_size


FRAGDEDUPE_MODES = ("full", "inode", "off")


@dataclass
class CompressConfig:
    compressors: list               # Compressor objects in -z order; the first compresses files
    block_size: int
    pcluster_size: int              # -C: the default largest pcluster, in bytes
    legacy_indexes: bool = False    # -Elegacy-compress: full indexes instead of compact ones
    ztailpacking: bool = False      # -Eztailpacking
    segment_size: int = SEGMENT_SIZE
    max_extent_input: int = MAX_EXTENT_INPUT    # --max-extent-bytes
    # the largest pcluster of any file (compress hints may raise it above -C): the superblock
    # announces it
    max_pcluster_size: int = 0
    fragments: bool = False         # -Efragments: file tails go to the packed inode
    all_fragments: bool = False     # -Eall-fragments: whole files go to the packed inode
    fragdedupe: str = "full"        # -Efragdedupe=full|inode, -E^fragdedupe: "off"
    packed_pcluster_size: int = 0   # -Efragments=SIZE: pcluster of the packed inode
    dedupe: bool = False            # -Ededupe: identical extents stored once
    _profiles: dict = field(default_factory=dict, repr=False, compare=False)
    # what a window of zeros compresses to, by (profile key, window length, by address or not):
    # holes of sparse files compress alike every time (see compress_segment)
    _zero_runs: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        bs = self.block_size
        if not self.compressors:
            raise ValueError("no compressor given")
        check_pcluster_size(self.pcluster_size, bs)
        self.max_pcluster_size = max(self.max_pcluster_size, self.pcluster_size)
        check_pcluster_size(self.max_pcluster_size, bs)
        if self.packed_pcluster_size:
            check_pcluster_size(self.packed_pcluster_size, bs)
            if self.packed_pcluster_size > self.max_pcluster_size:
                raise ValueError(f"pcluster size {self.packed_pcluster_size} of the packed file "
                                 f"is larger than the largest pcluster {self.max_pcluster_size}")
        if self.segment_size % bs or self.segment_size < self.max_pcluster_size:
            raise ValueError(f"invalid segment size {self.segment_size}")
        if self.max_extent_input < bs:
            raise ValueError(f"maximum extent size {self.max_extent_input} "
                             f"(--max-extent-bytes) must be at least the block size {bs}")
        if self.fragdedupe not in FRAGDEDUPE_MODES:
            raise ValueError(f"invalid fragdedupe mode {self.fragdedupe!r}")
        self.all_fragments = self.all_fragments and self.fragments

    @classmethod
    def from_options(cls, spec: str, block_size: int, pcluster_size: int | None = None, *,
                     max_pcluster_size: int = 0, **features) -> "CompressConfig":
        """Build the configuration for mkfs.erofs's -z SPEC [-C SIZE] [-E...].  `features` are
        the dataclass fields (legacy_indexes, ztailpacking, fragments, ...).  Raises ValueError
        (bad spec or size) or CompressorUnavailable."""
        pcs = block_size if pcluster_size is None else pcluster_size
        check_pcluster_size(pcs, block_size)
        largest = max(pcs, max_pcluster_size)
        check_pcluster_size(largest, block_size)
        specs = parse_compressor_spec(spec)
        comps = [registry.codec_for(s, block_size, largest) for s in specs]
        return cls(comps, block_size, pcs, max_pcluster_size=largest, **features)

    @property
    def primary(self):
        return self.compressors[0]

    @property
    def pcluster_blocks(self) -> int:
        """The largest pcluster any file may use, in blocks (what the superblock announces)."""
        return self.max_pcluster_size // self.block_size

    @property
    def uses_lz4(self) -> bool:
        return any(c.algorithm_id == fmt.Z_EROFS_COMPRESSION_LZ4 for c in self.compressors)

    def profile(self, index: int = 0, pcluster_size: int | None = None) -> FileProfile:
        """The profile of compressor #`index` (in -z order) with pclusters of at most
        `pcluster_size` bytes (default -C): never more than CBLKCNT can count, nor (LZ4) more
        than the kernel accepts."""
        key = (index, pcluster_size or self.pcluster_size)
        prof = self._profiles.get(key)
        if prof is None:
            comp = self.compressors[index]
            limit = MAX_PCLUSTER_BLOCKS
            if comp.algorithm_id == fmt.Z_EROFS_COMPRESSION_LZ4:
                limit = MAX_LZ4_PCLUSTER_BLOCKS
            blocks = min(key[1] // self.block_size, limit)
            prof = self._profiles[key] = FileProfile(comp, blocks, self.block_size, key)
        return prof

    def __getstate__(self) -> dict:
        # a worker process rebuilds profiles on demand: each would carry its compressor again
        return {**self.__dict__, "_profiles": {}, "_zero_runs": {}}

    @property
    def packed_profile(self) -> FileProfile:
        return self.profile(0, self.packed_pcluster_size or None)

    @cached_property            # asked once per compressed file
    def big_pcluster(self) -> bool:
        """Superblock bit 0x2, which means both BIG_PCLUSTER and COMPR_CFGS: set for pclusters
        above one block or any algorithm other than LZ4 (so such images always use CBLKCNT)."""
        algs = {c.algorithm_id for c in self.compressors}
        return self.pcluster_blocks > 1 or bool(algs - {fmt.Z_EROFS_COMPRESSION_LZ4})

    @property
    def dedupe_extents(self) -> bool:
        """Store identical pclusters once: with -Ededupe, and (as mkfs.erofs does) with
        -Efragments."""
        return self.dedupe or self.fragments

    def worth_trying(self, size: int) -> bool:
        """Without ztailpacking or fragments a file of at most one block takes a block either
        way: not worth reading (mkfs.erofs compresses it, then falls back to a flat layout)."""
        return size > self.block_size or self.ztailpacking or self.fragments

    def without_fragments(self) -> "CompressConfig":
        """The configuration for the packed inode itself: no fragments, no dedupe."""
        return replace(self, fragments=False, all_fragments=False, dedupe=False, _profiles={},
                       _zero_runs={})

    def superblock(self, ztailpacking_used: bool, fragments_used: bool = False,
                   dedupe_used: bool = False) -> SuperblockCompression:
        """Superblock fields, given which optional features some inode ended up using."""
        # the LZ4 record announces the largest LZ4 pcluster (the kernel sizes buffers by it)
        blocks = self.pcluster_blocks
        if self.uses_lz4:
            blocks = min(blocks, MAX_LZ4_PCLUSTER_BLOCKS)
        algs, need_cfgs, records = registry.build_compr_cfgs(
            self.compressors, blocks, fmt.blksz_bits(self.block_size))
        assert need_cfgs == self.big_pcluster
        incompat = fmt.EROFS_FEATURE_INCOMPAT_LZ4_0PADDING
        if need_cfgs:
            incompat |= (fmt.EROFS_FEATURE_INCOMPAT_COMPR_CFGS
                         | fmt.EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER)
        if ztailpacking_used:
            incompat |= fmt.EROFS_FEATURE_INCOMPAT_ZTAILPACKING
        if fragments_used:
            incompat |= fmt.EROFS_FEATURE_INCOMPAT_FRAGMENTS
        if dedupe_used:
            incompat |= fmt.EROFS_FEATURE_INCOMPAT_DEDUPE
        u1 = algs if need_cfgs else fmt.LZ4_DISTANCE_MAX
        return SuperblockCompression(incompat, u1, records if need_cfgs else b"")


# ---------------------------------------------------------------------------
# pclusters


@dataclass(slots=True)
class Pcluster:
    """One physical cluster and the extent it decompresses to."""
    llen: int                       # decompressed bytes (the extent's length)
    raw: bool                       # stored uncompressed (PLAIN lcluster)
    payload: bytes                  # what goes to disk: whole blocks, or the exact inline bytes;
                                    # for a fragment, the file's own bytes
    inline: bool = False            # ztailpacking: kept after the indexes, not in data blocks
    fragment: bool = False          # -Efragments: the file's tail, kept in the packed inode
    digest: bytes = b""             # extent deduplication: hash of `payload`


# windows of zeros remembered per build: a few per pcluster size are met again and again (a
# hole's windows have the same lengths in every segment); the rest are bounded
_ZERO_RUNS_MAX = 4096


def _padded_back(data, block_size: int) -> bytes:
    pad = -len(data) % block_size
    return bytes(data) + bytes(pad) if pad else bytes(data)


# ---------------------------------------------------------------------------
# index geometry (known from the file size alone, before any compression)


def lcluster_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def index_area_size(size: int, meta_size: int, cfg: CompressConfig,
                    full: bool | None = None) -> int:
    """Bytes after inode + xattrs up to the end of the indexes (padding, map header, indexes);
    `full`: full indexes (default: as -Elegacy-compress says)."""
    nidx = lcluster_count(size, cfg.block_size)
    hdr = fmt.z_erofs_map_header_pos(meta_size)
    if cfg.legacy_indexes if full is None else full:
        return hdr - meta_size + index.full_area_size(nidx)
    ebase = hdr + fmt.Z_EROFS_MAP_HEADER_SIZE
    return ebase - meta_size + index.compact_area_size(nidx, ebase)


def inline_room(size: int, meta_size: int, cfg: CompressConfig, full: bool | None = None) -> int:
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
    used = meta_size + index_area_size(size, meta_size, cfg, full)
    return cfg.block_size - (used % fmt.EROFS_ISLOT_SIZE or fmt.EROFS_ISLOT_SIZE)


# ---------------------------------------------------------------------------
# compressing one segment


def compress_segment(data, cfg: CompressConfig, *, last: bool, tail_room: int = 0,
                     profile: FileProfile | None = None, zeros: Sequence = ()) -> list[Pcluster]:
    """Cut `data` (one segment of a file, a bytes-like object) into pclusters.

    `zeros`: sorted, disjoint (start, end) ranges of `data` that are zeros (holes of a sparse
    file): a compressor input window that lies inside one compresses to what the same window
    of zeros compressed to before, in this build (CompressConfig._zero_runs), so gigabytes of
    holes cost a few compressor calls.  The pclusters are the same as without `zeros`.

    `last`: this segment ends the file, so its final pcluster may go inline if it takes at most
    `tail_room` bytes, or (-Efragments) become the file's fragment.  Thread-safe; the heavy work
    runs in the codecs without the GIL.

    Follows mkfs.erofs: each pcluster is filled by compress_destsize(); a pcluster that does not
    save a block is replaced by raw one-block extents; the final piece of a segment that fits a
    block is stored raw without trying; with ztailpacking the final piece is compressed (or kept
    raw) inline when that fits; with fragments, the rest of the file goes to the packed inode
    as soon as it fits one pcluster (before or after compression).
    """
    prof = profile or cfg.profile()
    comp = prof.compressor
    bs = cfg.block_size
    dest = prof.dest_size
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if cfg.all_fragments:
        return [Pcluster(len(view), False, view, fragment=True)] if len(view) else []
    frag_tail = last and cfg.fragments
    # with ztailpacking, the rest of the file may go inline if it compresses below a block
    may_inline = last and tail_room > 0
    max_in = cfg.max_extent_input
    # LZ4 takes raw addresses into the segment (kept alive by `data`): cheaper per pcluster
    base = None
    if type(data) is bytes and hasattr(comp, "destsize_filler"):
        base = bytes_address(data)
        compress_at = comp.destsize_filler(dest)
    n = len(view)
    out: list[Pcluster] = []
    head = 0
    memo = cfg._zero_runs
    zi, nzeros, known = 0, len(zeros), False
    while head < n:
        rem = n - head
        if frag_tail and rem <= dest:
            out.append(Pcluster(rem, False, view[head:], fragment=True))
            break
        if rem <= bs and not may_inline:
            out.append(Pcluster(rem, True, _padded_back(view[head:], bs)))
            break
        win = rem if rem < max_in else max_in
        if zeros:
            while zi < nzeros and zeros[zi][1] <= head:
                zi += 1
            known = zi < nzeros and zeros[zi][0] <= head and head + win <= zeros[zi][1]
        if known:
            key = (prof.key, win, base is not None)
            found = memo.get(key)
            if found is None:
                found = (compress_at(base + head, win) if base is not None
                         else comp.compress_destsize(view[head:head + win], dest))
                if len(memo) < _ZERO_RUNS_MAX:
                    memo[key] = found
            used, packed = found
        elif base is not None:
            used, packed = compress_at(base + head, win)
        else:
            used, packed = comp.compress_destsize(view[head:head + win], dest)
        if used <= 0:
            raise RuntimeError(f"{comp.name}: compressor consumed nothing")
        csize = len(packed)
        whole = used == rem
        if whole and frag_tail and csize < dest:
            out.append(Pcluster(rem, False, view[head:], fragment=True))
            break
        inline_ok = may_inline and whole and csize < bs and csize <= tail_room
        pad = -csize % bs
        if (csize if inline_ok else csize + pad) >= used:
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
        if may_inline and whole and pad and csize > bs:
            # a shorter pcluster may save a block if what it leaves fits inline
            used2, packed2 = comp.compress_destsize(view[head:n], csize // bs * bs)
            left = rem - used2
            if (0 < used2 and len(packed2) + left < csize + pad
                    and left < bs and left <= tail_room):
                used, packed = used2, packed2
                pad = -len(packed) % bs
        # compressed bytes end the pcluster: zeros in front (LZ4_0PADDING)
        out.append(Pcluster(used, False, bytes(pad) + packed if pad else packed))
        head += used
    if cfg.dedupe_extents:
        import hashlib      # (OpenSSL: 3.5 MB of memory, loaded only where a build hashes)
        for p in out:
            if not p.inline:
                # a cryptographic hash: a collision would hand one file's bytes to another
                p.digest = hashlib.sha256(p.payload).digest()
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
    fragment: bool = False      # part of the data is in the packed inode (FRAGMENTS bit)
    deduped: bool = False       # refers to pclusters written for other data (DEDUPE bit)


@lru_cache(maxsize=64)
def _nonhead_deltas(most: int) -> tuple[array, array]:
    """For the NONHEAD entries k = 1..most after their head: delta[0] from k = 2 on (min(k,
    CBLKCNT - 1)), and delta[1] counting down to the next head (most..1).  The same few
    lengths come back for every file: kept, and only ever sliced."""
    cap = CBLKCNT - 1
    ramp = array("H", range(2, min(most, cap) + 1))
    if most > cap:
        ramp += array("H", [cap]) * (most - cap)
    return ramp, array("I", range(most, 0, -1))


# what lclusters_for fills its arrays from (one copy per file is cheaper than a new array)
_ZERO_H = array("H", [0])
_ZERO_I = array("I", [0])
_NONHEAD_BYTE = bytes([NONHEAD])


def lclusters_for(llens: Sequence[int], codes: Sequence[int], start_blk: int,
                  block_size: int, big_pcluster: bool, addrs: Sequence[int] | None = None,
                  fragment_hi: int | None = None) -> Lclusters:
    """One entry per lcluster for extents laid end to end from offset 0: what full indexes
    are encoded from (compact ones come straight from the extents).

    `codes[i]`: pcluster blocks | _RAW | _INLINE | _FRAGMENT.  Pclusters are consecutive from
    `start_blk`, except where `addrs[i]` >= 0 (-Ededupe: a pcluster written before, maybe by
    another file; only full indexes can say so).  An inline pcluster still advances the address
    by one block, as mkfs.erofs does (no effect on reading: the kernel takes inline data from
    the inode).  The fragment (always the last extent) has no blocks; with full indexes its
    head keeps `fragment_hi`, the high 32 bits of its offset in the packed inode.
    """
    bs = block_size
    # every entry is written in place: arrays grown entry by entry would take twice their size
    # for a while, and a big sparse file has millions of lclusters
    total = -(-sum(llens) // bs)
    types = bytearray(total)
    los = _ZERO_H * total
    his = _ZERO_I * total
    ofss = _ZERO_H * total
    ent = Lclusters(types, los, his, ofss)
    most = 0                        # (NONHEAD deltas are looked up at the first NONHEAD)
    pos = 0
    blk = start_blk
    last = len(llens) - 1
    tailofs = 0
    p = 0                           # the entry of this extent's head
    for i, llen in enumerate(llens):
        code = codes[i]
        nblocks = code & _BLOCKS_MASK
        c = pos % bs
        d1 = (c + llen) // bs
        if d1 == 0 and i != last:
            raise ValueError(f"extent {i} at {pos} (+{llen}) ends inside its lcluster")
        types[p] = PLAIN if code & _RAW else HEAD1
        los[p] = c
        addr = addrs[i] if addrs is not None and addrs[i] >= 0 else -1
        if code & _FRAGMENT and fragment_hi is not None:
            his[p] = fragment_hi
        else:
            his[p] = blk if addr < 0 else addr
        ofss[p] = c
        p += 1
        k = d1 - 1                  # lclusters covered completely after the head: NONHEAD
        if k > 0:
            if not most:
                most = (bs - 1 + max(llens)) // bs
                ramp, down = _nonhead_deltas(most)
            q = p + k
            types[p:q] = _NONHEAD_BYTE * k
            # delta[0]: distance back to the head (CBLKCNT on the first with big pclusters)
            los[p] = CBLKCNT | nblocks if big_pcluster else 1
            if k > 1:
                los[p + 1:q] = ramp[:k - 1]
            his[p:q] = down[most - k:]
            ofss[p:q] = array("H", [c]) * k
            p = q
        tailofs = (c + llen) % bs if d1 else 0
        if addr < 0:
            blk += 1 if code & _INLINE else nblocks
        pos += llen
    if tailofs:
        # the lcluster where the file ends opens a (virtual) extent at EOF
        types[p] = PLAIN
        los[p] = tailofs
        ofss[p] = tailofs
        p += 1
    if p != total:
        raise AssertionError(f"{p} lcluster entries for {total} lclusters")
    return ent


def build_indexes(llens: Sequence[int], codes: Sequence[int], size: int, start_blk: int,
                  meta_size: int, cfg: CompressConfig, algorithm: int | None = None,
                  idata: bytes = b"", addrs: Sequence[int] | None = None,
                  fragment_off: int | None = None) -> tuple[int, bytes, int]:
    """(datalayout, bytes to store after inode + xattrs, h_advise) for extents laid out from
    `start_blk`.  `idata`: the inline tail pcluster (ztailpacking) or b"".  `addrs`: explicit
    block addresses of deduplicated pclusters (see lclusters_for).  `fragment_off`: where the
    file's last extent (a fragment) starts in the packed inode.

    The bytes: zero padding to 8, the map header, the indexes, then `idata`.
    """
    bs = cfg.block_size
    big = cfg.big_pcluster
    hdr = fmt.z_erofs_map_header_pos(meta_size)
    advise = 0
    if fragment_off is not None:
        advise |= fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
        if len(llens) == 1:
            # the whole file is a fragment: the map header alone says where
            meta = bytes(hdr - meta_size) + index.pack_whole_fragment_header(fragment_off)
            return fmt.EROFS_INODE_COMPRESSED_FULL, meta, advise
    # compact indexes can only count blocks forward from the file's first pcluster, and keep
    # 32 bits of the fragment offset
    deduped = addrs is not None and any(a >= 0 for a in addrs)
    full = (cfg.legacy_indexes or deduped
            or (fragment_off is not None and fragment_off >> 32 != 0))
    nidx = lcluster_count(size, bs)
    if full:
        ent = lclusters_for(llens, codes, start_blk, bs, big, addrs,
                            fragment_off >> 32 if fragment_off is not None else None)
        if len(ent) != nidx:
            raise AssertionError(f"{len(ent)} lcluster entries for {nidx} lclusters")
        layout = fmt.EROFS_INODE_COMPRESSED_FULL
        if big:
            advise |= fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1
        body = bytes(fmt.Z_EROFS_FULL_INDEX_GAP) + index.encode_full(ent)
    else:
        layout = fmt.EROFS_INODE_COMPRESSED_COMPACT
        advise |= fmt.Z_EROFS_ADVISE_COMPACTED_2B
        if big:
            advise |= fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2
        # (straight from the extents: no lcluster entries are made)
        body = index.encode_compact_extents(llens, codes, hdr + fmt.Z_EROFS_MAP_HEADER_SIZE,
                                            start_blk, fmt.blksz_bits(bs), big)
        if -(-sum(llens) // bs) != nidx:
            raise AssertionError(f"extents of {sum(llens)} bytes for {nidx} lclusters")
    if idata:
        advise |= fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER
    alg = cfg.primary.algorithm_id if algorithm is None else algorithm
    # (with full indexes, the high 32 bits of the fragment offset are in its head's blkaddr)
    header = index.pack_map_header(advise, alg, idata_size=len(idata),
                                   fragmentoff=(fragment_off or 0) & 0xFFFFFFFF)
    return layout, bytes(hdr - meta_size) + header + body + idata, advise


# ---------------------------------------------------------------------------
# one file


class FileCompression:
    """Collects the pclusters of one file, segment by segment, and builds its indexes."""

    def __init__(self, size: int, meta_size: int, cfg: CompressConfig,
                 profile: FileProfile | None = None):
        self.size = size
        self.meta_size = meta_size
        self.cfg = cfg
        self.profile = profile or cfg.profile()
        self.tail_room = 0 if cfg.fragments else inline_room(size, meta_size, cfg)
        if cfg.dedupe_extents and self.tail_room:
            # a deduplicated extent switches the file to full indexes: the tail must fit both
            self.tail_room = min(self.tail_room, inline_room(size, meta_size, cfg, full=True))
        self.llens = array("I")
        self.codes = array("H")
        self.addrs: array | None = None     # -Ededupe: block of each pcluster, -1: a new one
        self.blocks = 0             # new data blocks used so far
        self.idata = b""            # the inline pcluster, if any
        self.fragment_len = 0       # bytes of the file kept in the packed inode
        self.done = 0               # bytes of input covered
        self.hopeless = not cfg.worth_trying(size)

    def segments(self) -> list[tuple[int, int, bool]]:
        """(offset, length, last) of each segment of the file."""
        seg = self.cfg.segment_size
        size = self.size
        return [(off, min(seg, size - off), off + seg >= size) for off in range(0, size, seg)]

    def compress(self, data, last: bool, zeros: Sequence = ()) -> list[Pcluster]:
        """The pclusters of the next segment; `zeros`: ranges of it known to be zeros."""
        return compress_segment(data, self.cfg, last=last, tail_room=self.tail_room if last else 0,
                                profile=self.profile, zeros=zeros)

    def add(self, p: Pcluster, addr: int = -1, nblocks: int = 0) -> None:
        """Record the next pcluster; `addr` >= 0: it is not written but refers to the pcluster
        of `nblocks` blocks already at that block (same bytes, same length)."""
        bs = self.cfg.block_size
        if self.idata or self.fragment_len and not (p.fragment and self.cfg.all_fragments):
            raise ValueError("a pcluster after the inline tail or the fragment")
        if p.fragment:
            if self.fragment_len:           # -Eall-fragments: one fragment over all segments
                self.llens[-1] += p.llen
            else:
                self.llens.append(p.llen)
                self.codes.append(_FRAGMENT)
                if self.addrs is not None:
                    self.addrs.append(-1)
            self.fragment_len += p.llen
            self.done += p.llen
            return
        if p.inline:
            self.idata = p.payload
            nblocks = 1
        elif addr < 0:
            nblocks = len(p.payload) // bs
            assert len(p.payload) == nblocks * bs and 1 <= nblocks <= MAX_PCLUSTER_BLOCKS
            self.blocks += nblocks
        if addr >= 0 and self.addrs is None:
            self.addrs = array("q", [-1]) * len(self.llens)
        if self.addrs is not None:
            self.addrs.append(addr)
        self.llens.append(p.llen)
        self.codes.append(nblocks | (_RAW if p.raw else 0) | (_INLINE if p.inline else 0))
        self.done += p.llen

    def add_written(self, llen: int, raw: bool, nblocks: int) -> None:
        """add() a pcluster of `nblocks` new blocks whose bytes are not here (a worker process
        holds them)."""
        if self.idata or self.fragment_len or self.addrs is not None:
            raise ValueError("a pcluster after the inline tail or the fragment, or deduplicated")
        if not 1 <= nblocks <= MAX_PCLUSTER_BLOCKS:
            raise AssertionError(f"a pcluster of {nblocks} blocks")
        self.blocks += nblocks
        self.llens.append(llen)
        self.codes.append(nblocks | _RAW if raw else nblocks)
        self.done += llen

    def add_new(self, pcl: list[Pcluster]) -> list:
        """add() each of `pcl` (all written as new blocks, or the inline tail): what a worker
        does for a file it compresses alone, in one loop as it runs for every pcluster.
        Returns the payloads that go to data blocks, in order."""
        bs = self.cfg.block_size
        llens, codes = self.llens, self.codes
        parts = []
        for p in pcl:
            payload = p.payload
            if p.inline or p.fragment or self.idata or self.fragment_len or \
                    self.addrs is not None:
                self.add(p)
                if not p.inline:
                    parts.append(payload)
                continue
            nblocks = len(payload) // bs
            if len(payload) != nblocks * bs or not 1 <= nblocks <= MAX_PCLUSTER_BLOCKS:
                raise AssertionError(f"a pcluster of {len(payload)} bytes")
            self.blocks += nblocks
            llens.append(p.llen)
            codes.append(nblocks | _RAW if p.raw else nblocks)
            self.done += p.llen
            parts.append(payload)
        return parts

    def saves_space(self) -> bool:
        """mkfs.erofs keeps a compressed file only if data + inline tail + full-index metadata
        take less than the file's size (always, when part of it is a fragment); otherwise the
        file is stored flat."""
        if self.fragment_len:
            return True
        legacy_meta = index.full_area_size(lcluster_count(self.size, self.cfg.block_size))
        return self.blocks * self.cfg.block_size + len(self.idata) + legacy_meta < self.size

    def extents(self) -> FileExtents | None:
        """The file's extents once every pcluster was added, or None when compression saves
        nothing."""
        if self.done != self.size:
            raise AssertionError(f"pclusters cover {self.done} of {self.size} bytes")
        if not self.saves_space():
            return None
        return FileExtents(self.size, self.meta_size, self.profile.algorithm_id, self.llens,
                           self.codes, self.blocks, self.idata, self.addrs, self.fragment_len > 0)

    def finish(self, start_blk: int, fragment_off: int | None = None) -> CompressedLayout | None:
        """The layout for new pclusters written from `start_blk` (and the fragment at
        `fragment_off` in the packed inode), or None when compression saves nothing."""
        if (fragment_off is None) != (self.fragment_len == 0):
            raise AssertionError("fragment offset without a fragment, or the reverse")
        ext = self.extents()
        return None if ext is None else ext.layout(self.cfg, start_blk, fragment_off)


@dataclass(slots=True)
class FileExtents:
    """What the indexes of a compressed file are made of, without block addresses: the length
    and code (blocks, raw, inline, fragment) of each extent, the inline pcluster.  A worker
    hands this back for a file it compressed alone; the indexes are encoded once, when the
    caller knows where the pclusters go."""
    size: int
    meta_size: int
    algorithm: int
    llens: array
    codes: array
    blocks: int                     # new data blocks
    idata: bytes = b""              # the inline pcluster (ztailpacking)
    addrs: array | None = None      # -Ededupe: block of each pcluster written before, else -1
    fragment: bool = False          # the last extent is in the packed inode

    def layout(self, cfg: CompressConfig, start_blk: int,
               fragment_off: int | None = None) -> CompressedLayout:
        """The layout for new pclusters written from `start_blk` and the fragment (if any) at
        `fragment_off` in the packed inode."""
        layout, meta, advise = build_indexes(self.llens, self.codes, self.size, start_blk,
                                             self.meta_size, cfg, self.algorithm, self.idata,
                                             self.addrs, fragment_off)
        return CompressedLayout(layout, self.blocks, meta, advise, bool(self.idata),
                                len(self.idata), fragment=self.fragment,
                                deduped=self.addrs is not None)

    def unplaced(self, cfg: CompressConfig) -> "FileExtents | UnplacedLayout":
        """What a worker hands back for a file it compressed alone: its layout for pclusters
        from block 0 when compact indexes describe it (every pcluster new, no fragment), else
        these extents."""
        if cfg.legacy_indexes or self.addrs is not None or self.fragment:
            return self
        ebase = fmt.z_erofs_map_header_pos(self.meta_size) + fmt.Z_EROFS_MAP_HEADER_SIZE
        layout, meta, advise = build_indexes(self.llens, self.codes, self.size, 0,
                                             self.meta_size, cfg, self.algorithm, self.idata)
        return UnplacedLayout(layout, self.blocks, meta, advise, len(self.idata),
                              ebase - self.meta_size, ebase,
                              lcluster_count(self.size, cfg.block_size))


class UnplacedLayout(NamedTuple):
    """The layout of a file compressed alone, with its compact indexes encoded (in the worker
    that compressed it) for pclusters from block 0.  Placing it moves the base address of
    each pack: cheaper than encoding the indexes in the process that hands out the blocks,
    which has every file's metadata to do as well.  A tuple of plain values: hundreds of
    them cross the pipe from a worker in one batch, and a plain tuple pickles without any
    Python call (a dataclass took ~6 us a file to pickle and unpickle)."""
    datalayout: int
    blocks: int
    inline: bytes                   # as CompressedLayout.inline, for block 0
    advise: int
    tail: int                       # bytes of the inline pcluster (ztailpacking), or 0
    index_at: int                   # where the compact indexes begin in `inline`
    ebase: int                      # ... and in the inode
    lclusters: int

    def layout(self, cfg: CompressConfig, start_blk: int) -> CompressedLayout:
        """The layout for the pclusters written from `start_blk` (as FileExtents.layout)."""
        area = bytearray(self.inline)
        index.shift_compact_bases(area, self.index_at, self.lclusters, self.ebase, start_blk)
        return CompressedLayout(self.datalayout, self.blocks, bytes(area), self.advise,
                                self.tail > 0, self.tail)
