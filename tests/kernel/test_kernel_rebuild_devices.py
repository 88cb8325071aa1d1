"""Rebuild mode over layers that have an extra device of their own, with Linux as the oracle:
tar index layers (``--tar=i``: the tar is device 1, a file of its own or appended to the
image) and ``--blobdev`` layers (chunks in a blob).  The layer trees are support/layers.py's;
their overlayfs view (the layers built flat, mounted, stacked) is what the merged image must
show with --ovlfs-strip.

* Index mode, devices of their own: the merged image's slot for each layer is that device
  (tag: the device's, else the layer's UUID; blocks: the device's), as mkfs.erofs 1.9.3 has
  it; mounted with ``-o device=`` each device (loop devices), and flat (the image, then the
  devices appended).  1.9.3's image of the same tar index layers has the same slots and shows
  the same tree.
* Index mode, tars appended to their index: the layer file is the device (mounted with
  ``-o device=`` each layer file, and flat).
* --clean=data with ``--device`` for each layer: the image alone.
* --verify passes on each of these builds.
"""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from mkerofs.reader import Image
from support.layers import differences, make_layer_trees, snapshot
from support.mounts import kernel_mount, mount_with_devices, overlay_mount
from support.reference import reference_problem
from support.run import run_mkerofs

pytestmark = [pytest.mark.kernel, pytest.mark.loop]

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("rebuild-devices")
    trees = make_layer_trees(work)
    found: dict = {"work": work, "ni": [], "tar": [], "ti": [], "ap": [], "bl": [], "blob": []}
    for tree in trees:
        name = tree.name
        tar = work / f"{name}.tar"
        subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix",
                        "--numeric-owner", "-C", tree, "-cf", tar, "."], check=True)
        ni, ti, ap = work / f"ni_{name}.erofs", work / f"ti_{name}.erofs", work / f"ap_{name}.erofs"
        bl, blob = work / f"bl_{name}.erofs", work / f"bl_{name}.blob"
        run_mkerofs(*FIXED, "-Enoinline_data", ni, tree)
        run_mkerofs(*FIXED, "--tar=i", ti, tar)
        ap.write_bytes(ti.read_bytes() + tar.read_bytes())
        run_mkerofs(*FIXED, "-Enoinline_data", "--chunksize=4096", f"--blobdev={blob}", bl, tree)
        for key, path in (("ni", ni), ("tar", tar), ("ti", ti), ("ap", ap), ("bl", bl),
                          ("blob", blob)):
            found[key].append(path)
    with contextlib.ExitStack() as mounts:
        lowers = [mounts.enter_context(kernel_mount(i)) for i in found["ni"]]
        view = snapshot(mounts.enter_context(overlay_mount(*reversed(lowers))))
    # (overlayfs shows the lower nlink of /hl1, 2; the merged image counts its names: 1)
    mode, uid, gid, mtime, content, _nlink, xattrs = view["/hl1"]
    view["/hl1"] = (mode, uid, gid, mtime, content, 1, xattrs)
    found["view"] = view
    return found


def _rebuild(stack: dict, name: str, layers: list[Path], *opts) -> Path:
    out = stack["work"] / name
    run_mkerofs(*FIXED, "--ovlfs-strip", "--verify", *opts, out, *layers)
    return out


def _flat(image: Path, devices: list[Path]) -> Path:
    """The image and its devices in one file, each device cut (or padded) to its slot's
    blocks: a tar is usually longer (its records are padded), and the next device must start
    at its uniaddr."""
    with Image.open(image) as img:
        sizes = [slot.blocks * img.block_size for slot in img.device_table]
    flat = image.with_suffix(".flat")
    flat.write_bytes(image.read_bytes() + b"".join(
        p.read_bytes()[:size].ljust(size, b"\0") for p, size in zip(devices, sizes)))
    return flat


def _slots(image: Path) -> list[tuple[bytes, int]]:
    with Image.open(image) as img:
        return [(slot.tag, slot.blocks) for slot in img.device_table]


@pytest.mark.parametrize("kind,device", [("ti", "tar"), ("bl", "blob")])
def test_index_mode_points_into_the_layers_devices(stack, kind, device):
    layers, devices = stack[kind], stack[device]
    args = [f"--device={d}" for d in devices]
    out = _rebuild(stack, f"idx-{kind}.erofs", layers, *args)
    want = []
    for layer in layers:            # (their own slots have no tag: the UUID stands for it)
        with Image.open(layer) as img:
            [(tag, blocks)] = [(s.tag, s.blocks) for s in img.device_table]
            assert tag == b""
            want.append((img.superblock.uuid.hex().encode(), blocks))
    assert _slots(out) == want
    with mount_with_devices(out, devices) as mnt:
        assert differences(stack["view"], snapshot(mnt)) == []
    with kernel_mount(_flat(out, devices)) as mnt:
        assert differences(stack["view"], snapshot(mnt)) == []


def test_index_mode_appended_tars_are_one_file(stack):
    layers = stack["ap"]
    out = _rebuild(stack, "idx-ap.erofs", layers)
    want = []
    for layer in layers:
        with Image.open(layer) as img:
            want.append(img.device_table[0].uniaddr + img.device_table[0].blocks)
    assert [blocks for _tag, blocks in _slots(out)] == want
    with mount_with_devices(out, layers) as mnt:
        assert differences(stack["view"], snapshot(mnt)) == []
    with kernel_mount(_flat(out, layers)) as mnt:
        assert differences(stack["view"], snapshot(mnt)) == []


@pytest.mark.parametrize("kind,device", [("ti", "tar"), ("bl", "blob"), ("ap", None)])
def test_clean_data_alone(stack, kind, device):
    args = [f"--device={d}" for d in stack[device]] if device else []
    out = _rebuild(stack, f"clean-{kind}.erofs", stack[kind], "--clean=data", *args)
    assert _slots(out) == []
    with kernel_mount(out) as mnt:
        assert differences(stack["view"], snapshot(mnt)) == []


def test_tar_index_layers_like_mkfs_erofs_193(stack):
    ref, why = reference_problem()
    if ref is None:
        pytest.skip(why)
    theirs = stack["work"] / "ref-ti.erofs"
    r = subprocess.run([ref, "--quiet", "-T1000000000", "--mkfs-time", "--ovlfs-strip",
                        str(theirs), *map(str, stack["ti"])], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    ours = _rebuild(stack, "ours-ti.erofs", stack["ti"], *[f"--device={d}" for d in stack["tar"]])
    assert _slots(ours) == _slots(theirs)
    views = []
    for image in (theirs, ours):
        with mount_with_devices(image, stack["tar"]) as mnt:
            views.append({p: v for p, v in snapshot(mnt, root=False).items()
                          if not p.startswith("/x/")})
    # (1.9.3 treats opaque "x" as opaque and keeps the xwhiteout: /x differs by design)
    assert differences(views[0], views[1]) == []
