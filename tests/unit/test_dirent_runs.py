"""format.unpack_dirents reads a directory block's erofs_dirents in one call for up to
_DIRENT_READ_MAX entries and one by one beyond: both must give every entry's nid, nameoff and
file type as EROFS_DIRENT reads it alone, whatever its reserved byte holds, and ignore what
follows the heads; pack_dirents' blocks read back the same."""
from __future__ import annotations

import random

import pytest

from mkerofs.ondisk import format as fmt


@pytest.mark.parametrize("count", [1, 2, 3, fmt._DIRENT_READ_MAX, fmt._DIRENT_READ_MAX + 1, 300])
def test_unpack_dirents_reads_every_head(count):
    rnd = random.Random(count)
    heads = [(rnd.getrandbits(64), rnd.getrandbits(16), rnd.getrandbits(8), rnd.getrandbits(8))
             for _ in range(count)]
    block = b"".join(fmt.EROFS_DIRENT.pack(*h) for h in heads) + b"names after the heads"
    nids, offs, ftypes = fmt.unpack_dirents(block, count)
    assert list(zip(nids, offs, ftypes)) == [h[:3] for h in heads]


@pytest.mark.parametrize("count", [1, fmt._DIRENT_READ_MAX, 100])
def test_packed_dirents_read_back(count):
    nids = tuple(range(1000, 1000 + count))
    offs = tuple(12 * count + 3 * i for i in range(count))
    ftypes = tuple(i % 8 for i in range(count))
    assert fmt.unpack_dirents(fmt.pack_dirents(nids, offs, ftypes), count) == (nids, offs, ftypes)
