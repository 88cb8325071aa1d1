"""Both directions: an image exported by `mkerofs-read tar` and built again from that tar with the
same options is byte for byte the same image, whether the first one came from a directory or
from a tar, and whether the tar is read from a file or from stdin."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.run import mkerofs_env, run_mkerofs
from support.trees import make_full_tree

OPTION_SETS = [
    [],
    ["--mkfs-time"],
    ["-zlz4hc", "--mkfs-time"],
    ["-zlz4hc", "-Eztailpacking", "-Efragments"],
    ["-zzstd", "-b1024", "-Ededupe", "--mkfs-time"],
    ["-Enoinline_data", "-b2048"],
]


def _export(image, tar):
    subprocess.run([sys.executable, "-m", "mkerofs.cli.read", "tar", str(image), "-o", str(tar)],
                   check=True, env=mkerofs_env(), capture_output=True)


def _no_sockets(root):
    # a tar cannot carry a socket (mkerofs-read tar leaves them out with a warning)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.exists(path) and not os.path.islink(path) and \
                    (os.lstat(path).st_mode & 0o170000) == 0o140000:
                os.unlink(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip") / "src"
    make_full_tree(root, xattrs=True)
    _no_sockets(root)
    subprocess.run(["setfacl", "-m", "u:4242:rw,g:4243:r", str(root / "files" / "empty")],
                   check=False)
    return root


@pytest.mark.parametrize("opts", OPTION_SETS, ids=[" ".join(o) or "plain" for o in OPTION_SETS])
def test_exported_tar_builds_the_same_image(tree, tmp_path, opts):
    fixed = ["-T1700000000", "-Uclear", "--quiet", *opts]
    from_dir = tmp_path / "dir.erofs"
    run_mkerofs(*fixed, from_dir, tree)
    exported = tmp_path / "dir.tar"
    _export(from_dir, exported)

    from_tar = tmp_path / "tar.erofs"
    run_mkerofs("--tar=f", *fixed, from_tar, exported)
    assert from_tar.read_bytes() == from_dir.read_bytes()

    again = tmp_path / "again.tar"
    _export(from_tar, again)
    from_stdin = tmp_path / "stdin.erofs"
    run_mkerofs("--tar=f", *fixed, from_stdin, input=again.read_bytes())
    assert from_stdin.read_bytes() == from_tar.read_bytes()
