"""DataArea.reserve_flat shares one FlatData (and its tail int) among the files whose flat
layouts have the same fields, for every tail of a 4 KiB block: one each was ~90 bytes a file."""

import stat

from mkerofs.ondisk import format as fmt
from mkerofs.writer.data import DataArea
from mkerofs.writer.walk import TreeInode


def _reserved(area: DataArea, size: int) -> TreeInode:
    node = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, size, 0, nlink=1)
    node.ftype = fmt.EROFS_FT_REG_FILE
    area.reserve_flat(node, True)
    return node


def test_every_tail_of_a_block_is_shared():
    area = DataArea(None, 4096, 1)
    # two rounds of every tail, small files (no blocks) and files with blocks
    sizes = [t for t in range(1, 4096)] + [2 * 4096 + t for t in range(1, 4096)]
    nodes = [_reserved(area, size) for size in sizes]
    flats = {id(node.flat) for node in nodes}
    assert len(flats) == 4095
    for node in nodes:
        assert node.inline_len == node.size % 4096 == node.flat.tail
        assert node.inline_len is node.flat.tail     # (one int object, not one a file)
    # a small file and one with blocks, same tail: the same FlatData
    assert nodes[0].flat is nodes[4095].flat
    assert nodes[4095].i_u == 1 and nodes[4095].datalayout == fmt.EROFS_INODE_FLAT_INLINE
