"""Compressed images of sparse files mounted by the kernel: the holes (found with SEEK_HOLE,
not read, their zero windows compressed once per build) read back as zeros and the data
around them as written, at unaligned offsets, in files that are all hole or have 4 KiB holes
between data blocks."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from support.compare import compare_trees
from support.run import build_image
from support.trees import SPARSE_FILES, make_sparse_tree

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def sparse_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sparse") / "src"
    make_sparse_tree(root)
    return root


def _reads_differ(src: Path, mnt: Path, rng: random.Random) -> list[str]:
    """Reads at random offsets, and across each data extent's edges."""
    bad = []
    for name, (size, extents) in SPARSE_FILES.items():
        offsets = [rng.randrange(size) for _ in range(20)]
        for off, n in extents[:8]:
            offsets += [max(off - 3000, 0), off + n - 100]
        with open(src / name, "rb") as a, open(mnt / name, "rb") as b:
            for off in offsets:
                a.seek(off)
                b.seek(off)
                if a.read(70000) != b.read(70000):
                    bad.append(f"{name}@{off}")
    return bad


@pytest.mark.parametrize("opts", [["-zlz4"], ["-zlzma"], ["-zlz4", "-C65536", "-Eztailpacking"],
                                  ["-zlzma", "-C131072", "-Efragments"],
                                  ["-zlz4", "-Ededupe", "--max-extent-bytes=65536"]],
                         ids=" ".join)
def test_sparse_files_read_back(sparse_tree, tmp_path, kernel, opts):
    image = tmp_path / "z.erofs"
    build_image(image, sparse_tree, *opts)
    assert image.stat().st_size < 8 * 2**20, "holes must compress"
    with kernel(image) as mnt:
        compare_trees(sparse_tree, mnt)
        bad = _reads_differ(sparse_tree, Path(mnt), random.Random(" ".join(opts)))
        assert not bad, f"{len(bad)} reads differ, e.g. {bad[:5]}"
