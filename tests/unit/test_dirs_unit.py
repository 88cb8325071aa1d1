"""writer/dirs.py: directory blocks packed a block at a time, read back entry by entry."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from mkerofs.writer.dirs import render_directory, shape_sorted


@dataclass
class _Node:
    nid: int
    ftype: int


def _read_back(data: bytes, block_size: int) -> list[tuple[bytes, int, int]]:
    """(name, nid, ftype) of every entry, decoded one erofs_dirent at a time."""
    out = []
    for start in range(0, len(data), block_size):
        block = data[start:start + block_size]
        count = struct.unpack_from("<H", block, 8)[0] // 12
        for i in range(count):
            nid, nameoff, ftype, reserved = struct.unpack_from("<QHBB", block, i * 12)
            assert reserved == 0
            end = struct.unpack_from("<H", block, (i + 1) * 12 + 8)[0] if i + 1 < count \
                else len(block.rstrip(b"\0"))
            out.append((block[nameoff:end], nid, ftype))
    return out


@pytest.mark.parametrize("count, block_size", [(3, 4096), (40, 512), (700, 4096)])
def test_rendered_blocks_hold_every_entry_in_byte_order(count, block_size):
    # (names below b"." in byte order too: '.' and '..' are sorted with the rest)
    # (and names between b"." and b"..": b".-" sorts after the one, before the other)
    children = [(b"%s%04d" % ((b"+", b"-", b"z", b".-")[i % 4], i) * (1 + i % 5),
                 _Node(100 + i, 1 + i % 7)) for i in range(count)]
    entries = [(b".", _Node(1, 2)), (b"..", _Node(2, 2))] + children
    children.sort()
    shape = shape_sorted([name for name, _ in children], [n for _, n in children],
                         entries[0][1], entries[1][1], block_size)
    data = render_directory(shape, block_size, lambda n: n.nid, lambda n: n.ftype)
    assert len(data) == shape.size
    want = sorted((name, n.nid, n.ftype) for name, n in entries)
    assert _read_back(data, block_size) == want
    blocks = -(-len(data) // block_size)
    assert (blocks > 1) == (len(shape.ends) > 1)
    # every block but the last is whole, zero-padded after its names
    for b in range(blocks - 1):
        assert len(data[b * block_size:(b + 1) * block_size]) == block_size
