"""Generated hostile images (hypothesis): small images built by mkerofs with a few bytes of
their metadata changed, fed to reader_corpus.exercise(); and the compact-index block arithmetic
checked against a literal transcription of the kernel's loop.  Imported by test_reader_fuzz.py,
which provides the `bases` fixture (and skips these when hypothesis is missing).
"""
from __future__ import annotations

import hashlib
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from mkerofs.ondisk import format as fmt
from mkerofs.reader import ImageError

from . import BASE_OPTIONS, CORPUS_DIR, Layout, exercise, fix_checksum


def _metadata_ranges(lay: Layout) -> list[tuple[int, int]]:
    """Byte ranges worth mutating: the superblock and compression configurations, every inode
    with its xattrs and index area, and directory blocks."""
    ranges = [(fmt.EROFS_SUPER_OFFSET, fmt.EROFS_SUPER_OFFSET + 256)]
    for path, ino in lay.inodes.items():
        ranges.append((ino.pos, ino.data_pos + 64))
        if ino.is_dir():
            for ext in lay.extents[path]:
                if ext.physical is not None:
                    ranges.append((ext.physical, ext.physical + min(ext.physical_length, 4096)))
    return ranges


_VALUES = [0, 1, 2, 3, 12, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 4096, 1 << 20]


@st.composite
def mutations(draw):
    base = draw(st.sampled_from(sorted(BASE_OPTIONS)))
    edits = draw(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 5),
                                    st.integers(0, 255), st.sampled_from(_VALUES)),
                          min_size=1, max_size=4))
    truncate = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    return base, edits, truncate


def _apply(data: bytes, lay: Layout, edits, truncate) -> bytes:
    image = bytearray(data)
    ranges = _metadata_ranges(lay)
    for where, kind, byte, value in edits:
        if kind == 5:                   # anywhere, data included
            pos = where % len(image)
        else:
            lo, hi = ranges[where % len(ranges)]
            pos = lo + where // len(ranges) % max(hi - lo, 1)
        pos = min(pos, len(image) - 1)
        if kind in (0, 5):
            image[pos] ^= 1 << (byte & 7)
        elif kind == 1:
            image[pos] = byte
        elif kind == 2:
            struct.pack_into("<H", image, min(pos, len(image) - 2), value & 0xFFFF)
        elif kind == 3:
            struct.pack_into("<I", image, min(pos, len(image) - 4), value & 0xFFFFFFFF)
        else:
            n = byte % 32 + 1
            src = where // 7 % max(len(image) - n, 1)
            image[pos:pos + n] = image[src:src + n]
    fix_checksum(image)
    if truncate is not None:
        del image[int(len(image) * truncate):]
    return bytes(image)


@settings(max_examples=3000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(mutations())
def test_mutated_images_fail_cleanly(bases, mutation):
    base, edits, truncate = mutation
    if base not in bases:
        return
    data, lay = bases[base]
    image = _apply(data, lay, edits, truncate)
    try:
        exercise(image)
    except ImageError:
        raise AssertionError("exercise() must catch ImageError itself") from None
    except Exception:
        # keep the image in the corpus: test_corpus_file replays it from now on (commit it)
        name = f"failure-{hashlib.sha256(image).hexdigest()[:12]}.erofs"
        (CORPUS_DIR / name).write_bytes(image)
        raise


# -- compact index arithmetic against a literal transcription of the kernel's loops -------------

NONHEAD = fmt.Z_EROFS_LCLUSTER_TYPE_NONHEAD
CBLKCNT = fmt.Z_EROFS_LI_D0_CBLKCNT


def _kernel_nblk(t, v, i, big):
    """z_erofs_load_compact_lcluster's walk back from head i to its block address."""
    if not big:
        nblk = 1
        while i > 0:
            i -= 1
            if t[i] == NONHEAD:
                i -= v[i]
            if i >= 0:
                nblk += 1
        return nblk
    nblk = 0
    while i > 0:
        i -= 1
        lo = v[i]
        if t[i] == NONHEAD:
            if lo & CBLKCNT:
                i -= 1
                nblk += lo & ~CBLKCNT
                continue
            if lo <= 1:
                return None
            i -= lo - 2
            continue
        nblk += 1
    return nblk


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4095)), min_size=16, max_size=16),
       st.booleans())
def test_compact_pack_block_counts_match_kernel(entries, big):
    from mkerofs.ondisk import index
    t = [e[0] for e in entries]
    v = [e[1] for e in entries]
    got = index.pack_blocks_big(t, v) if big else index.pack_blocks(t, v)
    for i in range(16):
        if t[i] != NONHEAD:
            assert got[i] == _kernel_nblk(t, v, i, big), (i, t, v)
