"""bench/bench.py's million rows: a generated tree of many small files, the same every time,
built by both tools, with peak RSS divided by its inodes."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module    # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load("bench")
generator = load("make_million_tree")


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_tree_is_the_same_every_time(tmp_path):
    generator.make_tree(tmp_path / "a", 3, 40)
    generator.make_tree(tmp_path / "b", 3, 40)
    a = contents(tmp_path / "a")
    assert a == contents(tmp_path / "b")
    assert len(a) == 120 and sorted(os.listdir(tmp_path / "a")) == ["d0000", "d0001", "d0002"]
    sizes = {len(v) for v in a.values()}
    assert max(sizes) <= generator.MAX_SIZE and len(sizes) > 20


def test_bytes_per_inode_is_peak_rss_over_inodes():
    def outcome(kib: int):
        return bench.Outcome(runs=[bench.Run(wall_s=1.0, cpu_s=1.0, maxrss_kib=kib,
                                             exit_code=0)])
    outcomes = {bench.MKEROFS: outcome(2000), bench.MKFS: outcome(1000)}
    assert bench.bytes_per_inode(outcomes[bench.MKEROFS], 1024) == 2000.0
    row = bench.format_per_inode(outcomes, 1024)
    assert row.split() == ["bytes", "per", "inode", "2000", "1000", "2.00x"]


def test_million_rows_build_the_generated_tree(tmp_path):
    local = bench.LOCAL_MKFS
    mkfs = local if os.access(local, os.X_OK) else shutil.which("mkfs.erofs")
    if not mkfs:
        pytest.skip("mkfs.erofs not installed")
    work = tmp_path / "work"
    # a small tree where bench keeps the real one, so it is not made (1M files) here
    generator.make_tree(bench.million_tree_path(work), 2, 30)
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, str(BENCH_DIR / "bench.py"), "--tree", str(BENCH_DIR),
                        "--workdir", str(work), "--only", "mkfs.erofs", "--mkfs", mkfs,
                        "--sets", "million", "--runs", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "bytes per inode" in r.stdout
    data = json.loads(out.read_text())
    assert data["million"]["inodes"] == 2 + 60 + 1
    result = data["sets"]["million"]["mkfs.erofs"]
    assert result["status"] == "ok", result["error"]
    assert result["bytes_per_inode"] == result["median"]["maxrss_kib"] * 1024 / 63
    # the generated tree, not --tree (bench/, over 50 KiB of scripts): 60 files of 100 bytes
    # on average
    assert result["median"]["image_bytes"] < 40 * 1024
