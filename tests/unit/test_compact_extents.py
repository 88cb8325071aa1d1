"""index.encode_compact_extents (compact indexes straight from a file's extents, what every
compressed file of a build goes through) gives the same bytes as the entry-by-entry encoder
over compress.lclusters_for, which the round-trip tests of test_ondisk_index.py check against
the reader's decoder: short and long extents (delta[0] and delta[1] capped), raw ones, an inline
tail, a fragment, any start of the area and block address, with and without big pclusters."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkerofs.ondisk import format as fmt
from mkerofs.ondisk import index
from mkerofs.writer import compress as z


def _old(llens, codes, ebase, start, bs, big) -> bytes:
    ent = z.lclusters_for(llens, codes, start, bs, big)
    return bytes(index.encode_compact(ent, ebase, start, fmt.blksz_bits(bs), big))


def _new(llens, codes, ebase, start, bs, big) -> bytes:
    return bytes(index.encode_compact_extents(llens, codes, ebase, start, fmt.blksz_bits(bs),
                                              big))


def _extents(rnd: random.Random, bs: int, big: bool, tail: str, long: bool):
    llens, codes = [], []
    for _ in range(rnd.randrange(1, 30)):
        kind = rnd.random()
        if kind < 0.25:
            llens.append(bs)
            codes.append(1 | z._RAW)
        elif long and kind < 0.35:
            # more lclusters than delta[0] and delta[1] can count
            llens.append(rnd.randrange(2000, 2200) * bs + rnd.randrange(bs))
            codes.append(rnd.randrange(1, 9) if big else 1)
        else:
            blocks = rnd.randrange(1, 9) if big else 1
            llens.append(blocks * bs + rnd.randrange(1, 3 * bs))
            codes.append(blocks)
    if tail == "inline":
        llens.append(rnd.randrange(1, 3 * bs))
        codes.append(1 | z._INLINE)
    elif tail == "fragment":
        llens.append(rnd.randrange(1, 3 * bs))
        codes.append(z._FRAGMENT)
    elif tail == "short":
        llens.append(rnd.randrange(1, bs))
        codes.append(1 | z._RAW)
    return llens, codes


@pytest.mark.parametrize("bs", [512, 1024, 4096])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("tail", ["", "inline", "fragment", "short"])
def test_same_bytes_as_entry_encoder(bs, big, tail):
    rnd = random.Random(f"{bs} {big} {tail}")
    for trial in range(40):
        llens, codes = _extents(rnd, bs, big, tail, long=trial % 8 == 0)
        ebase = rnd.randrange(4, 40) * 8
        start = rnd.choice([0, 1, rnd.randrange(1 << 30)])
        assert _new(llens, codes, ebase, start, bs, big) == \
            _old(llens, codes, ebase, start, bs, big), (llens, codes, ebase, start)


def test_single_short_extent():
    """A file shorter than its first lcluster's end: one head, no EOF entry."""
    for big in (False, True):
        assert _new([100], [1 | z._RAW], 40, 5, 4096, big) == \
            _old([100], [1 | z._RAW], 40, 5, 4096, big)


def test_extent_ending_inside_its_lcluster_refused():
    with pytest.raises(ValueError):
        index.encode_compact_extents([100, 4096], [1 | z._RAW, 1 | z._RAW], 40, 0, 12, False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([512, 4096]), st.booleans(), st.integers(1, 64).map(lambda k: 8 * k),
       st.integers(0, 1 << 30),
       st.lists(st.tuples(st.integers(1, 12), st.integers(0, 8191), st.booleans()),
                min_size=1, max_size=60))
def test_same_bytes_any_extents(bs, big, ebase, start, extents):
    llens, codes = [], []
    for blocks, extra, raw in extents:
        if raw:
            llens.append(bs)
            codes.append(1 | z._RAW)
        else:
            blocks = blocks if big else 1
            llens.append(blocks * bs + extra % (2 * bs) + 1)
            codes.append(blocks)
    assert _new(llens, codes, ebase, start, bs, big) == _old(llens, codes, ebase, start, bs, big)
