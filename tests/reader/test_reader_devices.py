"""The reader on images whose chunk-based files point into extra devices (the device table).

Images come from mkfs.erofs: Debian's 1.5 (/usr/bin/mkfs.erofs: --chunksize, --blobdev) and, when
available, 1.9.3 ($MKFS_EROFS_REF or /work/erofs-utils-install/bin/mkfs.erofs: --tar=i,
--blobdev).  What they write, as found:

* 1.5 --blobdev writes 8-byte chunk indexes naming device 1 and a slot of 0 blocks at uniaddr 0,
  so the blob cannot be appended to the image (flatdev would read the image's own first blocks):
  the reader wants --device=BLOB and says so.  Patching the slot (uniaddr = the image's blocks,
  blocks = the blob's) makes the appended form readable, as the kernel reads it too.
* 1.9.3 --blobdev and --tar=i write uniaddr = the image's block count, so IMAGE followed by the
  blob or tar reads (and mounts) as one file.

The kernel's view of the same images is checked in tests/kernel/test_kernel_devices_read.py.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from mkerofs.reader import Image, ImageError
from support.devimages import (OLD_MKFS, REF_DEFAULT, blocks_of, concat, make_device_tree,
                               make_tar, mkfs, patch_image, reference, tree_bytes)

from test_readcli import assert_clean_error, run_read


def reader_bytes(image: Path, devices=None) -> dict[str, bytes]:
    with Image.open(image, devices=devices) as img:
        return {os.fsdecode(path[1:]): img.read(inode) for path, inode in img.walk()
                if inode.is_reg()}


def assert_reads_like(image: Path, src: Path, *device_opts) -> None:
    """compare, cat, extract and tar all give the source's bytes."""
    r = run_read("compare", image, src, *device_opts)
    assert "no differences" in r.stdout
    for name in ("f300000", "sub/g4097", "dup100001", "sparse"):
        assert run_read("cat", image, "/" + name, *device_opts).stdout_bytes == \
            (src / name).read_bytes()
    out = image.parent / (image.name + ".x")
    run_read("extract", "-q", image, out, *device_opts)
    assert tree_bytes(out) == tree_bytes(src)
    archive = image.parent / (image.name + ".tar")
    run_read("tar", "-o", archive, image, *device_opts)
    with tarfile.open(archive) as t:
        got = {m.name.lstrip("./"): t.extractfile(m).read() for m in t if m.isfile()}
    assert got == tree_bytes(src)
    run_read("verify", image, *device_opts)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    if not OLD_MKFS.exists():
        pytest.skip(f"needs Debian's mkfs.erofs 1.5 at {OLD_MKFS}")
    return tmp_path_factory.mktemp("devices")


@pytest.fixture(scope="module")
def src(work) -> Path:
    return make_device_tree(work / "src")


@pytest.fixture(scope="module")
def mapped(work, src) -> Path:
    """mkfs.erofs 1.5 --chunksize=8192: block maps, no device table."""
    return mkfs(OLD_MKFS, work / "map.erofs", src, "--chunksize=8192")


@pytest.fixture(scope="module")
def blobbed(work, src) -> tuple[Path, Path]:
    """mkfs.erofs 1.5 --chunksize=4096 --blobdev=BLOB: (image, blob)."""
    image, blob = work / "blob.erofs", work / "blob.dev"
    mkfs(OLD_MKFS, image, src, "--chunksize=4096", f"--blobdev={blob}")
    return image, blob


# ---------------------------------------------------------------------------
# mkfs.erofs 1.5

def test_block_map_chunks_without_devices(mapped, src):
    with Image.open(mapped) as img:
        assert img.device_table == []
        assert "chunked_file" in img.features()
    assert_reads_like(mapped, src)


def test_blobdev_read_with_device(blobbed, src):
    image, blob = blobbed
    assert_reads_like(image, src, f"--device={blob}")
    info = run_read("info", image, "--device", blob).stdout
    # what 1.5 writes: no size, no place in the image
    assert "device 1:" in info and "0 blocks, uniaddr 0" in info
    with Image.open(image, devices=[blob]) as img:
        dup = img.extents(img.lookup("/dup100001"))
        assert [(e.device, e.physical) for e in dup] == \
            [(e.device, e.physical) for e in img.extents(img.lookup("/f100001"))]
        assert {e.device for e in dup} == {1}


def test_blobdev_uniaddr_zero_refuses_flatdev(blobbed, work, src):
    """1.5's slot places the blob nowhere: without --device, the chunks cannot be read, however
    the blob is appended; the metadata still can."""
    image, blob = blobbed
    one = concat(work / "one15.erofs", image, blob)
    for img_path in (image, one):
        assert "f300000" in run_read("ls", img_path).stdout
        r = run_read("cat", img_path, "/f4097", check=False)
        assert_clean_error(r, 1, "device 1", "uniaddr 0", "--device")
        r = run_read("verify", img_path, check=False)
        assert r.returncode == 1 and "--device" in r.stdout and "Traceback" not in r.stderr
    with Image.open(image) as img:
        assert img.flatdev
        with pytest.raises(ImageError, match="chunk 0 is on device 1"):
            img.read(img.lookup("/f1"))


def test_appended_with_patched_slot(blobbed, work, src):
    """uniaddr = the image's blocks: IMAGE + BLOB reads without --device (flatdev)."""
    image, blob = blobbed
    with Image.open(image) as img:
        blocks = img.blocks
    patched = patch_image(image, work / "placed.erofs", uniaddr=blocks,
                          blocks=blocks_of(blob, 4096))
    one = concat(work / "placed-one.erofs", patched, blob)
    assert_reads_like(one, src)
    assert_reads_like(patched, src, f"--device={blob}")
    assert reader_bytes(one) == tree_bytes(src)
    r = run_read("cat", patched, "/f8193", check=False)      # not appended: the image ends early
    assert_clean_error(r, 1, "device 1", "past the end of the image", "--device=FILE",
                       "append")


def test_unified_addressing(blobbed, work, src):
    """Chunk indexes naming device 0 at uniaddr + block: with --device the reader (as the
    kernel's erofs_map_dev) reads them from the device; appended, from the image itself."""
    image, blob = blobbed
    with Image.open(image) as img:
        base = img.blocks
    unified = patch_image(image, work / "unified.erofs", uniaddr=base,
                          blocks=blocks_of(blob, 4096),
                          index=lambda hi, dev, lo: (hi, 0, lo + base))
    with Image.open(unified, devices=[blob]) as img:
        assert {e.device for e in img.extents(img.lookup("/f300000"))} == {1}
    assert reader_bytes(unified, [blob]) == tree_bytes(src)
    assert reader_bytes(concat(work / "unified-one.erofs", unified, blob)) == tree_bytes(src)
    # without the device, the addresses are past the end of the image
    with Image.open(unified) as img, pytest.raises(ImageError, match="past the end"):
        img.read(img.lookup("/f4096"))


def test_device_id_masked(blobbed, work, src):
    """The kernel masks device ids with roundup_pow_of_two(extra_devices + 1) - 1: with one
    device, id 3 is device 1; with two, id 3 names a device the table does not have."""
    image, blob = blobbed
    def to3(hi, _dev, lo):
        return hi, 3, lo
    masked = patch_image(image, work / "masked.erofs", index=to3)
    assert reader_bytes(masked, [blob]) == tree_bytes(src)
    two = patch_image(image, work / "two.erofs", index=to3, extra_devices=2)
    with Image.open(two, devices=[blob, blob]) as img:
        assert len(img.device_table) == 2
        with pytest.raises(ImageError, match="names device 3, but the image has 2"):
            img.read(img.lookup("/f1"))


def test_errors(blobbed, mapped, work):
    image, blob = blobbed
    r = run_read("cat", image, "/f1", "--device", work / "no-such-blob", check=False)
    assert_clean_error(r, 2, "no-such-blob")
    r = run_read("ls", image, "--device", blob, "--device", blob, check=False)
    assert_clean_error(r, 2, "2 device(s) given", "1 slot")
    short = work / "short.dev"
    short.write_bytes(blob.read_bytes()[:20000])
    r = run_read("cat", image, "/f300000", "--device", short, check=False)
    assert_clean_error(r, 1, "device 1", "short.dev", "past its end")
    r = run_read("compare", image, work / "src", "--device", short, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    # an image without a device table takes no --device
    r = run_read("info", mapped, "--device", blob, check=False)
    assert_clean_error(r, 2, "1 device(s) given", "0 slot")


def test_devices_as_bytes_and_files(blobbed, src):
    image, blob = blobbed
    data = blob.read_bytes()
    with open(blob, "rb") as f, Image.open(image, devices=[f]) as img:
        assert img.read(img.lookup("/f65536")) == (src / "f65536").read_bytes()
    with Image(image.read_bytes(), devices=[data]) as img:
        assert img.read(img.lookup("/sub/g300000")) == (src / "sub/g300000").read_bytes()
        assert not img.flatdev


# ---------------------------------------------------------------------------
# mkfs.erofs >= 1.9: --tar=i (metadata only, 512-byte blocks) and --blobdev

@pytest.fixture(scope="module")
def ref():
    path = reference()
    if path is None:
        pytest.skip("needs mkfs.erofs 1.9.3 (set MKFS_EROFS_REF, or install it at "
                    f"{REF_DEFAULT})")
    return path


def test_tar_index(ref, work, src):
    tar = make_tar(src, work / "src.tar")
    image = work / "tari.erofs"
    mkfs(ref, image, tar, "--tar=i")
    with Image.open(image) as img:
        assert img.block_size == 512
        [slot] = img.device_table
        assert slot.uniaddr == img.blocks      # so the tar can be appended
    info = run_read("info", image).stdout
    assert f"uniaddr {slot.uniaddr}" in info
    assert_reads_like(image, src, f"--device={tar}")
    assert_reads_like(concat(work / "tari-one.erofs", image, tar), src)
    r = run_read("cat", image, "/f8192", check=False)
    assert_clean_error(r, 1, "past the end of the image", "--device=FILE")


def test_blobdev_19_appended(ref, work, src):
    image, blob = work / "blob19.erofs", work / "blob19.dev"
    mkfs(ref, image, src, "--chunksize=4096", f"--blobdev={blob}")
    with Image.open(image) as img:
        assert img.device_table[0].uniaddr == img.blocks
    assert_reads_like(image, src, f"--device={blob}")
    assert_reads_like(concat(work / "blob19-one.erofs", image, blob), src)

