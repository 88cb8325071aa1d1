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

import tarfile
from pathlib import Path

import pytest

from mkerofs.reader import Image, ImageError
from support.devimages import (OLD_MKFS, DeviceCase, concat, device_case, make_tar, mkfs,
                               patch_image, place_blob, reader_files, require_reference,
                               tree_bytes)

from test_readcli import assert_clean_error, run_read


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> DeviceCase:
    return device_case(tmp_path_factory)


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
def mapped(dev) -> Path:
    """mkfs.erofs 1.5 --chunksize=8192: block maps, no device table."""
    return mkfs(OLD_MKFS, dev.work / "map.erofs", dev.src, "--chunksize=8192")


# ---------------------------------------------------------------------------
# mkfs.erofs 1.5

def test_block_map_chunks_without_devices(mapped, dev):
    with Image.open(mapped) as img:
        assert img.device_table == []
        assert "chunked_file" in img.features()
    assert_reads_like(mapped, dev.src)


def test_blobdev_read_with_device(dev):
    image, blob = dev.image, dev.blob
    assert_reads_like(image, dev.src, f"--device={blob}")
    info = run_read("info", image, "--device", blob).stdout
    # what 1.5 writes: no size, no place in the image
    assert "device 1:" in info and "0 blocks, uniaddr 0" in info
    with Image.open(image, devices=[blob]) as img:
        dup = img.extents(img.lookup("/dup100001"))
        assert [(e.device, e.physical) for e in dup] == \
            [(e.device, e.physical) for e in img.extents(img.lookup("/f100001"))]
        assert {e.device for e in dup} == {1}


def test_blobdev_uniaddr_zero_refuses_flatdev(dev):
    """1.5's slot places the blob nowhere: without --device, the chunks cannot be read, however
    the blob is appended; the metadata still can."""
    image, blob = dev.image, dev.blob
    one = concat(dev.work / "one15.erofs", image, blob)
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


def test_appended_with_patched_slot(dev):
    """uniaddr = the image's blocks: IMAGE + BLOB reads without --device (flatdev)."""
    blob = dev.blob
    patched = place_blob(dev, "placed.erofs")
    one = concat(dev.work / "placed-one.erofs", patched, blob)
    assert_reads_like(one, dev.src)
    assert_reads_like(patched, dev.src, f"--device={blob}")
    assert reader_files(one) == tree_bytes(dev.src)
    r = run_read("cat", patched, "/f8193", check=False)      # not appended: the image ends early
    assert_clean_error(r, 1, "device 1", "past the end of the image", "--device=FILE",
                       "append")


def test_unified_addressing(dev):
    """Chunk indexes naming device 0 at uniaddr + block: with --device the reader (as the
    kernel's erofs_map_dev) reads them from the device; appended, from the image itself."""
    blob = dev.blob
    unified = place_blob(dev, "unified.erofs", unified=True)
    with Image.open(unified, devices=[blob]) as img:
        assert {e.device for e in img.extents(img.lookup("/f300000"))} == {1}
    assert reader_files(unified, [blob]) == tree_bytes(dev.src)
    one = concat(dev.work / "unified-one.erofs", unified, blob)
    assert reader_files(one) == tree_bytes(dev.src)
    # without the device, the addresses are past the end of the image
    with Image.open(unified) as img, pytest.raises(ImageError, match="past the end"):
        img.read(img.lookup("/f4096"))


def test_device_id_masked(dev):
    """The kernel masks device ids with roundup_pow_of_two(extra_devices + 1) - 1: with one
    device, id 3 is device 1; with two, id 3 names a device the table does not have."""
    image, blob = dev.image, dev.blob
    def to3(hi, _dev, lo):
        return hi, 3, lo
    masked = patch_image(image, dev.work / "masked.erofs", index=to3)
    assert reader_files(masked, [blob]) == tree_bytes(dev.src)
    two = patch_image(image, dev.work / "two.erofs", index=to3, extra_devices=2)
    with Image.open(two, devices=[blob, blob]) as img:
        assert len(img.device_table) == 2
        with pytest.raises(ImageError, match="names device 3, but the image has 2"):
            img.read(img.lookup("/f1"))


def test_errors(dev, mapped):
    image, blob = dev.image, dev.blob
    r = run_read("cat", image, "/f1", "--device", dev.work / "no-such-blob", check=False)
    assert_clean_error(r, 2, "no-such-blob")
    r = run_read("ls", image, "--device", blob, "--device", blob, check=False)
    assert_clean_error(r, 2, "2 device(s) given", "1 slot")
    short = dev.work / "short.dev"
    short.write_bytes(blob.read_bytes()[:20000])
    r = run_read("cat", image, "/f300000", "--device", short, check=False)
    assert_clean_error(r, 1, "device 1", "short.dev", "past its end")
    r = run_read("compare", image, dev.work / "src", "--device", short, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    # an image without a device table takes no --device
    r = run_read("info", mapped, "--device", blob, check=False)
    assert_clean_error(r, 2, "1 device(s) given", "0 slot")


def test_devices_as_bytes_and_files(dev):
    image, blob = dev.image, dev.blob
    data = blob.read_bytes()
    with open(blob, "rb") as f, Image.open(image, devices=[f]) as img:
        assert img.read(img.lookup("/f65536")) == (dev.src / "f65536").read_bytes()
    with Image(image.read_bytes(), devices=[data]) as img:
        assert img.read(img.lookup("/sub/g300000")) == (dev.src / "sub/g300000").read_bytes()
        assert not img.flatdev


# ---------------------------------------------------------------------------
# mkfs.erofs >= 1.9: --tar=i (metadata only, 512-byte blocks) and --blobdev

def test_tar_index(dev):
    ref = require_reference()
    tar = make_tar(dev.src, dev.work / "src.tar")
    image = dev.work / "tari.erofs"
    mkfs(ref, image, tar, "--tar=i")
    with Image.open(image) as img:
        assert img.block_size == 512
        [slot] = img.device_table
        assert slot.uniaddr == img.blocks      # so the tar can be appended
    info = run_read("info", image).stdout
    assert f"uniaddr {slot.uniaddr}" in info
    assert_reads_like(image, dev.src, f"--device={tar}")
    assert_reads_like(concat(dev.work / "tari-one.erofs", image, tar), dev.src)
    r = run_read("cat", image, "/f8192", check=False)
    assert_clean_error(r, 1, "past the end of the image", "--device=FILE")


def test_blobdev_19_appended(dev):
    ref = require_reference()
    image, blob = dev.work / "blob19.erofs", dev.work / "blob19.dev"
    mkfs(ref, image, dev.src, "--chunksize=4096", f"--blobdev={blob}")
    with Image.open(image) as img:
        assert img.device_table[0].uniaddr == img.blocks
    assert_reads_like(image, dev.src, f"--device={blob}")
    assert_reads_like(concat(dev.work / "blob19-one.erofs", image, blob), dev.src)

