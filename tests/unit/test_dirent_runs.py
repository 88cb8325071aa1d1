"""A directory block's erofs_dirents are packed (format.pack_dirents) and read
(unpack_dirents) in one call for up to _DIRENT_RUN_MAX entries, in pieces or one by one beyond
(a Struct is kept per count up to there only).  Reading must give every entry's nid, nameoff
and file type as EROFS_DIRENT reads it alone, whatever its reserved byte holds, ignoring what
follows the heads; packing must give what EROFS_DIRENT packs entry by entry (reserved 0)."""
from __future__ import annotations

import random

import pytest

from mkerofs.ondisk import format as fmt


@pytest.mark.parametrize("count", [1, 2, 3, fmt._DIRENT_RUN_MAX, fmt._DIRENT_RUN_MAX + 1, 300])
def test_unpack_dirents_reads_every_head(count):
    rnd = random.Random(count)
    heads = [(rnd.getrandbits(64), rnd.getrandbits(16), rnd.getrandbits(8), rnd.getrandbits(8))
             for _ in range(count)]
    block = b"".join(fmt.EROFS_DIRENT.pack(*h) for h in heads) + b"names after the heads"
    nids, offs, ftypes = fmt.unpack_dirents(block, count)
    assert list(zip(nids, offs, ftypes)) == [h[:3] for h in heads]


@pytest.mark.parametrize("count", [1, fmt._DIRENT_RUN_MAX, 100])
def test_packed_dirents_read_back(count):
    nids = tuple(range(1000, 1000 + count))
    offs = tuple(12 * count + 3 * i for i in range(count))
    ftypes = tuple(i % 8 for i in range(count))
    assert fmt.unpack_dirents(fmt.pack_dirents(nids, offs, ftypes), count) == (nids, offs, ftypes)


@pytest.mark.parametrize("count", [1, 7, fmt._DIRENT_RUN_MAX, fmt._DIRENT_RUN_MAX + 1,
                                   2 * fmt._DIRENT_RUN_MAX, 2 * fmt._DIRENT_RUN_MAX + 5, 341])
def test_pack_dirents_is_each_entry_packed(count):
    rnd = random.Random(-count)
    nids = [rnd.getrandbits(64) for _ in range(count)]
    offs = [rnd.getrandbits(16) for _ in range(count)]
    ftypes = [rnd.getrandbits(8) for _ in range(count)]
    assert fmt.pack_dirents(nids, iter(offs), iter(ftypes)) == b"".join(
        fmt.EROFS_DIRENT.pack(n, o, t, 0) for n, o, t in zip(nids, offs, ftypes))
    assert all(n <= fmt._DIRENT_RUN_MAX for n in fmt._DIRENT_RUNS)
