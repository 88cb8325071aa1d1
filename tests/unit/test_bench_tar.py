"""bench/bench.py's tar rows: the tree reaches both tools as one tar on stdin, IMAGE being the
only operand, and containerd's rows carry exactly its command line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.bench import BENCH, load_bench

bench = load_bench("bench_under_test")


def test_tar_rows_have_no_source_operand():
    tool = bench.Tool(bench.MKFS, ["mkfs.erofs"], quiet_ok=True)
    image = Path("/x/out.img")
    argv = bench.build_argv(tool, bench.OPTION_SETS["tar"], [], image, None)
    assert argv[-1] == str(image)
    assert argv[1:] == bench.COMMON_ARGS + ["--quiet", "--tar=f", str(image)]


def test_containerd_rows_are_its_command_line_alone():
    tool = bench.Tool(bench.MKFS, ["mkfs.erofs"], quiet_ok=True)
    for name, tail in (("tar-containerd", []), ("tar-containerd-sortnone", ["--sort=none"])):
        argv = bench.build_argv(tool, bench.OPTION_SETS[name], ["-d0"], Path("i"), None)
        assert argv == ["mkfs.erofs", "--tar=f", "--aufs", "--quiet", "-Enoinline_data",
                        "-U", bench.FIXED_UUID, *tail, "-d0", "i"]


def test_tar_is_made_once_posix_without_dot_prefix(tmp_path):
    if not shutil.which("tar"):
        pytest.skip("GNU tar not installed")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"x" * 5000)
    (tree / "top").write_text("top\n")
    stats = bench.scan_tree(tree)
    made = bench.build_tar(tree, stats, tmp_path)
    with tarfile.open(made) as t:
        names = t.getnames()
        assert all(m.pax_headers for m in t.getmembers())   # --format=posix
    assert names == ["d", "d/f", "top"]
    mtime = made.stat().st_mtime_ns
    assert bench.build_tar(tree, stats, tmp_path) == made and made.stat().st_mtime_ns == mtime
    (tree / "new").write_text("changed tree, new tar\n")
    assert bench.build_tar(tree, bench.scan_tree(tree), tmp_path) != made


def mkfs_erofs() -> str | None:
    local = bench.LOCAL_MKFS
    return local if os.access(local, os.X_OK) else shutil.which("mkfs.erofs")


@pytest.mark.parametrize("stdin", ["file", "pipe"])
def test_tar_rows_build_from_stdin(tmp_path, stdin):
    mkfs = mkfs_erofs()
    if not mkfs or not shutil.which("tar"):
        pytest.skip("mkfs.erofs or GNU tar not installed")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data").write_bytes(os.urandom(50000))
    (tree / "hello").write_text("hello\n" * 1000)
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, str(BENCH), "--tree", str(tree), "--workdir",
                        str(tmp_path / "work"), "--only", "mkfs.erofs", "--mkfs", mkfs,
                        "--sets", "tar,tar-containerd-sortnone", "--runs", "1",
                        "--tar-stdin", stdin, "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["tar"]["stdin"] == stdin
    for name in ("tar", "tar-containerd-sortnone"):
        result = data["sets"][name]["mkfs.erofs"]
        assert result["status"] == "ok", result["error"]
        # Both files' data is in the image: it came through stdin.
        assert result["median"]["image_bytes"] > 50000
