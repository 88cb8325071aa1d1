"""--tar=headerball through the kernel: files of headers without data read back as zeros of
their size, and the image holds no data blocks for them.

Each non-empty regular file becomes a chunk-based inode with one chunk covering it (the
smallest power of two at least a block, as mkfs.erofs 1.9.3 picks) whose block map entry is a
hole (EROFS_NULL_ADDR).  Checked at block sizes 512, 1024 and 4096, uncompressed and with
-zlz4hc (compression must leave these files alone), for sizes around a block, 5 MB, 3 GiB and
5 GiB (an extended inode: over 4 GiB), some with inline xattrs between the inode and its map,
a hard link and a file in a directory; and a file of 2 TiB + 1, more than the format's largest
chunk at 512- and 1024-byte blocks (2^31 blocks), with a map of several holes:

* mounted: st_size, zeros at a few offsets (whole files up to 8 MiB), nothing past the end,
  SEEK_DATA finding no data (or zeros where it says there is some), the xattrs;
* on disk (mkerofs's reader): chunk-based inodes whose map is all holes, the chunk format,
  INCOMPAT_CHUNKED_FILE, metadata only (the image is as many blocks as the metadata takes);
* ``mkerofs-read verify`` clean; Debian's fsck.erofs 1.5 (4 KiB blocks only) and, when
  present, fsck.erofs >= 1.9 at /work/erofs-utils-install/bin accept the image;
* against mkfs.erofs >= 1.9 when present: the same chunk format for every file and the same
  image size.
"""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image
from support.run import mkerofs_env, run_mkerofs

pytestmark = pytest.mark.kernel

T = 1_700_000_000
MiB, GiB = 1 << 20, 1 << 30
# over the largest chunk at 512- and 1024-byte blocks (2^31 blocks): 3 and 2 chunks
HUGE = (2 << 40) + 1
NEW_TOOLS = Path("/work/erofs-utils-install/bin")
XATTRS = {"a": {"user.one": "1"}, "big5g": {"user.big": "x" * 40, "trusted.t": "tv"},
          "d/in_dir": {"user.deep": "yes"}}


def sizes(bs: int) -> dict[str, int]:
    return {"one": 1, "a": bs - 1, "b": bs, "c": bs + 1, "five_mb": 5_000_000,
            "three_g": 3 * GiB, "big5g": 5 * GiB, "d/in_dir": 3 * bs + 5, "empty": 0}


def headerball_tar(path: Path, files: dict[str, int]) -> dict[str, int]:
    """Headers only (no payloads) of a directory 'd' and `files` (name: size), PAX for the
    xattrs; a hard link 'link' to 'five_mb' when there is one."""
    buf = io.BytesIO()
    d = tarfile.TarInfo("d")
    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, T
    buf.write(d.tobuf(tarfile.PAX_FORMAT))
    for name, size in files.items():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, T, 0o644
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in XATTRS.get(name, {}).items()}
        buf.write(info.tobuf(tarfile.PAX_FORMAT))
    if "five_mb" in files:
        link = tarfile.TarInfo("link")
        link.type, link.linkname, link.mtime = tarfile.LNKTYPE, "five_mb", T
        buf.write(link.tobuf(tarfile.PAX_FORMAT))
    buf.write(bytes(1024))
    path.write_bytes(buf.getvalue())
    return files


def covering_chunk_format(size: int, bs: int) -> int:
    """chunk bits - block bits of one power-of-two chunk covering the file, at least a block,
    at most 31 (the format's largest chunk); worked out here, not taken from mkerofs."""
    chunk = bs
    while chunk < size and chunk < bs << 31:
        chunk *= 2
    return chunk.bit_length() - bs.bit_length()


def assert_reads_zeros(path: Path, size: int, bs: int) -> None:
    st = os.stat(path)
    assert st.st_size == size, path
    fd = os.open(path, os.O_RDONLY)
    try:
        if size <= 8 * MiB:
            assert os.pread(fd, size + 1, 0) == bytes(size), path
        offsets = {0, bs - 1, bs, size // 2, size - bs, size - 1, size - 5 * MiB}
        for off in sorted(o for o in offsets if 0 <= o < size):
            n = min(3 * bs, size - off)
            assert os.pread(fd, n, off) == bytes(n), (path, off)
        assert os.pread(fd, 16, size) == b"", (path, "past the end")
        if size:
            try:
                data = os.lseek(fd, 0, os.SEEK_DATA)
            except OSError as err:
                assert err.errno == errno.ENXIO, err      # no data anywhere: all holes
            else:
                assert 0 <= data < size
                n = min(4 * MiB, size - data)
                assert os.pread(fd, n, data) == bytes(n), (path, "where SEEK_DATA points")
    finally:
        os.close(fd)


def chunk_formats(image: Path) -> dict[str, int]:
    """name -> i_u (the chunk format) of every chunk-based inode, checking each map is holes."""
    out = {}
    with Image.open(image) as img:
        for path, inode in img.walk():
            if inode.datalayout != fmt.EROFS_INODE_CHUNK_BASED:
                continue
            kinds = {e.kind for e in img.extents(inode)}
            assert kinds == {"hole"}, (path, kinds)
            out[os.fsdecode(path).lstrip("/")] = inode.startblk & 0xFFFF
    return out


def run_fsck(tool: str, image: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "--extract", str(image)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def build(tmp_path: Path, bs: int, z: str | None) -> tuple[Path, dict[str, int]]:
    """(image, its files) of a headerball of sizes(bs)."""
    tar = tmp_path / "h.tar"
    files = headerball_tar(tar, sizes(bs))
    image = tmp_path / "i.erofs"
    opts = ["--tar=headerball", "--quiet", "-b", str(bs), "-T", str(T), "-Uclear"]
    if z:
        opts.append(f"-z{z}")
    run_mkerofs(*opts, image, tar)
    return image, files


BLOCK_SIZES = pytest.mark.parametrize("bs", [512, 1024, 4096])
COMPRESSION = pytest.mark.parametrize("z", [None, "lz4hc"])


@BLOCK_SIZES
@COMPRESSION
def test_headerball_files_are_holes_the_kernel_reads_as_zeros(bs, z, tmp_path, kernel):
    image, files = build(tmp_path, bs, z)
    with Image.open(image) as img:
        sb = img.superblock
        assert sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
        big = img.lookup(b"/big5g")
        assert big.extended and big.size == 5 * GiB
        assert img.lookup(b"/empty").datalayout == fmt.EROFS_INODE_FLAT_PLAIN
        assert img.lookup(b"/link").pos == img.lookup(b"/five_mb").pos
    formats = chunk_formats(image)
    expected = {n: covering_chunk_format(s, bs) for n, s in files.items() if s}
    expected["link"] = expected["five_mb"]
    assert formats == expected
    # metadata only: a few blocks for ten inodes, whatever the 8 GiB of file sizes
    assert image.stat().st_size <= 4 * 4096, image.stat().st_size

    verify = subprocess.run([sys.executable, "-m", "mkerofs.cli.read", "verify", str(image)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mkerofs_env())
    assert verify.returncode == 0 and "clean" in verify.stdout, verify.stdout

    with kernel(image) as mnt:
        for name, size in files.items():
            assert_reads_zeros(mnt / name, size, bs)
        assert_reads_zeros(mnt / "link", files["five_mb"], bs)
        assert os.stat(mnt / "link").st_ino == os.stat(mnt / "five_mb").st_ino
        for name, xattrs in XATTRS.items():
            for key, value in xattrs.items():
                assert os.getxattr(mnt / name, key) == value.encode(), (name, key)


@BLOCK_SIZES
@COMPRESSION
def test_headerball_images_pass_fsck(bs, z, tmp_path, fsck):
    image, _files = build(tmp_path, bs, z)
    ran = False
    if bs == 4096:          # fsck.erofs 1.5 reads 4 KiB blocks only (even the superblock's)
        ran = fsck(image, bs)
        assert ran
    new_fsck = NEW_TOOLS / "fsck.erofs"
    if new_fsck.exists():
        r = run_fsck(str(new_fsck), image)
        assert r.returncode == 0, r.stdout
        ran = True
    if not ran:
        pytest.skip(f"fsck.erofs 1.5 cannot read {bs}-byte blocks; no {new_fsck}")


@pytest.mark.parametrize("bs", [512, 4096])
def test_headerball_like_mkfs_erofs(bs, tmp_path):
    """The same chunk size for every file and an image of the same size as mkfs.erofs >= 1.9."""
    ref = NEW_TOOLS / "mkfs.erofs"
    if not ref.exists():
        pytest.skip(f"needs mkfs.erofs >= 1.9 at {ref}")
    tar = tmp_path / "h.tar"
    headerball_tar(tar, sizes(bs))
    theirs, ours = tmp_path / "ref.erofs", tmp_path / "ours.erofs"
    opts = ["--tar=headerball", "--quiet", "-b", str(bs), "-T", str(T), "-Uclear"]
    subprocess.run([str(ref), *opts, str(theirs), str(tar)], check=True)
    run_mkerofs(*opts, ours, tar)
    assert chunk_formats(ours) == chunk_formats(theirs)
    assert ours.stat().st_size == theirs.stat().st_size


@BLOCK_SIZES
def test_headerball_file_of_several_chunks(bs, tmp_path, kernel):
    """A file over the format's largest chunk (2^31 blocks) gets several hole entries, one per
    chunk: read at the chunk boundaries."""
    tar = tmp_path / "h.tar"
    headerball_tar(tar, {"huge": HUGE, "a": 100})
    image = tmp_path / "i.erofs"
    run_mkerofs("--tar=headerball", "--quiet", "-b", str(bs), image, tar)
    chunk = bs << covering_chunk_format(HUGE, bs)
    count = -(-HUGE // chunk)
    assert count == {512: 3, 1024: 2, 4096: 1}[bs]
    with Image.open(image) as img:
        huge = img.lookup(b"/huge")
        assert img.verify() == []
    # the block map: one 4-byte hole entry per chunk, right after the inode (no xattrs)
    with open(image, "rb") as f:
        f.seek(huge.data_pos)
        assert f.read(4 * count) == b"\xff" * 4 * count
    assert chunk_formats(image) == {"huge": covering_chunk_format(HUGE, bs), "a": 0}
    with kernel(image) as mnt:
        assert_reads_zeros(mnt / "a", 100, bs)
        assert os.stat(mnt / "huge").st_size == HUGE
        fd = os.open(mnt / "huge", os.O_RDONLY)
        try:
            for k in range(1, count + 1):
                at = min(k * chunk, HUGE) - bs
                assert os.pread(fd, 2 * bs, at) == bytes(min(2 * bs, HUGE - at)), at
        finally:
            os.close(fd)
