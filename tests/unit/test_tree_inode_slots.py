"""walk.TreeInode's shared slots and walk.OffsetRef: the memory savings must not change what
the fields answer."""
import dataclasses
import pickle
import stat
import sys

from mkerofs.writer.walk import InImageRef, OffsetRef, TreeInode, offset_refs


def _dir(path: bytes = b"/src/d") -> TreeInode:
    return TreeInode(path, stat.S_IFDIR | 0o755, 0, 0, 0, 0, nlink=2, entries=[])


def test_found_in_and_parent_share_a_slot_but_answer_apart():
    up = _dir(b"/src")
    d = _dir()
    d.parent = up
    f = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1, found_in=d)
    assert f.found_in is d and f.path == b"/src/d/f"
    # a directory's parent is not where its path comes from: it keeps its whole path
    assert d.found_in is None and d.parent is up and d.path == b"/src/d"
    whole = TreeInode(b"/src/g", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1)
    assert whole.found_in is None and whole.path == b"/src/g"


def test_rdev_is_a_device_s_only_and_survives_replace():
    dev = TreeInode(b"c", stat.S_IFCHR | 0o600, 0, 0, 0, 0, 0x1234, 1)
    assert dev.rdev == 0x1234
    twin = dataclasses.replace(dev, nlink=2)
    assert twin.rdev == 0x1234 and twin.nlink == 2 and twin is not dev
    f = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1)
    f.i_u = 77                          # (a block address, once laid out)
    assert f.rdev == 0


def test_dir_shape_and_xattr_ibody_take_other_fields_places():
    d = _dir()
    assert d.dir_shape is None
    d.dir_shape = shape = object()
    assert d.dir_shape is shape
    d.dir_shape = None
    assert d.target is None
    f = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1,
                  xattrs=[(b"user.a", b"1")])
    assert f.xattr_ibody == b""         # xattrs not encoded yet
    f.set_xattr_ibody(bytes(16))
    assert f.xattr_ibody == bytes(16) and f.meta_size_before_inline == f.isize + 16
    f.set_xattr_ibody(b"")
    assert f.xattr_ibody == b"" and f.xattrs == ()


def test_planned_fields_by_keyword():
    n = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1, ftype=1, extended=True)
    assert (n.ftype, n.extended, n.nid, n.inline, n.flat) == (1, True, -1, b"", None)
    assert n.isize == n.meta_size_before_inline == 64
    inl = TreeInode(b"g", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1, inline=b"abc")
    assert inl.inline == b"abc" and not inl.extended and inl.isize == 32


def test_extended_is_the_inode_s_part_of_meta_size_before_inline():
    f = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1,
                  xattrs=[(b"user.a", b"1")])
    assert not f.extended and f.meta_size_before_inline == 32      # (xattrs not encoded yet)
    f.extended = True
    assert f.extended and f.meta_size_before_inline == 64
    # a compact inode with a 32-byte ibody is as long as an extended one without: still compact
    f.extended = False
    f.set_xattr_ibody(bytes(32))
    assert not f.extended and f.isize == 32 and f.meta_size_before_inline == 64
    f.extended = True
    assert f.extended and f.isize == 64 and f.meta_size_before_inline == 96
    assert f.xattr_ibody == bytes(32)
    twin = dataclasses.replace(f, nlink=2)
    assert twin.extended and twin.meta_size_before_inline == 96 and twin.nlink == 2
    bare = TreeInode(b"h", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1)
    bare.extended = True
    bare.set_xattr_ibody(b"")
    assert bare.extended and bare.meta_size_before_inline == 64 and bare.xattrs == ()


def test_inline_takes_a_planned_inode_s_entries_slot():
    d = _dir()
    assert d.entries == [] and d.inline == b""      # (a directory's entries are no inline bytes)
    d.entries = None                                # (planned: its shape holds them)
    d.inline = b"tail"
    assert d.inline == b"tail"
    d.inline = b""
    assert d.entries is None and d.inline == b""
    f = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1)
    assert f.entries is None and f.inline == b""    # (a non-directory: entries None)
    f.inline = b"index"
    assert f.inline == b"index" and f.inline_len == 5
    twin = dataclasses.replace(f, nlink=2)
    assert twin.inline == b"index"


def test_tree_inode_is_176_bytes():
    # (one pymalloc size class less than 192: ~0.9 MiB on the bench's 60,000 inodes)
    f = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5, 0, nlink=1)
    assert sys.getsizeof(f) <= 176


def test_offset_ref_answers_as_a_data_ref():
    refs = offset_refs(b"/t.tar")
    ref = refs(0)
    assert ref and ref.offset == 0 and type(ref.offset) is int        # never false
    big = refs(5 << 40)
    assert big.path == b"/t.tar" and big.offset == 5 << 40
    assert not big.in_image and not big.indexed and big.layer is None
    assert offset_refs(b"/t.tar") is refs
    indexed = offset_refs(b"/t.tar", indexed=True)(512)
    assert indexed.indexed and indexed.path == b"/t.tar" and indexed.offset == 512
    written = InImageRef(4096)
    assert written.in_image and written.path is None and written.offset == 4096
    assert isinstance(ref, OffsetRef) and isinstance(written, OffsetRef)
    # (the compression workers get the offset, a plain int: it pickles)
    assert pickle.loads(pickle.dumps(big.offset)) == 5 << 40


def test_offset_ref_is_smaller_than_a_ref_and_its_offset():
    ref = offset_refs(b"/t.tar")(123456789)
    assert sys.getsizeof(ref) <= sys.getsizeof(123456789) + 16     # an int and a GC header
