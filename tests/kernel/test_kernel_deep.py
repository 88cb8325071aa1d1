"""Trees deeper than PATH_MAX: 40 nested directories with 200-byte names, so the deepest paths
are over 8000 bytes, which no single system call takes (ENAMETOOLONG).  EROFS limits only each
name, so mkerofs must build such a tree whole: walked, xattrs read, files copied flat and
compressed by the workers, --verify'd, then mounted by the kernel and compared with the source,
and extracted again by mkerofs-read.  (mkfs.erofs 1.9.3 and fsck.erofs refuse these paths.)

The tests build and compare the tree through directory descriptors and /proc/self/fd
(support.paths.deep_call), not through mkerofs's own helpers.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from support.compare import compare_trees
from support.paths import PATH_MAX, deep_call, fsb
from support.run import build_image, mkerofs_env

pytestmark = pytest.mark.kernel

DEPTH = 40
NAME_LEN = 200
BIG = 3 * 4096 + 123            # blocks of data (and a tail), compressible


def run_read(*args, status: int = 0) -> subprocess.CompletedProcess:
    """mkerofs-read ARGS, which must exit with `status`."""
    r = subprocess.run([sys.executable, "-m", "mkerofs.cli.read", *map(str, args)],
                       env=mkerofs_env(), capture_output=True, text=True, errors="replace")
    assert r.returncode == status, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


def _level_name(i: int) -> bytes:
    return (b"%02d-" % i).ljust(NAME_LEN, b"abcdefghij"[i % 10:i % 10 + 1])


def _write(dfd: int, name: bytes, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_deep_long_tree(root) -> bytes:
    """The deep tree under `root`; returns the deepest directory's path relative to it.  Each
    level holds a small file and a big one; the deepest also a symlink, hard links (one to a
    file at the top), a file of zeros, and xattrs on files and directories at several depths."""
    dfd = os.open(fsb(root), os.O_RDONLY | os.O_DIRECTORY)
    _write(dfd, b"top", b"the top file\n" * 50)
    rel = []
    try:
        for i in range(DEPTH):
            name = _level_name(i)
            os.mkdir(name, 0o755, dir_fd=dfd)
            rel.append(name)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
            _write(dfd, b"small", b"level %d\n" % i)
            _write(dfd, b"big", (b"%02d: some text to compress, " % i) * (BIG // 30) + b"end")
            if i % 13 == 0:
                where = b"/proc/self/fd/%d/" % dfd
                os.setxattr(where + b"big", b"user.level", b"%d" % i, follow_symlinks=False)
                os.setxattr(where, b"user.dir", b"depth %d" % i)
        _write(dfd, b"zeros", bytes(2 * 4096))
        os.symlink(b"../" * 3 + b"small", b"up", dir_fd=dfd)
        os.link(b"big", b"big-link", src_dir_fd=dfd, dst_dir_fd=dfd)
        top_fd = os.open(fsb(root), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(b"top", b"top-link", src_dir_fd=top_fd, dst_dir_fd=dfd)
        finally:
            os.close(top_fd)
        where = b"/proc/self/fd/%d/" % dfd
        os.setxattr(where + b"small", b"user.deepest", b"\0binary\xff" * 10,
                    follow_symlinks=False)
    finally:
        os.close(dfd)
    return b"/".join(rel)


@pytest.fixture(scope="module")
def deep_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("deep") / "src"
    src.mkdir()
    deepest = make_deep_long_tree(src)
    assert len(deepest) > 8000 and len(deepest) > PATH_MAX
    return src, deepest


@pytest.mark.parametrize("opts", [(), ("-zlz4",), ("-zlz4hc,9", "-Eztailpacking",
                                                   "-Efragments")], ids=lambda o: " ".join(o) or "plain")
def test_deep_tree_mounts_equal(opts, deep_src, tmp_path, kernel):
    src, deepest = deep_src
    image = tmp_path / "image.erofs"
    build_image(image, src, "--verify", *opts)
    with kernel(image) as mnt:
        bottom = os.path.join(fsb(mnt), deepest)
        assert deep_call(os.readlink, bottom + b"/up") == b"../../../small"
        assert deep_call(os.stat, bottom + b"/big-link").st_nlink == 2
        assert deep_call(os.getxattr, bottom + b"/small", b"user.deepest",
                         follow_symlinks=False) == b"\0binary\xff" * 10
        compare_trees(src, mnt, xattrs=True)
    run_read("verify", image)


def test_deep_tree_compressed_by_workers(deep_src, tmp_path, kernel):
    """More than one worker process: each opens the files it compresses by their long paths."""
    src, _deepest = deep_src
    image = tmp_path / "image.erofs"
    build_image(image, src, "-zlz4", "--workers=2")
    with kernel(image) as mnt:
        compare_trees(src, mnt, xattrs=True)


def test_deep_tree_extracts(deep_src, tmp_path):
    src, deepest = deep_src
    image = tmp_path / "image.erofs"
    build_image(image, src, "-zlz4")
    dest = tmp_path / "out"
    r = run_read("extract", image, dest)
    assert "extracted" in r.stdout, r.stdout
    compare_trees(src, dest, xattrs=True)
    st = deep_call(os.lstat, os.path.join(fsb(dest), deepest, b"up"))
    assert stat.S_ISLNK(st.st_mode)
    run_read("compare", image, dest)


def test_deep_tree_verify_notices_a_change(deep_src, tmp_path):
    """mkerofs-read compare walks the deep source too: a byte changed at the bottom shows."""
    src, deepest = deep_src
    image = tmp_path / "image.erofs"
    build_image(image, src)
    dest = tmp_path / "out"
    run_read("extract", image, dest)
    fd = deep_call(os.open, os.path.join(fsb(dest), deepest, b"big"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"X", 5000)
    finally:
        os.close(fd)
    r = run_read("compare", image, dest, status=1)
    assert "big" in r.stdout + r.stderr

