"""The same tar gives the same image whether it is a file argument (read in place) or comes
through a pipe (spooled to $TMPDIR): the layout must not depend on where the bytes waited.

The tree that once made them differ: a sparse file ending in a hole, then a regular file.  A
sparse entry is spooled either way, but from a pipe the next file's bytes followed it in the
spool, in the spool block that holds the sparse file's last hole; SEEK_DATA then called that
hole data, and a chunk-based build stored a chunk of zeros where the in-place build (and the
directory build) leaves a hole.  Both images are mounted and compared with the tree."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mkerofs.reader import Image
from support.compare import compare_trees
from support.run import build_image, mkerofs_command, mkerofs_env
from support.tars import write_sparse

pytestmark = pytest.mark.kernel

FIXED = ["-T1000000000", "--mkfs-time", "-Uclear", "--quiet"]
MTIME = 1_600_000_000


@pytest.fixture(scope="module")
def sparse_then_file(tmp_path_factory):
    """(tree, tar): ./sp (70000 bytes, data only in its first block) and then ./next, in that
    order, archived by GNU tar (POSIX, --sparse)."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    base = tmp_path_factory.mktemp("pipe")
    tree = base / "tree"
    tree.mkdir()
    write_sparse(tree / "sp", 70_000, [(0, b"start")])
    (tree / "next").write_bytes(b"the file after the sparse one\n" * 20)
    for path in (tree / "sp", tree / "next", tree):
        os.utime(path, ns=(MTIME * 10**9, MTIME * 10**9))
    tar = base / "t.tar"
    # (the order on the command line is the order in the tar; "." without its contents)
    subprocess.run(["tar", "--format=posix", "--sparse", "--numeric-owner", "-C", str(tree),
                    "-cf", str(tar), "--no-recursion", ".", "./sp", "./next"], check=True)
    return tree, tar


def build_from_pipe(image, tar, *args) -> None:
    """mkerofs ARGS IMAGE with the tar on stdin through a real pipe (not a redirected file)."""
    with open(tar, "rb") as f:
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
    try:
        r = subprocess.run([*mkerofs_command(), *args, str(image)], stdin=cat.stdout,
                           env=mkerofs_env(), capture_output=True, text=True)
    finally:
        cat.stdout.close()
        cat.wait()
    assert r.returncode == 0, r.stderr


CHUNKED = [["--chunksize=8192"], ["-Ededupe"], ["-E^dedupe", "--chunksize=4096"]]


@pytest.mark.parametrize("options", [*CHUNKED, [], ["-zlz4"]],
                         ids=lambda o: " ".join(o) or "plain")
def test_pipe_and_file_give_the_same_image(tmp_path, kernel, sparse_then_file, options):
    tree, tar = sparse_then_file
    args = ["--tar=f", "-Enoinline_data", *options, *FIXED]
    from_file, from_pipe = tmp_path / "file.img", tmp_path / "pipe.img"
    build_image(from_file, tar, *args)
    build_from_pipe(from_pipe, tar, *args)
    assert from_file.read_bytes() == from_pipe.read_bytes()
    if options in CHUNKED:
        # the one kept is the in-place build's (the directory build's too): only the first
        # chunk of ./sp holds data, its last hole stays a hole
        with Image.open(from_pipe) as img:
            _, addrs = img.chunk_map(img.lookup(b"/sp"))
        assert addrs[0] is not None and not any(addrs[1:]), addrs
    for image in (from_file, from_pipe):
        with kernel(image) as mnt:
            compare_trees(tree, mnt)
