"""bench/bench.py's layer rows: the tree split into layers once (cached), rebuild rows giving
IMAGE and the layer images, the incremental row starting each run from a fresh copy of its
base; a tool that rejects the row is reported as "rejected"."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from support.bench import load_bench
from support.trees import write_file

bench = load_bench("bench_layers_under_test")


def test_layer_split_overlaps_and_whites_out():
    spread = [bench._layer_of(i) for i in range(400)]
    assert sum(0 in w for w in spread) == 200                   # half the files in the base
    assert all(w for w in spread)                               # every file somewhere
    assert any(0 in w and 1 in w for w in spread)               # replaced higher up
    assert any(0 in w and "w" in w for w in spread)             # whited out on top
    assert not any(w.count(0) > 1 for w in spread)


def test_rebuild_argv_has_every_layer():
    tool = bench.Tool(bench.MKFS, ["mkfs.erofs"], quiet_ok=True)
    layers = [Path(f"/l/L{n}.erofs") for n in (1, 2, 3, 4)]
    argv = bench.build_argv(tool, bench.OPTION_SETS["rebuild-clean"], [], Path("/o.img"), layers)
    assert argv[1:] == bench.COMMON_ARGS + ["--quiet", "--clean=data", "/o.img",
                                            *map(str, layers)]


def test_layers_made_once_and_rows_run(tmp_path):
    tree = tmp_path / "tree"
    for n in range(3):
        (tree / f"d{n}").mkdir(parents=True)
    for n in range(40):
        write_file(tree / f"d{n % 3}" / f"f{n}", 100 + n * 37, seed=n)
    os.symlink("d0/f0", tree / "link")
    stats = bench.scan_tree(tree)
    mkerofs = bench.Tool(bench.MKEROFS, [sys.executable, "-m", "mkerofs"], quiet_ok=True)
    layers = bench.build_layers(tree, stats, tmp_path, mkerofs)
    assert [p.name for p in layers.images] == ["L1.erofs", "L2.erofs", "L3.erofs", "L4.erofs"]
    stamp = layers.images[0].stat().st_mtime_ns
    assert bench.build_layers(tree, stats, tmp_path, mkerofs).images == layers.images
    assert layers.images[0].stat().st_mtime_ns == stamp      # cached, not rebuilt
    assert (layers.dirs[0] / "link").is_symlink()

    inputs = bench.Inputs(tree, bench.NO_STDIN, layers=layers)
    args = bench.parse_args(["--workdir", str(tmp_path), "--runs", "1"])
    out = bench.bench_set("rebuild", [mkerofs], inputs, args, None)[bench.MKEROFS]
    assert out.status == "ok" and out.runs[0].image_bytes > 0
    # the incremental row: rejected (non-zero exit) or timed, never a crash of the script
    out = bench.bench_set("incremental", [mkerofs], inputs, args, None)[bench.MKEROFS]
    assert out.status in ("ok", "rejected")
    if out.status == "rejected":
        assert "incremental" in out.error
