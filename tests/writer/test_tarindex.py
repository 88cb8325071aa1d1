"""``mkerofs --tar=i`` and ``--tar=i,MAPFILE`` on disk (the kernel tests mount them:
kernel/test_kernel_tarindex.py).

Checked with an independent parser (support/oracle.py plus the chunk index and device slot
read here by hand, not with mkerofs's reader, which cannot follow device tables yet):

* note case 21: a 2048-byte image of 512-byte blocks (whatever -b says), one device slot
  {blocks 17 (the tar to the end of its end marker), uniaddr 4 (the image's blocks)},
  INCOMPAT_DEVICE_TABLE without INCOMPAT_CHUNKED_FILE (as mkfs.erofs 1.9.3), ``d/a`` chunk-based
  with chunk format 0x24 and an index {device 1, block 2};
* every non-empty regular file of a real tar (and of its gzip-compressed form: offsets count in
  the decompressed stream) points at its data's block in the tar, one chunk covering it;
* a stream on a pipe is read past, nothing spooled; a sparse file's data is stored in the image
  (flat) instead;
* ``--tar=i,MAPFILE``: the lines mkfs.erofs 1.9.3 writes for the same tar (taken from it), the
  blob a hole in the image; compared with a run of mkfs.erofs >= 1.9 when present;
* ``--verify`` with --tar=i reads the tar as the device (a plain tar file only), an empty MAPFILE name refused; 48-bit chunk
  indexes for blocks past 2^32.
"""
from __future__ import annotations

import gzip
import os
import re
import stat
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from mkerofs import BuildOptions, build
from mkerofs.ondisk import format as fmt
from mkerofs.writer import spool
from mkerofs.writer.chunks import make_indexed_file
from mkerofs.writer.options import TarOptions
from mkerofs.writer.plan import TreeInode
from mkerofs.writer.walk import DataRef
from support.oracle import ErofsImage, read_superblock
from support.run import REPO, assert_clean_failure, run_mkerofs
from support.tars import END, Archives, entry, oldgnu_sparse

CASE21 = entry(b"d/", typeflag=b"5", mode=0o755) + entry(b"d/a", b"A" * 5000) + \
    entry(b"d/b", b"B" * 100) + entry(b"e") + END
# a file replaced by a later entry, a hard link, a file over 64 KiB
REPLACED = entry(b"f", b"x" * 3000) + entry(b"g", b"y" * 10) + entry(b"f", b"z" * 7000) + \
    entry(b"h", typeflag=b"1", linkname=b"g") + entry(b"big", b"q" * 70000) + END
# what mkfs.erofs 1.9.3 writes for REPLACED with --tar=i,MAPFILE (observed)
REPLACED_MAP = ["00000005       12 00003400 00003728",
                "00000003        2 00001400 00001192",
                "00000002        1 00001000 00004086"]
BASE = ("--quiet", "-T", "1000000000", "--mkfs-time", "-Uclear")
REF = Path(os.environ.get("MKFS_EROFS_REF") or "/work/erofs-utils-install/bin/mkfs.erofs")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archives:
    return Archives(tmp_path_factory)


def device_slots(image: Path) -> list[tuple[int, int]]:
    """(blocks, uniaddr) of each slot of the device table."""
    raw = image.read_bytes()
    extra, slotoff = struct.unpack_from("<HH", raw, 1024 + 86)
    return [struct.unpack_from("<II", raw, slotoff * 128 + i * 128 + 64) for i in range(extra)]


def chunk_indexes(img: ErofsImage) -> dict[bytes, tuple[int, int, int]]:
    """path -> (chunk format, device id, first block) of every chunk-based file with 8-byte
    indexes (the first index; they are consecutive)."""
    out = {}
    for path, ino in img.walk().items():
        if ino.layout != 4:
            continue
        isize = 64 if ino.extended else 32
        xsize = 12 + (ino.xattr_icount - 1) * 4 if ino.xattr_icount else 0
        pos = img.sb.meta_blkaddr * img.bs + ino.nid * 32 + isize + xsize
        pos = -(-pos // 8) * 8
        hi, device, lo = struct.unpack("<HHI", img._read(pos, 8))
        out[path] = (ino.raw_blkaddr & 0xFFFF, device, hi << 32 | lo)
    return out


def test_note_case21(tmp_path):
    tar, image = tmp_path / "t.tar", tmp_path / "i.erofs"
    tar.write_bytes(CASE21)
    run_mkerofs("--tar=i", "-b4096", *BASE, image, tar)
    assert image.stat().st_size == 2048
    sb = read_superblock(image)
    assert sb.blkszbits == 9 and sb.blocks == 4
    assert sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE
    assert not sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
    assert struct.unpack_from("<H", sb.raw, 88)[0] == 9, "devt_slotoff"
    assert device_slots(image) == [(17, 4)]
    with ErofsImage(image) as img:
        indexes = chunk_indexes(img)
    assert indexes == {b"/d/a": (0x24, 1, 2), b"/d/b": (0x20, 1, 13)}


@pytest.mark.parametrize("gz", [False, True])
def test_every_file_points_at_its_data_in_the_tar(gz, archive, tmp_path):
    tar, _src = archive("python-gnu")
    image = tmp_path / "i.erofs"
    source = tar
    if gz:
        source = tmp_path / "t.tar.gz"
        source.write_bytes(gzip.compress(tar.read_bytes()))
    run_mkerofs("--tar=i", *BASE, image, source)
    expected = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            path = b"/" + os.fsencode(os.path.normpath(m.name))
            if m.isreg() and m.size:
                chunkbits = max(9, (m.size - 1).bit_length())
                expected[path] = (fmt.EROFS_CHUNK_FORMAT_INDEXES | chunkbits - 9, 1,
                                  m.offset_data // 512)
            elif m.islnk():
                target = expected.get(b"/" + os.fsencode(os.path.normpath(m.linkname)))
                if target is not None:
                    expected[path] = target
        last = t.getmembers()[-1]
    assert len(expected) > 20
    with ErofsImage(image) as img:
        assert chunk_indexes(img) == expected
    # the tar to the end of its end marker (two zero blocks after the last entry)
    tar_blocks = (last.offset_data + -(-last.size // 512) * 512) // 512 + 2
    assert device_slots(image) == [(tar_blocks, read_superblock(image).blocks)]
    assert image.stat().st_size == read_superblock(image).blocks * 512


def test_a_stream_on_a_pipe_is_read_past_not_spooled(tmp_path, monkeypatch):
    def no_spooling(*_args):
        raise AssertionError("--tar=i spooled file data")

    monkeypatch.setattr(spool.Spool, "store", no_spooling)
    data = REPLACED + bytes(8192)           # (what follows the end marker is read and dropped)
    rfd, wfd = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(wfd, data), os.close(wfd)))
    writer.start()
    image = tmp_path / "i.erofs"
    try:
        with os.fdopen(rfd, "rb") as stream:
            result = build(image, stream, BuildOptions(tar=TarOptions(mode="i"), uuid=bytes(16)))
    finally:
        writer.join()
    assert result.block_size == 512 and image.stat().st_size == result.size
    assert device_slots(image) == [(len(REPLACED) // 512, result.blocks)]


def test_a_sparse_file_is_stored_in_the_image(tmp_path):
    tar, image = tmp_path / "t.tar", tmp_path / "i.erofs"
    piece = bytes(range(256)) * 4
    tar.write_bytes(entry(b"plain", b"p" * 700) +
                    entry(b"sp", piece, typeflag=b"S", magic=b"ustar  \0",
                          prefix=oldgnu_sparse([(8192, 1024)], 20000)) + END)
    run_mkerofs("--tar=i", *BASE, image, tar)
    with ErofsImage(image) as img:
        inodes = img.walk()
        assert inodes[b"/plain"].layout == 4
        sp = inodes[b"/sp"]
        assert sp.layout in (0, 2) and sp.size == 20000, "flat, in the image"
        raw = img.data(sp)
    assert raw[8192:9216] == piece and raw.count(0) == 20000 - 1024 + piece.count(0)


def test_mapfile_lines_and_the_blob_is_a_hole(tmp_path):
    tar, image, mapfile = tmp_path / "t.tar", tmp_path / "i.erofs", tmp_path / "map"
    tar.write_bytes(REPLACED)
    run_mkerofs(f"--tar=i,{mapfile}", *BASE, image, tar)
    assert mapfile.read_text().splitlines() == REPLACED_MAP
    sb = read_superblock(image)
    assert sb.blkszbits == 12 and image.stat().st_size == 94208
    assert not sb.feature_incompat & (fmt.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE |
                                      fmt.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE)
    raw = image.read_bytes()
    blob = raw[1 * 4096:23 * 4096]     # the lines' blocks 2 to 22; block 1: the first "f"
    assert blob == bytes(len(blob)), "the blob is left for the MAPFILE's user to fill"
    assert os.stat(image).st_blocks * 512 < 40960, "and not written: a hole"


def mapfile_of(cmd: list[str], tar: Path, tmp_path: Path, name: str) -> list[str]:
    mapfile = tmp_path / f"{name}.map"
    subprocess.run([*cmd, f"--tar=i,{mapfile}", *BASE, str(tmp_path / f"{name}.erofs"),
                    str(tar)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return mapfile.read_text().splitlines()


def relative_lines(lines: list[str]) -> list[tuple]:
    """The lines with block numbers counted from the blob's first one, sorted: the blob's
    place in the image and the order of the lines follow each image's own inode layout."""
    fields = [line.split() for line in lines]
    base = min(int(f[0], 16) for f in fields)
    return sorted((int(f[0], 16) - base, *f[1:]) for f in fields)


@pytest.mark.parametrize("name", ["replaced", "python-gnu", "gnu-posix"])
def test_mapfile_like_mkfs(name, archive, tmp_path):
    if not REF.exists():
        pytest.skip(f"needs mkfs.erofs >= 1.9 at {REF} (set MKFS_EROFS_REF)")
    if name == "replaced":
        tar = tmp_path / "t.tar"
        tar.write_bytes(REPLACED)
    else:
        tar, _src = archive(name)
    theirs = mapfile_of([str(REF)], tar, tmp_path, "ref")
    ours = mapfile_of([sys.executable, "-m", "mkerofs"], tar, tmp_path, "ours")
    assert len(ours) > 2
    if name == "replaced":
        assert ours == theirs
    assert all(re.fullmatch(r"[0-9a-f]{8} [ 0-9a-f]{7}[0-9a-f] [0-9a-f]{8}( [0-9]{8})?", line)
               for line in ours), ours
    assert relative_lines(ours) == relative_lines(theirs)


def test_verify_reads_the_tar_as_the_device(tmp_path):
    """--verify with --tar=i from a plain tar file reads every file back through the device
    table from the tar itself; the image alone is its 2048 bytes of metadata."""
    tar = tmp_path / "t.tar"
    tar.write_bytes(CASE21)
    r = run_mkerofs("--tar=i", "--verify", tmp_path / "i.erofs", tar, check=False)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "i.erofs").stat().st_size == 2048


def test_verify_needs_a_plain_tar_file_and_an_empty_mapfile_is_refused(tmp_path):
    tar = tmp_path / "t.tar"
    tar.write_bytes(CASE21)
    r = run_mkerofs("--tar=i", "--verify", tmp_path / "i.erofs", check=False, input=CASE21)
    assert r.returncode != 0 and "--verify with --tar=i needs SOURCE" in r.stderr
    assert not (tmp_path / "i.erofs").exists()
    r = run_mkerofs("--tar=i,map", "--verify", tmp_path / "i.erofs", tar, check=False)
    assert r.returncode != 0 and "--verify with --tar=i needs SOURCE" in r.stderr
    r = run_mkerofs("--tar=i,", tmp_path / "j.erofs", tar, check=False)
    assert r.returncode != 0 and "MAPFILE needs a name" in r.stderr


@pytest.mark.parametrize("mode", ["--tar=i", "--tar=i,map"])
def test_blobdev_is_refused(tmp_path, mode):
    """--tar=i writes no file data, so a --blobdev FILE would stay empty (as mkfs.erofs 1.9.3
    leaves it, giving the tar's device slot FILE's 0 blocks): refused, nothing written."""
    tar, image, blob = tmp_path / "t.tar", tmp_path / "i.erofs", tmp_path / "blob"
    tar.write_bytes(CASE21)
    r = run_mkerofs(*BASE, mode, f"--blobdev={blob}", "--chunksize=4096", image, tar,
                    check=False, cwd=tmp_path)
    assert_clean_failure(r, mentions=["--blobdev", "--tar=i", "no file data"], image=image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tar"]


def test_48bit_chunk_indexes_past_2_to_the_32_blocks():
    node = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, 5000, 0, nlink=1,
                        data=DataRef(b"", 0, indexed=True), ftype=fmt.EROFS_FT_REG_FILE)
    node.set_xattr_ibody(b"")
    make_indexed_file(node, 9, (1 << 32) + 7, 1)
    assert node.datalayout == fmt.EROFS_INODE_CHUNK_BASED
    assert node.i_u == fmt.EROFS_CHUNK_FORMAT_48BIT | fmt.EROFS_CHUNK_FORMAT_INDEXES | 4
    assert struct.unpack("<HHI", node.inline[-8:]) == (1, 1, 7)
    make_indexed_file(node, 9, (1 << 32) - 2, 1)
    assert node.i_u == fmt.EROFS_CHUNK_FORMAT_INDEXES | 4
    assert struct.unpack("<HHI", node.inline[-8:]) == (0, 1, (1 << 32) - 2)


@pytest.mark.parametrize("name", ["gnu-posix", "gnu-gnu-sparse", "python-pax"])
def test_mkerofs_read_follows_the_index_into_the_tar(tmp_path, archive, name):
    """mkerofs-read reads mkerofs's own --tar=i images both ways: with --device=TAR, and with
    the tar appended (containerd's form, which fsck.erofs cannot read); compare finds every
    file equal to the tree the tar was made from, and extract gives the same bytes."""
    tar, src = archive(name)
    image = tmp_path / "i.erofs"
    run_mkerofs("--tar=i", *BASE, image, tar)
    layer = tmp_path / "layer.erofs"
    layer.write_bytes(image.read_bytes() + tar.read_bytes())
    for args in ([image, src, f"--device={tar}"], [layer, src]):
        r = subprocess.run([sys.executable, "-m", "mkerofs.cli.read", "compare", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "x"
    r = subprocess.run([sys.executable, "-m", "mkerofs.cli.read", "extract", "-q", str(image),
                        str(out), f"--device={tar}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for path in src.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert (out / path.relative_to(src)).read_bytes() == path.read_bytes(), path
    # without the tar, the data is missing: an error naming the device, not zeros
    r = subprocess.run([sys.executable, "-m", "mkerofs.cli.read", "verify", "-q", str(image)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "device 1" in r.stdout + r.stderr
