"""Hostile images: a base image (reader_corpus.BASE_OPTIONS), a mutation, and what the reader
must say about it.  The mutation gets the image as a bytearray and a Layout of the pristine
image; the superblock checksum is recomputed afterwards (unless `fix_checksum` is False) so that
the check behind it is reached.  `expect` must occur (case-insensitively) in an ImageError
message or a verify() problem.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable

import xxhash

from mkerofs.codecs.lz4 import LZ4
from mkerofs.ondisk import format as fmt

from . import Layout, put

SB = fmt.EROFS_SUPER_OFFSET


@dataclass(frozen=True)
class Case:
    name: str
    base: str
    mutate: Callable[[bytearray, Layout], None]
    expect: str
    fix_checksum: bool = True


# -- helpers -------------------------------------------------------------------------------------

def dirent(lay: Layout, directory: bytes, name: bytes) -> int:
    """Byte offset of the directory entry `name` (the test directories fit in one block)."""
    names = [e[0] for e in lay.dirents[directory]]
    return lay.dir_block(directory) + fmt.EROFS_DIRENT_SIZE * names.index(name)


def inode_field(lay: Layout, path: bytes, field: str) -> tuple[int, str]:
    """(byte offset, struct format) of a field of the on-disk inode of `path`."""
    ino = lay.inode(path)
    compact = {"format": (0, "<H"), "icount": (2, "<H"), "mode": (4, "<H"), "nlink": (6, "<H"),
               "size": (8, "<I"), "i_u": (16, "<I")}
    extended = {"format": (0, "<H"), "icount": (2, "<H"), "mode": (4, "<H"), "size": (8, "<Q"),
                "i_u": (16, "<I"), "nlink": (44, "<I")}
    off, f = (extended if ino.extended else compact)[field]
    return ino.pos + off, f


def set_field(d: bytearray, lay: Layout, path: bytes, field: str, value: int) -> None:
    pos, f = inode_field(lay, path, field)
    put(d, pos, f, value)


def xattr_body(lay: Layout, path: bytes) -> int:
    ino = lay.inode(path)
    return ino.pos + ino.isize


def first_extent(lay: Layout, path: bytes, kind: str = "compressed"):
    return next(e for e in lay.extents[path] if e.kind == kind)


def fill_pcluster(d: bytearray, lay: Layout, path: bytes, stream: bytes) -> None:
    """Replace the first compressed pcluster of `path` with `stream`, right-aligned."""
    ext = first_extent(lay, path)
    assert len(stream) <= ext.physical_length, (len(stream), ext.physical_length)
    d[ext.physical:ext.physical + ext.physical_length] = \
        bytes(ext.physical_length - len(stream)) + stream


def nonhead(lay: Layout, path: bytes, with_cblkcnt: bool) -> int:
    _h, lc = lay.lclusters[path]
    for lcn, t in enumerate(lc.types):
        if t == fmt.Z_EROFS_LCLUSTER_TYPE_NONHEAD and bool(lc.cblks[lcn]) == with_cblkcnt:
            return lcn
    raise AssertionError(f"no suitable NONHEAD lcluster in {path!r}")


def _filter_bit(suffix: bytes, index: int) -> int:
    return xxhash.xxh32_intdigest(suffix, seed=fmt.EROFS_XATTR_FILTER_SEED + index) & 31


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _zstd_bomb() -> bytes:
    import zstandard
    return zstandard.ZstdCompressor(level=19).compress(bytes(12 << 20))


# -- mutations -----------------------------------------------------------------------------------

def _sb(offset: int, f: str, value: int):
    return lambda d, lay: put(d, SB + offset, f, value)


def _or_sb(offset: int, f: str, bits: int):
    def mutate(d, lay):
        import struct
        put(d, SB + offset, f, struct.unpack_from(f, d, SB + offset)[0] | bits)
    return mutate


def _truncate(keep: Callable[[int], int]):
    def mutate(d, lay):
        del d[keep(len(d)):]
    return mutate


def _flip_reserved(d, lay):
    d[SB + 120] ^= 0x40


def _dirent_nid(directory: bytes, name: bytes, nid: Callable[[Layout], int]):
    return lambda d, lay: put(d, dirent(lay, directory, name), "<Q", nid(lay))


def _dirent_byte(directory: bytes, name: bytes, offset: int, value: int):
    def mutate(d, lay):
        d[dirent(lay, directory, name) + offset] = value
    return mutate


def _nameoff(directory: bytes, index: int, delta: int = 0, value: int | None = None):
    def mutate(d, lay):
        pos = lay.dir_block(directory) + fmt.EROFS_DIRENT_SIZE * index + 8
        old = int.from_bytes(d[pos:pos + 2], "little")
        put(d, pos, "<H", value if value is not None else old + delta)
    return mutate


def _swap_names(d, lay):
    entries = lay.dirents[b"/"]
    names = [e[0] for e in entries]
    base = lay.dir_block(b"/")
    offs = [int.from_bytes(d[base + 12 * i + 8:base + 12 * i + 10], "little")
            for i in range(len(entries))]
    ia, ib = names.index(b"a"), names.index(b"b")
    d[base + offs[ia]], d[base + offs[ib]] = d[base + offs[ib]], d[base + offs[ia]]


def _name_byte(byte: int):
    """The first byte of the name "a" in the root directory set to `byte`."""
    def mutate(d, lay):
        entries = lay.dirents[b"/"]
        base = lay.dir_block(b"/")
        i = [e[0] for e in entries].index(b"a")
        off = int.from_bytes(d[base + 12 * i + 8:base + 12 * i + 10], "little")
        d[base + off] = byte
    return mutate


def _field(path: bytes, field: str, value):
    def mutate(d, lay):
        v = value(lay) if callable(value) else value
        set_field(d, lay, path, field, v)
    return mutate


def _or_format(path: bytes, bits: int, clear: int = 0):
    def mutate(d, lay):
        pos, f = inode_field(lay, path, "format")
        old = int.from_bytes(d[pos:pos + 2], "little")
        put(d, pos, "<H", (old & ~clear) | bits)
    return mutate


def _shared_count(d, lay):
    d[xattr_body(lay, b"/a") + 4] = 255


def _shared_id(d, lay):
    put(d, xattr_body(lay, b"/a") + 12, "<I", 0x7FFFFFFF)


def _inline_value_size(d, lay):
    put(d, xattr_body(lay, b"/d") + 12 + 2, "<H", 0xFFFF)


def _filter_hides(d, lay):
    pos = xattr_body(lay, b"/d")
    old = int.from_bytes(d[pos:pos + 4], "little")
    put(d, pos, "<I", old | 1 << _filter_bit(b"dir", fmt.EROFS_XATTR_INDEX_USER))


def _long_prefix_index(d, lay):
    shared_id = int.from_bytes(d[xattr_body(lay, b"/a") + 12:xattr_body(lay, b"/a") + 16],
                               "little")
    sb = fmt.SuperBlock.unpack(bytes(d[SB:SB + 128]))
    pos = sb.xattr_blkaddr * lay.block_size + shared_id * 4
    assert d[pos + 1] & fmt.EROFS_XATTR_LONG_PREFIX
    d[pos + 1] = fmt.EROFS_XATTR_LONG_PREFIX | 5


def _full_index(path: bytes, lcn: Callable[[Layout], int], offset: int, f: str, value):
    def mutate(d, lay):
        n = lcn(lay)
        pos = lay.full_index(path, n) + offset
        put(d, pos, f, value(lay, n) if callable(value) else value)
    return mutate


def _map_header(path: bytes, offset: int, f: str, value, op: str = "set"):
    def mutate(d, lay):
        import struct
        pos = lay.map_header(path) + offset
        old = struct.unpack_from(f, d, pos)[0]
        put(d, pos, f, value if op == "set" else old | value)
    return mutate


def _ztail_idata(d, lay):
    path = next(p for p, (h, _lc) in lay.lclusters.items() if h.idata_size)
    put(d, lay.map_header(path) + 2, "<H", lay.block_size - 1)


def _pcluster(path: bytes, stream: Callable[[], bytes]):
    return lambda d, lay: fill_pcluster(d, lay, path, stream())


def _garbage(d, lay):
    ext = first_extent(lay, b"/a")
    rng = random.Random(7)
    d[ext.physical:ext.physical + ext.physical_length] = rng.randbytes(ext.physical_length)


def _zero_pcluster(d, lay):
    ext = first_extent(lay, b"/a")
    d[ext.physical:ext.physical + ext.physical_length] = bytes(ext.physical_length)


def _packed_is_root(d, lay):
    import struct
    put(d, SB + 80, "<I", struct.unpack_from("<I", d, SB + 80)[0] |
        fmt.EROFS_FEATURE_INCOMPAT_FRAGMENTS)
    put(d, SB + 96, "<Q", lay.root_nid)
    pos = lay.map_header(b"/a")
    d[pos + 7] |= 0x80


def _packed_self_fragment(d, lay):
    packed = lay.packed
    d[fmt.round_up(packed.data_pos, 8) + 7] |= 0x80


def _partial_too_long(d, lay):
    """Mark a head PARTIAL_REF and make its pcluster hold less than the extent needs."""
    path = next(p for p, (h, lc) in lay.lclusters.items()
                if lay.inode(p).datalayout == fmt.EROFS_INODE_COMPRESSED_FULL and
                any(e.kind == "compressed" for e in lay.extents[p]))
    ext = first_extent(lay, path)
    _h, lc = lay.lclusters[path]
    lcn = ext.logical >> lay.block_size.bit_length() - 1
    pos = lay.full_index(path, lcn)
    put(d, pos, "<H", int.from_bytes(d[pos:pos + 2], "little") | fmt.Z_EROFS_LI_PARTIAL_REF)
    stream = LZ4().compress(b"short")
    d[ext.physical:ext.physical + ext.physical_length] = \
        bytes(ext.physical_length - len(stream)) + stream


def _cfg_record(offset: int, f: str, value: int):
    return lambda d, lay: put(d, SB + 128 + offset, f, value)


def _lz4_bomb() -> bytes:
    return LZ4().compress(bytes(512 << 10))


CASES = [
    # superblock
    Case("bad-magic", "plain", _sb(0, "<I", 0x12345678), "bad magic"),
    Case("bad-checksum", "plain", _flip_reserved, "checksum", fix_checksum=False),
    Case("blkszbits-too-big", "plain", _sb(12, "<B", 20), "block size bits"),
    Case("blkszbits-too-small", "plain", _sb(12, "<B", 8), "block size bits"),
    Case("truncated-half", "lz4", _truncate(lambda n: n // 2), "truncated"),
    Case("truncated-in-superblock", "plain", _truncate(lambda n: 1100), "too short"),
    Case("empty", "plain", _truncate(lambda n: 0), "empty"),
    Case("unknown-incompat-feature", "plain", _or_sb(80, "<I", 1 << 20), "unknown incompatible"),
    Case("sb-extslots", "plain", _sb(13, "<B", 255), "sb_extslots"),
    Case("dirblkbits", "plain", _sb(90, "<B", 1), "directory block bits"),
    Case("root-nid-past-end", "plain", _sb(14, "<H", 0xFFFF), "past the end"),
    Case("root-is-a-file", "plain", lambda d, lay: put(d, SB + 14, "<H", lay.inode(b"/a").nid),
         "not a directory"),
    Case("compr-algorithms-unknown", "lzma", _or_sb(84, "<H", 0x10), "unknown compression"),
    Case("compr-cfgs-empty-record", "lzma", _cfg_record(0, "<H", 0), "empty metadata record"),
    Case("lzma-dictionary-too-large", "lzma", _cfg_record(2, "<I", 1 << 30), "too large"),
    # directories
    Case("dirent-nid-past-end", "plain", _dirent_nid(b"/", b"a", lambda lay: 1 << 40),
         "past the end"),
    Case("dirent-nid-metabox-bit", "plain", _dirent_nid(b"/", b"a", lambda lay: 1 << 63),
         "not a valid inode number"),
    Case("directory-loop", "plain", _dirent_nid(b"/d", b"e", lambda lay: lay.root_nid), "loop"),
    Case("dot-names-other", "plain", _dirent_nid(b"/d", b".", lambda lay: lay.inode(b"/a").nid),
         "'.' names"),
    Case("dotdot-names-other", "plain",
         _dirent_nid(b"/d", b"..", lambda lay: lay.inode(b"/d/e").nid), "'..' names"),
    Case("nameoff-out-of-order", "plain", _nameoff(b"/", 3, delta=-2), "bad name length"),
    Case("first-nameoff-invalid", "plain", _nameoff(b"/", 0, value=5), "invalid first nameoff"),
    Case("first-nameoff-past-block", "plain", _nameoff(b"/", 0, value=0xFFFF),
         "invalid first nameoff"),
    Case("names-unsorted", "plain", _swap_names, "out of order"),
    Case("name-with-slash", "plain", _name_byte(ord("/")), "illegal name"),
    # (a NUL ends only the last name of a block: in "a", followed by other names, it is in it)
    Case("name-with-nul", "plain", _name_byte(0), "illegal name"),
    Case("nameoff-past-block", "plain", _nameoff(b"/", 3, value=4090), "bad name length"),
    Case("file-type-mismatch", "plain", _dirent_byte(b"/", b"a", 10, fmt.EROFS_FT_DIR),
         "file type"),
    Case("directory-empty", "plain", _field(b"/d", "size", 0), "empty directory"),
    # inodes
    Case("nlink-wrong", "plain", _field(b"/a", "nlink", 5), "nlink"),
    Case("directory-nlink-wrong", "plain", _field(b"/d", "nlink", 9), "nlink"),
    Case("bogus-mode", "plain", _field(b"/b", "mode", 0o644), "bogus i_mode"),
    Case("unknown-data-layout", "plain", _or_format(b"/b", 7 << 1), "unknown data layout"),
    Case("unknown-format-bits", "plain", _or_format(b"/b", 0x100), "unsupported i_format"),
    Case("size-past-end", "plain", _field(b"/b", "size", 0xFFFFFFF0), "past the end"),
    Case("inline-tail-crosses-block", "plain",
         _field(b"/d/c", "size", lambda lay: lay.block_size - 1), "crosses a block boundary"),
    Case("symlink-too-long", "plain", _field(b"/d/lnk", "size", 0x7FFFFFFF), "symlink"),
    # xattrs
    Case("xattr-shared-count", "plain", _shared_count, "do not fit"),
    Case("xattr-shared-id-past-end", "plain", _shared_id, "past the end"),
    Case("xattr-value-size", "plain", _inline_value_size, "do not fit"),
    Case("xattr-icount-huge", "plain", _field(b"/d", "icount", 0xFFFF), "past the end"),
    Case("xattr-filter-hides-name", "plain", _filter_hides, "name filter hides"),
    Case("xattr-long-prefix-out-of-table", "prefixes", _long_prefix_index, "long prefix"),
    # compressed indexes
    Case("lcluster-0-nonhead", "legacy",
         _full_index(b"/d/e/f", lambda lay: 0, 0, "<H", fmt.Z_EROFS_LCLUSTER_TYPE_NONHEAD),
         "lcluster 0"),
    Case("clusterofs-beyond-lcluster", "legacy",
         _full_index(b"/d/e/f", lambda lay: 0, 2, "<H", 5000), "clusterofs"),
    Case("cblkcnt-missing", "legacy",
         _full_index(b"/d/e/f", lambda lay: nonhead(lay, b"/d/e/f", True), 4, "<H", 1),
         "block count"),
    Case("delta0-points-before-start", "legacy",
         _full_index(b"/d/e/f", lambda lay: nonhead(lay, b"/d/e/f", False), 4, "<H",
                     lambda lay, lcn: lcn + 5), "delta[0]"),
    Case("delta1-skips-next-head", "legacy",
         _full_index(b"/d/e/f", lambda lay: nonhead(lay, b"/d/e/f", True), 6, "<H", 500),
         "delta[1]"),
    Case("index-area-past-end", "lz4", _field(b"/d/e/f", "size", 0x7FFFFFFF), "past the end"),
    Case("algorithm-unknown", "lz4", _map_header(b"/a", 6, "<B", 5), "unknown compression"),
    Case("algorithm-not-announced", "lz4", _map_header(b"/a", 6, "<B", 3), "not announced"),
    Case("big-pcluster-without-feature", "lz4", _map_header(b"/a", 4, "<H", 6, op="or"),
         "big pcluster"),
    Case("ztailpacking-crosses-block", "lz4hc-ztail", _ztail_idata, "crosses a block boundary"),
    Case("fragment-without-packed-inode", "lz4", _map_header(b"/a", 7, "<B", 0x80, op="or"),
         "no packed inode"),
    Case("packed-inode-is-a-directory", "lz4", _packed_is_root, "not a regular file"),
    Case("fragment-past-packed-inode", "fragments", _map_header(b"/a", 0, "<I", 0x7FFFFFFF),
         "past the end of the packed inode"),
    Case("packed-inode-fragment-of-itself", "fragments", _packed_self_fragment,
         "fragments of itself"),
    Case("dedupe-partial-reference-too-long", "dedupe", _partial_too_long, "extent at"),
    # pcluster contents
    Case("pcluster-all-zeros", "lz4", _zero_pcluster, "all zeros"),
    Case("pcluster-garbage-lz4", "lz4", _garbage, "extent at"),
    Case("pcluster-garbage-lzma", "lzma", _garbage, "extent at"),
    Case("pcluster-garbage-deflate", "deflate", _garbage, "extent at"),
    Case("pcluster-garbage-zstd", "zstd", _garbage, "extent at"),
    Case("decompression-bomb-lz4", "lz4", _pcluster(b"/a", _lz4_bomb), "lz4"),
    Case("decompression-bomb-deflate", "deflate",
         _pcluster(b"/a", lambda: _raw_deflate(bytes(2 << 20))), "deflate"),
    Case("decompression-bomb-zstd", "zstd", _pcluster(b"/a", _zstd_bomb), "zstd"),
]
