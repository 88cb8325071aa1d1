"""Reading compressed inodes: lcluster indexes to extents, and pclusters back to bytes.

The rules are the kernel's (fs/erofs/zmap.c, decompressor*.c), restated:

* The map header and the lcluster indexes (full or compact) are decoded by
  mkerofs/ondisk/index.py, which states their layout.  One index per lcluster:
  ceil(size / lclustersize) of them.
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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import ImageError
from ..ondisk import format as fmt
from ..ondisk import index

if TYPE_CHECKING:       # (an annotation only: the codecs load when an image decodes)
    from ..codecs.base import Codec

NONHEAD = index.NONHEAD
PLAIN = index.PLAIN
HEAD1 = index.HEAD1
HEAD2 = index.HEAD2


@dataclass(slots=True)
class Extent:
    """A run of file bytes and where they come from.

    kind: "plain" (raw in data blocks), "interlaced" (a raw pcluster stored rotated),
    "inline" (raw tail after the inode), "compressed", "ztailpacking" (a pcluster inline after
    the inode; algorithm None when it is stored raw), "fragment" (in the packed inode:
    `physical` is then the offset in the packed inode's data) or "hole" (zeros, physical None).
    Data on an extra device (see Image) has `device` n >= 1.
    """
    logical: int
    length: int
    physical: int | None
    physical_length: int
    algorithm: str | None = None
    kind: str = "plain"
    partial: bool = False
    interlaced: bool = False     # a raw pcluster stored rotated (INTERLACED_PCLUSTER)
    device: int = 0              # 0: the image; n: extra device n (`physical` is then in it)

    @property
    def end(self) -> int:
        return self.logical + self.length


def read_map_header(raw: bytes, blkszbits: int, datalayout: int, big_pcluster_sb: bool
                    ) -> index.MapHeader:
    header = index.unpack_map_header(raw, blkszbits, datalayout)
    if header.whole_fragment or header.records:
        return header
    advise = header.advise
    big = advise & (fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
    if big and not big_pcluster_sb:
        raise ImageError("per-inode big pclusters without the superblock feature")
    if datalayout == fmt.EROFS_INODE_COMPRESSED_COMPACT and \
            bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1) != \
            bool(advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2):
        raise ImageError("compact indexes with inconsistent big pcluster advice for HEAD1/HEAD2")
    return header


# ---------------------------------------------------------------------------
# extents


def build_extents(lc: index.DecodedLclusters, header: index.MapHeader, datalayout: int,
                  size: int, blkszbits: int, available_algs: int) -> list[Extent]:
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
                raise ImageError(f"extent at {start}: algorithm "
                                 f"{fmt.Z_EROFS_COMPRESSION_NAMES[alg]} is not announced in the "
                                 "superblock")
        name = None if alg is None else fmt.Z_EROFS_COMPRESSION_NAMES[alg]
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


def decode_records(get: Callable[[int, int], bytes], inode_end: int, header: index.MapHeader,
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
        record = fmt.Z_EROFS_EXTENT_RECORDS[recsz]
        if recsz == 4:
            base = fmt.Z_EROFS_EXTENT_PSTART_BASE
            pa = base.unpack(get(pos, base.size))[0]
            data = get(pos + base.size, count * recsz)
            for k, (plen,) in enumerate(record.iter_unpack(data)):
                raw_records.append((k << lcbits, plen, pa))
                pa += plen & fmt.Z_EROFS_EXTENT_PLEN_MASK
        else:
            data = get(pos, count * recsz)
            for k, (plen, pstart) in enumerate(record.iter_unpack(data)):
                raw_records.append((k << lcbits, plen, pstart))
    else:
        count = header.extent_count
        data = get(pos, count * recsz)
        prev = -1
        for k, (plen, plo, phi, llo, *lhi) in enumerate(
                fmt.Z_EROFS_EXTENT_RECORDS[recsz].iter_unpack(data)):
            la = llo | (lhi[0] << 32 if lhi else 0)
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
        out.append(Extent(la, length, pa, n, fmt.Z_EROFS_COMPRESSION_NAMES[alg], "compressed",
                          partial))
    if pos_l < size:
        out.append(Extent(pos_l, size - pos_l, None, 0, None, "hole"))
    return out


def check_deltas(lc: index.DecodedLclusters, lclusterbits: int, size: int) -> list[str]:
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
