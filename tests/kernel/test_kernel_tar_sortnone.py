"""mkerofs --tar --sort=none -Enoinline_data from a stream (stdin, plain or compressed): each
file's data is written into the image as the tar is read, in tar order, with no copy of the
layer in TMPDIR (a 64 KiB tmpfs here, which a spool would overflow), and the metadata after the
data (meta_blkaddr past the data area).  Mounted by the kernel and compared with the source
tree; block addresses read with the independent parser (support.oracle); fsck.erofs (Debian's
1.5 and, when installed, 1.9.3) must accept the images.  Also containerd's exact command line,
entries replaced later in the stream (their blocks stay behind, unreferenced), hard links,
sparse entries (holes stay holes in the file; zeros on a block device that held other bytes),
--offset, small block sizes, long xattr prefixes, and a stream that breaks in the middle (no
image, nothing left in TMPDIR)."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from support.compare import compare_trees
from support.gnutar import archive_full_tree, with_whiteout
from support.mounts import fsck_erofs, tmpfs_mount
from support.oracle import ErofsImage, image_inodes, read_superblock
from support.run import assert_clean_failure, leftovers, run_mkerofs

pytestmark = pytest.mark.kernel

SORT_NONE = ["--tar=f", "-Enoinline_data", "--sort=none", "-T1000000000", "--mkfs-time"]
FSCK_193 = Path("/work/erofs-utils-install/bin/fsck.erofs")
T = 1_700_000_000


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    """(tree, tar bytes) for the full tree as GNU tar archives it (POSIX, --sparse)."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    return archive_full_tree(tmp_path_factory.mktemp("tar"))


@pytest.fixture
def tiny_tmpdir():
    """A 64 KiB tmpfs for TMPDIR: a spool of any layer here would fail."""
    with tmpfs_mount("64k") as mnt:
        yield mnt
        assert leftovers(mnt) == [], "something was written to TMPDIR"


def build(image, data: bytes, *args, tmpdir, check=True):
    return run_mkerofs(*SORT_NONE, *args, image, input=data, env={"TMPDIR": tmpdir},
                       check=check)


def assert_fsck(image, block_size: int = 4096) -> None:
    """fsck.erofs 1.5 (4 KiB blocks only) and 1.9.3 (if installed) check every file."""
    if block_size == 4096:
        r = fsck_erofs(image)
        assert r.returncode == 0, f"fsck.erofs 1.5:\n{r.stdout}\n{r.stderr}"
    if FSCK_193.exists():
        r = subprocess.run([str(FSCK_193), "--extract", str(image)], capture_output=True,
                           text=True)
        assert r.returncode == 0, f"fsck.erofs 1.9.3:\n{r.stdout}\n{r.stderr}"


def tar_order(data: bytes) -> list[bytes]:
    """Paths of the regular files with data, in the order the tar has them (first entry of
    a name; hard links left out)."""
    seen, order = set(), []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            path = b"/" + os.path.normpath(m.name).encode().lstrip(b"./")
            if m.isreg() and m.size and path not in seen:
                seen.add(path)
                order.append(path)
    return order


def assert_data_first_in_tar_order(image, data: bytes, block_size: int = 4096) -> None:
    """Files FLAT_PLAIN, from the block after the superblock's on, in tar order; metadata
    (meta_blkaddr, so every inode) after all of them."""
    sb = read_superblock(image)
    inodes = image_inodes(image)
    order = tar_order(data)
    blocks = [inodes[p].raw_blkaddr for p in order]
    assert all(inodes[p].layout == 0 for p in order), "regular files are FLAT_PLAIN"
    assert blocks == sorted(blocks) and len(set(blocks)) == len(blocks), "not in tar order"
    assert blocks[0] == -(-(1024 + 128) // block_size), "data starts after the superblock"
    last = order[-1]
    end = blocks[-1] + -(-inodes[last].size // block_size)
    assert sb.meta_blkaddr >= end, "the metadata follows the data"


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_stream_mounts_like_its_tree(compress, archived, tmp_path, tiny_tmpdir, kernel):
    tree, data = archived
    stream = {"none": lambda d: d, "gzip": lambda d: gzip.compress(d, 1),
              "zstd": lambda d: zstandard.ZstdCompressor().compress(d)}[compress](data)
    image = tmp_path / "out.erofs"
    build(image, stream, tmpdir=tiny_tmpdir)
    assert leftovers(tmp_path) == ["out.erofs"]
    assert_data_first_in_tar_order(image, data)
    # files/sparse_10m: 10 MiB of holes in the tar's sparse map stay holes in the image
    assert os.stat(image).st_blocks * 512 < os.path.getsize(image) - 9 * 2**20
    with kernel(image) as mnt:
        compare_trees(tree, mnt)
    assert_fsck(image)


@pytest.mark.parametrize("block_size", [512, 1024])
def test_small_blocks(block_size, archived, tmp_path, tiny_tmpdir, kernel):
    tree, data = archived
    image = tmp_path / "out.erofs"
    build(image, data, f"-b{block_size}", tmpdir=tiny_tmpdir)
    assert_data_first_in_tar_order(image, data, block_size)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)
    assert_fsck(image, block_size)


def test_same_files_as_the_spooled_layout(archived, tmp_path, tiny_tmpdir):
    """The tar-file build (read in place, metadata at block 0) and the stream build differ in
    layout only: every path has the same attributes and data."""
    _tree, data = archived
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(data)
    in_place, streamed = tmp_path / "file.erofs", tmp_path / "stream.erofs"
    run_mkerofs(*SORT_NONE, in_place, tarball)
    build(streamed, data, tmpdir=tiny_tmpdir)
    assert read_superblock(in_place).meta_blkaddr == 0
    assert read_superblock(streamed).meta_blkaddr > 0
    with ErofsImage(in_place) as ia, ErofsImage(streamed) as ib:
        a, b = ia.walk(), ib.walk()
        assert sorted(a) == sorted(b)
        for path, x in a.items():
            y = b[path]
            assert (x.mode, x.size, x.nlink, x.uid, x.gid, x.mtime, x.mtime_nsec,
                    x.xattr_icount) == (y.mode, y.size, y.nlink, y.uid, y.gid, y.mtime,
                                        y.mtime_nsec, y.xattr_icount), path
            if stat.S_ISREG(x.mode):
                assert ia.data(x) == ib.data(y), path


def test_containerd_command_line(archived, tmp_path, tiny_tmpdir, kernel):
    tree, data = archived
    layer = with_whiteout(data, tmp_path)
    image = tmp_path / "layer.erofs"
    uuid = "0123abcd-4567-89ef-0123-456789abcdef"
    r = run_mkerofs("--tar=f", "--aufs", "--quiet", "-Enoinline_data", "--sort=none", "-U", uuid,
                    image, input=layer, env={"TMPDIR": tiny_tmpdir})
    assert r.stdout == "" and r.stderr == ""
    assert read_superblock(image).uuid == bytes.fromhex(uuid.replace("-", ""))
    assert_data_first_in_tar_order(image, data)
    with kernel(image) as mnt:
        st = os.lstat(mnt / "files" / "gone")          # an overlayfs whiteout: c 0:0
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(mnt / "files", "trusted.overlay.origin") == b""
        assert not (mnt / "files" / ".wh.gone").exists()
        assert sorted(os.listdir(mnt / "files")) == sorted(os.listdir(tree / "files") + ["gone"])
        compare_trees(tree / "sizes", mnt / "sizes")
        compare_trees(tree / "links", mnt / "links")
    assert_fsck(image)


def _tar(entries) -> bytes:
    """A PAX tar of (name, bytes | None: directory | ("link", target) | ("sym", target)),
    with optional xattrs as a third item."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, what, *xattrs in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = T, 0o644
            if xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs[0].items()}
            if what is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(what, tuple):
                info.type = tarfile.LNKTYPE if what[0] == "link" else tarfile.SYMTYPE
                info.linkname = what[1]
                tf.addfile(info)
            else:
                info.size = len(what)
                tf.addfile(info, io.BytesIO(what))
    return buf.getvalue()


def test_replaced_entries_and_hard_links(tmp_path, tiny_tmpdir, kernel):
    first, second = b"first!" * 2000, b"second" * 700
    data = _tar([
        ("f", first),
        ("a", b"A" * 5000),
        ("h", ("link", "a")),               # shares a's inode (and blocks)
        ("t", b"old t"),
        ("keep", ("link", "t")),            # keeps the old t alive after t is replaced
        ("d", None),
        ("d/x", b"X" * 100),
        ("f", second),                      # replaces f: first's blocks stay, unreferenced
        ("t", b"new t"),
        ("d", b"now a file"),               # replaces the directory and d/x
        ("sub/h2", ("link", "a")),
    ])
    image = tmp_path / "out.erofs"
    build(image, data, tmpdir=tiny_tmpdir)
    inodes = image_inodes(image)
    assert b"/d/x" not in inodes
    a, h, h2 = inodes[b"/a"], inodes[b"/h"], inodes[b"/sub/h2"]
    assert a.nid == h.nid == h2.nid and a.nlink == 3
    assert inodes[b"/keep"].nid != inodes[b"/t"].nid
    raw = image.read_bytes()
    bs = read_superblock(image).block_size
    # first's data is still there, in the first blocks after the superblock, dead space
    assert raw[bs:bs + len(first)] == first
    assert inodes[b"/f"].raw_blkaddr > a.raw_blkaddr > 1
    with kernel(image) as mnt:
        assert (mnt / "f").read_bytes() == second
        assert (mnt / "a").read_bytes() == (mnt / "sub" / "h2").read_bytes() == b"A" * 5000
        assert os.stat(mnt / "h").st_nlink == 3
        assert (mnt / "keep").read_bytes() == b"old t"
        assert (mnt / "t").read_bytes() == b"new t"
        assert (mnt / "d").read_bytes() == b"now a file"
    assert_fsck(image)


def test_long_xattr_prefixes_in_block_0_or_after_the_data(tmp_path, tiny_tmpdir, kernel):
    """The prefix table sits after the superblock when it fits there (the head block), else
    in the metadata area after the data; either way the kernel finds it."""
    names = [f"user.a-rather-long-prefix-number-{i:02d}." for i in range(16)]
    data = _tar([("f", b"F" * 9000, {n + "k": "v%d" % i for i, n in enumerate(names)}),
                 ("g", b"G" * 10, {names[0] + "k": "w"})])
    for args in ([f"--xattr-prefix={names[0]}"], [f"--xattr-prefix={n}" for n in names]):
        image = tmp_path / "out.erofs"
        build(image, data, "-b512", *args, tmpdir=tiny_tmpdir)
        sb = read_superblock(image)
        table = struct.unpack_from("<I", sb.raw, 92)[0] * 4      # xattr_prefix_start
        if len(args) == 1:
            assert 1024 + 128 <= table < 3 * 512, "after the superblock, in its block"
        else:
            assert table >= sb.meta_blkaddr * 512, "in the metadata area"
        with kernel(image) as mnt:
            for i, n in enumerate(names):
                assert os.getxattr(mnt / "f", n + "k") == b"v%d" % i
            assert os.getxattr(mnt / "g", names[0] + "k") == b"w"
            assert (mnt / "f").read_bytes() == b"F" * 9000
        assert sb.meta_blkaddr > 3
        assert_fsck(image, 512)


def test_offset_and_block_device(archived, tmp_path, tiny_tmpdir, kernel, loop):
    """--offset shifts the whole layout; on a block device that held other bytes, holes and
    the ends of last blocks read as zeros."""
    tree, data = archived
    image = tmp_path / "off.erofs"
    build(image, data, "--offset=8192", tmpdir=tiny_tmpdir)
    assert image.read_bytes()[:8192] == bytes(8192)
    with kernel(image, offset=8192) as mnt:
        compare_trees(tree, mnt)
    backing = tmp_path / "disk"
    with open(backing, "wb") as f:
        for _ in range(32):
            f.write(b"\xaa" * 2**20)
    with loop(backing) as dev:
        build(dev, gzip.compress(data, 1), tmpdir=tiny_tmpdir)
        with kernel(dev) as mnt:
            compare_trees(tree, mnt)
    assert leftovers(tmp_path) == ["disk", "off.erofs"]


@pytest.mark.parametrize("damage", ["truncated", "bad-header"])
def test_broken_stream_leaves_no_image(damage, tmp_path, tiny_tmpdir):
    good = [("a", b"A" * 70000), ("b", b"B" * 9000), ("c", b"C" * 5000)]
    data = _tar(good)
    if damage == "truncated":
        data = data[:len(data) // 2]            # ends inside a's or b's data
    else:
        at = data.index(b"B" * 512) + 9216      # the header after b's data
        data = data[:at] + b"\x01" * 512 + data[at + 512:]
    image = tmp_path / "out.erofs"
    r = build(image, data, tmpdir=tiny_tmpdir, check=False)
    assert_clean_failure(r, image=image)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("chunks", [["--chunksize=8192"], ["-Ededupe"]])
def test_ignored_with_chunk_based_files_and_says_so(chunks, archived, tmp_path, kernel):
    """With chunks (--chunksize, -Ededupe without -z) --sort=none changes nothing in the image
    and a warning says it is ignored (mkfs.erofs 1.9.3 drops the chunks instead); --quiet
    silences it."""
    tree, data = archived
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(data)
    plain, sorted_none = tmp_path / "plain.erofs", tmp_path / "none.erofs"
    common = ["--tar=f", "-Enoinline_data", *chunks, "-T1000000000", "--mkfs-time", "-Uclear"]
    r = run_mkerofs(*common, plain, tarball)
    assert "--sort=none" not in r.stderr
    r = run_mkerofs(*common, "--sort=none", sorted_none, tarball)
    assert "warning: --sort=none is ignored with chunk-based files" in r.stderr
    assert plain.read_bytes() == sorted_none.read_bytes()
    # (from a stream: spooled either way)
    run_mkerofs(*common, plain, input=data)
    r = run_mkerofs(*common, "--sort=none", "--quiet", sorted_none, input=data)
    assert r.stderr == ""
    assert plain.read_bytes() == sorted_none.read_bytes()
    with kernel(sorted_none) as mnt:
        compare_trees(tree, mnt)


@pytest.mark.parametrize("block_size", [4096, 1024])
def test_tar_file_on_stdin_mounts_like_its_tree(block_size, archived, tmp_path, tiny_tmpdir,
                                                kernel):
    """stdin redirected from a tar file (`< layer.tar`): a forked copier copies each file's
    range of the tar into the image (spool.TarCopier) instead of the parser writing it; the
    kernel must see the tree, sparse files and hard links included."""
    from support.run import mkerofs_command, mkerofs_env
    tree, data = archived
    tar = tmp_path / "layer.tar"
    tar.write_bytes(data)
    image = tmp_path / "out.erofs"
    with open(tar, "rb") as stdin:
        r = subprocess.run(mkerofs_command() + [*SORT_NONE, "-b", str(block_size), str(image)],
                           stdin=stdin, capture_output=True, text=True,
                           env=mkerofs_env({"TMPDIR": tiny_tmpdir}), timeout=600)
    assert r.returncode == 0, r.stderr
    assert_data_first_in_tar_order(image, data, block_size)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)
    assert_fsck(image, block_size)
