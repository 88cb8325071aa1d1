"""``mkerofs --tar=i``: metadata-only images that point into the tar, through the kernel.

* containerd's tar-index flow verbatim: ``mkerofs --tar=i --aufs --quiet -U UUID LAYER`` with the
  tar on stdin, then the tar appended to LAYER, then LAYER mounted as a file (the kernel's
  "flatdev": with no ``-o device=`` it reads device 1 from the image file at block uniaddr);
  for every producer and format of support/tars.py, the mounted layer must equal the tree the
  tar was made from (sparse files included: mkerofs stores their data in the image);
* the same image mounted with ``-o device=/dev/loopN``, the tar on a loop device;
* gzip, xz, lzma and zstd input: the offsets count in the decompressed stream, so the
  decompressed tar (``--ungzip=FILE`` writes it) is what is appended;
* ``--tar=i,MAPFILE``: the image with its hole filled as the MAPFILE says (dd of each tar range)
  mounts and equals the tree;
* against mkfs.erofs >= 1.9 when present: the same kernel view of image + tar (except where
  mkfs.erofs 1.9.3 loses sparse files, documented in test_kernel_tar_vs_mkfs.py), and the same
  MAPFILE lines.
"""
from __future__ import annotations

import shutil
import subprocess
import tarfile
import uuid as uuidlib
from pathlib import Path

import pytest

from support.compare import Expect, compare_trees
from support.oracle import read_superblock
from support.run import run_mkerofs
from support.tars import DECODE_OPTION, END, RECIPES, Archives, compress, entry
from test_kernel_tar_vs_mkfs import (FORMAT_CASES, assert_only_documented,  # noqa: F401
                                     ref, view_differences)

pytestmark = pytest.mark.kernel

UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
CONTAINERD = ("--tar=i", "--aufs", "--quiet", "-U", UUID)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archives:
    return Archives(tmp_path_factory)


def containerd_layer(layer: Path, tar_bytes: bytes, *extra) -> None:
    """GenerateTarIndexAndAppendTar: the index from stdin, then the tar appended."""
    run_mkerofs(*CONTAINERD, *extra, layer, input=tar_bytes)
    with open(layer, "ab") as f:
        f.write(tar_bytes)


def assert_mounts_as_tree(kernel, image: Path, src: Path, **mount) -> None:
    with kernel(image, **mount) as mnt:
        compare_trees(src, mnt, expect=Expect(xattrs=True))


def has_sparse_files(tar: Path) -> bool:
    with tarfile.open(tar) as t:
        return any(m.issparse() for m in t.getmembers())


def metadata_blocks(image: Path) -> int:
    sb = read_superblock(image)
    assert sb.blkszbits == 9, "--tar=i addresses the tar in 512-byte blocks"
    return sb.blocks


@pytest.mark.parametrize("name", list(RECIPES))
def test_containerd_flow(name, archive, tmp_path, kernel):
    tar, src = archive(name)
    data = tar.read_bytes()
    layer = tmp_path / "layer.erofs"
    run_mkerofs(*CONTAINERD, layer, input=data)
    sb = read_superblock(layer)
    assert sb.uuid_obj == uuidlib.UUID(UUID)
    assert layer.stat().st_size == metadata_blocks(layer) * 512
    if not has_sparse_files(tar):      # (sparse files' data is in the image)
        assert layer.stat().st_size < len(data) // 4, "metadata only"
    with open(layer, "ab") as f:
        f.write(data)
    assert_mounts_as_tree(kernel, layer, src)


@pytest.mark.parametrize("name", ["gnu-posix", "bsdtar-gnutar"])
def test_mounted_with_the_tar_on_a_loop_device(name, archive, tmp_path, kernel, loop):
    tar, src = archive(name)
    layer = tmp_path / "layer.erofs"
    run_mkerofs(*CONTAINERD, "-b4096", layer, tar)      # (-b is overridden: 512)
    metadata_blocks(layer)
    with loop(tar, read_only=True) as dev:
        assert_mounts_as_tree(kernel, layer, src, options=[f"device={dev}"])


@pytest.mark.parametrize("kind", ["gzip", "xz", "lzma", "zstd"])
def test_compressed_input_points_into_the_decompressed_tar(kind, archive, tmp_path, kernel):
    tar, src = archive("gnu-posix")
    packed = compress(tar, kind, tmp_path / f"t.{kind}")
    layer = tmp_path / "layer.erofs"
    flag = DECODE_OPTION[kind]
    dump = tmp_path / "dump.tar"
    opts = [f"{flag}={dump}"] if flag else []
    run_mkerofs(*CONTAINERD, *opts, layer, input=packed.read_bytes())
    if flag:
        assert dump.read_bytes() == tar.read_bytes()
    with open(layer, "ab") as f:
        f.write(tar.read_bytes())
    assert_mounts_as_tree(kernel, layer, src)


def test_whiteouts_hard_links_and_a_replaced_file(tmp_path, kernel):
    """--aufs whiteouts, a hard link, a file replaced by a later entry (its first data stays in
    the tar, unused), an empty file, read back from image + tar."""
    tar = (entry(b"d/", typeflag=b"5") + entry(b"d/.wh..wh..opq") + entry(b"d/f", b"first" * 300) +
           entry(b".wh.gone") + entry(b"d/f", b"second" * 1000) +
           entry(b"h", typeflag=b"1", linkname=b"d/f") + entry(b"empty") +
           entry(b"big", bytes(range(256)) * 4001) + END)
    layer = tmp_path / "layer.erofs"
    containerd_layer(layer, tar)
    with kernel(layer) as mnt:
        assert (mnt / "d/f").read_bytes() == b"second" * 1000
        assert (mnt / "h").stat().st_ino == (mnt / "d/f").stat().st_ino
        assert (mnt / "big").read_bytes() == bytes(range(256)) * 4001
        assert (mnt / "empty").read_bytes() == b""
        assert (mnt / "gone").stat().st_rdev == 0 and (mnt / "gone").is_char_device()
        assert sorted(p.name for p in (mnt / "d").iterdir()) == ["f"]


def fill_from_mapfile(image: Path, tar: Path, mapfile: Path, bs: int = 4096) -> int:
    """Copy each tar range the MAPFILE names into the image's blob; returns the line count."""
    lines = mapfile.read_text().splitlines()
    raw = tar.read_bytes()
    with open(image, "r+b") as out:
        for line in lines:
            fields = line.split()
            blk, nblocks, srcoff = int(fields[0], 16), int(fields[1], 16), int(fields[2], 16)
            zeroed = int(fields[3], 10) if len(fields) > 3 else 0
            length = nblocks * bs - zeroed
            out.seek(blk * bs)
            out.write(raw[srcoff:srcoff + length])
    return len(lines)


@pytest.mark.parametrize("name", ["gnu-posix", "python-pax", "gnu-oldgnu-sparse"])
def test_mapfile_blob_filled_from_the_tar(name, archive, tmp_path, kernel):
    tar, src = archive(name)
    image, mapfile = tmp_path / "i.erofs", tmp_path / "map"
    run_mkerofs("--tar=i," + str(mapfile), "--quiet", "-Uclear", image, tar)
    sb = read_superblock(image)
    assert sb.blkszbits == 12 and not sb.feature_incompat & 0x8, "no device table"
    with kernel(image) as mnt:      # before: the blob is a hole, files read as zeros
        assert (mnt / "files/text").read_bytes() == bytes(5000)
    assert fill_from_mapfile(image, tar, mapfile) > 10
    assert_mounts_as_tree(kernel, image, src)


# -- against mkfs.erofs ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gnu-posix", "python-gnu", "bsdtar-pax", "gnu-posix-sparse"])
def test_tar_index_like_mkfs(name, ref, archive, tmp_path, kernel):
    tar, _src = archive(name)
    opts = ("--tar=i", "--aufs", "--quiet", "-T", "1000000000", "--mkfs-time", "-Uclear")
    theirs, ours = tmp_path / "ref.erofs", tmp_path / "ours.erofs"
    subprocess.run([ref, *opts, str(theirs), str(tar)], check=True)
    run_mkerofs(*opts, ours, tar)
    for image in (theirs, ours):
        with open(image, "ab") as f, open(tar, "rb") as t:
            shutil.copyfileobj(t, f)
    # (the differences of --tar=f: mkfs.erofs loses sparse files and ACL text the same way)
    assert_only_documented(view_differences(kernel, theirs, ours), FORMAT_CASES[name])
