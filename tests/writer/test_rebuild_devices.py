"""Rebuild mode over layers with an extra device of their own (tar index, --blobdev), and
--verify in rebuild mode, without a kernel (tests/kernel/test_kernel_rebuild_devices.py mounts
the same kinds of images).

* The merged image's slot for such a layer is its device (--device given or not): tag = the
  layer's UUID (their own slots have none), blocks = the device's; a tar appended to its index
  makes the layer file the device (blocks: the whole file).
* --clean=data and --verify need each separate device: without --device the build fails
  naming the layer; a wrong number of --device too; a source with two devices is refused.
* Layers with and without devices mix (mkfs.erofs 1.9.3 refuses that).
* --verify passes on good builds of every mode, and fails when a file points at the wrong
  blocks (the build's chunk map shifted on purpose): it reads the image back through its
  device table and each file as its layer reads it.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mkerofs import BuildOptions, build
from mkerofs.errors import BuildError
from mkerofs.reader import Image
from mkerofs.writer import layers as layers_mod
from mkerofs.writer.chunks import LayerChunks
from mkerofs.writer.walk import DataRef
from mkerofs.writer.options import RebuildOptions, TimeInherit
from support.layers import make_layer_trees
from support.run import assert_clean_failure, run_mkerofs

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("rebuild-devices")
    for tree in make_layer_trees(work):
        name = tree.name
        tar = work / f"{name}.tar"
        subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix",
                        "--numeric-owner", "-C", tree, "-cf", tar, "."], check=True)
        run_mkerofs(*FIXED, "--tar=i", work / f"ti_{name}.erofs", tar)
        (work / f"ap_{name}.erofs").write_bytes((work / f"ti_{name}.erofs").read_bytes() +
                                                tar.read_bytes())
        run_mkerofs(*FIXED, "-Enoinline_data", "--chunksize=4096",
                    f"--blobdev={work / f'{name}.blob'}", work / f"bl_{name}.erofs", tree)
        run_mkerofs(*FIXED, "-Enoinline_data", work / f"ni_{name}.erofs", tree)
    return work


def paths(work: Path, kind: str) -> list[Path]:
    suffix = {"tar": ".tar", "blob": ".blob"}.get(kind)
    if suffix:
        return [work / f"L{i}{suffix}" for i in (1, 2, 3)]
    return [work / f"{kind}_L{i}.erofs" for i in (1, 2, 3)]


def rebuild(out: Path, sources: list[Path], devices=(), clean=None, verify=True):
    return build(out, sources, BuildOptions(
        rebuild=RebuildOptions(clean=clean, ovlfs_strip=True,
                               devices=tuple(map(str, devices))),
        timestamp=10**9, time_inherit=TimeInherit.SOURCE, verify=verify, quiet=True,
        uuid=bytes(range(16))))


def contents(image: Path, devices=None) -> dict[str, bytes]:
    with Image.open(image, devices=devices) as img:
        return {p.decode(): img.read(i) for p, i in img.walk() if i.is_reg()}


@pytest.mark.parametrize("kind,device", [("ti", "tar"), ("bl", "blob"), ("ap", None)])
@pytest.mark.parametrize("clean", [None, "data", "rvsp"])
def test_verified_builds(work, tmp_path, kind, device, clean):
    devices = paths(work, device) if device else []
    out = tmp_path / "o.erofs"
    rebuild(out, paths(work, kind), devices, clean)
    with Image.open(out) as img:
        slots = img.device_table
    # (what the flat layers give, copied: the same merge, another source format)
    flat = tmp_path / "flat.erofs"
    rebuild(flat, paths(work, "ni"), clean="data", verify=False)
    want = contents(flat)
    assert want["/b/x"] == b"x new\n" and len(want["/big"]) == 10000
    if clean is not None:
        assert slots == []
        got = contents(out)
        if clean == "rvsp":
            want = {p: bytes(len(v)) for p, v in want.items()}
        assert got == want
        return
    sources = paths(work, kind)
    for slot, layer in zip(slots, sources):
        with Image.open(layer) as img:
            own = img.device_table[0]
            assert slot.tag == img.superblock.uuid.hex().encode()
            assert slot.blocks == (own.uniaddr + own.blocks if kind == "ap" else own.blocks)
    assert contents(out, devices or sources) == want


def test_index_mode_needs_no_device(work, tmp_path):
    """Pointing into the devices reads only the layers' metadata."""
    out = tmp_path / "o.erofs"
    rebuild(out, paths(work, "ti"), verify=False)
    with_devices = tmp_path / "d.erofs"
    rebuild(with_devices, paths(work, "ti"), paths(work, "tar"), verify=False)
    assert out.read_bytes() == with_devices.read_bytes()


def test_mixed_with_plain_layers(work, tmp_path):
    sources = [paths(work, "bl")[0], paths(work, "ni")[1], paths(work, "bl")[2]]
    blobs = paths(work, "blob")
    rebuild(tmp_path / "o.erofs", sources, [blobs[0], blobs[2]])
    with Image.open(tmp_path / "o.erofs") as img:
        assert [s.blocks for s in img.device_table][1] == Image.open(sources[1]).blocks


@pytest.mark.parametrize("case", ["clean", "verify", "count", "two-devices", "not-rebuild"])
def test_refusals(work, tmp_path, case):
    out = tmp_path / "o.erofs"
    ti = paths(work, "ti")
    if case == "clean":
        args, mentions = ["--clean=data", out, *ti], ["ti_L1.erofs", "--device"]
    elif case == "verify":
        args, mentions = ["--verify", out, *ti], ["ti_L1.erofs", "--device", "--verify"]
    elif case == "count":
        args, mentions = [f"--device={work / 'L1.tar'}", out, *ti], ["1 --device", "3"]
    elif case == "two-devices":
        two = tmp_path / "two.erofs"
        run_mkerofs(*FIXED, two, *paths(work, "ni")[:2])
        args, mentions = [out, two, ti[0]], ["two.erofs", "2 extra devices"]
    else:
        args, mentions = [f"--device={work / 'L1.tar'}", "--tar=f", out, work / "L1.tar"], \
            ["--device"]
    r = run_mkerofs(*FIXED, *args, check=False)
    assert_clean_failure(r, mentions=mentions, image=out)


def test_verify_catches_a_file_pointing_at_the_wrong_blocks(work, tmp_path, monkeypatch):
    """The index of one file shifted by a block: the build itself cannot tell, --verify must
    (it reads the image through the device table, the layer through its own metadata)."""
    real = layers_mod._indexed_ref

    def shifted(layer, inode, block_size):
        ref = real(layer, inode, block_size)
        if ref is not None and inode.size == 10000:             # /big
            chunks = ref.layer
            if chunks.blkaddrs is None:     # (one chunk: its address in the offset)
                return DataRef(None, ref.offset + block_size, layer=chunks)
            return DataRef(None, layer=LayerChunks(chunks.device_id, chunks.chunkbits,
                                                   tuple(a + 1 for a in chunks.blkaddrs)))
        return ref

    monkeypatch.setattr(layers_mod, "_indexed_ref", shifted)
    out = tmp_path / "o.erofs"
    with pytest.raises(BuildError, match=r"(?s)verification failed.*big"):
        rebuild(out, paths(work, "bl"), paths(work, "blob"))
    rebuild(tmp_path / "plain.erofs", paths(work, "bl"), paths(work, "blob"), clean="data")
