"""Rebuild mode places a flat file of a source image as it reads it (layers._placing): the
shortcut for an image without an extra device must give the DataRef the general rule
(_flat_ref to point into the image, _flat_copy to copy from it) gives, for every size."""
import pytest

from mkerofs.ondisk import format as fmt
from mkerofs.writer import layers
from mkerofs.writer.walk import TreeInode, offset_refs

BITS = 12


class _Layer:
    """The parts of a layers.Layer the placing reads: an image without an extra device."""
    index = 2
    block_size = 1 << BITS
    block_size_bits = BITS
    slot = None
    path = "L3.erofs"
    _path_b = b"L3.erofs"

    def on_slot(self, device, block):
        return block if device == 0 else None

    def plain_data(self, block):
        return offset_refs(self._path_b)(block * self.block_size)


def _fields(ref):
    return (type(ref).__name__, ref.path, ref.offset, ref.layer, ref.indexed, ref.in_image)


SIZES = [1, 2, 4095, 4096, 4097, 8192, 1 << 20, (1 << 20) + 1, (1 << 43) - 1, 1 << 43,
         (1 << 43) + 1, 1 << 44, (1 << 44) + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", [None, "data"])
def test_a_flat_file_is_placed_as_the_general_rule_places_it(size, mode):
    layer = _Layer()
    startblk = 1234
    files = {}
    place = layers._placing(layer, files, mode, layer.block_size)
    node = TreeInode(b"f", 0o100644, 0, 0, size, 0)
    place(node, 77, size, fmt.EROFS_INODE_FLAT_PLAIN, startblk)
    assert not files                        # placed, not left for resolve_layer_data
    expected = layers._flat_ref(layer, size, startblk) if mode is None else \
        layers._flat_copy(layer, startblk)
    assert _fields(node.data) == _fields(expected)


def test_a_flat_file_without_blocks_takes_the_general_rule():
    layer = _Layer()
    files = {}
    node = TreeInode(b"f", 0o100644, 0, 0, 5000, 0)
    layers._placing(layer, files, None, layer.block_size)(
        node, 77, 5000, fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_NULL_ADDR)
    assert node.data.path is None and node.data.layer.blkaddrs == (None,)    # a hole


def test_a_file_of_another_layout_is_left_for_resolve_layer_data():
    layer = _Layer()
    files = {}
    node = TreeInode(b"f", 0o100644, 0, 0, 5000, 0)
    layers._placing(layer, files, None, layer.block_size)(
        node, 77, 5000, fmt.EROFS_INODE_FLAT_INLINE, 9)
    assert files[node] == layers.LayerFile(2, 77, 5000, fmt.EROFS_INODE_FLAT_INLINE, 9)
