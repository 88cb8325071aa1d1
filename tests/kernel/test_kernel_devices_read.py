"""The reader and the kernel agree on images with extra devices: every regular file's bytes as
the kernel reads them (mounted with -o device=/dev/loopN, or with the devices appended to the
image and no device given, "flatdev") equal what Image reads with the same devices.

Images: mkfs.erofs 1.5 --blobdev (its slot places the blob nowhere, so only -o device=), the
same image with its slot patched to uniaddr = the image's blocks (appended), a "unified
addressing" patch (chunk indexes naming device 0 at uniaddr + block), and mkfs.erofs 1.9.3's
--tar=i and --blobdev when that reference is available (see tests/support/devimages.py).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from mkerofs.reader import Image
from support.devimages import (OLD_MKFS, blocks_of, concat, make_device_tree, make_tar, mkfs,
                               patch_image, reference, tree_bytes)

pytestmark = pytest.mark.kernel


def reader_files(image: Path, devices=None) -> dict[str, bytes]:
    with Image.open(image, devices=devices) as img:
        return {os.fsdecode(path[1:]): img.read(inode) for path, inode in img.walk()
                if inode.is_reg()}


def assert_kernel_agrees(kernel, loop, image: Path, src: Path, devices=()) -> None:
    """Mount IMAGE (with one loop device per file of `devices`) and compare the kernel's files
    with the reader's and with the source's."""
    with contextlib.ExitStack() as stack:
        loops = [stack.enter_context(loop(d, read_only=True)) for d in devices]
        options = [f"device={dev}" for dev in loops]
        mnt = stack.enter_context(kernel(image, options=options))
        seen = tree_bytes(mnt)
    assert seen == reader_files(image, list(devices) or None)
    assert seen == tree_bytes(src)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    if not OLD_MKFS.exists():
        pytest.skip(f"needs Debian's mkfs.erofs 1.5 at {OLD_MKFS}")
    return tmp_path_factory.mktemp("kdevices")


@pytest.fixture(scope="module")
def src(work) -> Path:
    return make_device_tree(work / "src")


@pytest.fixture(scope="module")
def blobbed(work, src) -> tuple[Path, Path]:
    image, blob = work / "blob.erofs", work / "blob.dev"
    mkfs(OLD_MKFS, image, src, "--chunksize=4096", f"--blobdev={blob}")
    return image, blob


def test_blobdev_15_with_device(kernel, loop, blobbed, src):
    image, blob = blobbed
    assert_kernel_agrees(kernel, loop, image, src, [blob])


def test_patched_slot_appended(kernel, loop, blobbed, work, src):
    image, blob = blobbed
    with Image.open(image) as img:
        base = img.blocks
    placed = patch_image(image, work / "placed.erofs", uniaddr=base, blocks=blocks_of(blob, 4096))
    assert_kernel_agrees(kernel, loop, concat(work / "placed-one.erofs", placed, blob), src)
    assert_kernel_agrees(kernel, loop, placed, src, [blob])


def test_unified_addressing(kernel, loop, blobbed, work, src):
    image, blob = blobbed
    with Image.open(image) as img:
        base = img.blocks
    unified = patch_image(image, work / "unified.erofs", uniaddr=base,
                          blocks=blocks_of(blob, 4096),
                          index=lambda hi, dev, lo: (hi, 0, lo + base))
    assert_kernel_agrees(kernel, loop, unified, src, [blob])
    assert_kernel_agrees(kernel, loop, concat(work / "unified-one.erofs", unified, blob), src)


@pytest.fixture(scope="module")
def ref():
    path = reference()
    if path is None:
        pytest.skip("needs mkfs.erofs 1.9.3 (set MKFS_EROFS_REF)")
    return path


def test_tar_index_19(kernel, loop, ref, work, src):
    tar = make_tar(src, work / "src.tar")
    image = mkfs(ref, work / "tari.erofs", tar, "--tar=i")
    assert_kernel_agrees(kernel, loop, image, src, [tar])
    assert_kernel_agrees(kernel, loop, concat(work / "tari-one.erofs", image, tar), src)


def test_blobdev_19(kernel, loop, ref, work, src):
    image, blob = work / "blob19.erofs", work / "blob19.dev"
    mkfs(ref, image, src, "--chunksize=4096", f"--blobdev={blob}")
    assert_kernel_agrees(kernel, loop, image, src, [blob])
    assert_kernel_agrees(kernel, loop, concat(work / "blob19-one.erofs", image, blob), src)
