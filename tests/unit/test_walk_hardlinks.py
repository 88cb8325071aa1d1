"""writer/walk.py: a directory's files with more than one link become one inode per
(st_dev, st_ino), found through a table per device keyed by st_ino alone; a file also linked
from outside the tree counts only its links inside it; --hard-dereference splits them."""
from __future__ import annotations

import os
from dataclasses import replace

from mkerofs.writer.options import BuildOptions
from mkerofs.writer.walk import _Walk, walk_source


def _tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(b"a")
    os.link(src / "a", src / "d" / "a2")                    # two links, both inside
    (src / "c").write_bytes(b"c")
    os.link(src / "c", tmp_path / "outside")                # two links, one inside
    (src / "e").write_bytes(b"e")                           # one link
    return src


def _by_name(root):
    found, pending = {}, [root]
    while pending:
        directory = pending.pop()
        for name, child in directory.entries:
            found[name] = child
            if child.entries is not None:
                pending.append(child)
    return found


def test_links_in_the_tree_are_one_inode(tmp_path):
    src = _tree(tmp_path)
    root, count = walk_source(os.fsencode(src), BuildOptions())
    nodes = _by_name(root)
    assert nodes[b"a"] is nodes[b"a2"] and nodes[b"a"].nlink == 2
    assert nodes[b"c"].nlink == 1 and nodes[b"e"].nlink == 1
    assert count == 5                   # root, d, a (= a2), c, e


def test_the_table_is_keyed_by_inode_number_per_device(tmp_path, monkeypatch):
    src = _tree(tmp_path)
    walks = []
    real_init = _Walk.__init__

    def keep(self, *args):
        real_init(self, *args)
        walks.append(self)
    monkeypatch.setattr(_Walk, "__init__", keep)
    root, _count = walk_source(os.fsencode(src), BuildOptions())
    nodes = _by_name(root)
    st_a, st_c = os.stat(src / "a"), os.stat(src / "c")
    (walk,) = walks
    assert walk.hardlinks == {st_a.st_dev: {st_a.st_ino: nodes[b"a"], st_c.st_ino: nodes[b"c"]}}


def test_hard_dereference_splits_them(tmp_path):
    src = _tree(tmp_path)
    root, count = walk_source(os.fsencode(src),
                              replace(BuildOptions(), hard_dereference=True))
    nodes = _by_name(root)
    assert nodes[b"a"] is not nodes[b"a2"]
    assert nodes[b"a"].nlink == nodes[b"a2"].nlink == 1
    assert count == 6
