"""build(keep=...) hands the tree of inodes to the caller; the mkerofs program leaves it unfreed
at exit, and its image is the same as without."""
from __future__ import annotations

import subprocess
import sys

from mkerofs import BuildOptions, build
from tests.support.run import mkerofs_env
from tests.support.trees import write_files


def _tree(tmp_path):
    return write_files(tmp_path / "src", {"a": b"x" * 5000, "d/b": b"y" * 10, "d/e/c": b""})


def test_keep_receives_the_plan_of_every_inode(tmp_path):
    src = _tree(tmp_path)
    kept: list = []
    result = build(tmp_path / "img", src, BuildOptions(timestamp=0, quiet=True), keep=kept)
    assert len(kept) == 1
    plan = kept[0]
    assert len(plan.inodes) == result.inodes == 6         # root, a, d, d/b, d/e, d/e/c
    assert plan.root.nid == result.root_nid


def test_the_program_that_leaves_its_tree_unfreed_writes_the_same_image(tmp_path):
    """main() run as the program (argv None) keeps the tree; main(argv) in a library
    process does not: both give the same bytes, and the program exits 0."""
    src = _tree(tmp_path)
    args = ["-T0", "-Uclear", "--quiet"]
    script = ("import sys\nfrom mkerofs.cli import mkfs\nsys.argv[0] = 'mkerofs'\n"
              "status = mkfs.main()\nassert mkfs._UNFREED and mkfs._UNFREED[-1] is mkfs._UNFREED\n"
              "sys.exit(status)\n")
    r = subprocess.run([sys.executable, "-c", script, *args, str(tmp_path / "prog.img"),
                        str(src)], env=mkerofs_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from mkerofs.cli import mkfs
    assert mkfs.main([*args, str(tmp_path / "lib.img"), str(src)]) == 0
    assert mkfs._UNFREED is None
    assert (tmp_path / "prog.img").read_bytes() == (tmp_path / "lib.img").read_bytes()


def test_the_program_freezes_its_tree_before_the_collector_runs_again(tmp_path):
    """build turns the collector back on only if it was on: the program keeps it off around
    build() (the kept tree's objects would all be scanned by the next collection) and on
    again once they are frozen."""
    src = _tree(tmp_path)
    # (the command line imports build() when it runs one: the module's is the one it calls)
    script = ("import gc, sys\nfrom mkerofs.cli import mkfs\nsys.argv[0] = 'mkerofs'\n"
              "import mkerofs.writer.build as pipeline\n"
              "seen = []\nbuild = pipeline.build\n"
              "def watched(*a, **k):\n    seen.append(gc.isenabled())\n"
              "    result = build(*a, **k)\n    seen.append(gc.isenabled())\n    return result\n"
              "pipeline.build = watched\nstatus = mkfs.main()\n"
              "assert seen == [False, False], seen\n"
              "assert gc.isenabled() and gc.get_freeze_count() > 0\nsys.exit(status)\n")
    r = subprocess.run([sys.executable, "-c", script, "-T0", "--quiet", str(tmp_path / "p.img"),
                        str(src)], env=mkerofs_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
