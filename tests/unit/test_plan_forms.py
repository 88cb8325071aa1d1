"""writer/plan.py: plan_inodes answers each inode's form and mtime inline for the usual options;
those answers must be what inode_form and _mtime say, option by option."""
from __future__ import annotations

import itertools
import stat
from dataclasses import replace

import pytest

from mkerofs.writer.options import BuildOptions, TimeInherit
from mkerofs.writer.plan import _mtime, inode_form, plan_inodes
from mkerofs.writer.walk import TreeInode

BUILD_TIME = 1_700_000_000


def _tree() -> tuple[TreeInode, list[TreeInode]]:
    """A root holding files of every mix: mtime at, before and after the build time (with and
    without nanoseconds), sizes and ids past the compact form's fields."""
    root = TreeInode(b"/r", stat.S_IFDIR | 0o755, 0, 0, 0, BUILD_TIME * 10**9,
                       nlink=2, entries=[])
    root.parent = root
    files = []
    mtimes = [BUILD_TIME * 10**9, BUILD_TIME * 10**9 + 5, (BUILD_TIME - 100) * 10**9,
              (BUILD_TIME + 100) * 10**9 + 7]
    for i, (mtime, size, uid) in enumerate(itertools.product(mtimes, [10, 2**32 + 1],
                                                             [0, 70_000])):
        src = TreeInode(b"/r/f%d" % i, stat.S_IFREG | 0o644, uid, 5, size, mtime,
                          nlink=1)
        root.entries.append((b"f%d" % i, src))
        files.append(src)
    return root, files


@pytest.mark.parametrize("inherit", [None, TimeInherit.SOURCE, TimeInherit.FIXED,
                                     TimeInherit.CLAMP])
@pytest.mark.parametrize("ignore_mtime", [False, True])
@pytest.mark.parametrize("force_inode", [None, "extended"])
def test_planned_forms_are_inode_forms(inherit, ignore_mtime, force_inode):
    options = BuildOptions(time_inherit=inherit, ignore_mtime=ignore_mtime,
                           force_inode=force_inode)
    root, files = _tree()
    stats = {id(src): replace(src) for src in files}     # (before planning drops them)
    plan = plan_inodes(root, options, BUILD_TIME)
    planned = [node for node in plan.inodes if node is not root]
    assert len(planned) == len(files)
    seen = set()
    for node in planned:
        st = stats[id(node)]
        mtime, nsec = _mtime(st, options.effective_time_inherit, BUILD_TIME)
        want = inode_form(st.size, st.uid, st.gid, 1, mtime, nsec, options, BUILD_TIME)
        assert (node.extended, node.mtime, node.mtime_nsec) == want, node.path
        seen.add(want[0])
    # (the tree has compact and extended inodes unless the options force one form)
    assert seen == ({True} if force_inode == "extended" else {False, True})
