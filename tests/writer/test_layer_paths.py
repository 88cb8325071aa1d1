"""Rebuild mode (and --incremental's base) keep, for each non-directory read from an image
below the root, only its name and the merged directory it was found in
(TreeInode.found_in), not its whole path: the path it answers (messages, --compress-hints)
must still be its path in the image, "/" + the names down to it, for files of the top image,
files a lower image adds to a directory of an upper one, and files of a directory only a
lower image has."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mkerofs.reader.image import Image
from mkerofs.writer.layers import LayerStack, read_image_tree
from support.layers import make_layer_trees
from support.run import run_mkerofs

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet", "-Enoinline_data")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    work = tmp_path_factory.mktemp("paths")
    trees = make_layer_trees(work)
    # (a directory only the bottom layer has, two deep: read whole by the fold)
    (trees[0] / "low/er").mkdir(parents=True)
    (trees[0] / "low/er/most").write_bytes(b"m\n")
    (trees[0] / "low/top").write_bytes(b"t\n")
    os.chown(trees[0] / "low/er/most", 7, 0)       # (the one owner a message is about)
    paths = []
    for tree in trees:
        paths.append(work / f"{tree.name}.erofs")
        run_mkerofs(*FIXED, paths[-1], tree)
    return paths


def _names(root) -> dict[int, tuple[object, list[bytes]]]:
    """Each node of the tree (by id) with every path it has there."""
    out: dict[int, tuple[object, list[bytes]]] = {}
    pending = [(b"", root)]
    while pending:
        path, node = pending.pop()
        out.setdefault(id(node), (node, []))[1].append(path or b"/")
        if node.entries is not None:
            pending.extend((path + b"/" + name, child) for name, child in node.entries)
    return out


def _check(root, named_dirs: bool = False) -> set[bytes]:
    """Assert every node's path is one of its names and non-directories below the root keep
    only their name (directories too with `named_dirs`: a merged tree's); return the paths
    of the non-directories that do."""
    kept = set()
    for node, names in _names(root).values():
        assert node.path in names, (node.path, names)
        # (a whiteout made of an xwhiteout keeps its whole path: there are few)
        made = stat.S_ISCHR(node.mode) and node.rdev == 0
        if node.entries is None and node.path.count(b"/") > 1 and not made:
            assert node.found_in is not None and node.where == os.path.basename(node.path)
            kept.add(node.path)
        if node.entries is not None:
            named = named_dirs and node.path != b"/"
            assert node.found_in is None and node.where == \
                (os.path.basename(node.path) if named else node.path)
    return kept


@pytest.mark.parametrize("strip", [False, True])
def test_rebuild_paths(sources, strip):
    with LayerStack([str(p) for p in sources]) as stack:
        root, _files = stack.merged_tree(strip)
        kept = _check(root, named_dirs=True)
    # a top file, one a lower layer adds below an upper directory, one of a lower-only
    # directory (read whole), a file two deep in it
    assert {b"/a/f1", b"/a/sub/deep", b"/low/top", b"/low/er/most"} <= kept


def test_incremental_base_paths(sources):
    with Image.open(sources[0]) as img:
        tree = read_image_tree(img, str(sources[0]))
    assert {b"/a/f1", b"/a/sub/deep", b"/low/er/most"} <= _check(tree.root)


def test_rebuild_message_names_the_path(sources, tmp_path):
    """A message about a file of a lower layer names its whole path in the image."""
    image = tmp_path / "out.erofs"
    result = run_mkerofs("--quiet", f"--uid-offset={2**32 - 7}", image, *sources,
                         check=False)
    assert result.returncode != 0
    assert "/low/er/most: uid/gid overflow" in result.stderr
