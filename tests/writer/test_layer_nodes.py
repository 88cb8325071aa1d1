"""Rebuild mode makes the TreeInode of each inode it reads straight from the reader's
Image.inode_fields (layers._layer_node), without the reader's Inode, for the common kinds
(regular files, directories, fifos, sockets without xattrs); everything else goes through
image_node.  Both must give the same node: the same attributes, xattrs, symlink target, kind,
and for a regular file with bytes the same LayerFile.  Checked on every inode of images of a
tree with every kind of file, with compact and extended inodes, with and without xattrs."""
from __future__ import annotations

import os
import stat
from dataclasses import fields as dataclass_fields

import pytest

from mkerofs.errors import ImageError
from mkerofs.reader.image import INODE_FIELDS, Image, Inode
from mkerofs.writer.layers import LayerFile, _layer_node, _mtime_ns, _noting, image_node
from mkerofs.writer.walk import TreeInode
from support.run import build_image
from support.trees import make_full_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes") / "tree"
    make_full_tree(root, xattrs=True, big_ids=False)
    return root


def _place(path: bytes) -> tuple[bytes, TreeInode | None, bytes]:
    """(the directory's path + "/", the directory (_found_in), the name) of a path of an
    image; the root's entries have no `found_in`, the root itself is b"" + b"/"."""
    if path == b"/":
        return b"", None, b"/"
    head, name = path.rsplit(b"/", 1)
    directory = TreeInode(head, stat.S_IFDIR | 0o755, 0, 0, 0, 0, entries=[]) if head \
        else None
    return head + b"/", directory, name


def test_inode_fields_are_the_inode_after_its_nid():
    names = [f.name for f in dataclass_fields(Inode)]
    assert names[0] == "nid"
    assert INODE_FIELDS == tuple(names[1:])


@pytest.mark.parametrize("options", [("-T", "1000000000"), ("-Eforce-inode-compact",),
                                     ("-Enoinline_data", "-x", "-1")],
                         ids=["extended", "compact", "no-xattrs"])
def test_fast_nodes_match_image_node(tree, tmp_path, options):
    image = tmp_path / "t.erofs"
    build_image(image, tree, "--quiet", *options)
    kinds = set()
    with Image.open(image) as img:
        for path, inode in img.walk():
            nid = inode.nid
            values = img.inode_fields(nid)
            assert Inode(nid, *values) == inode
            assert dict(zip(INODE_FIELDS, values))["mode"] == inode.mode
            files: dict = {}
            base, found_in, name = _place(path)
            fast = _layer_node(img, nid, values, base, name, found_in, _noting(files, 3))
            slow = image_node(img, inode, fast.where, fast.found_in)
            where = os.fsdecode(path)
            assert fast.path == slow.path == path, where
            # (a non-directory below the root keeps only its name, a directory its path)
            assert fast.found_in is (found_in if not inode.is_dir() else None), where
            assert (fast.mode, fast.uid, fast.gid, fast.size, fast.mtime_ns, fast.rdev) == \
                (slow.mode, slow.uid, slow.gid, slow.size, slow.mtime_ns, slow.rdev), where
            assert fast.xattrs == slow.xattrs, where
            assert fast.target == slow.target, where
            assert (fast.entries is None) == (slow.entries is None), where
            assert fast.data == slow.data, where
            if inode.is_reg() and inode.size:
                assert files == {fast: LayerFile(3, nid, inode.size, inode.datalayout,
                                                 inode.startblk)}, where
            else:
                assert not files, where
            kinds.add((inode.mode & 0o170000, bool(inode.xattr_icount)))
    # (the tree has every kind: the test saw both paths of _layer_node)
    assert len({kind for kind, _x in kinds}) == 7
    assert any(has for _k, has in kinds) == ("-x" not in options)


@pytest.mark.parametrize("options", [(), ("-Enoinline_data",)], ids=["inline", "blocks"])
def test_listdir_fields_is_listdir(tmp_path, options):
    """Image.listdir_fields (rebuild mode: no Inode, a directory's inline tail parsed in
    place) lists every directory as listdir does, inline or in blocks of their own."""
    big = tmp_path / "tree"
    make_full_tree(big, xattrs=True, big_ids=False)
    (big / "many").mkdir()
    for i in range(300):        # (several blocks of entries, and blocks of > 32 entries)
        (big / "many" / f"entry-{i:04d}-{'x' * (i % 40)}").write_bytes(b"")
    image = tmp_path / "t.erofs"
    build_image(image, big, "--quiet", *options)
    listed = 0
    with Image.open(image) as img:
        for _path, inode in img.walk():
            if inode.is_dir():
                fields = img.inode_fields(inode.nid)
                assert img.listdir_fields(inode.nid, fields) == img.listdir(inode)
                listed += 1
        with pytest.raises(ImageError, match="not a directory"):
            nid = img.lookup("/many/entry-0000-").nid
            img.listdir_fields(nid, img.inode_fields(nid))
    assert listed > 3


def test_inode_fields_share_each_mode(tree, tmp_path):
    """Rebuild mode keeps every inode's mode: the reader hands out one int object per
    distinct mode (not one per inode, 28 bytes each)."""
    image = tmp_path / "t.erofs"
    build_image(image, tree, "--quiet")
    with Image.open(image) as img:
        modes = [img.inode_fields(inode.nid)[0] for _path, inode in img.walk()]
    first = {}
    for mode in modes:
        assert first.setdefault(mode, mode) is mode
    assert len(modes) > len(first) > 3


def test_layer_nodes_share_each_mtime(tree, tmp_path):
    """Rebuild mode keeps every node's mtime in ns: each value (every compact inode's: the
    image's build time) is one int object, not one per node (32 bytes each), whichever way
    the node is made; nanoseconds included."""
    image = tmp_path / "t.erofs"
    build_image(image, tree, "--quiet", "-T", "1700000000")
    with Image.open(image) as img:
        nodes = []
        for path, inode in img.walk():
            base, found_in, name = _place(path)
            nodes.append(_layer_node(img, inode.nid, img.inode_fields(inode.nid), base, name,
                                     found_in, _noting({}, 0)))
            nodes.append(image_node(img, inode, path))
    assert len(nodes) > 20
    assert {node.mtime_ns for node in nodes} == {1700000000 * 10**9}
    assert len({id(node.mtime_ns) for node in nodes}) == 1
    late = _mtime_ns(1700000000, 5)
    assert late == 1700000000 * 10**9 + 5 and _mtime_ns(1700000000, 5) is late
