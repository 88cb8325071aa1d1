"""Unit tests of mkerofs.ondisk.index: lcluster indexes encoded and decoded back.

The entries come from the writer (compress.lclusters_for over random extent lists: raw and
compressed pclusters of several blocks, an inline tail, a fragment), are encoded as full or
compact indexes and decoded with the reader's decoder; what comes back must be what was meant:
the lcluster types, the heads' offsets and block addresses, the NONHEADs' delta[0] and block
counts, and delta[1] leading from each head to the next.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkerofs.errors import ImageError
from mkerofs.ondisk import format as fmt
from mkerofs.ondisk import index
from mkerofs.writer import compress as z

NONHEAD = index.NONHEAD
CBLKCNT = index.CBLKCNT


def _getter(buf: bytes):
    def get(pos: int, n: int) -> bytes:
        assert 0 <= pos and pos + n <= len(buf), f"read {n} at {pos} outside {len(buf)} bytes"
        return buf[pos:pos + n]
    return get


def _extents(rnd: random.Random, bs: int, max_blocks: int, tail: str):
    """(llens, codes, size) of extents laid end to end; `tail`: "", "inline" or "fragment"."""
    llens, codes = [], []
    for _ in range(rnd.randrange(1, 40)):
        if rnd.random() < 0.3:
            llens.append(bs)
            codes.append(1 | z._RAW)
        else:
            blocks = rnd.randrange(1, max_blocks + 1)
            llens.append(blocks * bs + rnd.randrange(1, 3 * bs))
            codes.append(blocks)
    if tail == "inline":
        llens.append(rnd.randrange(1, 3 * bs))
        codes.append(1 | z._INLINE)
    elif tail == "fragment":
        llens.append(rnd.randrange(1, 3 * bs))
        codes.append(z._FRAGMENT)
    return llens, codes, sum(llens)


def _check_decoded(ent: index.Lclusters, dec: index.DecodedLclusters, full: bool) -> None:
    n = len(ent)
    assert list(dec.types) == list(ent.types)
    heads = [i for i in range(n) if ent.types[i] != NONHEAD] + [n]
    for i in range(n):
        if ent.types[i] != NONHEAD:
            assert dec.lo[i] == ent.lo[i], f"clusterofs of lcluster {i}"
            if ent.hi[i] or full:
                assert dec.pblk[i] == ent.hi[i], f"block address of lcluster {i}"
            continue
        if ent.lo[i] & CBLKCNT:
            assert (dec.lo[i], dec.cblks[i]) == (1, ent.lo[i] & ~CBLKCNT), f"lcluster {i}"
        else:
            assert (dec.lo[i], dec.cblks[i]) == (ent.lo[i], 0), f"delta[0] of lcluster {i}"
        if full:
            assert dec.d1[i] == ent.hi[i], f"delta[1] of lcluster {i}"
    # delta[1] leads from every head to the next one, as fiemap walks it
    for k, head in enumerate(heads[:-1]):
        walk = head + 1
        while walk < heads[k + 1]:
            assert dec.d1[walk] >= 1
            walk += dec.d1[walk]
        assert min(walk, n) == heads[k + 1], f"delta[1] walk from lcluster {head}"


CASES = [(bs, big, tail) for bs in (512, 1024, 2048, 4096) for big in (False, True)
         for tail in ("", "inline", "fragment")]


@pytest.mark.parametrize("bs, big, tail", CASES)
def test_full_indexes_round_trip(bs, big, tail):
    rnd = random.Random(f"full {bs} {big} {tail}")
    bits = fmt.blksz_bits(bs)
    for _ in range(25):
        llens, codes, size = _extents(rnd, bs, 8 if big else 1, tail)
        start = rnd.randrange(0, 1 << 31)
        fragment_hi = rnd.randrange(0, 1 << 20) if tail == "fragment" else None
        ent = z.lclusters_for(llens, codes, start, bs, big, fragment_hi=fragment_hi)
        assert len(ent) == -(-size // bs)
        raw = index.encode_full(ent)
        assert len(raw) == fmt.Z_EROFS_LCLUSTER_INDEX_SIZE * len(ent)
        dec = index.decode_full(_getter(b"\xEE" * 16 + raw), 16, len(ent), bits, big)
        assert dec.tail_end == 16 + len(raw)
        _check_decoded(ent, dec, full=True)
        assert dec.partial == [False] * len(ent)


@pytest.mark.parametrize("bs, big, tail", CASES)
def test_compact_indexes_round_trip(bs, big, tail):
    rnd = random.Random(f"compact {bs} {big} {tail}")
    bits = fmt.blksz_bits(bs)
    advise = fmt.Z_EROFS_ADVISE_COMPACTED_2B
    if big:
        advise |= fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2
    for _ in range(25):
        llens, codes, size = _extents(rnd, bs, 8 if big else 1, tail)
        start = rnd.randrange(1, 1 << 31)
        ebase = rnd.randrange(4, 40) * 8            # inode + xattrs + map header, 8-aligned
        ent = z.lclusters_for(llens, codes, start, bs, big)
        raw = index.encode_compact_extents(llens, codes, ebase, start, bits, big)
        assert len(raw) == index.compact_area_size(len(ent), ebase)
        dec = index.decode_compact(_getter(bytes(ebase) + raw), ebase, len(ent), size, bits,
                                   bits, advise)
        assert dec.tail_end == ebase + len(raw)
        _check_decoded(ent, dec, full=False)


@pytest.mark.parametrize("big", [False, True])
def test_compact_round_trip_long_extents(big):
    """Extents of more lclusters than delta[0] and delta[1] can count (both capped at
    CBLKCNT - 1) between short ones: the heads decode to their offsets and blocks, and the
    delta[1] walk leads from each head to the next."""
    rnd = random.Random(f"long {big}")
    bs = 4096
    advise = fmt.Z_EROFS_ADVISE_COMPACTED_2B
    if big:
        advise |= fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2
    for _ in range(4):
        llens, codes = [], []
        for _ in range(rnd.randrange(2, 6)):
            if rnd.random() < 0.5:
                llens.append(rnd.randrange(2040, 2200) * bs + rnd.randrange(bs))
                codes.append(rnd.randrange(1, 9) if big else 1)
            else:
                llens.append(bs)
                codes.append(1 | z._RAW)
        llens.append(rnd.randrange(1, bs))
        codes.append(1 | z._RAW)
        start, ebase = rnd.randrange(1, 1 << 30), rnd.randrange(4, 40) * 8
        ent = z.lclusters_for(llens, codes, start, bs, big)
        raw = index.encode_compact_extents(llens, codes, ebase, start, 12, big)
        dec = index.decode_compact(_getter(bytes(ebase) + raw), ebase, len(ent), sum(llens),
                                   12, 12, advise)
        assert list(dec.types) == list(ent.types)
        heads = [i for i in range(len(ent)) if ent.types[i] != NONHEAD] + [len(ent)]
        for k, head in enumerate(heads[:-1]):
            assert (dec.lo[head], dec.pblk[head]) == (ent.lo[head], ent.hi[head] or
                                                      dec.pblk[head]), f"head {head}"
            walk = head + 1
            while walk < heads[k + 1]:
                assert dec.d1[walk] >= 1
                walk += dec.d1[walk]
            assert min(walk, len(ent)) == heads[k + 1], f"delta[1] walk from lcluster {head}"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([512, 1024, 4096]), st.booleans(), st.integers(1, 64).map(lambda k: 8 * k),
       st.lists(st.tuples(st.integers(1, 12), st.integers(0, 8191), st.booleans()),
                min_size=1, max_size=60))
def test_compact_round_trip_any_extents(bs, big, ebase, extents):
    """Any extent list the writer accepts decodes back, wherever the index area begins."""
    llens, codes = [], []
    for blocks, extra, raw in extents:
        if raw:
            llens.append(bs)
            codes.append(1 | z._RAW)
        else:
            blocks = blocks if big else 1
            llens.append(blocks * bs + extra % (2 * bs) + 1)
            codes.append(blocks)
    ent = z.lclusters_for(llens, codes, 77, bs, big)
    bits = fmt.blksz_bits(bs)
    advise = fmt.Z_EROFS_ADVISE_COMPACTED_2B | (
        fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2 if big else 0)
    raw = index.encode_compact_extents(llens, codes, ebase, 77, bits, big)
    dec = index.decode_compact(_getter(bytes(ebase) + raw), ebase, len(ent), sum(llens), bits,
                               bits, advise)
    _check_decoded(ent, dec, full=False)


# ---------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("totalidx", [1, 2, 3, 5, 6, 7, 17, 22, 23, 40, 100, 1000])
@pytest.mark.parametrize("ebase", [8, 16, 24, 32, 40, 48, 56, 64, 72])
def test_compact_regions_tile_the_area(totalidx, ebase):
    regions = index.compact_regions(totalidx, ebase)
    pos, lcn = ebase, 0
    for size, first, n, at in regions:
        assert (first, at) == (lcn, pos)
        assert n > 0
        if size == 2:
            assert at % 32 == 0 and n % 16 == 0
        lcn += n
        pos += n * size
    assert lcn == totalidx
    area = index.compact_area_size(totalidx, ebase)
    assert pos - ebase <= area <= pos - ebase + 4      # a half-used last 4B pack


# ---------------------------------------------------------------------------
# map header


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 0xFFFF), st.integers(0, 3), st.integers(0, 3), st.integers(9, 12),
       st.integers(0, 3), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.sampled_from([fmt.EROFS_INODE_COMPRESSED_FULL, fmt.EROFS_INODE_COMPRESSED_COMPACT]))
def test_map_header_round_trip(advise, alg1, alg2, blkszbits, extra_bits, idata, fragoff,
                               layout):
    if layout == fmt.EROFS_INODE_COMPRESSED_FULL:
        advise &= ~fmt.Z_EROFS_ADVISE_EXTENTS
    header = index.MapHeader(advise, (alg1, alg2), blkszbits + extra_bits)
    if advise & fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER:
        header.fragmentoff = fragoff
    elif advise & fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER:
        header.idata_size = idata
    raw = header.pack(blkszbits)
    assert len(raw) == fmt.Z_EROFS_MAP_HEADER_SIZE
    assert index.unpack_map_header(raw, blkszbits, layout) == header


def test_whole_fragment_header():
    off = 0x1234_5678_9ABC
    header = index.MapHeader(fmt.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER, (0, 0), 12,
                             fragmentoff=off, whole_fragment=True)
    raw = header.pack(12)
    assert raw == (off | 1 << 63).to_bytes(8, "little")
    assert index.unpack_map_header(raw, 12, fmt.EROFS_INODE_COMPRESSED_FULL) == header


def test_writer_header_fields():
    header = index.MapHeader(fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER, (fmt.Z_EROFS_COMPRESSION_LZMA, 0),
                             12, idata_size=300)
    assert header.pack(12) == (300 << 16).to_bytes(4, "little") + bytes(
        [fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER, 0, fmt.Z_EROFS_COMPRESSION_LZMA, 0])


# ---------------------------------------------------------------------------
# refusals


def test_decoders_refuse_what_the_kernel_refuses():
    # CBLKCNT without big pclusters
    ent = z.lclusters_for([3 * 4096 + 5], [2], 9, 4096, True)
    raw = index.encode_full(ent)
    with pytest.raises(ImageError, match="CBLKCNT"):
        index.decode_full(_getter(raw), 0, len(ent), 12, False)
    # a head's clusterofs beyond its lcluster
    bad = fmt.Z_EROFS_LCLUSTER_INDEX.pack(index.PLAIN, 4096, 0)
    with pytest.raises(ImageError, match="clusterofs"):
        index.decode_full(_getter(bad), 0, 1, 12, False)
    # more lclusters than the file's blocks
    with pytest.raises(ImageError):
        index.decode_compact(_getter(bytes(64)), 8, 3, 4096, 12, 12, 0)


def test_encoder_refuses_big_lclusters():
    with pytest.raises(ValueError):
        index.encode_compact_extents([100], [1 | z._RAW], 8, 9, 13, False)


@pytest.mark.parametrize("big", [False, True])
def test_compact_packs_encoded_in_batches(big, monkeypatch):
    """The 2B packs are encoded a batch at a time (not one list of every pack's fields, as
    long as the file's lclusters): the bytes do not depend on the batch's size."""
    rnd = random.Random(f"batches {big}")
    bs = 4096
    for _ in range(3):
        llens, codes = [], []
        for _ in range(rnd.randrange(3, 9)):
            llens.append(rnd.randrange(1, 300) * bs + rnd.randrange(1, bs))
            codes.append(rnd.randrange(1, 9) if big else 1)
        llens.append(rnd.randrange(1, bs))
        codes.append(1 | z._RAW)
        start, ebase = rnd.randrange(1, 1 << 30), rnd.randrange(1, 40) * 8
        encoded = []
        for batch in (1, 2, 7, 1 << 20):
            monkeypatch.setattr(index, "_PACKS_A_BATCH", batch)
            encoded.append(bytes(index.encode_compact_extents(llens, codes, ebase, start, 12,
                                                              big)))
        assert len(encoded[0]) > 16 * 7 * 2        # (several batches of 7 packs)
        assert encoded[:3] == encoded[3:] * 3
