"""mkerofs --verify: the image is read back (no mount) and compared with the source as the
build options say it should be; a mismatch fails the build and keeps the image."""
from __future__ import annotations

import os

import pytest

from support.run import assert_clean_failure, run_mkerofs
from support.trees import copy_tree, make_full_tree
from mkerofs import BuildError, BuildOptions
from mkerofs.writer.verify import verify_build


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify") / "src"
    make_full_tree(root, xattrs=True, big_ids=False)
    return root


@pytest.mark.parametrize("opts", [
    [],
    ["-zlz4hc", "-C65536", "-Eztailpacking"],
    ["-zzstd", "-Efragments", "-Ededupe"],
    ["-zlzma", "-Eall-fragments", "-b1024"],
    ["--all-root", "-T1000", "--exclude-regex=sym"],
    ["--uid-offset=7", "--gid-offset=9", "--ignore-mtime", "-x-1"],
    ["--hard-dereference", "-Eforce-inode-compact"],
])
def test_verify_passes_on_good_builds(opts, tree, tmp_path):
    image = tmp_path / "v.erofs"
    r = run_mkerofs(*opts, "--verify", image, tree, check=False)
    assert r.returncode == 0, r.stderr
    assert image.exists()


def _file_with_data(tree) -> bytes:
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) > 100:
                return os.fsencode(path)
    raise AssertionError("no regular file with data")


def test_verify_reports_a_changed_source(tree, tmp_path):
    src = tmp_path / "src"
    copy_tree(tree, src)            # (shutil.copytree would block opening the tree's fifo)
    image = tmp_path / "v.erofs"
    options = BuildOptions(compressor="lz4")
    run_mkerofs("-zlz4", image, src)
    victim = _file_with_data(src)
    with open(victim, "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BuildError) as err:
        verify_build(str(image), os.fsencode(src), options)
    assert os.path.basename(victim).decode() in str(err.value)
    assert "verification failed" in str(err.value)


def test_verify_reports_a_damaged_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    marker = b"MKEROFS-VERIFY-MARKER" * 500          # flat plain data, easy to find
    (src / "f").write_bytes(marker)
    image = tmp_path / "v.erofs"
    run_mkerofs("-Enosbcrc", image, src)
    raw = bytearray(image.read_bytes())
    at = raw.index(marker[:4096])      # the first block (the tail is stored inline)
    raw[at + 100] ^= 0x01
    image.write_bytes(bytes(raw))
    with pytest.raises(BuildError) as err:
        verify_build(str(image), os.fsencode(src), BuildOptions(sb_checksum=False))
    assert "/f" in str(err.value)


def test_verify_failure_from_the_command_line(tmp_path):
    """A source file that changes in a way the build cannot see (same size, same mtime) is
    caught by --verify only if it changes after its data was copied: simulate by verifying
    against another tree with the API, and check the CLI's exit status on an unreadable
    image path instead."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 5000)
    image = tmp_path / "v.erofs"
    run_mkerofs("--verify", image, src)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a").write_bytes(b"b" * 5000)
    with pytest.raises(BuildError):
        verify_build(str(image), os.fsencode(other), BuildOptions())
    r = run_mkerofs("--verify", tmp_path / "missing-dir" / "v.erofs", src, check=False)
    assert_clean_failure(r, mentions=["missing-dir"])
