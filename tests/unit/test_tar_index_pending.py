"""--tar=i without a MAPFILE: chunks.defer_tar_indexes leaves a one-chunk file's index for
meta.put_inodes to pack (chunks.PendingIndexes).  The inodes are placed and written as the
indexes index_tar_files encodes at once make them: the same item sizes, the same bytes."""
import stat

from mkerofs.ondisk import format as fmt
from mkerofs.writer.chunks import defer_tar_indexes, index_tar_files
from mkerofs.writer.meta import MetaAllocator, MetaImage, item_size, place_inode, put_inodes
from mkerofs.writer.plan import TreeInode
from mkerofs.writer.walk import DataRef, offset_refs

_BITS = 9
_SIZES = [1, 511, 512, 513, 4096, 12345, 3 << 30, (1 << 40) + 1]
_OFFSETS = [0, 77 << _BITS, ((1 << 32) - 2) << _BITS]     # (the last below the null address)


def _nodes(offsets=_OFFSETS) -> list[TreeInode]:
    """Indexed files of many sizes and xattr lengths (padding before the index or none),
    their refs a tar reader's (OffsetRef) or a DataRef; a file not indexed, an empty one, a
    directory."""
    in_tar = offset_refs(b"", indexed=True)
    nodes = []
    for size in _SIZES:
        for off in offsets:
            for xattr_bytes in (0, 12, 16, 20):
                for ref in (in_tar(off), DataRef(b"", off, indexed=True)):
                    nodes.append(_file(size, xattr_bytes, ref))
    nodes += [_file(10, 0, DataRef(b"/t", 0)), _file(0, 0, DataRef(None))]
    nodes.append(TreeInode(b"d", stat.S_IFDIR | 0o755, 0, 0, 0, 0, nlink=2,
                           ftype=fmt.EROFS_FT_DIR, inline=b"\1" * 40))
    return nodes


def _file(size: int, xattr_bytes: int, ref) -> TreeInode:
    node = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, size, 0, nlink=1, data=ref,
                     ftype=fmt.EROFS_FT_REG_FILE, extended=size >= 1 << 32)
    node.set_xattr_ibody(bytes(xattr_bytes))
    return node


def _written(nodes: list[TreeInode], pending) -> bytes:
    alloc = MetaAllocator(4096, 0)
    for node in nodes:
        place_inode(alloc, node)
    image = MetaImage(0, 0, -(-alloc.frontier // 4096) * 4096)
    put_inodes(image, nodes, 1, 0, pending=pending)
    return bytes(image.tail_view)


def test_pending_indexes_are_the_indexes_encoded_at_once():
    encoded, deferred = _nodes(), _nodes()
    index_tar_files(encoded, _BITS, None)
    pending = defer_tar_indexes(deferred, _BITS, ((1 << 32) - 1) << _BITS)
    assert pending is not None
    marked = [d for d in deferred if d.inline in pending.marks]
    # every tar reader's ref of one chunk is left to put_inodes (with padding and without)
    assert len(marked) == len(_OFFSETS) * 4 * (len(_SIZES) - 1)
    assert {len(d.inline) for d in marked} == {8, 12}
    assert all(type(d.data) is not DataRef for d in marked)
    for e, d in zip(encoded, deferred):
        assert (e.datalayout, e.i_u, item_size(e)) == (d.datalayout, d.i_u, item_size(d))
    assert _written(encoded, None) == _written(deferred, pending)


def test_a_tar_past_block_2_to_the_32_is_encoded_at_once():
    """A 48-bit index for some file: the tar's files all take index_tar_files's way."""
    offsets = [*_OFFSETS, ((1 << 32) - 1) << _BITS]
    encoded, deferred = _nodes(offsets), _nodes(offsets)
    index_tar_files(encoded, _BITS, None)
    assert defer_tar_indexes(deferred, _BITS, ((1 << 32) - 1) << _BITS | 1) is None
    assert [(e.datalayout, e.i_u, e.inline) for e in encoded] == \
        [(d.datalayout, d.i_u, d.inline) for d in deferred]
