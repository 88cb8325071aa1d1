"""--dsunit and --fsalignblks images mounted by the kernel: the tree reads back as the source,
every file's data begins at a multiple of dsunit, the image's size is a multiple of
fsalignblks rounded up to a power of two; and mkfs.erofs 1.9.3 with the same options gives the
same kernel view and follows the same alignment rules (read from its image the same way).

The reference is $MKFS_EROFS_REF, else /work/erofs-utils-install/bin/mkfs.erofs; without one
the comparison is skipped (a missing tool, not a missing kernel).
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from support.blocks import first_data_blocks
from support.compare import compare_trees, tree_differences
from support.oracle import read_superblock
from support.reference import reference_problem
from support.run import build_image
from support.trees import make_big_dir, make_size_files, make_symlinks, set_tree_times, write_file

pytestmark = pytest.mark.kernel

BASE = ("--quiet", "-Uclear")
DATA_TYPES = (stat.S_IFREG, stat.S_IFLNK)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Files around block boundaries (both block sizes), compressible and random files of many
    blocks, zeros, a sparse file, symlinks up to 3000 bytes, a directory of several blocks,
    a hard link."""
    root = tmp_path_factory.mktemp("align") / "src"
    make_size_files(root / "sizes", (1024, 4096))
    for i, size in enumerate((9000, 70000, 300001)):
        write_file(root / f"random_{size}", size, seed=i)
        write_file(root / f"text_{size}", size, pattern=b"kernel reads aligned data %d\n" % i)
    write_file(root / "zeros", 50000, pattern=b"\0")
    with open(root / "sparse", "wb") as f:
        f.truncate(2 << 20)
        f.seek(700000)
        f.write(b"in the middle")
    os.link(root / "text_9000", root / "hardlink")
    make_symlinks(root / "links", [5, 1500, 3000])
    make_big_dir(root / "big", 300)
    set_tree_times(root)
    return root


def power_of_two_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def check_alignment(image: Path, bs: int, dsunit: int, fsalign: int) -> None:
    starts = {p: blk for p, (kind, blk) in first_data_blocks(image).items()
              if kind in DATA_TYPES}
    assert len(starts) >= 10, f"too few files with blocks: {starts}"
    off = {p.decode(): blk for p, blk in starts.items() if blk % dsunit}
    assert not off, f"data not aligned to {dsunit} blocks: {off}"
    sb = read_superblock(image)
    assert sb.blocks % power_of_two_at_least(fsalign) == 0
    assert os.path.getsize(image) == sb.blocks * bs


CASES = [(bs, dsunit, z) for bs in (4096, 1024) for dsunit in (2, 4, 16) for z in ("", "lz4hc")]


@pytest.mark.parametrize("bs,dsunit,z", CASES,
                         ids=[f"b{bs}-dsunit{d}-{z or 'flat'}" for bs, d, z in CASES])
def test_aligned_image_mounts(tree, tmp_path, kernel, bs, dsunit, z):
    fsalign = 3 * dsunit            # not a power of two: rounded up
    opts = [f"-b{bs}", f"--dsunit={dsunit}", f"--fsalignblks={fsalign}"]
    if z:
        opts.append(f"-z{z}")
    image = tmp_path / "ours.erofs"
    build_image(image, tree, *BASE, *opts)
    check_alignment(image, bs, dsunit, fsalign)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)

    ref, problem = reference_problem()
    if problem:
        pytest.skip(f"mkerofs checked; the comparison with mkfs.erofs {problem}")
    theirs = tmp_path / "ref.erofs"
    r = subprocess.run([ref, *BASE, *opts, str(theirs), str(tree)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, f"mkfs.erofs failed: {r.stderr}"
    check_alignment(theirs, bs, dsunit, fsalign)     # the rules mkerofs follows are its rules
    with kernel(theirs) as a, kernel(image) as b:
        assert tree_differences(a, b, xattrs=True) == []
