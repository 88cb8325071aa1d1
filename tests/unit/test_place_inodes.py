"""meta.place_inodes places inodes where place_inode, one call each, places them: items that fit
the current block's rest, items that leave a gap, gaps taken again, items larger than a block
(with an inline pcluster tail), and the one skipped."""
import random
import stat

import pytest

from mkerofs.ondisk import format as fmt
from mkerofs.writer.meta import MetaAllocator, place_inode, place_inodes
from mkerofs.writer.plan import TreeInode
from mkerofs.writer.walk import FlatData


def _nodes(seed: int, block_size: int) -> list[TreeInode]:
    rng = random.Random(seed)
    nodes = []
    for i in range(3000):
        node = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 0, 0, nlink=1,
                         ftype=fmt.EROFS_FT_REG_FILE, extended=rng.random() < 0.3)
        kind = rng.random()
        if kind < 0.4:
            node.flat = FlatData(rng.choice((0, 0, 17, 500, 3000, 4000)))
        elif kind < 0.8:
            node.inline = bytes(rng.choice((8, 12, 100, 1500)))
        elif kind < 0.97:
            pass                                    # nothing after the inode
        else:                                       # larger than a block, a tail to keep
            node.inline = bytes(rng.choice((5000, 9000)))
            node.inline_tail = rng.choice((0, 300, 2000)) % block_size
        nodes.append(node)
    return nodes


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("block_size", [512, 4096])
def test_place_inodes_is_place_inode_for_each(seed, block_size):
    one, many = _nodes(seed, block_size), _nodes(seed, block_size)
    skip = 17
    first = MetaAllocator(block_size, 1000 // 32 * 32)
    for i, node in enumerate(one):
        if i != skip:
            place_inode(first, node, 64)
    second = MetaAllocator(block_size, 1000 // 32 * 32)
    place_inodes(second, many, 64, skip=many[skip])
    assert [n.nid for n in one] == [n.nid for n in many]
    assert many[skip].nid == -1
    assert (first.frontier, first._gaps) == (second.frontier, second._gaps)
    # (gaps were left and some taken again: the slow way was taken too)
    placed = [n.nid for n in many if n is not many[skip]]
    assert placed != sorted(placed)
