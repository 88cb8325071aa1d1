"""A directory block's quick path (Image._sound_entries, which listdir takes for nearly every
block) must accept exactly the blocks whose every entry passes the checks one by one: heads
inside the block, a first nameoff in [12, block size), every name 1..EROFS_NAME_LEN bytes
(each runs up to the next one's nameoff, the last up to the first NUL or the block's end),
no "/" and no NUL in a name.  What it accepts it must read as those checks read it; "." and
".." are left out only when asked (listdir_fields), wherever they are in the block."""
from __future__ import annotations

import random

import pytest

from support.run import build_image
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image

_DOTS = (b".", b"..")


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirblock")
    (root / "src").mkdir()
    (root / "src" / "f").write_bytes(b"x")
    build_image(root / "img.erofs", root / "src", "-T0")
    with Image.open(root / "img.erofs") as image:
        yield image


def _block(names: list[bytes], rnd: random.Random) -> bytes:
    count = len(names)
    offs, at = [], count * fmt.EROFS_DIRENT_SIZE
    for name in names:
        offs.append(at)
        at += len(name)
    nids = [rnd.getrandbits(40) for _ in names]
    ftypes = [rnd.randrange(8) for _ in names]
    return fmt.pack_dirents(nids, offs, ftypes) + b"".join(names) + \
        b"\0" * rnd.choice((0, 0, 1, 5))


def _one_by_one(blk: bytes, block_size: int) -> list[tuple[bytes, int, int]] | None:
    """The checks entry by entry (independent of the reader's code)."""
    if len(blk) < fmt.EROFS_DIRENT_SIZE:
        return None
    nameoff0 = fmt.EROFS_DIRENT.unpack_from(blk)[1]
    if not fmt.EROFS_DIRENT_SIZE <= nameoff0 < block_size:
        return None
    count = -(-nameoff0 // fmt.EROFS_DIRENT_SIZE)
    if count * fmt.EROFS_DIRENT_SIZE > len(blk):
        return None
    heads = [fmt.EROFS_DIRENT.unpack_from(blk, i * fmt.EROFS_DIRENT_SIZE)[:3]
             for i in range(count)]
    out = []
    for i, (nid, off, ftype) in enumerate(heads):
        if i + 1 < count:
            end = heads[i + 1][1]
        else:
            nul = blk.find(b"\0", off)
            end = len(blk) if nul < 0 else nul
        if not off < end <= len(blk) or end - off > fmt.EROFS_NAME_LEN:
            return None
        name = blk[off:end]
        if b"/" in name or b"\0" in name:
            return None
        out.append((name, nid, ftype))
    return out


def _names(rnd: random.Random, longest: int = fmt.EROFS_NAME_LEN) -> list[bytes]:
    count = rnd.choice((1, 2, 3, 7, 33, 40))
    pool = [bytes(rnd.choice(b"abcde.") for _ in range(rnd.choice((1, 2, 9, 120, 256))))
            for _ in range(count)]
    names = sorted(set(n for n in pool if b"/" not in n and b"\0" not in n and
                       n not in _DOTS and len(n) <= longest)) or [b"a"]
    if rnd.random() < 0.8:
        names = sorted(names + list(_DOTS))
    return names


@pytest.mark.parametrize("seed", range(400))
def test_quick_path_is_the_checks(img, seed):
    rnd = random.Random(seed)
    blk = bytearray(_block(_names(rnd, fmt.EROFS_NAME_LEN + rnd.randrange(2)), rnd))
    for _ in range(rnd.choice((0, 1, 1, 2, 4))):
        at = rnd.randrange(len(blk))
        blk[at] = rnd.choice((0, ord("/"), rnd.randrange(256), blk[at] ^ 1))
    if rnd.random() < 0.1:
        del blk[rnd.randrange(len(blk)):]
    blk = bytes(blk[:img.block_size])
    want = _one_by_one(blk, img.block_size)
    got = img._sound_entries(blk)
    assert got == want
    without = img._sound_entries(blk, False)
    assert without == (None if want is None else [e for e in want if e[0] not in _DOTS])


def test_quick_path_reads_sound_blocks(img):
    """(the mutations above must not leave only failing blocks)"""
    rnd = random.Random(7)
    accepted = 0
    for _ in range(50):
        names = _names(rnd)
        blk = _block(names, rnd)[:img.block_size]
        if len(blk) < img.block_size:
            got = img._sound_entries(blk, False)
            assert [e[0] for e in got] == [n for n in names if n not in _DOTS]
            accepted += 1
    assert accepted > 30
