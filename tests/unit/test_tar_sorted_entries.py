"""A tar's tree as a build reads it (TarTreeOptions.sorted_entries): directories' entries as
walk.SortedEntries (two lists holding the dots, as the shape takes them) and directories
named by their name alone (walk.NamedDirInode).  The same tree, paths, link counts and
planned shapes as the tree of (name, child) lists the other readers get."""
from __future__ import annotations

import io
import tarfile

import pytest

from mkerofs.writer.options import BuildOptions
from mkerofs.writer.plan import plan_inodes
from mkerofs.writer.spool import Spool
from mkerofs.writer.tarsource import TarTreeOptions, read_tar_tree
from mkerofs.writer.tarstream import TarReader
from mkerofs.writer.walk import NamedDirInode, SortedEntries, TreeInode

BUILD = 1_000_000_000


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, 0o755, 1_700_000_000, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data))
        add("a", tarfile.DIRTYPE)
        add("a/b", tarfile.DIRTYPE)
        add("a/b/file", data=b"x" * 5000)
        add("a/b/-", data=b"dash sorts before the dots")
        add("a/c/deep/implicit", data=b"its directories are made on the way")
        add("a/b/hard", tarfile.LNKTYPE, link="a/b/file")
        add("top", data=b"y")
        add("a/b/../z", tarfile.SYMTYPE, link="file")
        for i in range(40):          # (several blocks of 512 bytes)
            add(f"a/many/entry-with-a-long-name-{i:03}", data=b"z")
    return out.getvalue()


def _read(tmp_path, sorted_entries: bool) -> TreeInode:
    options = TarTreeOptions(root_uid=0, root_gid=0, build_time=BUILD,
                             sorted_entries=sorted_entries)
    tmp_path.mkdir()
    with Spool(tmp_path) as spool:
        root, _count = read_tar_tree(TarReader(io.BytesIO(_tar())), options, spool)
    return root


def _listing(root: TreeInode) -> list[tuple[bytes, bytes, int, bool]]:
    """(relative path, the inode's path, nlink, directory?) of every name, depth first."""
    out = []
    pending = [(b"", root)]
    while pending:
        rel, directory = pending.pop()
        for name, child in directory.entries:
            path = rel + b"/" + name if rel else name
            out.append((path, child.path, child.nlink, child.entries is not None))
            if child.entries is not None:
                pending.append((path, child))
    return out


def test_sorted_entries_give_the_same_tree(tmp_path):
    lists = _read(tmp_path / "l", False)
    split = _read(tmp_path / "s", True)
    assert _listing(split) == _listing(lists)
    assert type(split.entries) is SortedEntries and type(lists.entries) is list
    a = dict(split.entries)[b"a"]
    b = dict(a.entries)[b"b"]
    deep = dict(dict(a.entries)[b"c"].entries)[b"deep"]
    # directories hold their name only, their paths made from their parents'
    assert type(b) is NamedDirInode and b.where == b"b" and b.path == b"a/b"
    assert deep.where == b"deep" and deep.path == b"a/c/deep"
    assert dict(deep.entries)[b"implicit"].path == b"a/c/deep/implicit"
    # the dots are in the lists, not in what iterating gives
    assert list(b.entries.names) == sorted(b.entries.names) and b"." in b.entries.names
    assert len(b.entries) == 3
    assert [n for n, _c in b.entries] == [b"-", b"file", b"hard"]
    assert sorted(n for n, _c in a.entries) == [b"b", b"c", b"many", b"z"]


@pytest.mark.parametrize("block_size", [4096, 512])
def test_sorted_entries_plan_the_same_shapes(tmp_path, block_size):
    shapes = []
    for sorted_entries in (False, True):
        root = _read(tmp_path / str(sorted_entries), sorted_entries)
        plan = plan_inodes(root, BuildOptions(block_size=block_size), BUILD)
        shapes.append([(n.path, list(n.dir_shape.names), [t.path for t in n.dir_shape.targets],
                        tuple(n.dir_shape.ends), n.size) for n in plan.inodes
                       if n.mode & 0o170000 == 0o040000])
    assert shapes[0] == shapes[1]
    assert (len(max(shapes[1], key=lambda s: len(s[3]))[3]) > 1) == (block_size == 512)
    assert any(b"-" in names and names.index(b"-") < names.index(b".")
               for _p, names, _t, _e, _s in shapes[1])
