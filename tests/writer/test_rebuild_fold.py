"""Rebuild mode folds each lower layer into the merged tree as it reads it, skipping what the
layers above hide (layers._ImageBelow).  That must give exactly the tree merge_layers makes
from the whole layer trees: the same names, attributes, xattrs (overlay marks included),
link counts, hard links, and the same source (image, nid) for each file's bytes, with and
without --ovlfs-strip.  The layers (support/layers.py) hold whiteouts, opaque "y" and "x"
directories, xwhiteouts, a directory over a file and a file over a directory, hard links;
a last layer hides one name of a hard-linked file of the first.

(One thing differs by design: a hard-linked file's `path`, the name messages and
--compress-hints see, is the first name that shows, not the first name in its own layer.)"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkerofs.writer.layers import LayerStack, merge_layers, read_layer
from mkerofs.writer.spool import Spool
from mkerofs.writer.walk import LayerRef, OffsetRef
from support.layers import make_layer_trees
from support.run import run_mkerofs

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    work = tmp_path_factory.mktemp("fold")
    paths = []
    trees = make_layer_trees(work)
    for d in ("d", "e"):
        (trees[0] / d).mkdir()
    (trees[0] / "d/p").write_bytes(b"linked\n")
    os.link(trees[0] / "d/p", trees[0] / "d/q")
    os.link(trees[0] / "d/p", trees[0] / "e/r")
    top = work / "top"
    (top / "d").mkdir(parents=True)
    (top / "d/p").write_bytes(b"over a link\n")
    for tree in [*trees, top]:
        paths.append(work / f"{tree.name}.erofs")
        run_mkerofs(*FIXED, "-Enoinline_data", paths[-1], tree)
    return paths


def _dump(root, files) -> list[tuple]:
    """Every name of the tree with what the image takes from its inode; hard links as the
    first path (in this walk) of the inode they share."""
    rows, first = [], {}
    pending = [(b"", root)]
    while pending:
        path, node = pending.pop()
        found = files.get(node)
        rows.append((path, first.setdefault(id(node), path), node.mode, node.uid, node.gid,
                     node.size, node.mtime_ns, node.rdev, node.nlink, node.target,
                     list(node.xattrs), None if found is None else (found.layer, found.nid)))
        if node.entries is not None:
            pending.extend((path + b"/" + name, child) for name, child in node.entries)
    return rows


@pytest.mark.parametrize("strip", [False, True])
def test_fold_equals_whole_tree_merge(sources, strip):
    with LayerStack([str(p) for p in sources]) as stack:
        folded = _dump(*stack.merged_tree(strip))
        trees = [read_layer(layer) for layer in stack.layers]
        files = {node: found for tree in trees for node, found in tree.files.items()}
        root, _count = merge_layers([tree.root for tree in trees], strip)
        whole = _dump(root, files)
    assert folded == whole
    assert any(row[-1] is not None and row[-1][0] == 0 for row in folded)   # L1 shows through
    linked = {row[0]: row[1] for row in folded if row[0] in (b"/d/q", b"/e/r")}
    assert len(set(linked.values())) == 1 and len(linked) == 2              # still one inode
    assert [row[8] for row in folded if row[0] in linked] == [2, 2]
    assert any(row[10] for row in folded) or strip                           # marks kept


def test_fold_skips_what_is_hidden(sources):
    """Files of the lower layers hidden by the upper ones are not kept."""
    with LayerStack([str(p) for p in sources]) as stack:
        _root, files = stack.merged_tree(True)
        whole = sum(len(read_layer(layer).files) for layer in stack.layers)
    assert 0 < len(files) < whole
    assert all(node.nlink for node in files)


def _data_by_path(root) -> dict[bytes, tuple]:
    """Each regular file's DataRef, by path, as a comparable tuple."""
    rows = {}
    pending = [(b"", root)]
    while pending:
        path, node = pending.pop()
        if node.entries is not None:
            pending.extend((path + b"/" + name, child) for name, child in node.entries)
        elif node.data is not None:
            d = node.data
            rows[path] = (d.path, d.offset, d.in_image, d.indexed, d.layer)
    return rows


def _refs(root) -> list:
    """The data of every file of the tree that has some."""
    refs, pending = [], [root]
    while pending:
        for _name, child in pending.pop().entries:
            if child.entries is not None:
                pending.append(child)
            elif child.data is not None:
                refs.append(child.data)
    return refs


@pytest.mark.parametrize("mode", [None, "data", "rvsp"])
def test_early_placing_equals_resolve(sources, mode):
    """merged_tree(early=...) gives the files whose bytes are one run of blocks their DataRef
    as it reads them: the same every file gets when all are noted and resolved afterwards."""
    got = []
    for early in (None, (mode, 4096)):
        with LayerStack([str(p) for p in sources]) as stack, Spool() as spool:
            root, files = stack.merged_tree(False, early)
            noted = len(files)
            stack.resolve_data(root, files, mode, 4096, spool)
            got.append((_data_by_path(root), noted))
    (late, all_noted), (early_rows, few_noted) = got
    assert early_rows == late
    assert any(ref[4] is not None for ref in late.values()) == (mode is None)
    assert any(ref[0] is not None for ref in late.values()) == (mode == "data")
    assert few_noted < all_noted        # (every layer here is flat: none left to resolve)


def test_copied_files_share_their_image_path(sources):
    """--clean=data: a file read in place from its image names the image with the bytes object
    every such file of that image shares (not one a file)."""
    with LayerStack([str(p) for p in sources]) as stack, Spool() as spool:
        root, files = stack.merged_tree(False, ("data", 4096))
        stack.resolve_data(root, files, "data", 4096, spool)
        paths = [ref[0] for ref in _data_by_path(root).values() if ref[0] is not None]
        assert len(paths) > len(sources)
        # (each a 48-byte OffsetRef, its own offset, answering as a DataRef read in place)
        refs = [ref for ref in _refs(root) if ref.path is not None]
        assert all(isinstance(ref, OffsetRef) and not ref.indexed and not ref.in_image
                   for ref in refs)
        assert len({id(p) for p in paths}) == len(set(paths)) <= len(sources)


def test_each_image_gives_its_pages_back_once_read(sources, monkeypatch):
    """merged_tree gives back the pages of each image as soon as it is read (not all the
    images' metadata at once, at the end): each image once, the top one first."""
    from mkerofs.reader.image import Image
    dropped = []
    real = Image.drop_pages

    def drop(img):
        dropped.append(img)
        real(img)

    monkeypatch.setattr(Image, "drop_pages", drop)
    with LayerStack([str(p) for p in sources]) as stack:
        stack.merged_tree(False)
        assert dropped == [layer.image for layer in reversed(stack.layers)]


def test_one_chunk_files_are_layer_refs(sources):
    """Blob index: a file of one chunk in its image (every file here) points there with a
    LayerRef (48 bytes, not a 72-byte DataRef a file), whichever way it was placed."""
    for early in (None, (None, 4096)):
        with LayerStack([str(p) for p in sources]) as stack, Spool() as spool:
            root, files = stack.merged_tree(False, early)
            stack.resolve_data(root, files, None, 4096, spool)
            refs = [ref for ref in _refs(root) if ref.layer is not None]
        assert len(refs) > 5
        assert all(type(ref) is LayerRef and ref.path is None and not ref.in_image
                   and not ref.indexed and ref.layer.blkaddrs is None for ref in refs)
