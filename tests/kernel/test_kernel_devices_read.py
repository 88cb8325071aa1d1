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
from pathlib import Path

import pytest

from support.devimages import (DeviceCase, concat, device_case, make_tar, mkfs, place_blob,
                               reader_files, require_reference, tree_bytes)

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> DeviceCase:
    return device_case(tmp_path_factory)




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


def test_blobdev_15_with_device(kernel, loop, dev):
    image, blob = dev.image, dev.blob
    assert_kernel_agrees(kernel, loop, image, dev.src, [blob])


def test_patched_slot_appended(kernel, loop, dev):
    blob = dev.blob
    placed = place_blob(dev, "placed.erofs")
    one = concat(dev.work / "placed-one.erofs", placed, blob)
    assert_kernel_agrees(kernel, loop, one, dev.src)
    assert_kernel_agrees(kernel, loop, placed, dev.src, [blob])


def test_unified_addressing(kernel, loop, dev):
    blob = dev.blob
    unified = place_blob(dev, "unified.erofs", unified=True)
    assert_kernel_agrees(kernel, loop, unified, dev.src, [blob])
    one = concat(dev.work / "unified-one.erofs", unified, blob)
    assert_kernel_agrees(kernel, loop, one, dev.src)


def test_tar_index_19(kernel, loop, dev):
    ref = require_reference()
    tar = make_tar(dev.src, dev.work / "src.tar")
    image = mkfs(ref, dev.work / "tari.erofs", tar, "--tar=i")
    assert_kernel_agrees(kernel, loop, image, dev.src, [tar])
    assert_kernel_agrees(kernel, loop, concat(dev.work / "tari-one.erofs", image, tar), dev.src)


def test_blobdev_19(kernel, loop, dev):
    ref = require_reference()
    image, blob = dev.work / "blob19.erofs", dev.work / "blob19.dev"
    mkfs(ref, image, dev.src, "--chunksize=4096", f"--blobdev={blob}")
    assert_kernel_agrees(kernel, loop, image, dev.src, [blob])
    assert_kernel_agrees(kernel, loop, concat(dev.work / "blob19-one.erofs", image, blob), dev.src)
