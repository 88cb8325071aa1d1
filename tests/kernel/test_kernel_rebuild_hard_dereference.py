"""Rebuild mode with --hard-dereference: each name of a hard-linked layer file becomes an inode
of its own, and every one of them must read the file's bytes.  (Until the fix, the second name
of a layer file read as zeros: the copy made for it was unknown to the pass that finds a
file's bytes in its layer.)  The kernel mounts the merged image; each file must equal the
source tree's, with one link.  Layers of every data layout: flat, inline tails, lz4, chunks.
mkfs.erofs 1.9.3 ignores --hard-dereference in rebuild mode (hard links stay, link count 2: a
README difference); the kernel's view of its image differs from ours in the link counts only."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.layers import differences, snapshot
from support.mounts import kernel_mount, mount_with_devices
from support.reference import reference_problem
from support.run import run_mkerofs

pytestmark = [pytest.mark.kernel, pytest.mark.loop]

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet")
LAYOUTS = {"flat": ("-Enoinline_data",), "inline": (), "lz4": ("-zlz4",),
           "chunks": ("--chunksize=4096",)}


def _tree(top: Path) -> dict[str, bytes]:
    """Small (inline-sized) and multi-block files, each with two or three names."""
    top.mkdir()
    (top / "d").mkdir()
    files = {"small": b"hello world\n", "big": os.urandom(70000) + b"tail",
             "blocks": os.urandom(8192)}
    for name, data in files.items():
        (top / name).write_bytes(data)
        os.link(top / name, top / "d" / f"{name}2")
    os.link(top / "big", top / "big3")
    return {"/small": files["small"], "/d/small2": files["small"], "/big": files["big"],
            "/d/big2": files["big"], "/big3": files["big"], "/blocks": files["blocks"],
            "/d/blocks2": files["blocks"]}


def _check(mnt: Path, want: dict[str, bytes]) -> None:
    for rel, data in want.items():
        path = mnt / rel.lstrip("/")
        assert path.read_bytes() == data, rel
        assert path.stat().st_nlink == 1, rel


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("clean", [(), ("--clean=data",)], ids=["index", "clean"])
def test_every_name_reads_the_file(tmp_path, layout, clean):
    want = _tree(tmp_path / "src")
    layer = tmp_path / "layer.erofs"
    run_mkerofs(*FIXED, *LAYOUTS[layout], layer, tmp_path / "src")
    out = tmp_path / "out.erofs"
    run_mkerofs(*FIXED, "--hard-dereference", *clean, out, layer)
    if clean:
        with kernel_mount(out) as mnt:
            _check(mnt, want)
    else:
        with mount_with_devices(out, [layer]) as mnt:
            _check(mnt, want)


def test_verify_reads_every_name(tmp_path):
    _tree(tmp_path / "src")
    layer = tmp_path / "layer.erofs"
    run_mkerofs(*FIXED, "-zlz4", layer, tmp_path / "src")
    run_mkerofs(*FIXED, "--hard-dereference", "--verify", tmp_path / "out.erofs", layer)


def test_like_mkfs_erofs_193_but_for_the_link_counts(tmp_path):
    ref, why = reference_problem()
    if ref is None:
        pytest.skip(why)
    want = _tree(tmp_path / "src")
    layer = tmp_path / "layer.erofs"
    run_mkerofs(*FIXED, "-Enoinline_data", layer, tmp_path / "src")
    theirs, ours = tmp_path / "theirs.erofs", tmp_path / "ours.erofs"
    r = subprocess.run([ref, "--quiet", "-T1000000000", "--mkfs-time", "--hard-dereference",
                        "--clean=data", str(theirs), str(layer)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    run_mkerofs(*FIXED, "--hard-dereference", "--clean=data", ours, layer)
    views = []
    for image in (theirs, ours):
        with kernel_mount(image) as mnt:
            views.append(snapshot(mnt, root=False))    # (1.9.3: its own root, README)
    assert {views[0][p][5] for p in want} == {2, 3}          # 1.9.3: still hard links
    assert {views[1][p][5] for p in want} == {1}
    strip = [{p: v[:5] + v[6:] for p, v in view.items()} for view in views]
    assert differences(strip[0], strip[1]) == []
