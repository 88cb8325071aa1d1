"""mkerofs --tar, mounted by the kernel: the full test tree (support.trees.make_full_tree: every
file type, sizes around block boundaries, holes, hard links, big ids, ns mtimes after 2038)
archived by GNU tar (POSIX format, --sparse), built from the tar file, from stdin, gzip and
zstd compressed, uncompressed and with -zlz4hc, -Enoinline_data, --sort=none, and compared entry
by entry with the tree.  Also --tar=headerball (files read back as zeros) and containerd's
command line (--tar=f --aufs --quiet -Enoinline_data -U, the layer on stdin)."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile

import pytest
import zstandard

from support.compare import compare_trees
from support.gnutar import archive_full_tree, with_whiteout
from support.oracle import read_superblock
from support.run import run_mkerofs

pytestmark = pytest.mark.kernel

@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    """(tree, tar bytes) for the full tree as GNU tar archives it."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    return archive_full_tree(tmp_path_factory.mktemp("tar"))


CASES = {
    "plain": [],
    "lz4hc": ["-zlz4hc"],
    "noinline": ["-Enoinline_data"],
    "sort-none": ["-Enoinline_data", "--sort=none"],
    "lz4hc-sort-none": ["-zlz4hc", "-Enoinline_data", "--sort=none"],
    "b1024": ["-b1024"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tar_file_mounts_like_its_tree(case, archived, tmp_path, kernel):
    tree, data = archived
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(data)
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", *CASES[case], image, tarball)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("args", [[], ["-zlz4hc"]], ids=["flat", "lz4hc"])
def test_stdin_mounts_like_its_tree(compress, args, archived, tmp_path, kernel):
    tree, data = archived
    if compress == "gzip":
        data = gzip.compress(data, 1)
    elif compress == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", *args, image, input=data)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)


def test_compressed_tar_file_with_flag(archived, tmp_path, kernel):
    tree, data = archived
    gz = tmp_path / "in.tar.gz"
    gz.write_bytes(gzip.compress(data, 1))
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", "--ungzip", "-Enoinline_data", image, gz)
    with kernel(image) as mnt:
        compare_trees(tree, mnt)


def test_headerball_reads_back_as_zeros(tmp_path, kernel):
    buf = io.BytesIO()
    sizes = {"f": 5000, "g": 10, "big": 3 * 4096, "empty": 0}
    for name, size in sizes.items():
        info = tarfile.TarInfo(name)
        info.size, info.mtime = size, 1_700_000_000
        buf.write(info.tobuf(tarfile.USTAR_FORMAT))     # the header alone: no payload
    buf.write(bytes(1024))
    tarball = tmp_path / "hb.tar"
    tarball.write_bytes(buf.getvalue())
    for args in ([], ["-Enoinline_data"], ["-zlz4"]):
        image = tmp_path / "hb.erofs"
        run_mkerofs("--tar=headerball", *args, image, tarball)
        with kernel(image) as mnt:
            for name, size in sizes.items():
                assert (mnt / name).read_bytes() == bytes(size), (args, name)


def test_containerd_command_line(archived, tmp_path, kernel):
    tree, data = archived
    layer = with_whiteout(data, tmp_path)
    image = tmp_path / "layer.erofs"
    uuid = "0123abcd-4567-89ef-0123-456789abcdef"
    r = run_mkerofs("--tar=f", "--aufs", "--quiet", "-Enoinline_data", "-U", uuid, image,
                    input=layer)
    assert r.stdout == "" and r.stderr == ""
    assert read_superblock(image).uuid == bytes.fromhex(uuid.replace("-", ""))
    with kernel(image) as mnt:
        st = os.lstat(mnt / "files" / "gone")          # an overlayfs whiteout: c 0:0
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert not (mnt / "files" / ".wh.gone").exists()
        assert (mnt / "files" / "text").read_bytes() == (tree / "files" / "text").read_bytes()
        assert sorted(os.listdir(mnt)) == sorted(os.listdir(tree))
