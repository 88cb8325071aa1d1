"""PackedFile gathers fragments in memory and writes them in large pieces: what it reads back
and the offsets it hands out must not depend on where those writes fall."""
import os

import pytest

from mkerofs.writer.packed import FRAGDEDUPE_FULL, FRAGDEDUPE_INODE, PackedFile


def _fill(packed: PackedFile) -> list[int]:
    offs = [packed.append(b"prefix-table")]
    for data, whole in [(b"a" * 5000, True), (b"b" * 3, False), (b"a" * 5000, True),
                        (b"b" * 3, False), (b"c" * 70000, True), (b"c" * 70000, True)]:
        packed.begin()
        for i in range(0, len(data), 1000):      # in several pieces, as segments come
            packed.write(data[i:i + 1000])
        offs.append(packed.end(whole_file=whole))
    return offs


@pytest.mark.parametrize("fragdedupe", [FRAGDEDUPE_FULL, FRAGDEDUPE_INODE])
@pytest.mark.parametrize("flush_bytes", [1, 7, 4096, 1 << 20])
def test_flushes_change_nothing(monkeypatch, fragdedupe, flush_bytes):
    with PackedFile(fragdedupe) as ref:
        want = _fill(ref)
        want_data = ref.reader()(0, ref.size, True)
    monkeypatch.setattr(PackedFile, "_FLUSH_BYTES", flush_bytes)
    with PackedFile(fragdedupe) as packed:
        got = _fill(packed)
        data = packed.reader()(0, packed.size, True)
        assert os.path.getsize(packed.path) == packed.size     # copied by path when flat
    assert got == want
    assert data == want_data
    # the second copy of each whole file is shared; the 3-byte tails only with full dedupe
    assert got[3] == got[1] and got[6] == got[5]
    assert (got[4] == got[2]) == (fragdedupe == FRAGDEDUPE_FULL)
    assert data[got[5]:got[5] + 70000] == b"c" * 70000
