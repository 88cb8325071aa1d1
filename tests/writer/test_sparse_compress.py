"""Sparse files compressed: holes are found with SEEK_DATA/SEEK_HOLE and not read, and a window
of zeros is compressed once per build (compress_segment's `zeros`).  None of that may show in
the image: a sparse file must give the image its content written densely gives, byte for byte,
with every compressor and the options that change how clusters are cut."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from mkerofs.writer.compress import CompressConfig, compress_segment
from mkerofs.writer.workers import FileRange, SPARSE_MIN
from support.run import build_image
from support.trees import SPARSE_FILES, make_sparse_tree

MiB = 1 << 20


def _data(rng: random.Random, n: int) -> bytes:
    half = n // 2
    return rng.randbytes(half) + (b"sparse " * (n // 7 + 1))[:n - half]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sparse")
    sparse, dense = base / "sparse", base / "dense"
    make_sparse_tree(sparse)
    make_sparse_tree(dense, dense=True)
    probe = os.open(sparse / "all-hole", os.O_RDONLY)
    try:
        if os.lseek(probe, 0, os.SEEK_HOLE) != 0:
            pytest.skip("the temporary directory's file system keeps no holes")
    finally:
        os.close(probe)
    return sparse, dense


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


OPTIONS = [
    ["-zlz4"],
    ["-zlz4", "--workers=1"],
    ["-zlz4hc"],
    ["-zzstd"],
    ["-zdeflate"],
    ["-zlzma"],
    ["-zlz4", "-C65536"],
    ["-zlzma", "-C131072"],
    ["-zlz4", "-Eztailpacking"],
    ["-zlz4", "-Efragments"],
    ["-zzstd", "-Ededupe", "-C16384"],
    ["-zlz4", "-Eall-fragments"],
    ["-zlz4", "--max-extent-bytes=65536"],
    ["-zdeflate", "-b1024"],
    [],
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: " ".join(o) or "flat")
def test_sparse_image_equals_dense_image(trees, tmp_path, opts):
    sparse, dense = trees
    images = []
    for tree in (sparse, dense):
        image = tmp_path / f"{tree.name}.erofs"
        build_image(image, tree, "-T1700000000", "-Uclear", *opts)
        images.append(image)
    assert _sha(images[0]) == _sha(images[1])


def test_holes_are_not_read(trees):
    """The ranges read_sparse reports as holes are the file's holes, and what it returns is the
    file's content."""
    sparse, _dense = trees
    size, extents = SPARSE_FILES["middle"]
    reader = FileRange(bytes(sparse / "middle"), size)
    seg = 16 * MiB
    whole = (sparse / "middle").read_bytes()
    for off in range(0, size, seg):
        n = min(seg, size - off)
        data, holes = reader.read_sparse(off, n, off + seg >= size)
        assert bytes(data) == whole[off:off + n]
        for start, end in holes:
            assert not any(whole[off + start:off + end])
            for doff, dlen in extents:          # no data extent's block is called a hole
                assert doff + dlen <= off + start or off + end <= doff - doff % 4096
    assert reader.read_sparse(0, seg, False)[1] == [(0, seg)]
    # the data at 17 MiB + 5 lives in the block at 17 MiB: the hole before it ends there
    assert reader.read_sparse(seg, seg, False)[1][0] == (0, 1 * MiB)
    assert SPARSE_MIN <= seg


@pytest.mark.parametrize("spec,pcluster", [("lz4", 4096), ("lzma", 65536), ("zstd", 4096),
                                           ("deflate", 16384), ("lz4hc", 4096)])
def test_zero_windows_compress_as_before(spec, pcluster):
    """compress_segment given the zero ranges (twice: the second time from the build's memory
    of zero windows) cuts the same pclusters as without them."""
    rng = random.Random(7)
    n = 3 * MiB + 777
    buf = bytearray(n)
    for off in (5000, 2 * MiB + 3):
        buf[off:off + 20000] = _data(rng, 20000)
    data = bytes(buf)
    zeros = [(0, 5000), (25000, 2 * MiB + 3), (2 * MiB + 20003, n)]
    for extra in ({}, {"ztailpacking": True}, {"fragments": True}, {"max_extent_input": 65536}):
        cfg = CompressConfig.from_options(spec, 4096, pcluster, **extra)
        tail_room = 3000 if extra.get("ztailpacking") else 0
        plain = compress_segment(data, cfg, last=True, tail_room=tail_room)
        for _ in range(2):
            fast = compress_segment(data, cfg, last=True, tail_room=tail_room, zeros=zeros)
            assert [(p.llen, p.raw, bytes(p.payload), p.inline, p.fragment) for p in fast] == \
                   [(p.llen, p.raw, bytes(p.payload), p.inline, p.fragment) for p in plain]
        if extra.get("max_extent_input"):       # windows of 64 KiB fit inside the holes
            assert cfg._zero_runs, "no zero window was remembered"
