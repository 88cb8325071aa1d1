"""Lcluster indexes of compressed inodes, both ways: the map header, full and compact indexes.

The kernel's rules (fs/erofs/erofs_fs.h, zmap.c), restated:

* The map header (8 bytes) sits at the end of inode + inline xattrs rounded up to 8.  Its first
  le32 is h_fragmentoff (FRAGMENT_PCLUSTER) or holds h_idata_size in its high half
  (INLINE_PCLUSTER); then le16 h_advise, u8 h_algorithmtype (HEAD1 algorithm in the low nibble,
  HEAD2 in the high one), u8 h_clusterbits (lclusterbits - blkszbits in the low nibble).  Bit 7
  of h_clusterbits set means the whole file is a fragment: the header is then
  ``le64(fragment offset | 1 << 63)``.
* One index per lcluster.  An extent starts at a head (HEAD1/HEAD2 compressed, PLAIN raw) at its
  clusterofs; lclusters an extent covers completely are NONHEAD and keep delta[0] (back to the
  head) and delta[1] (forward to the next head).  With big pclusters the first NONHEAD of a
  pcluster keeps its block count in delta[0] instead, flagged by Z_EROFS_LI_D0_CBLKCNT.
* Full indexes (COMPRESSED_FULL): 8 reserved bytes after the header, then one
  z_erofs_lcluster_index (8 bytes) per lcluster: le16 di_advise (type in the low 2 bits,
  PARTIAL_REF), le16 di_clusterofs, le32 di_u = blkaddr of a head or delta[0] | delta[1] << 16.
* Compact indexes (COMPRESSED_COMPACT) start right after the header and come in packs, each
  ending with a le32 base block address: 4B packs hold 2 entries in 8 bytes (16 bits each), 2B
  packs 16 entries in 32 bytes (14 bits each).  An entry is (type << lobits | value), lobits =
  max(lclusterbits, 12); the value is a head's clusterofs, a NONHEAD's delta[0], or in the last
  entry of a pack delta[1].  2B packs (COMPACTED_2B) must start 32-byte aligned: the area opens
  with 4B entries up to that alignment, then 2B packs of whole 16s, then 4B entries again.  The
  count of entries is ceil(size / block size) (counted in blocks, whatever lclusterbits says).
* A compact head's block address is the pack's base plus the blocks of the pclusters whose
  heads precede it in the pack: one per head, or the CBLKCNT count with big pclusters (where a
  head not followed by a CBLKCNT entry is a one-block pcluster).  Without big pclusters the
  base is the block before the pack's first head.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Callable, Iterable

from ..errors import ImageError
from . import format as fmt

PLAIN = fmt.Z_EROFS_LCLUSTER_TYPE_PLAIN
HEAD1 = fmt.Z_EROFS_LCLUSTER_TYPE_HEAD1
NONHEAD = fmt.Z_EROFS_LCLUSTER_TYPE_NONHEAD
HEAD2 = fmt.Z_EROFS_LCLUSTER_TYPE_HEAD2
CBLKCNT = fmt.Z_EROFS_LI_D0_CBLKCNT
_TYPE_MASK = fmt.Z_EROFS_LI_LCLUSTER_TYPE_MASK

_WHOLE_FRAGMENT = 1 << (8 * (fmt.Z_EROFS_MAP_HEADER_SIZE - 1) + fmt.Z_EROFS_FRAGMENT_INODE_BIT)
_2B_ALIGN = 32                    # 2B packs start at a multiple of 32 bytes
_PACK_BASE_SIZE = 4               # the le32 base block address ending every compact pack
_ADDR_MASK = 0xFFFFFFFF
_MAP_HEADER = fmt.Z_EROFS_MAP_HEADER
_FRAGMENT_PCLUSTER = fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER


# ---------------------------------------------------------------------------
# map header


@dataclass(slots=True)
class MapHeader:
    advise: int
    algorithms: tuple[int, int]        # HEAD1, HEAD2
    lclusterbits: int
    idata_size: int = 0                # ztailpacking: bytes of the inline pcluster
    fragmentoff: int = 0               # h_fragmentoff (whole_fragment: the 64-bit offset)
    whole_fragment: bool = False       # the whole file is in the packed inode at fragmentoff
    records: bool = False              # COMPRESSED_FULL with extent records instead of lclusters
    extent_count: int = 0

    def pack(self, blkszbits: int) -> bytes:
        if self.whole_fragment:
            return pack_whole_fragment_header(self.fragmentoff)
        if self.records:
            raise NotImplementedError("extent records are not written")
        return pack_map_header(self.advise, self.algorithms[0], self.algorithms[1],
                               self.lclusterbits - blkszbits, self.idata_size, self.fragmentoff)


def pack_map_header(advise: int, head1_alg: int, head2_alg: int = 0, clusterbits: int = 0,
                    idata_size: int = 0, fragmentoff: int = 0) -> bytes:
    """MapHeader(...).pack() without the object (the writer makes one per compressed file)."""
    first = fragmentoff if advise & _FRAGMENT_PCLUSTER else idata_size << 16
    return _MAP_HEADER.pack(first, advise, head1_alg | head2_alg << 4, clusterbits)


def pack_whole_fragment_header(fragmentoff: int) -> bytes:
    """The map header of a file that is entirely a fragment at `fragmentoff`."""
    return (fragmentoff | _WHOLE_FRAGMENT).to_bytes(fmt.Z_EROFS_MAP_HEADER_SIZE, "little")


def unpack_map_header(raw: bytes, blkszbits: int, datalayout: int) -> MapHeader:
    """The fields of a map header, as the kernel reads them (nothing is checked here)."""
    first, advise, algtype, clusterbits = fmt.Z_EROFS_MAP_HEADER.unpack(raw)
    if clusterbits >> fmt.Z_EROFS_FRAGMENT_INODE_BIT:
        whole = int.from_bytes(raw, "little") ^ _WHOLE_FRAGMENT
        return MapHeader(fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER, (0, 0), blkszbits,
                         fragmentoff=whole, whole_fragment=True)
    lclusterbits = blkszbits + (clusterbits & 15)
    if datalayout == fmt.EROFS_INODE_COMPRESSED_FULL and advise & fmt.Z_EROFS_ADVISE_EXTENTS:
        # extent records (48-bit images): h_extents_lo in the first le32, h_extents_hi in the
        # two bytes that otherwise hold the algorithm type and cluster bits
        count = first | (algtype | clusterbits << 8) << 32
        return MapHeader(advise, (0, 0), lclusterbits, records=True, extent_count=count)
    header = MapHeader(advise, (algtype & 15, algtype >> 4), lclusterbits)
    if advise & fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER:
        header.fragmentoff = first
    elif advise & fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER:
        header.idata_size = first >> 16
    return header


def data_kind(header: MapHeader) -> str:
    """How a build report and `mkerofs-read stats` name a compressed file's data: its HEAD1
    algorithm (h_algorithmtype), or "fragment" for a file entirely in the packed inode."""
    if header.whole_fragment:
        return WHOLE_FRAGMENT
    names = fmt.Z_EROFS_COMPRESSION_NAMES
    alg = header.algorithms[0]
    return names[alg] if alg < len(names) else f"algorithm-{alg}"


WHOLE_FRAGMENT = "fragment"     # data_kind of a file entirely in the packed inode
UNCOMPRESSED = "none"           # and the name of the files stored as they are


# ---------------------------------------------------------------------------
# what an encoder takes and a decoder gives


@dataclass
class Lclusters:
    """One entry per lcluster as a writer means it: heads (lo=clusterofs, hi=blkaddr), NONHEAD
    (lo=delta[0], or CBLKCNT | block count; hi=delta[1]); `ofs` is the di_clusterofs of full
    indexes (mkfs.erofs writes the head's clusterofs on NONHEADs too)."""
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


@dataclass(slots=True)
class DecodedLclusters:
    """Every index of one inode, decoded as the kernel decodes each on its own."""
    types: list[int]
    lo: list[int]           # heads: clusterofs; NONHEAD: delta[0] (1 for a CBLKCNT entry)
    d1: list[int]           # NONHEAD: delta[1] (lookahead distance); heads: 0
    pblk: list[int]         # heads: block address; NONHEAD: 0
    cblks: list[int]        # NONHEAD with CBLKCNT: the block count; else 0
    partial: list[bool]     # heads (full indexes only): PARTIAL_REF
    tail_end: int           # byte just after the index (pack) of the last lcluster


# ---------------------------------------------------------------------------
# full indexes


def full_area_size(totalidx: int) -> int:
    """Bytes from the map header to the end of `totalidx` full indexes."""
    return (fmt.Z_EROFS_MAP_HEADER_SIZE + fmt.Z_EROFS_FULL_INDEX_GAP
            + totalidx * fmt.Z_EROFS_LCLUSTER_INDEX_SIZE)


def encode_full(ent: Lclusters) -> bytes:
    """Full (legacy) indexes: 8 bytes per lcluster, without the reserved gap before them."""
    u = [lo | hi << 16 if t == NONHEAD else hi
         for t, lo, hi in zip(ent.types, ent.lo, ent.hi)]
    return b"".join(map(fmt.Z_EROFS_LCLUSTER_INDEX.pack, ent.types, ent.ofs, u))


def decode_full(get: Callable[[int, int], bytes], start: int, count: int, lclusterbits: int,
                big: bool) -> DecodedLclusters:
    raw = get(start, count * fmt.Z_EROFS_LCLUSTER_INDEX_SIZE)
    types, lo, d1, pblk, cblks, partial = [], [], [], [], [], []
    lcs = 1 << lclusterbits
    for lcn, (advise, clusterofs, u) in enumerate(fmt.Z_EROFS_LCLUSTER_INDEX.iter_unpack(raw)):
        t = advise & _TYPE_MASK
        types.append(t)
        if t == NONHEAD:
            delta0 = u & 0xFFFF
            blocks = 0
            if delta0 & CBLKCNT:
                if not big:
                    raise ImageError(f"lcluster {lcn}: block count (CBLKCNT) without big "
                                     "pclusters")
                blocks, delta0 = delta0 & ~CBLKCNT, 1
            lo.append(delta0)
            d1.append(u >> 16)
            pblk.append(0)
            cblks.append(blocks)
            partial.append(False)
        else:
            if clusterofs >= lcs:
                raise ImageError(f"lcluster {lcn}: clusterofs {clusterofs} beyond the "
                                 f"lcluster size {lcs}")
            lo.append(clusterofs)
            d1.append(0)
            pblk.append(u)
            cblks.append(0)
            partial.append(bool(advise & fmt.Z_EROFS_LI_PARTIAL_REF))
    return DecodedLclusters(types, lo, d1, pblk, cblks, partial,
                            start + count * fmt.Z_EROFS_LCLUSTER_INDEX_SIZE)


# ---------------------------------------------------------------------------
# compact indexes: geometry


def compact_runs(totalidx: int, ebase: int, compacted_2b: bool = True) -> tuple[int, int, int]:
    """(4B entries at the start, 2B entries, 4B entries at the end) of a compact index area
    that begins at byte `ebase` (of anything 32-byte aligned: the inode is)."""
    initial = ((_2B_ALIGN - ebase % _2B_ALIGN) // 4) & 7
    if initial > totalidx:
        return 0, 0, totalidx
    two = (totalidx - initial) // 16 * 16 if compacted_2b else 0
    return initial, two, totalidx - initial - two


def _compact_pack(entry_size: int, lclusterbits: int) -> tuple[int, int, int] | None:
    if entry_size == 4 and lclusterbits <= 14:
        vcnt = 2
    elif entry_size == 2 and lclusterbits <= 12:
        vcnt = 16
    else:
        return None
    lobits = max(lclusterbits, CBLKCNT.bit_length())
    encodebits = ((vcnt * entry_size - _PACK_BASE_SIZE) * 8) // vcnt
    return vcnt, encodebits, lobits


_COMPACT_PACKS = {(size, bits): _compact_pack(size, bits) for size in (2, 4) for bits in range(32)}
# what the encoder needs of a pack, looked up once per run of every compressed file: vcnt,
# encodebits, lobits, bytes, bit position of the base
_ENCODINGS = {key: (*p, p[0] * key[0], 8 * (p[0] * key[0] - _PACK_BASE_SIZE))
              for key, p in _COMPACT_PACKS.items() if p is not None}
assert PLAIN == 0       # the encoder leaves entries past the last lcluster as zero bits


def compact_pack(entry_size: int, lclusterbits: int) -> tuple[int, int, int] | None:
    """(vcnt, encodebits, lobits) of a compact pack whose entries take `entry_size` (4 or 2)
    bytes on average: vcnt entries of encodebits bits each (lobits of clusterofs/delta, then 2
    of lcluster type), then the pack's le32 base block address.  None: not representable."""
    return _COMPACT_PACKS.get((entry_size, lclusterbits))


def compact_regions(totalidx: int, ebase: int, compacted_2b: bool = True
                    ) -> list[tuple[int, int, int, int]]:
    """(entry size, first lcn, entries, byte position) of each non-empty run of the area."""
    regions = []
    pos = ebase
    lcn = 0
    for size, n in zip((4, 2, 4), compact_runs(totalidx, ebase, compacted_2b)):
        if n:
            regions.append((size, lcn, n, pos))
            lcn += n
            pos += n * size
    return regions


def compact_area_size(totalidx: int, ebase: int) -> int:
    """Bytes of `totalidx` compact entries (COMPACTED_2B) at `ebase`; the last 4B pack may be
    half empty."""
    initial, two, end = compact_runs(totalidx, ebase)
    return 4 * initial + 2 * two + 4 * (end + (end & 1))


# ---------------------------------------------------------------------------
# compact indexes: encoding


def _pack_2b(out: bytearray, at: int, fields: list[int], vcnt: int, encodebits: int,
             basebits: int, packsize: int) -> None:
    """Write 2B packs at out[at:]: `fields` holds each pack's vcnt entries, then its base."""
    for k in range(0, len(fields), vcnt + 1):
        bits = fields[k + vcnt] << basebits
        shift = 0
        for v in fields[k:k + vcnt]:
            bits |= v << shift
            shift += encodebits
        out[at:at + packsize] = bits.to_bytes(packsize, "little")
        at += packsize


# Extent codes: how a writer describes each extent to encode_compact_extents (an array('H')
# next to the extents' lengths): the blocks of its pcluster and what kind it is.
EXTENT_BLOCKS = (1 << 12) - 1
EXTENT_FRAGMENT = 1 << 13       # in the packed inode: no blocks
EXTENT_RAW = 1 << 14            # stored uncompressed: a PLAIN head
EXTENT_INLINE = 1 << 15         # ztailpacking: after the indexes, counted as one block


@lru_cache(maxsize=64)
def _nonhead_ramp(nonhead: int, most: int) -> list[int]:
    """The entries of NONHEAD lclusters 2..most after their head: delta[0] (capped as CBLKCNT
    requires); the same few lengths come back for every file, and are only ever sliced."""
    cap = CBLKCNT - 1
    return [nonhead | (d if d < cap else cap) for d in range(2, most + 1)]


def encode_compact_extents(llens, codes, ebase: int, start_blk: int, lclusterbits: int,
                           big_pcluster: bool) -> bytearray:
    """Compact indexes (COMPACTED_2B) for extents laid end to end from offset 0 (`codes` as
    EXTENT_*), their pclusters consecutive from `start_blk`; `ebase` is where they begin.
    One pass over the extents and one over the packs: no entry object is made (this runs once
    per compressed file).  (A bytearray of the final size, filled in place and not copied: a
    big sparse file has megabytes of them.)"""
    encodings = _ENCODINGS
    if (2, lclusterbits) not in encodings:
        raise ValueError("compact 2B indexes need lclusters of at most 4 KiB")
    lobits = encodings[2, lclusterbits][2]
    lcmask = (1 << lclusterbits) - 1
    nonhead = NONHEAD << lobits
    head1, plain = HEAD1 << lobits, PLAIN << lobits
    vals = []                   # every entry as stored, NONHEADs with their delta[0]
    hpos = []                   # the entry of each head: the extents', then the one at EOF
    # With big pclusters, the decoder's running block count right after each head (without,
    # it is start_blk + the head's number): a head adds one block when the entry before it is
    # not a NONHEAD (the previous pcluster had no CBLKCNT), a first NONHEAD its CBLKCNT count.
    hblk = []
    blk = start_blk
    prev_nonhead = True         # (the first head adds nothing)
    pos = 0
    most = 0
    d1 = 1
    for llen, code in zip(llens, codes):
        if not d1:
            raise ValueError(f"extent {len(hpos) - 1} (+{llen}) ends inside its lcluster")
        c = pos & lcmask
        d1 = (c + llen) >> lclusterbits
        hpos.append(len(vals))
        head = (plain if code & EXTENT_RAW else head1) | c
        if big_pcluster:
            if not prev_nonhead:
                blk += 1
            hblk.append(blk)
        if d1 > 1:
            if big_pcluster:
                vals += (head, nonhead | CBLKCNT | code & EXTENT_BLOCKS)
                blk += code & EXTENT_BLOCKS
                prev_nonhead = True
            else:
                vals += (head, nonhead | 1)
            if d1 > 2:
                if d1 > most:
                    most = max(d1, 16)
                    ramp = _nonhead_ramp(nonhead, most)
                vals += ramp[:d1 - 2]
        else:
            vals.append(head)
            prev_nonhead = False
        pos += llen
    if d1 and pos & lcmask:
        # the lcluster where the file ends opens a (virtual) extent at EOF
        hpos.append(len(vals))
        vals.append(plain | pos & lcmask)
        if big_pcluster:
            hblk.append(blk if prev_nonhead else blk + 1)
    nidx = len(vals)
    hpos.append(nidx)           # (where the NONHEADs of the last extent end)
    initial, two, end = compact_runs(nidx, ebase)
    out = bytearray(compact_area_size(nidx, ebase))
    cap = CBLKCNT - 1
    at = 0
    h = 0                       # the extent of the entry looked at
    for entry_size, first, n in ((4, 0, initial), (2, initial, two), (4, initial + two, end)):
        if not n:
            continue
        vcnt, encodebits, lobits, packsize, basebits = encodings[entry_size, lclusterbits]
        fields = []                 # each pack's entries, then its base: a batch of packs
        batch = _PACKS_A_BATCH * (vcnt + 1)
        for i0 in range(first, first + n, vcnt):
            while hpos[h + 1] <= i0:
                h += 1
            p = hpos[h]
            if not big_pcluster:
                # a pack opening at a head keeps the count before it
                base = start_blk + h - 1 if i0 == p else start_blk + h
            elif i0 > p + 1:        # past the CBLKCNT entry
                base = hblk[h] + (codes[h] & EXTENT_BLOCKS)
            else:
                base = hblk[h]
            lst = i0 + vcnt - 1
            if lst < nidx:
                fields += vals[i0:lst + 1]
                v = vals[lst]
                if v >> lobits == NONHEAD and not v & CBLKCNT:
                    # the last entry of a pack keeps delta[1]: how far the next head is
                    g = h
                    while hpos[g + 1] <= lst:
                        g += 1
                    ahead = hpos[g + 1] - lst
                    fields[-1] = nonhead | (ahead if ahead < cap else cap)
            else:
                fields += vals[i0:]
                # entries past the last lcluster stay 0 bits: PLAIN, clusterofs 0
                fields += _NO_ENTRIES[:lst + 1 - nidx]
            fields.append(base & _ADDR_MASK)
            if len(fields) == batch:
                _pack_2b(out, at, fields, vcnt, encodebits, basebits, packsize)
                at += _PACKS_A_BATCH * packsize
                fields.clear()
        packs = len(fields) // (vcnt + 1)
        if entry_size == 4:
            _PACKS_4B[packs].pack_into(out, at, *fields)
        else:
            _pack_2b(out, at, fields, vcnt, encodebits, basebits, packsize)
        at += packs * packsize
    assert at == len(out)
    return out


# 2B packs encoded at once (a batch): the fields of every pack of a file at once were a list as
# long as its entries, 8 bytes each (a 5 GiB file: 11 MiB at the peak of its build); a run of
# 4B entries is shorter than one pack
_PACKS_A_BATCH = 1024


# the 4B packs of a run (at most 8: a run of 4B entries is shorter than one 2B pack), as one
# struct each: le16 entry, le16 entry, le32 base per pack
_PACKS_4B = [struct.Struct("<" + "HHI" * n) for n in range(9)]
assert all(_ENCODINGS[4, bits][1] == 16 for bits in range(15))
_NO_ENTRIES = [0] * 16


def shift_compact_bases(area: bytearray, at: int, totalidx: int, ebase: int, blocks: int
                        ) -> None:
    """Add `blocks` to the base block address of every pack of the compact indexes (of
    `totalidx` entries, beginning at byte `ebase` of the inode) found at `area[at:]`: what
    encode_compact_extents gives for pclusters from block B + `blocks`, from its bytes for
    block B (a pack's base is the running address of its pclusters, so it moves with the
    first)."""
    unpack, pack = _PACK_BASE.unpack_from, _PACK_BASE.pack_into
    for pos in _pack_base_positions(totalidx, ebase % _2B_ALIGN):
        pos += at
        pack(area, pos, (unpack(area, pos)[0] + blocks) & _ADDR_MASK)


_PACK_BASE = struct.Struct("<I")
assert _PACK_BASE.size == _PACK_BASE_SIZE


def _pack_base_positions(totalidx: int, ebase: int) -> Iterable[int]:
    """Where the base of each pack of a compact area is, from its start: kept for the small
    areas, met again and again (every compressed file's area is moved once)."""
    if totalidx <= _CACHED_AREA_MAX:
        return _cached_base_positions(totalidx, ebase)
    return chain.from_iterable(_base_positions(totalidx, ebase))


def _base_positions(totalidx: int, ebase: int) -> list[range]:
    out = []
    start = 0
    for entry_size, n in zip((4, 2, 4), compact_runs(totalidx, ebase)):
        if n:
            packsize = _ENCODINGS[entry_size, 12][3]        # (the same for any lclusterbits)
            end = start + -(-n * entry_size // packsize) * packsize
            out.append(range(start + packsize - _PACK_BASE_SIZE, end, packsize))
            start = end
    return out


_CACHED_AREA_MAX = 1024


@lru_cache(maxsize=4 * _CACHED_AREA_MAX)
def _cached_base_positions(totalidx: int, ebase: int) -> tuple[int, ...]:
    return tuple(pos for run in _base_positions(totalidx, ebase) for pos in run)



# ---------------------------------------------------------------------------
# compact indexes: decoding


def decode_compact(get: Callable[[int, int], bytes], ebase: int, count: int, size: int,
                   blkszbits: int, lclusterbits: int, advise: int) -> DecodedLclusters:
    """The first `count` lclusters of the compact area at `ebase` of a `size`-byte file."""
    totalidx = -(-size >> blkszbits)          # the kernel counts compact entries in blocks
    if count > totalidx or lclusterbits > 14:
        raise ImageError(f"compact indexes cannot describe {count} lclusters of "
                         f"{1 << lclusterbits} bytes")
    big = bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1)
    lcs = 1 << lclusterbits
    types, lo, d1, pblk, cblks = [], [], [], [], []
    tail_end = ebase
    regions = compact_regions(totalidx, ebase, bool(advise & fmt.Z_EROFS_ADVISE_COMPACTED_2B))
    for entry_size, first, n, pos in regions:
        if first >= count:
            break
        n = min(n, count - first)
        pack = compact_pack(entry_size, lclusterbits)
        if pack is None:
            raise ImageError(f"{entry_size}-byte compact indexes cannot describe "
                             f"{lcs}-byte lclusters")
        vcnt, encodebits, lobits = pack
        packsize = vcnt * entry_size
        npacks = -(-n // vcnt)
        area = get(pos, npacks * packsize)
        tail_end = pos + npacks * packsize
        for k in range(npacks):
            raw = area[k * packsize:(k + 1) * packsize]
            _decode_pack(raw, vcnt, encodebits, lobits, big, lcs, first + k * vcnt,
                         min(vcnt, n - k * vcnt), types, lo, d1, pblk, cblks)
    return DecodedLclusters(types, lo, d1, pblk, cblks, [False] * count, tail_end)


def _decode_pack(raw: bytes, vcnt: int, encodebits: int, lobits: int, big: bool, lcs: int,
                 first_lcn: int, used: int, types, lo, d1, pblk, cblks) -> None:
    word = int.from_bytes(raw, "little")
    basebits = 8 * (len(raw) - _PACK_BASE_SIZE)
    base = word >> basebits
    emask, lomask = (1 << encodebits) - 1, (1 << lobits) - 1
    x = [word >> shift & emask for shift in range(0, vcnt * encodebits, encodebits)]
    v = [e & lomask for e in x]
    t = [e >> lobits & _TYPE_MASK for e in x]
    if NONHEAD not in t and max(v) < lcs:
        # every lcluster starts a one-block pcluster: the common case, counted directly
        first = 0 if big else 1
        types.extend(t[:used])
        lo.extend(v[:used])
        d1.extend([0] * used)
        pblk.extend(range(base + first, base + first + used))
        cblks.extend([0] * used)
        return
    # blocks before each entry of the pack, as the kernel counts them walking backwards from
    # a head (memoized: every step only looks at smaller indexes)
    before = pack_blocks_big(t, v) if big else pack_blocks(t, v)
    last_lo = v[vcnt - 1]
    for i in range(used):
        lcn = first_lcn + i
        types.append(t[i])
        if t[i] == NONHEAD:
            blocks = 0
            if v[i] & CBLKCNT:
                if not big:
                    raise ImageError(f"lcluster {lcn}: block count (CBLKCNT) without big "
                                     "pclusters")
                blocks, delta0 = v[i] & ~CBLKCNT, 1
            elif i + 1 != vcnt:
                delta0 = v[i]
            else:
                # the last entry of a pack stores delta[1]; delta[0] follows from the one before
                prev = 0 if t[i - 1] != NONHEAD else (1 if v[i - 1] & CBLKCNT else v[i - 1])
                delta0 = prev + 1
            j = i
            while j < vcnt and t[j] == NONHEAD:
                j += 1
            if j < vcnt:
                ahead = j - i
            else:
                ahead = vcnt - i + (0 if last_lo & CBLKCNT else last_lo - 1)
            lo.append(delta0)
            d1.append(ahead)
            pblk.append(0)
            cblks.append(blocks)
        else:
            if v[i] >= lcs:
                raise ImageError(f"lcluster {lcn}: clusterofs {v[i]} beyond the lcluster "
                                 f"size {lcs}")
            nblk = before[i]
            if nblk is None:
                raise ImageError(f"lcluster {lcn}: compact pack with a bogus delta before "
                                 "this head")
            lo.append(v[i])
            d1.append(0)
            pblk.append(base + nblk)
            cblks.append(0)


def pack_blocks(t: list[int], v: list[int]) -> list[int]:
    """Non-big pclusters: the kernel starts at 1 and counts every head it meets walking back
    through the pack, jumping over NONHEAD runs by their delta[0]."""
    n = len(t)
    after = [0] * (n + 1)      # after[i]: what the walk counts starting with index i (before --i)
    for i in range(1, n + 1):
        k = i - 1
        if t[k] == NONHEAD:
            back = k - v[k]
            after[i] = 1 + after[back] if back >= 0 else 0
        else:
            after[i] = 1 + after[k]
    return [1 + after[i] for i in range(n)]


def pack_blocks_big(t: list[int], v: list[int]) -> list[int | None]:
    """Big pclusters: a CBLKCNT entry adds its count and skips its head; a head without one
    is a one-block pcluster; other NONHEAD entries jump back by delta[0] - 1."""
    n = len(t)
    after: list[int | None] = [0] * (n + 1)
    for i in range(1, n + 1):
        k = i - 1
        if t[k] == NONHEAD:
            if v[k] & CBLKCNT:
                rest = after[k - 1] if k >= 1 else 0
                after[i] = None if rest is None else (v[k] & ~CBLKCNT) + rest
            elif v[k] <= 1:
                after[i] = None            # the kernel refuses plain delta[0] <= 1 here
            else:
                after[i] = after[max(i + 1 - v[k], 0)]
        else:
            rest = after[k]
            after[i] = None if rest is None else 1 + rest
    return after[:n]
