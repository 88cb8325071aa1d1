"""Chunk maps of files that are one run of blocks, encoded at once (format.pack_*_run,
ChunkLayout.encode_run, the one-chunk paths of index_tar_files and index_layer_files), are the
maps the entry-by-entry encoder (ChunkLayout.encode_map) gives for the same addresses."""
import stat
import struct

import pytest

from mkerofs.errors import BuildError
from mkerofs.ondisk import format as fmt
from mkerofs.writer.chunks import (ChunkLayout, LayerChunks, covering_chunkbits, one_chunk_on,
                                   index_layer_files, index_tar_files, make_hole_files,
                                   set_chunk_map)
from mkerofs.writer.plan import TreeInode
from mkerofs.writer.walk import DataRef, LayerRef

_HI = 1 << 32


@pytest.mark.parametrize("start,step,count", [
    (0, 1, 1), (7, 1, 1), (_HI - 1, 1, 1), (_HI + 5, 4, 1), ((1 << 47) + 3, 1, 1),
    (100, 8, 5), (_HI - 3, 1, 3), (_HI - 3, 2, 4), (_HI - 8, 8, 2), (5 * _HI - 9, 4, 6),
    (_HI + 100, 16, 7)])
@pytest.mark.parametrize("device_id", [0, 1, 0xFFFF])
def test_chunk_index_run_is_one_entry_a_block(start, step, count, device_id):
    addrs = range(start, start + count * step, step)
    expected = b"".join(struct.pack("<HHI", a >> 32, device_id, a & 0xFFFFFFFF) for a in addrs)
    assert fmt.pack_chunk_index_run(start, step, count, device_id) == expected


@pytest.mark.parametrize("start,step,count", [(0, 1, 1), (_HI - 2, 1, 1), (9, 4, 3),
                                              (_HI - 40, 8, 5)])
def test_block_map_run_is_one_entry_a_block(start, step, count):
    addrs = range(start, start + count * step, step)
    expected = b"".join(struct.pack("<I", a) for a in addrs)
    assert fmt.pack_block_map_run(start, step, count) == expected
    assert fmt.pack_block_map(list(addrs)) == expected


def _addressable_runs():
    """(blkszbits, chunkbits, count, indexes, wide, start) of runs whose last chunk the
    format can address (a block map's 32-bit entries stop below its hole value)."""
    for blkszbits, chunkbits, count in [(9, 9, 1), (9, 20, 1), (12, 14, 3), (9, 40, 4),
                                        (12, 43, 2)]:
        for indexes, wide, start in [(False, False, 0), (False, False, 1 << 20),
                                     (True, False, 5), (True, False, _HI - 200),
                                     (True, True, _HI - 2), (True, True, 1 << 46)]:
            layout = ChunkLayout((count - 1 << chunkbits) + 1, blkszbits, chunkbits, indexes,
                                 wide)
            last = start + (count - 1) * (1 << (chunkbits - blkszbits))
            if last < layout.null:
                yield blkszbits, chunkbits, count, indexes, wide, start


@pytest.mark.parametrize("blkszbits,chunkbits,count,indexes,wide,start", list(_addressable_runs()))
def test_encode_run_is_encode_map_of_the_run(blkszbits, chunkbits, count, indexes, wide, start):
    layout = ChunkLayout((count - 1 << chunkbits) + 1, blkszbits, chunkbits, indexes, wide)
    step = 1 << (chunkbits - blkszbits)
    addrs = list(range(start, start + count * step, step))
    for inode_end in (32, 44, 64, 76, 100):
        for device_id in ((0, 3) if indexes else (0,)):
            run = layout.encode_run(inode_end, start, device_id)
            assert run == layout.encode_map(inode_end, addrs, device_id)
            assert (inode_end + len(run)) % (8 if indexes else 4) == 0


def _node(size: int, xattr_bytes: int, data: DataRef) -> TreeInode:
    node = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, size, 0, nlink=1, data=data,
                        ftype=fmt.EROFS_FT_REG_FILE)
    node.set_xattr_ibody(bytes(xattr_bytes))
    return node


def _own_map(size: int, blkszbits: int, start: int, device_id: int, xattr_bytes: int):
    """The map a file of `size` bytes over blocks from `start` gets with a layout of its own
    and the entry-by-entry encoder."""
    node = _node(size, xattr_bytes, DataRef(None))
    chunkbits = covering_chunkbits(size, blkszbits)
    step = 1 << (chunkbits - blkszbits)
    addrs = list(range(start, start + -(-size >> chunkbits) * step, step))
    set_chunk_map(node, ChunkLayout(size, blkszbits, chunkbits, device_id != 0,
                                    device_id != 0 and addrs[-1] >= fmt.EROFS_NULL_ADDR_32),
                  addrs, device_id)
    return node.datalayout, node.i_u, node.inline, node.inline_len


_SIZES = [1, 511, 512, 513, 4096, 12345, 3 << 30, (1 << 40) + 1, (1 << 44) + 7]


@pytest.mark.parametrize("blkszbits", [9, 12])
def test_index_tar_files_gives_each_file_its_own_map(blkszbits):
    """Files of many sizes, offsets and xattr lengths in one call (the layouts it shares
    between them must not mix them up); the tar as device 1, then a blob in the image."""
    bs = 1 << blkszbits
    offsets = [0, 77 * bs, (_HI - 1) * bs, (_HI - 2) * bs, (1 << 40) * bs]
    cases = [(size, off, xb) for size in _SIZES for off in offsets for xb in (0, 4, 12)]
    nodes = [_node(size, xb, DataRef(b"", off, indexed=True)) for size, off, xb in cases]
    # (without a blob nothing needs the list of files placed: none is kept)
    assert index_tar_files(nodes, blkszbits, None) == []
    for node, (size, off, xb) in zip(nodes, cases):
        assert (node.datalayout, node.i_u, node.inline, node.inline_len) == \
            _own_map(size, blkszbits, off >> blkszbits, 1, xb)
    # --tar=i,MAPFILE: a block map over the blob (room for every file: addresses stay small)
    nodes = [_node(size, xb, DataRef(b"", off, indexed=True)) for size, off, xb in cases
             if size < 1 << 40]
    blob = {node: i * 5 for i, node in enumerate(nodes)}
    done = index_tar_files(nodes, blkszbits, blob, 1000)
    assert done == [(node, 1000 + i * 5) for i, node in enumerate(nodes)]
    for i, node in enumerate(nodes):
        assert (node.datalayout, node.i_u, node.inline, node.inline_len) == \
            _own_map(node.size, blkszbits, 1000 + i * 5, 0, len(node.xattr_ibody))


def test_index_layer_files_runs_and_tuples_give_the_same_maps():
    """A flat file in its source image is a range of blocks; the same addresses as a tuple
    take the general path: the maps are the same, and 48-bit ones still need -E48bit."""
    blkszbits = 12
    cases = []
    for size in (1, 4096, 5000, 1 << 30, (1 << 43) + 1, (1 << 45) + 3):
        chunkbits = covering_chunkbits(size, blkszbits)
        step = 1 << (chunkbits - blkszbits)
        count = -(-size >> chunkbits)
        for start in (0, 3, max(0, _HI - 1 - count * step), _HI - 2, _HI + 9):
            for xb in (0, 4, 12):
                cases.append((size, chunkbits, range(start, start + count * step, step), xb))
    ranged = [_node(size, xb, DataRef(None, layer=LayerChunks(2, bits, run)))
              for size, bits, run, xb in cases]
    tupled = [_node(size, xb, DataRef(None, layer=LayerChunks(2, bits, tuple(run))))
              for size, bits, run, xb in cases]
    with pytest.raises(BuildError, match="48-bit"):
        index_layer_files(ranged, blkszbits)
    assert index_layer_files(ranged, blkszbits, wide_ok=True)
    assert index_layer_files(tupled, blkszbits, wide_ok=True)
    for a, b, (size, bits, run, xb) in zip(ranged, tupled, cases):
        assert (a.datalayout, a.i_u, a.inline, a.inline_len) == \
            (b.datalayout, b.i_u, b.inline, b.inline_len)
        assert a.i_u & fmt.EROFS_CHUNK_FORMAT_48BIT == (
            fmt.EROFS_CHUNK_FORMAT_48BIT if run[-1] >= fmt.EROFS_NULL_ADDR_32 else 0)
        assert len(a.inline) == -(xb + 32) % 8 + 8 * len(run)
    narrow = [n for n, (_s, _b, run, _x) in zip(ranged, cases)
              if run[-1] < fmt.EROFS_NULL_ADDR_32]
    assert index_layer_files(narrow, blkszbits)


@pytest.mark.parametrize("ref", [lambda offset, chunks: DataRef(None, offset, layer=chunks),
                                 LayerRef], ids=["DataRef", "LayerRef"])
def test_index_layer_files_one_chunk_at_its_offset(ref):
    """A file of one chunk (nearly every flat file of a layer) has the LayerChunks every such
    file shares and its byte address in the DataRef's offset: the same map as the one-entry
    tuple, wide past 32 bits (-E48bit then needed).  Rebuild mode makes it a LayerRef, which
    must answer as that DataRef."""
    blkszbits = 12
    cases = [(size, start, xb) for size in (1, 4096, 5000, 1 << 30)
             for start in (0, 3, _HI - 2, _HI + 9) for xb in (0, 4, 12)]
    bits = [covering_chunkbits(size, blkszbits) for size, _s, _x in cases]
    shared = [_node(size, xb, ref(start << blkszbits, one_chunk_on(2, b)))
              for (size, start, xb), b in zip(cases, bits)]
    tupled = [_node(size, xb, DataRef(None, layer=LayerChunks(2, b, (start,))))
              for (size, start, xb), b in zip(cases, bits)]
    with pytest.raises(BuildError, match="48-bit"):
        index_layer_files(shared, blkszbits)
    assert index_layer_files(shared, blkszbits, wide_ok=True)
    assert index_layer_files(tupled, blkszbits, wide_ok=True)
    for a, b, (_size, start, _xb) in zip(shared, tupled, cases):
        assert (a.datalayout, a.i_u, a.inline, a.inline_len) == \
            (b.datalayout, b.i_u, b.inline, b.inline_len)
        assert bool(a.i_u & fmt.EROFS_CHUNK_FORMAT_48BIT) == (start >= fmt.EROFS_NULL_ADDR_32)
    assert one_chunk_on(2, bits[0]) is one_chunk_on(2, bits[0])
    # indexed, a file of one chunk lets go of its own ref: one shared, neither copied nor
    # made a file of holes; indexing again keeps the same maps
    pointed = [a.data for a, (_s, start, _x) in zip(shared, cases)
               if start < fmt.EROFS_NULL_ADDR_32]
    assert len(pointed) > 10 and len({id(ref) for ref in pointed}) == 1
    assert pointed[0].path is None and pointed[0].layer is not None
    assert not make_hole_files(shared, blkszbits)
    before = [(a.datalayout, a.i_u, a.inline) for a in shared]
    assert index_layer_files(shared, blkszbits, wide_ok=True)
    assert [(a.datalayout, a.i_u, a.inline) for a in shared] == before


def test_index_tar_files_let_go_keeps_the_maps_and_drops_the_refs():
    """let_go (no --verify, no MAPFILE): the same maps, and every indexed file's ref replaced
    by one shared object (a file that is not indexed keeps its own)."""
    blkszbits = 9
    cases = [(size, off) for size in (1, 512, 5000, 3 << 30) for off in (0, 77 << 9)]

    def nodes():
        made = [_node(size, 0, DataRef(b"", off, indexed=True)) for size, off in cases]
        return made + [_node(10, 0, DataRef(b"/t", 0))]

    kept, dropped = nodes(), nodes()
    index_tar_files(kept, blkszbits, None)
    index_tar_files(dropped, blkszbits, None, let_go=True)
    assert [(n.datalayout, n.i_u, n.inline) for n in kept] == \
        [(n.datalayout, n.i_u, n.inline) for n in dropped]
    assert all(n.data.indexed for n in kept[:-1])
    assert len({id(n.data) for n in kept[:-1]}) == len(cases)
    assert len({id(n.data) for n in dropped[:-1]}) == 1
    assert dropped[-1].data.path == b"/t"
