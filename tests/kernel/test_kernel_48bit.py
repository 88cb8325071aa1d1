"""Block addresses past 2^32 blocks in chunk-based files, and -E48bit.

Sparse files make them cheap here: with -b512, 2^32 blocks are 2 TiB.

* --blobdev: --chunksize=1 TiB with --dsunit=2^31 blocks puts each file's only chunk 2^31
  blocks after the previous one, so the third file's chunk is at block 2^32 of a sparse blob.
  Without -E48bit the build fails naming that file, leaving neither image nor blob (mkfs.erofs
  1.9.3 writes 48-bit chunk indexes then without the superblock's 48bit bit, and a device slot
  whose size lost its high bits); with it, the kernel reads every file through the blob and
  statfs counts the blob's 2^32 + 1 blocks.
* --tar=i on a tar of 2 TiB + 2 KiB (a 2 TiB member left as a hole): refused without -E48bit
  naming the tar; with it, the file after the hole reads back through the tar as device 1.
* -E48bit alone on a plain tree mounts and compares equal; -E48bit with -z is refused.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from support.compare import compare_trees
from support.mounts import kernel_mount, mount_with_devices
from support.run import assert_clean_failure, build_image, run_mkerofs
from support.trees import make_full_tree

pytestmark = pytest.mark.kernel

BASE = ("-T", "1700000000", "--mkfs-time", "--quiet")
INCOMPAT_48BIT = 0x80       # EROFS_FEATURE_INCOMPAT_48BIT
FAR = ("-b512", f"--chunksize={1 << 40}", f"--dsunit={1 << 31}")


@pytest.fixture
def three_files(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in (1, 2, 3):
        (src / f"f{i}").write_text(f"file {i}\n")
    return src


def _incompat(image: Path) -> int:
    with open(image, "rb") as f:
        f.seek(1024 + 80)
        return int.from_bytes(f.read(4), "little")


def test_blob_chunk_past_2_to_the_32_blocks_needs_48bit(tmp_path, three_files):
    image, blob = tmp_path / "i.erofs", tmp_path / "blob"
    r = run_mkerofs(*BASE, *FAR, f"--blobdev={blob}", image, three_files, check=False)
    assert_clean_failure(r, mentions=["f3", "2^32", "-E48bit"], image=image)
    assert [p.name for p in tmp_path.iterdir()] == ["src"]        # no blob, no temporary


def test_blob_chunk_past_2_to_the_32_blocks_with_48bit(tmp_path, three_files):
    image, blob = tmp_path / "i.erofs", tmp_path / "blob"
    build_image(image, three_files, *BASE, *FAR, f"--blobdev={blob}", "-E48bit")
    assert _incompat(image) & INCOMPAT_48BIT
    assert blob.stat().st_size == ((1 << 32) + 1) * 512     # sparse: nothing much on disk
    try:
        with mount_with_devices(image, [blob]) as mnt:
            compare_trees(three_files, mnt)
            st = os.statvfs(mnt)
            # the device slot's high half counts: the blob's 2^32 + 1 blocks and the image's
            assert st.f_blocks * st.f_frsize // 512 > 1 << 32
    finally:
        blob.unlink()


def _tar_past_2_tib(path: Path) -> bytes:
    """A tar whose first member is 2 TiB of zeros (a hole in the tar file), then `small`."""
    data = b"hello past 2 TiB\n"
    with open(path, "wb") as f:
        big = tarfile.TarInfo("big")
        big.size, big.mtime = 1 << 41, 1000000000
        f.write(big.tobuf(tarfile.GNU_FORMAT))     # (base-256 size field)
        f.seek(big.size, os.SEEK_CUR)
        small = tarfile.TarInfo("small")
        small.size, small.mtime = len(data), 1000000000
        f.write(small.tobuf(tarfile.GNU_FORMAT))
        f.write(data.ljust(512, b"\0") + bytes(1024))
    return data


def test_tar_index_past_2_tib(tmp_path):
    tar, image = tmp_path / "big.tar", tmp_path / "i.erofs"
    data = _tar_past_2_tib(tar)
    try:
        r = run_mkerofs(*BASE, "--tar=i", image, tar, check=False)
        assert_clean_failure(r, mentions=["big.tar", "2 TiB", "-E48bit"], image=image)
        assert [p.name for p in tmp_path.iterdir()] == ["big.tar"]
        run_mkerofs(*BASE, "--tar=i", "-E48bit", image, tar)
        assert _incompat(image) & INCOMPAT_48BIT
        with mount_with_devices(image, [tar]) as mnt:
            assert (mnt / "small").read_bytes() == data
            assert (mnt / "big").stat().st_size == 1 << 41
            with open(mnt / "big", "rb") as f:
                f.seek((1 << 41) - 4096)
                assert f.read() == bytes(4096)
    finally:
        tar.unlink()


def test_48bit_on_a_plain_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_full_tree(src)
    image = tmp_path / "i.erofs"
    build_image(image, src, *BASE, "-E48bit")
    assert _incompat(image) & INCOMPAT_48BIT
    with kernel_mount(image) as mnt:
        compare_trees(src, mnt)


def test_48bit_with_compression_is_refused(tmp_path, three_files):
    image = tmp_path / "z.erofs"
    r = run_mkerofs(*BASE, "-zlz4", "-E48bit", image, three_files, check=False)
    assert_clean_failure(r, mentions=["48bit", "not implemented"], image=image)
