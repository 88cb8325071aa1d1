"""Chunk-based files through the kernel: images built with --chunksize (and -Ededupe without
-z, -Eforce-chunk-indexes, --blobdev, -z lz4, --tar) are mounted and compared with their source,
entry by entry (support.compare: types, data, modes, owners, ns mtimes, hard-link groups).

The source is the full tree of support.trees plus what chunking has to get right: files
duplicated whole and chunk by chunk, files of zeros (holes when they fill a chunk), sparse
files (holes from SEEK_DATA) including one without any data, empty files and hard links.

* --chunksize 4096, 8192 and 1 MiB at 4 KiB blocks, 512 and 1024 at 512- and 1024-byte blocks,
  -Ededupe without -z, -E^dedupe, -Eforce-chunk-indexes;
* --blobdev mounted both ways: the blob on a loop device given as ``-o device=``, and the image
  and blob concatenated ("flatdev": the slot's uniaddr says where the blob's blocks begin);
* -z lz4 with --chunksize: what does not compress is chunk-based;
* --tar=f with --chunksize, blob or not;
* Debian's fsck.erofs 1.5 (4 KiB blocks; with --device for a blob) accepts the images.  Its
  --extract=DIR writes files with holes as empty files (also for mkfs.erofs's images): only
  the check is used here;
* against mkfs.erofs >= 1.9 (MKFS_EROFS_REF or /work/erofs-utils-install/bin/mkfs.erofs, else
  skipped): the same source and options give equal kernel views and images within a few
  blocks of each other (placement differs, the chunks stored are the same).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support.compare import compare_trees, tree_differences
from support.run import build_image, run_mkerofs
from support.tars import write_sparse
from support.trees import make_full_tree, write_file

pytestmark = pytest.mark.kernel

T = "1700000000"
BASE = ("-T", T, "--mkfs-time", "--quiet")    # -T as build time only: files keep their mtimes
MiB = 1 << 20
DEFAULT_REF = Path("/work/erofs-utils-install/bin/mkfs.erofs")


def make_chunk_tree(root: Path) -> None:
    make_full_tree(root)
    c = root / "chunks"
    c.mkdir()
    write_file(c / "a", 5 * 4096 + 123, seed=1)
    shutil.copyfile(c / "a", c / "a_copy")
    a = (c / "a").read_bytes()
    (c / "mixed").write_bytes(a[4096:8192] + os.urandom(3000) + a[:4096])
    (c / "zeros").write_bytes(bytes(2 * MiB))
    (c / "zeros_short").write_bytes(bytes(5000))
    (c / "empty").write_bytes(b"")
    write_sparse(c / "sparse", 9 * MiB + 7, [(MiB + 3, b"middle"), (9 * MiB, b"end")])
    write_sparse(c / "all_hole", 3 * MiB, [])
    write_file(c / "big", 3 * MiB + 17, seed=2)
    os.link(c / "a", c / "a_link")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chunks") / "src"
    root.mkdir()
    make_chunk_tree(root)
    return root


CASES = {
    "4k": ["--chunksize=4096"],
    "8k": ["--chunksize=8192"],
    "1m": ["--chunksize=1048576"],
    "b512": ["-b512", "--chunksize=512"],
    "b1024-4k": ["-b1024", "--chunksize=4096"],
    "indexes": ["--chunksize=8192", "-Eforce-chunk-indexes"],
    "no-dedupe": ["--chunksize=4096", "-E^dedupe"],
    "dedupe-no-z": ["-Ededupe"],
    "lz4": ["-zlz4", "--chunksize=4096"],
    "lz4hc-1m": ["-zlz4hc", "--chunksize=1048576", "-Efragments"],
    "dsunit": ["--chunksize=16384", "--dsunit=4", "--fsalignblks=8"],
    "dsunit-over-chunk": ["--chunksize=4096", "--dsunit=8"],    # dsunit ignored, with a warning
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_chunked_images_mount(case, tree, tmp_path, kernel, fsck):
    image = tmp_path / "img"
    args = CASES[case]
    build_image(image, tree, *BASE, *args)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)
    if "-Efragments" not in args:          # (fsck.erofs 1.5 knows no fragments)
        fsck(image, int(args[0][2:]) if args[0].startswith("-b") else 4096)


def blob_build(tree: Path, tmp_path: Path, *extra) -> tuple[Path, Path]:
    image, blob = tmp_path / "img", tmp_path / "blob"
    build_image(image, tree, *BASE, "--chunksize=4096", f"--blobdev={blob}", *extra)
    return image, blob


@pytest.mark.parametrize("extra", [[], ["-zlz4"]], ids=["plain", "lz4"])
def test_blobdev_on_a_loop_device(extra, tree, tmp_path, kernel, loop):
    image, blob = blob_build(tree, tmp_path, *extra)
    assert blob.stat().st_size > image.stat().st_size
    with loop(blob, read_only=True) as dev:
        with kernel(image, options=[f"device={dev}", "loop"]) as mnt:
            compare_trees(tree, mnt)


def test_blobdev_flatdev(tree, tmp_path, kernel):
    image, blob = blob_build(tree, tmp_path)
    flat = tmp_path / "flat"
    with open(flat, "wb") as out:
        for part in (image, blob):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    with kernel(flat, options=["loop"]) as mnt:
        compare_trees(tree, mnt)


def test_blobdev_fsck(tree, tmp_path, fsck):
    image, blob = blob_build(tree, tmp_path)
    r = subprocess.run(["fsck.erofs", f"--device={blob}", "--extract", str(image)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    # and without the blob, fsck must notice the missing device
    r = subprocess.run(["fsck.erofs", "--extract", str(image)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode != 0


def gnu_tar(src: Path, out: Path) -> Path:
    """src archived by GNU tar (POSIX format: ns mtimes; --sparse: the holes kept)."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    subprocess.run(["tar", "--format=posix", "--sparse", "--numeric-owner", "-C", str(src),
                    "-cf", str(out), "."], check=True, stderr=subprocess.PIPE)
    return out


@pytest.mark.parametrize("extra", [[], ["--blobdev=BLOB"]], ids=["image", "blob"])
def test_tar_with_chunks(extra, tree, tmp_path, kernel, loop):
    src = tmp_path / "src"
    shutil.copytree(tree / "chunks", src, symlinks=True)
    tar = gnu_tar(src, tmp_path / "src.tar")
    image, blob = tmp_path / "img", tmp_path / "blob"
    extra = [a.replace("BLOB", str(blob)) for a in extra]
    run_mkerofs("--tar=f", *BASE, "--chunksize=4096", *extra, image, tar)
    if extra:
        with loop(blob, read_only=True) as dev:
            with kernel(image, options=[f"device={dev}", "loop"]) as mnt:
                compare_trees(src, mnt)
    else:
        with kernel(image) as mnt:
            compare_trees(src, mnt)


def test_dedupe_shrinks_the_image_by_the_duplicate_blocks(tmp_path, kernel):
    src = tmp_path / "src"
    src.mkdir()
    write_file(src / "one", 40 * 4096, seed=7)
    for i in range(3):
        shutil.copyfile(src / "one", src / f"copy{i}")
    sizes = {}
    for name, args in {"on": [], "off": ["-E^dedupe"]}.items():
        image = tmp_path / f"{name}.img"
        build_image(image, src, *BASE, "--chunksize=4096", *args)
        sizes[name] = image.stat().st_size // 4096
        with kernel(image) as mnt:
            compare_trees(src, mnt)
    assert sizes["off"] - sizes["on"] == 3 * 40


# -- against mkfs.erofs 1.9 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref():
    path = os.environ.get("MKFS_EROFS_REF") or (str(DEFAULT_REF) if DEFAULT_REF.exists() else None)
    if not path:
        pytest.skip("needs mkfs.erofs >= 1.9 (set MKFS_EROFS_REF)")
    out = subprocess.run([path, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < (1, 9):
        pytest.skip(f"needs mkfs.erofs >= 1.9: {path} says {out.strip()!r}")
    return path


@pytest.mark.parametrize("args", [["--chunksize=4096"], ["--chunksize=8192",
                                                         "-Eforce-chunk-indexes"],
                                  ["--chunksize=1048576"], ["-Ededupe"], ["-b1024",
                                                                          "--chunksize=2048"]],
                         ids=["4k", "8k-indexes", "1m", "dedupe", "b1024"])
def test_same_as_mkfs_erofs(args, tree, tmp_path, kernel, ref):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    build_image(ours, tree, *BASE, *args)
    r = subprocess.run([ref, *BASE, *args, str(theirs), str(tree)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    with kernel(ours) as a, kernel(theirs) as b:
        assert tree_differences(b, a) == []
    bs = 1024 if "-b1024" in args else 4096
    ours_blocks, theirs_blocks = ours.stat().st_size // bs, theirs.stat().st_size // bs
    # the same chunks are stored; metadata placement differs by a few blocks at most
    assert abs(ours_blocks - theirs_blocks) <= max(4, theirs_blocks // 50), \
        (ours_blocks, theirs_blocks)


def test_blob_same_as_mkfs_erofs(tree, tmp_path, ref):
    image, blob = blob_build(tree, tmp_path)
    r = subprocess.run([ref, *BASE, "--chunksize=4096",
                        f"--blobdev={tmp_path / 'rblob'}", str(tmp_path / "rimg"), str(tree)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    # the same distinct chunks: blobs of the same size
    assert blob.stat().st_size == (tmp_path / "rblob").stat().st_size
