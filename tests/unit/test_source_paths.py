"""writer/walk.py TreeInode.path: a walked file, and a tar's file below the root, keeps only
its name and the directory it was found in (`found_in`) instead of its whole path; the path it
answers must still be the one it was first found under, as the walk and the tar spell it."""
from __future__ import annotations

import io
import os

import pytest

from mkerofs.writer.options import BuildOptions
from mkerofs.writer.spool import Spool
from mkerofs.writer.tarsource import TarTreeOptions, read_tar_tree
from mkerofs.writer.tarstream import TarReader
from mkerofs.writer.walk import TreeInode, walk_source
from support.tarfiles import END, header


def _all(root: TreeInode) -> list[tuple[bytes, TreeInode]]:
    """(path relative to the root, node) of every name below `root`, breadth first."""
    out, pending = [], [(b"", root)]
    while pending:
        rel, directory = pending.pop(0)
        for name, child in directory.entries:
            out.append((rel + name, child))
            if child.entries is not None:
                pending.append((rel + name + b"/", child))
    return out


@pytest.mark.parametrize("slash", [False, True])
def test_walked_paths(tmp_path, slash):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "top").write_bytes(b"1")
    (tmp_path / "d" / "f").write_bytes(b"2")
    (tmp_path / "d" / "e" / "g").write_bytes(b"3")
    os.symlink("f", tmp_path / "d" / "s")
    os.link(tmp_path / "d" / "f", tmp_path / "d" / "e" / "h")      # first found as d/f
    source = os.fsencode(tmp_path) + (b"/" if slash else b"")
    root, _count = walk_source(source, BuildOptions())
    seen = set()
    for rel, node in _all(root):
        if id(node) in seen:
            continue
        seen.add(id(node))
        assert node.path == os.path.join(source, rel), rel
        if node.entries is None and (b"/" in rel or not slash):
            # (the memory this is for: the name its directory holds, not a path of its own;
            # SOURCE given with a "/" after it: its own entries keep their whole paths)
            assert node.found_in is not None and node.where == os.path.basename(rel), rel
    assert dict(_all(root))[b"d/e/h"].path == os.path.join(source, b"d/f")


def test_tar_paths(tmp_path):
    # (hand-made names: tarfile would tidy "a/../b/x" and "./c" up)
    blocks = [header(name) for name in
              (b"top", b"./c", b"d/f", b"d/e/g", b"a/../b/x", b"d//y")]
    data = b"".join(blocks) + END
    options = TarTreeOptions(root_uid=0, root_gid=0, build_time=1)
    with Spool(tmp_path) as spool:
        root, _count = read_tar_tree(TarReader(io.BytesIO(data)), options, spool)
        paths = {rel: node.path for rel, node in _all(root) if node.entries is None}
        kept = {rel: node.found_in is not None for rel, node in _all(root)
                if node.entries is None}
    assert paths == {b"top": b"top", b"c": b"c", b"d/f": b"d/f", b"d/e/g": b"d/e/g",
                     b"b/x": b"b/x", b"d/y": b"d/y"}
    assert kept[b"d/e/g"] and kept[b"d/f"] and not kept[b"top"]
