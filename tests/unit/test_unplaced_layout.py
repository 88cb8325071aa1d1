"""Compact indexes encoded for block 0 and moved (index.shift_compact_bases,
compress.UnplacedLayout) are the bytes encoded for the final block directly: workers encode a
file's indexes before its blocks are known."""
import random

import pytest

from mkerofs.ondisk import index
from mkerofs.writer import compress
from mkerofs.writer.compress import CompressConfig, FileCompression


def _extents(rng, nbytes, bs, big):
    """Random extents covering nbytes: (llens, codes) as FileCompression keeps them."""
    llens, codes = [], []
    left = nbytes
    while left:
        # every extent but the last reaches past the end of the lcluster it starts in
        llen = min(left, rng.randint(bs + 1, 9 * bs))
        llens.append(llen)
        # a pcluster of several blocks needs a NONHEAD after its head to count them
        blocks = rng.randint(1, min(4, max(1, llen // bs - 1))) if big else 1
        raw = blocks == 1 and rng.random() < 0.2
        codes.append(blocks | (compress._RAW if raw else 0))
        left -= llen
    return llens, codes


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("ebase", [8, 16, 24, 32, 40, 72])
def test_shifted_bases_equal_direct_encoding(big, ebase):
    rng = random.Random(ebase * 2 + big)
    bs = 4096
    for _ in range(40):
        nbytes = rng.randint(1, 300) * bs + rng.randint(0, bs - 1)
        llens, codes = _extents(rng, nbytes, bs, big)
        start = rng.choice([1, 2, 77, 1 << 20, (1 << 32) - 5000])
        moved = index.encode_compact_extents(llens, codes, ebase, 0, 12, big)
        index.shift_compact_bases(moved, 0, -(-nbytes // bs), ebase, start)
        assert moved == index.encode_compact_extents(llens, codes, ebase, start, 12, big)


@pytest.mark.parametrize("spec,tail", [("lz4", False), ("lz4hc", True), ("zstd", False)])
@pytest.mark.parametrize("meta_size", [32, 64, 100, 132])
def test_unplaced_layout_places_like_extents(spec, tail, meta_size):
    cfg = CompressConfig.from_options(spec, 4096, 16384, ztailpacking=tail)
    rng = random.Random(meta_size)
    words = [bytes(rng.choice(b"abcdefgh") for _ in range(rng.randint(1, 12)))
             for _ in range(300)]
    for size in (5000, 40000, 250000):
        data = b" ".join(rng.choice(words) for _ in range(size))[:size]
        fc = FileCompression(size, meta_size, cfg)
        fc.add_new(fc.compress(data, True))
        ext = fc.extents()
        assert ext is not None
        unplaced = ext.unplaced(cfg)
        assert isinstance(unplaced, compress.UnplacedLayout)
        assert unplaced.blocks == ext.blocks
        for start in (0, 9, 123456):
            assert unplaced.layout(cfg, start) == ext.layout(cfg, start)


def test_full_indexes_stay_extents():
    cfg = CompressConfig.from_options("lz4", 4096, None, legacy_indexes=True)
    fc = FileCompression(20000, 32, cfg)
    fc.add_new(fc.compress(b"x" * 20000, True))
    ext = fc.extents()
    assert ext.unplaced(cfg) is ext


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("ebase", [8, 40])
def test_shifted_bases_of_a_large_area(big, ebase):
    # areas of more than a thousand lclusters are not kept in the positions cache
    rng = random.Random(ebase + big)
    bs = 4096
    for nbytes in (1023 * bs + 17, 1024 * bs, 1025 * bs + 1, 3000 * bs + 5):
        llens, codes = _extents(rng, nbytes, bs, big)
        moved = index.encode_compact_extents(llens, codes, ebase, 0, 12, big)
        index.shift_compact_bases(moved, 0, -(-nbytes // bs), ebase, 4242)
        assert moved == index.encode_compact_extents(llens, codes, ebase, 4242, 12, big)
