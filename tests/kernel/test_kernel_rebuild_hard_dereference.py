"""Rebuild mode with --hard-dereference: each name of a hard-linked layer file becomes an inode
of its own, and every one of them must read the file's bytes.  (Until the fix, the second name
of a layer file read as zeros: the copy made for it was unknown to the pass that finds a
file's bytes in its layer.)  The kernel mounts the merged image; each file must equal the
source tree's, with one link.  Layers of every data layout: flat, inline tails, lz4, chunks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.mounts import kernel_mount, mount_with_devices
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
