"""Reading compressed inodes: lcluster indexes to extents, and pclusters back to bytes.

The rules are the kernel's (fs/erofs/zmap.c, decompressor*.c), restated:

* The map header sits at the end of inode + inline xattrs rounded up to 8.  Bit 7 of
  h_clusterbits set means the whole file lives in the packed inode at offset
  ``le64(header) ^ (1 << 63)``.  Otherwise lclusterbits = blkszbits + (h_clusterbits & 15),
  h_algorithmtype holds the HEAD1 algorithm (low nibble) and the HEAD2 one (high nibble), and
  the first le32 is h_fragmentoff (FRAGMENT_PCLUSTER) or carries h_idata_size in its high half
  (INLINE_PCLUSTER, i.e. ztailpacking).
* One index per lcluster: ceil(size / lclustersize) of them.  Full indexes (8 bytes) start 16
  bytes after the header start; compact ones right after the header, in packs that keep one
  le32 base block address at their end (see format.z_erofs_compact_layout/_pack).
* An extent starts at every HEAD1/HEAD2/PLAIN lcluster, at its clusterofs, and runs to the
  start of the next one (or EOF).  Lcluster 0 must be a head at offset 0.  NONHEAD entries
  point back to their head (delta[0]) and forward to the next head (delta[1]); the kernel
  finds heads through delta[0] and fsck/fiemap finds extent ends through delta[1], so both
  must agree with the order of heads (``check_deltas``).
* A pcluster is one block unless the inode advises big pclusters for its head type (HEAD1:
  BIG_PCLUSTER_1, PLAIN/HEAD2: BIG_PCLUSTER_2) and the next lcluster is a NONHEAD: then that
  NONHEAD must carry the block count (delta[0] | Z_EROFS_LI_D0_CBLKCNT).
* The extent holding the last byte is inline after the index area (ztailpacking: h_idata_size
  bytes right after the index pack of the last lcluster, within one block) or a fragment in the
  packed inode (h_fragmentoff, plus the head's blkaddr << 32 for full indexes).
* PLAIN pclusters are stored raw: "shifted" (the extent's bytes from the pcluster's start) or,
  with INTERLACED_PCLUSTER, rotated so that byte 0 sits at the extent's offset in its block.
  Compressed pclusters hold one stream, right-aligned after zero padding (LZ4_0PADDING).
  Full indexes may mark a head PARTIAL_REF (dedupe): the extent is a prefix of what the
  pcluster decodes to.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from ..codecs.base import Codec
from ..codecs.registry import ALGORITHM_NAMES
from ..errors import ImageError
from ..ondisk import format as fmt

NONHEAD = fmt.Z_EROFS_LCLUSTER_TYPE_NONHEAD
PLAIN = fmt.Z_EROFS_LCLUSTER_TYPE_PLAIN
HEAD1 = fmt.Z_EROFS_LCLUSTER_TYPE_HEAD1
HEAD2 = fmt.Z_EROFS_LCLUSTER_TYPE_HEAD2
CBLKCNT = fmt.Z_EROFS_LI_D0_CBLKCNT


@dataclass(slots=True)
class Extent:
    """A run of file bytes and where they come from.

    kind: "plain" (raw in data blocks), "interlaced" (a raw pcluster stored rotated),
    "inline" (raw tail after the inode), "compressed", "ztailpacking" (a pcluster inline after
    the inode; algorithm None when it is stored raw), "fragment" (in the packed inode:
    `physical` is then the offset in the packed inode's data) or "hole" (zeros, physical None).
    """
    logical: int
    length: int
    physical: int | None
    physical_length: int
    algorithm: str | None = None
    kind: str = "plain"
    partial: bool = False
    interlaced: bool = False     # a raw pcluster stored rotated (INTERLACED_PCLUSTER)

    @property
    def end(self) -> int:
        return self.logical + self.length


@dataclass(slots=True)
class MapHeader:
    advise: int
    algorithms: tuple[int, int]        # HEAD1, HEAD2
    lclusterbits: int
    idata_size: int = 0                # ztailpacking: bytes of the inline pcluster
    fragmentoff: int = 0
    whole_fragment: bool = False       # the whole file is in the packed inode at fragmentoff
    records: bool = False              # COMPRESSED_FULL with extent records instead of lclusters
    extent_count: int = 0


def read_map_header(raw: bytes, blkszbits: int, datalayout: int, big_pcluster_sb: bool
                    ) -> MapHeader:
    first, advise, algtype, clusterbits = fmt.Z_EROFS_MAP_HEADER.unpack(raw)
    if clusterbits >> fmt.Z_EROFS_FRAGMENT_INODE_BIT:
        whole = int.from_bytes(raw, "little") ^ (1 << 63)
        return MapHeader(fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER, (0, 0), blkszbits,
                         fragmentoff=whole, whole_fragment=True)
    lclusterbits = blkszbits + (clusterbits & 15)
    if datalayout == fmt.EROFS_INODE_COMPRESSED_FULL and advise & fmt.Z_EROFS_ADVISE_EXTENTS:
        # extent records (48-bit images): h_extents_lo in the first le32, h_extents_hi in the
        # two bytes that otherwise hold the algorithm type and cluster bits
        count = first | (int.from_bytes(raw[6:8], "little") << 32)
        return MapHeader(advise, (0, 0), lclusterbits, records=True, extent_count=count)
    big = advise & (fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
    if big and not big_pcluster_sb:
        raise ImageError("per-inode big pclusters without the superblock feature")
    if datalayout == fmt.EROFS_INODE_COMPRESSED_COMPACT and \
            bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1) != \
            bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2):
        raise ImageError("compact indexes with inconsistent big pcluster advice for HEAD1/HEAD2")
    header = MapHeader(advise, (algtype & 15, algtype >> 4), lclusterbits)
    if advise & fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER:
        header.fragmentoff = first
    elif advise & fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER:
        header.idata_size = first >> 16
    return header


# ---------------------------------------------------------------------------
# lcluster indexes


@dataclass(slots=True)
class Lclusters:
    """Every index of one inode, decoded as the kernel decodes each on its own."""
    types: list[int]
    lo: list[int]           # heads: clusterofs; NONHEAD: delta[0] (1 for a CBLKCNT entry)
    d1: list[int]           # NONHEAD: delta[1] (lookahead distance); heads: 0
    pblk: list[int]         # heads: block address; NONHEAD: 0
    cblks: list[int]        # NONHEAD with CBLKCNT: the block count; else 0
    partial: list[bool]     # heads (full indexes only): PARTIAL_REF
    tail_end: int           # byte just after the index (pack) of the last lcluster


def decode_full(get: Callable[[int, int], bytes], start: int, count: int, lclusterbits: int,
                big: bool) -> Lclusters:
    raw = get(start, count * fmt.Z_EROFS_LCLUSTER_INDEX_SIZE)
    types, lo, d1, pblk, cblks, partial = [], [], [], [], [], []
    lcs = 1 << lclusterbits
    for lcn, (advise, clusterofs, u) in enumerate(fmt.Z_EROFS_LCLUSTER_INDEX.iter_unpack(raw)):
        t = advise & fmt.Z_EROFS_LI_LCLUSTER_TYPE_MASK
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
    return Lclusters(types, lo, d1, pblk, cblks, partial,
                     start + count * fmt.Z_EROFS_LCLUSTER_INDEX_SIZE)


def _compact_regions(ebase: int, totalidx: int, count: int, advise: int):
    """(entry_size, first lcn, number of lclusters, byte position) of the index regions that
    hold lclusters 0..count-1."""
    initial, twob = fmt.z_erofs_compact_layout(ebase, totalidx,
                                               bool(advise & fmt.Z_EROFS_ADVISE_COMPACTED_2B))
    regions = []
    pos, lcn = ebase, 0
    for size, n in ((4, initial), (2, twob), (4, max(totalidx - initial - twob, 0))):
        n = min(n, count - lcn)
        if n > 0:
            regions.append((size, lcn, n, pos))
        lcn += n
        pos += n * size
        if lcn >= count:
            break
    return regions


def decode_compact(get: Callable[[int, int], bytes], ebase: int, count: int, size: int,
                   blkszbits: int, lclusterbits: int, advise: int) -> Lclusters:
    totalidx = -(-size >> blkszbits)          # the kernel counts compact entries in blocks
    if count > totalidx or lclusterbits > 14:
        raise ImageError(f"compact indexes cannot describe {count} lclusters of "
                         f"{1 << lclusterbits} bytes")
    big = bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1)
    lcs = 1 << lclusterbits
    types, lo, d1, pblk, cblks = [], [], [], [], []
    tail_end = ebase
    for entry_size, first, n, pos in _compact_regions(ebase, totalidx, count, advise):
        pack = fmt.z_erofs_compact_pack(entry_size, lclusterbits)
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
    return Lclusters(types, lo, d1, pblk, cblks, [False] * count, tail_end)


def _decode_pack(raw: bytes, vcnt: int, encodebits: int, lobits: int, big: bool, lcs: int,
                 first_lcn: int, used: int, types, lo, d1, pblk, cblks) -> None:
    bits = int.from_bytes(raw[:-4], "little")
    base = int.from_bytes(raw[-4:], "little")
    emask, lomask = (1 << encodebits) - 1, (1 << lobits) - 1
    x = [bits >> shift & emask for shift in range(0, vcnt * encodebits, encodebits)]
    v = [e & lomask for e in x]
    t = [e >> lobits & 3 for e in x]
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
    before = _pack_blocks_big(t, v) if big else _pack_blocks(t, v)
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


def _pack_blocks(t: list[int], v: list[int]) -> list[int]:
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


def _pack_blocks_big(t: list[int], v: list[int]) -> list[int | None]:
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


# ---------------------------------------------------------------------------
# extents


def build_extents(lc: Lclusters, header: MapHeader, datalayout: int, size: int, blkszbits: int,
                  available_algs: int) -> list[Extent]:
    """The extents of a compressed file, in order, from its decoded indexes."""
    lclusterbits = header.lclusterbits
    count = len(lc.types)
    types, lo = lc.types, lc.lo
    if count == 0:
        return []
    if types[0] == NONHEAD:
        raise ImageError("lcluster 0 is not the head of an extent")
    if lo[0] != 0:
        raise ImageError(f"the first extent starts at {lo[0]}, not 0")
    heads = [lcn for lcn in range(count) if types[lcn] != NONHEAD]
    starts = [(lcn << lclusterbits) + lo[lcn] for lcn in heads]
    while starts and starts[-1] >= size:     # heads past EOF describe nothing
        heads.pop()
        starts.pop()
    bs = 1 << blkszbits
    advise = header.advise
    bigpcl1 = bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1)
    bigpcl2 = bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
    interlaced = bool(advise & fmt.Z_EROFS_ADVISE_INTERLACED_PCLUSTER)
    fragment = bool(advise & fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER)
    extents = []
    last = len(heads) - 1
    for k, lcn in enumerate(heads):
        start = starts[k]
        end = starts[k + 1] if k < last else size
        length = end - start
        t = types[lcn]
        if length > fmt.Z_EROFS_PCLUSTER_MAX_DSIZE:
            raise ImageError(f"extent at {start} is {length} bytes long, more than the "
                             f"{fmt.Z_EROFS_PCLUSTER_MAX_DSIZE} the kernel decodes")
        alg = None if t == PLAIN else header.algorithms[t == HEAD2]
        if alg is not None:
            if alg >= fmt.Z_EROFS_COMPRESSION_MAX:
                raise ImageError(f"extent at {start}: unknown compression algorithm {alg}")
            if not available_algs >> alg & 1:
                raise ImageError(f"extent at {start}: algorithm {ALGORITHM_NAMES[alg]} is not "
                                 "announced in the superblock")
        name = None if alg is None else ALGORITHM_NAMES[alg]
        if k == last and header.idata_size:
            pa = lc.tail_end
            if (pa & (bs - 1)) + header.idata_size > bs:
                raise ImageError(f"the inline pcluster of {header.idata_size} bytes at byte "
                                 f"{pa} crosses a block boundary")
            ext = Extent(start, length, pa, header.idata_size, name, "ztailpacking",
                         interlaced=interlaced and alg is None)
        elif k == last and fragment:
            off = header.fragmentoff
            if datalayout == fmt.EROFS_INODE_COMPRESSED_FULL:
                off |= lc.pblk[lcn] << 32
            ext = Extent(start, length, off, length, None, "fragment")
        else:
            big = bigpcl1 if t == HEAD1 else bigpcl2
            blocks = 1
            if big and (lcn + 1) << lclusterbits < size:
                if types[lcn + 1] == NONHEAD:
                    blocks = lc.cblks[lcn + 1]
                    if not blocks:
                        raise ImageError(f"lcluster {lcn + 1}: no block count (CBLKCNT) for the "
                                         f"big pcluster of lcluster {lcn}")
            plen = blocks << blkszbits
            if plen > fmt.Z_EROFS_PCLUSTER_MAX_SIZE:
                raise ImageError(f"pcluster of lcluster {lcn} has {blocks} blocks, more than "
                                 f"{fmt.Z_EROFS_PCLUSTER_MAX_SIZE} bytes")
            kind = "compressed" if alg is not None else ("interlaced" if interlaced else "plain")
            ext = Extent(start, length, lc.pblk[lcn] << blkszbits, plen, name, kind,
                         lc.partial[lcn], kind == "interlaced")
        if alg is None and ext.kind != "fragment" and length > ext.physical_length:
            raise ImageError(f"uncompressed extent at {start} of {length} bytes does not fit "
                             f"its {ext.physical_length}-byte pcluster")
        extents.append(ext)
    return extents


def decode_records(get: Callable[[int, int], bytes], inode_end: int, header: MapHeader,
                   size: int, blkszbits: int, available_algs: int) -> list[Extent]:
    """Extents of a COMPRESSED_FULL inode with extent records (Z_EROFS_ADVISE_EXTENTS).

    Records are 4 << EXTRECSZ bytes: 4 (le32 plen per lcluster, physical addresses running on
    from a le64 base), 8 (plen, pstart_lo per lcluster), 16 (plen, pstart, lstart_lo) or 32
    (plus lstart_hi) with explicit logical starts, sorted.  plen's top bits: 27 partial
    reference, 28+ the algorithm + 1 (0: stored raw); plen 0 is a hole.  The last record of a
    FRAGMENT_PCLUSTER inode is its fragment, the offset in plen (and the pstart bits above).
    """
    advise = header.advise
    recsz = 4 << ((advise >> fmt.Z_EROFS_ADVISE_EXTRECSZ_BIT) & fmt.Z_EROFS_ADVISE_EXTRECSZ_MASK)
    pos = fmt.round_up(fmt.round_up(inode_end, 8) + fmt.Z_EROFS_MAP_HEADER_SIZE, recsz)
    fragment = bool(advise & fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER)
    raw_records: list[tuple[int, int, int]] = []      # (lstart, plen field, pstart)
    if recsz <= 8:
        lcbits = header.lclusterbits
        count = -(-size >> lcbits)
        if recsz == 4:
            pa = int.from_bytes(get(pos, 8), "little")
            data = get(pos + 8, count * 4)
            for k, (plen,) in enumerate(struct.iter_unpack("<I", data)):
                raw_records.append((k << lcbits, plen, pa))
                pa += plen & fmt.Z_EROFS_EXTENT_PLEN_MASK
        else:
            data = get(pos, count * 8)
            for k, (plen, pstart) in enumerate(struct.iter_unpack("<II", data)):
                raw_records.append((k << lcbits, plen, pstart))
    else:
        count = header.extent_count
        data = get(pos, count * recsz)
        prev = -1
        for k in range(count):
            plen, plo, phi, llo = struct.unpack_from("<IIII", data, k * recsz)
            la = llo | (struct.unpack_from("<I", data, k * recsz + 16)[0] << 32
                        if recsz > 16 else 0)
            if la < prev:
                raise ImageError(f"extent record {k} starts at {la}, before record {k - 1}")
            prev = la
            raw_records.append((la, plen, plo | phi << 32))
    out: list[Extent] = []
    pos_l = 0
    last = len(raw_records) - 1
    bmask = (1 << blkszbits) - 1
    interlaced = bool(advise & fmt.Z_EROFS_ADVISE_INTERLACED_PCLUSTER)
    for k, (la, plen, pa) in enumerate(raw_records):
        if la >= size:
            last = k - 1
            break
        end = raw_records[k + 1][0] if k < last else size
        end = min(end, size)
        if end <= la:
            continue                      # an empty record (the kernel skips it)
        if la > pos_l:
            out.append(Extent(pos_l, la - pos_l, None, 0, None, "hole"))
        pos_l = end
        length = end - la
        if k == last and fragment:
            off = plen | (pa << 32 if recsz > 4 else 0)
            out.append(Extent(la, length, off, length, None, "fragment"))
            continue
        n = plen & fmt.Z_EROFS_EXTENT_PLEN_MASK
        if not n:
            out.append(Extent(la, length, None, 0, None, "hole"))
            continue
        if length > fmt.Z_EROFS_PCLUSTER_MAX_DSIZE or n > fmt.Z_EROFS_PCLUSTER_MAX_SIZE:
            raise ImageError(f"extent at {la}: {length} bytes from a {n}-byte pcluster are "
                             "more than the kernel decodes")
        alg = (plen >> fmt.Z_EROFS_EXTENT_PLEN_FMT_BIT) - 1
        partial = bool(plen & fmt.Z_EROFS_EXTENT_PLEN_PARTIAL)
        if alg < 0:
            rotated = interlaced and not (pa | n) & bmask
            if length > n:
                raise ImageError(f"uncompressed extent at {la} of {length} bytes does not fit "
                                 f"its {n}-byte pcluster")
            out.append(Extent(la, length, pa, n, None, "interlaced" if rotated else "plain",
                              partial, rotated))
            continue
        if alg >= fmt.Z_EROFS_COMPRESSION_MAX or not available_algs >> alg & 1:
            raise ImageError(f"extent at {la}: algorithm {alg} is unknown or not announced")
        out.append(Extent(la, length, pa, n, ALGORITHM_NAMES[alg], "compressed", partial))
    if pos_l < size:
        out.append(Extent(pos_l, size - pos_l, None, 0, None, "hole"))
    return out


def check_deltas(lc: Lclusters, lclusterbits: int, size: int) -> list[str]:
    """Problems with delta[0]/delta[1]: the kernel finds an lcluster's head through delta[0]
    and fsck/fiemap find where an extent ends through delta[1].  Linear in the lclusters,
    whatever the deltas say."""
    problems = []
    types, lo, d1 = lc.types, lc.lo, lc.d1
    count = len(types)
    next_head = [count] * (count + 1)
    for lcn in range(count - 1, -1, -1):
        next_head[lcn] = lcn if types[lcn] != NONHEAD else next_head[lcn + 1]
    reached = [-1] * count      # the head the kernel's look-back reaches from each lcluster
    head = -1
    for lcn in range(count):
        if types[lcn] != NONHEAD:
            head = reached[lcn] = lcn
            # fiemap's walk to the next head: every lcluster in between is a NONHEAD
            want = next_head[lcn + 1]
            walk = lcn + 1
            while walk < want:
                walk += d1[walk] or 1
            if min(walk, count) != want:
                problems.append(f"lcluster {lcn}: delta[1] leads from this head to lcluster "
                                f"{walk}, but the next head is lcluster {want}")
        else:
            back = lcn - lo[lcn] if lo[lcn] else -1
            reached[lcn] = reached[back] if back >= 0 else -1
            if reached[lcn] != head:
                at = reached[lcn]
                problems.append(f"lcluster {lcn}: delta[0] leads back to "
                                f"{'nothing' if at < 0 else f'lcluster {at}'}, but its head is "
                                f"lcluster {head}")
        if len(problems) > 20:
            problems.append("(more index problems not listed)")
            break
    return problems


# ---------------------------------------------------------------------------
# decoding pclusters


def unpack_plain(raw: bytes, extent: Extent, block_size: int) -> bytes:
    """The bytes of an uncompressed pcluster: from its start ("shifted"), or, interlaced, with
    the first part of the extent (up to the end of the block it starts in) taken from the end
    of the pcluster and the rest from its start."""
    n = extent.length
    if not extent.interlaced:
        return raw[:n]
    right = block_size - extent.logical % block_size
    head = min(right, n)
    start = len(raw) - right
    if start < 0:
        # the kernel would read before the pcluster (mkfs.erofs 1.9.3 writes such inline
        # tails with -Efragments -Eztailpacking; what a mount shows there is not the data)
        raise ImageError(f"interlaced pcluster of {len(raw)} bytes is shorter than the "
                         f"{right} bytes its first part is taken from")
    return raw[start:start + head] + raw[:n - head]


def decode_pcluster(codec: Codec, raw: bytes, extent: Extent, zero_padding: bool,
                    want: bool = True) -> bytes | None:
    """The extent's bytes from its compressed pcluster (None if not `want`ed: only check).
    Without `partial` the stream must end with the extent, as fsck.erofs checks; with it, the
    extent is a prefix of what the stream holds (deduplicated partial references).  Images
    without LZ4_0PADDING (only LZ4 then) keep the stream at the pcluster's start, junk may
    follow it."""
    partial = extent.partial or (not zero_padding and
                                 codec.algorithm_id == fmt.Z_EROFS_COMPRESSION_LZ4)
    try:
        if want:
            return codec.decode(raw, extent.length, partial)
        codec.check(raw, extent.length, partial)
        return None
    except ValueError as err:
        raise ImageError(str(err)) from None
