"""A corrupt layer (rebuild mode) or a corrupt base (--incremental) is an error naming the image,
and the image being written stays as it was: an existing OUT is not replaced, IMAGE not touched."""
from __future__ import annotations

import hashlib

import pytest

from support.run import assert_clean_failure, run_mkerofs
from support.trees import write_files

from mkerofs.reader import Image

FIXED = ("-T0", "-Uclear", "--quiet")


def _extent(image, path: bytes, kind: str):
    """(offset, length) of the first `kind` extent of `path` in `image`."""
    with Image.open(image) as img:
        for found, inode in img.walk():
            if found == path:
                for e in img.extents(inode):
                    if e.kind == kind:
                        return e.physical, e.length
    raise AssertionError(f"no {kind} extent for {path!r}")


def _spoil(image, offset: int, length: int) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * length)


@pytest.fixture
def layers(tmp_path):
    """l1: a directory of 200 entries (its entries in a block of their own); l2 (-zlz4): a
    compressed file."""
    write_files(tmp_path / "L1", {f"d/long-file-name-number-{i}": f"file {i}\n".encode()
                                  for i in range(200)})
    write_files(tmp_path / "L2", {"z": b"hello\n" * 50000, "d/new": b"new\n"})
    run_mkerofs(*FIXED, tmp_path / "l1.erofs", tmp_path / "L1")
    run_mkerofs(*FIXED, "-zlz4", tmp_path / "l2.erofs", tmp_path / "L2")
    return tmp_path / "l1.erofs", tmp_path / "l2.erofs"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("clean", [None, "--clean=data"])
def test_corrupt_directory_in_a_layer(layers, tmp_path, clean):
    l1, l2 = layers
    _spoil(l1, *_extent(l1, b"/d", "plain"))
    out = tmp_path / "out.erofs"
    out.write_bytes(b"previous image")
    r = run_mkerofs(*FIXED, *([clean] if clean else []), out, l1, l2, check=False)
    assert_clean_failure(r, mentions=["l1.erofs", "/d/"], image=out,
                         image_before=b"previous image")


def test_corrupt_compressed_data_in_a_layer(layers, tmp_path):
    l1, l2 = layers
    offset, _length = _extent(l2, b"/z", "compressed")
    _spoil(l2, offset, 4096)
    out = tmp_path / "out.erofs"
    # the compressed file is copied (decoded) in index mode too: its bytes must not be garbage
    r = run_mkerofs(*FIXED, out, l1, l2, check=False)
    assert_clean_failure(r, mentions=["l2.erofs", "/z"], image=out)


def test_corrupt_base_of_an_increment(layers, tmp_path):
    l1, _l2 = layers
    _spoil(l1, *_extent(l1, b"/d", "plain"))
    before = _digest(l1)
    r = run_mkerofs(*FIXED, "--incremental", l1, tmp_path / "L2", check=False)
    assert_clean_failure(r, mentions=["l1.erofs", "/d/"], image=l1,
                         image_before=l1.read_bytes())
    assert _digest(l1) == before
