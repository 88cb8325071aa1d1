"""--verify gives back the pages it reads through mappings as it goes (reader.compare
_page_budget): every _DROP_EVERY bytes of file data compared, Image.drop_pages on the image
read back (its devices too) and on the source when it has drop_pages (rebuild mode: the layer
images, read as the image's devices and again as the source).  Without it, a rebuild of the
bench layers with --verify peaked at 2.2 GB resident (the layers mapped twice), 0.3 GB with it.
Here the budget is made small and the calls counted."""
from __future__ import annotations

import os
from collections import Counter

import pytest

from mkerofs import BuildOptions, build
from mkerofs.reader import compare
from mkerofs.reader.compare import compare_image
from mkerofs.reader.image import Image
from mkerofs.writer.options import RebuildOptions

FILES = 6
SIZE = 40_000


@pytest.fixture
def counted(monkeypatch) -> Counter:
    """Image.drop_pages calls, by image (id); the budget made two files' worth."""
    calls: Counter = Counter()
    real = Image.drop_pages

    def drop_pages(self):
        calls[id(self)] += 1
        real(self)

    monkeypatch.setattr(Image, "drop_pages", drop_pages)
    monkeypatch.setattr(compare, "_DROP_EVERY", 2 * SIZE)
    return calls


def _tree(root, prefix: str = "f"):
    root.mkdir()
    for i in range(FILES):
        (root / f"{prefix}{i}").write_bytes(os.urandom(SIZE))
    return root


def test_compare_drops_the_image_pages_and_the_source_pages(tmp_path, counted):
    src = _tree(tmp_path / "src")
    image = tmp_path / "i.erofs"
    build(image, src, BuildOptions(quiet=True))

    class Tree(compare.DirectoryTree):
        dropped = 0

        def drop_pages(self):
            Tree.dropped += 1

    with Image.open(image) as img:
        assert compare_image(img, Tree(os.fsencode(src))) == []
        # 6 files of 40 kB against a budget of 80 kB: given back after the 2nd, 4th, 6th
        assert counted[id(img)] == FILES // 2
    assert Tree.dropped == FILES // 2


def test_compare_below_the_budget_drops_nothing(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(compare, "_DROP_EVERY", FILES * SIZE + 1)
    src = _tree(tmp_path / "src")
    image = tmp_path / "i.erofs"
    build(image, src, BuildOptions(quiet=True))
    with Image.open(image) as img:
        assert compare_image(img, os.fsencode(src)) == []
    assert not counted


def test_rebuild_verify_drops_the_layers_pages_as_it_compares(tmp_path, counted):
    layers = []
    for n in (1, 2):
        layer = tmp_path / f"L{n}.erofs"
        build(layer, _tree(tmp_path / f"L{n}", f"l{n}-"), BuildOptions(quiet=True))
        layers.append(str(layer))
    counted.clear()
    build(tmp_path / "r.erofs", layers,
          BuildOptions(quiet=True, verify=True, rebuild=RebuildOptions()))
    # each layer image: once after it was read, once after its data was resolved, then with
    # every round of the comparison (12 files of 40 kB, a round per 80 kB: 6), as is the
    # image read back
    per_image = sorted(counted.values())
    assert len(per_image) == 3, counted
    assert per_image == [6, 8, 8]
