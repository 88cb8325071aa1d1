"""Rebuild mode without a kernel: what the merged image holds, read back with mkerofs.reader
(the kernel's view is tests/kernel/test_kernel_rebuild.py).

* Blob index: one device slot per source in command-line order (tag = the source's UUID in
  hex, blocks = its block count, uniaddr cumulative after the image), files chunk-based with
  8-byte indexes naming their source's device; inline and compressed files copied instead.
* --clean=data: no device table, the data copied (and compressed with -z); --clean=rvsp: zeros.
* The overlay rules: whiteouts, opaque "y" (and "x", which is not opaque), a directory over a
  file and a file over a directory, with and without --ovlfs-strip; hard links.
* Refusals (no traceback, no image left): --clean=0, a source that is no EROFS image, mixed
  block sizes when pointing into the sources, the image as its own source.
* --vmdk-desc: the descriptor's text.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkerofs import BuildOptions, build
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image
from mkerofs.writer.options import RebuildOptions, TimeInherit
from support.layers import make_layer_trees
from support.run import assert_clean_failure, run_mkerofs

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet")
UUIDS = ["00000001-0000-0000-0000-000000000000", "00000002-0000-0000-0000-000000000000",
         "00000003-0000-0000-0000-000000000000"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("rebuild")
    trees = make_layer_trees(work)
    for kind, opts in (("ni", ("-Enoinline_data",)), ("in", ()), ("z", ("-zlz4",)),
                       ("b1k", ("-b1024", "-Enoinline_data")), ("ch", ("--chunksize=4096",))):
        for tree, uuid in zip(trees, UUIDS):
            run_mkerofs(*FIXED, *opts, "-U", uuid, work / f"{kind}_{tree.name}.erofs", tree)
    return work


def layers(work: Path, kind: str) -> list[Path]:
    return [work / f"{kind}_L{i}.erofs" for i in (1, 2, 3)]


def rebuild(work: Path, name: str, sources: list[Path], clean=None, strip=True, **kw) -> Path:
    out = work / name
    build(out, sources, BuildOptions(rebuild=RebuildOptions(clean=clean, ovlfs_strip=strip),
                                     timestamp=10**9, time_inherit=TimeInherit.SOURCE, **kw))
    return out


def files(img: Image) -> dict[str, bytes | None]:
    return {os.fsdecode(p): (img.read(i) if i.is_reg() else None) for p, i in img.walk()}


def expected_files(work: Path) -> dict[str, bytes]:
    """The merged view's regular files (what overlayfs shows; see support/layers.py)."""
    l1, l2, l3 = (work / n for n in ("L1", "L2", "L3"))
    return {"/a/f1": b"f1 new\n", "/a/sub/deep": b"deep\n", "/b/x": b"x new\n",
            "/c/inner": b"inner\n", "/hl1": b"hard\n", "/hl2": b"not a link any more\n",
            "/big": (l1 / "big").read_bytes(), "/huge": (l1 / "huge").read_bytes(),
            "/text": (l1 / "text").read_bytes(),
            "/big2": (l2 / "big2").read_bytes(), "/keep": b"k\n", "/opq/new1": b"n1\n",
            "/newdir/n": b"n\n", "/x/b": b"x/b", "/x/new": b"new\n", "/y/h": b"h\n"}


def regular(found: dict) -> dict:
    return {p: v for p, v in found.items() if v is not None}


def test_index_mode_device_table(work):
    sources = layers(work, "ni")
    out = rebuild(work, "index.erofs", sources)
    with Image.open(out, devices=sources) as img:
        table = img.device_table
        assert [s.tag for s in table] == [u.replace("-", "").encode() for u in UUIDS]
        blocks = [Image.open(s).blocks for s in sources]
        assert [s.blocks for s in table] == blocks
        assert [s.uniaddr for s in table] == [img.blocks, img.blocks + blocks[0],
                                              img.blocks + blocks[0] + blocks[1]]
        assert regular(files(img)) == expected_files(work)
        for path, device in (("/big", 1), ("/big2", 2), ("/b/x", 3), ("/huge", 1)):
            inode = img.lookup(path)
            assert inode.datalayout == fmt.EROFS_INODE_CHUNK_BASED
            assert inode.startblk & fmt.EROFS_CHUNK_FORMAT_INDEXES
            assert {e.device for e in img.extents(inode)} == {device}
        assert img.lookup("/hl1").nid != img.lookup("/hl2").nid
    # the same bytes appended to the image (flatdev)
    flat = work / "index-flat.erofs"
    flat.write_bytes(b"".join(p.read_bytes() for p in [out, *sources]))
    with Image.open(flat) as img:
        assert regular(files(img)) == expected_files(work)


@pytest.mark.parametrize("kind", ["in", "z"])
def test_index_mode_copies_what_it_cannot_point_at(work, kind):
    sources = layers(work, kind)
    out = rebuild(work, f"index-{kind}.erofs", sources)
    with Image.open(out, devices=sources) as img:
        assert regular(files(img)) == expected_files(work)
        big = img.lookup("/big")
        if kind == "z":             # copied, flat: this build has no -z
            assert big.datalayout in (fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_INODE_FLAT_INLINE)
        else:                       # its blocks are in the layer, its tail was inline
            assert all(e.device == 0 for e in img.extents(big))


def test_index_mode_keeps_chunk_based_layers_chunks(work):
    sources = layers(work, "ch")
    out = rebuild(work, "index-ch.erofs", sources)
    with Image.open(out, devices=sources) as img, Image.open(sources[0]) as l1:
        assert regular(files(img)) == expected_files(work)
        ours, theirs = img.lookup("/huge"), l1.lookup("/huge")
        assert theirs.datalayout == ours.datalayout == fmt.EROFS_INODE_CHUNK_BASED
        assert [(e.logical, e.physical) for e in img.extents(ours)] == \
            [(e.logical, e.physical) for e in l1.extents(theirs)]


@pytest.mark.parametrize("opts", [{}, {"compressor": "lz4hc"}], ids=["plain", "lz4hc"])
def test_clean_data_is_self_contained(work, opts):
    mixed = [layers(work, "z")[0], layers(work, "in")[1], layers(work, "ni")[2]]
    out = rebuild(work, f"clean-{len(opts)}.erofs", mixed, clean="data", **opts)
    with Image.open(out) as img:
        assert img.device_table == []
        assert regular(files(img)) == expected_files(work)
        assert img.lookup("/text").compressed == bool(opts)


def test_clean_rvsp_reads_zeros(work):
    out = rebuild(work, "rvsp.erofs", layers(work, "ni"), clean="rvsp")
    with Image.open(out) as img:
        assert img.device_table == []
        got = regular(files(img))
        assert got == {p: bytes(len(v)) for p, v in expected_files(work).items()}


def test_without_strip_whiteouts_and_marks_stay(work):
    out = rebuild(work, "kept.erofs", layers(work, "ni"), strip=False)
    with Image.open(out, devices=layers(work, "ni")) as img:
        for path in ("/gone", "/dir_to_del", "/a/nothere", "/a/f2"):
            inode = img.lookup(path)
            assert inode.is_chr() and (inode.major, inode.minor) == (0, 0), path
        assert (b"trusted.overlay.opaque", b"y") in img.xattrs(img.lookup("/opq"))
        assert (b"trusted.overlay.origin", b"") in img.xattrs(img.root)
        assert sorted(n for n, _nid, _t in img.listdir(img.lookup("/opq"))) == [b"new1"]
        # the xwhiteout became a whiteout device; "x" is not opaque: x/b stays
        assert img.lookup("/x/a").is_chr()
        assert img.read(img.lookup("/x/b")) == b"x/b"


def test_strip_applies_and_removes_marks(work):
    out = rebuild(work, "strip.erofs", layers(work, "ni"))
    with Image.open(out, devices=layers(work, "ni")) as img:
        found = files(img)
        for path in ("/gone", "/dir_to_del", "/dir_to_del/y", "/a/nothere", "/a/f2",
                     "/opq/old1", "/x/a", "/y/g", "/c"):
            assert path not in found or path == "/c", path
        assert img.lookup("/c").is_dir()
        for path, inode in img.walk():
            names = [n for n, _v in img.xattrs(inode)]
            assert not any(n.startswith(b"trusted.overlay.") for n in names), path
        assert dict(img.xattrs(img.lookup("/keep"))) == {b"user.k": b"1", b"trusted.t": b"2"}
        root = img.root
        top = os.lstat(work / "L3")
        assert (root.mode, root.mtime) == (top.st_mode, top.st_mtime_ns // 10**9)


def test_hard_links_stay_links(tmp_path, work):
    (tmp_path / "t").mkdir()
    (tmp_path / "t/one").write_bytes(b"data")
    os.link(tmp_path / "t/one", tmp_path / "t/two")
    run_mkerofs(*FIXED, "-Enoinline_data", tmp_path / "h.erofs", tmp_path / "t")
    out = rebuild(tmp_path, "hl.erofs", [layers(work, "ni")[0], tmp_path / "h.erofs"])
    with Image.open(out, devices=[layers(work, "ni")[0], tmp_path / "h.erofs"]) as img:
        one, two = img.lookup("/one"), img.lookup("/two")
        assert one.nid == two.nid and one.nlink == 2
        assert img.read(one) == b"data"


def test_vmdk_descriptor(work):
    sources = layers(work, "ni")
    desc = work / "index.vmdk"
    out = work / "vmdk.erofs"
    run_mkerofs(*FIXED, "--ovlfs-strip", "-U", UUIDS[0], f"--vmdk-desc={desc}", out, *sources)
    text = desc.read_text()
    lines = text.splitlines()
    # (CID: the UUID's four 32-bit words XORed, read in host order, here little-endian)
    assert lines[:7] == ["# Disk DescriptorFile", "version=1", "CID=1000000", "parentCID=ffffffff",
                         'createType="twoGbMaxExtentFlat"', "", "# Extent description"]
    sizes = [os.path.getsize(p) for p in [out, *sources]]
    assert lines[7:11] == [f'RW {s // 512} FLAT "{p}" 0' for s, p in zip(sizes, [out, *sources])]
    cylinders = -(-sum(sizes) // 512 // (63 * 16))
    assert lines[11:] == ["", "# The Disk Data Base", "#DDB", "", 'ddb.virtualHWVersion = "4"',
                          f'ddb.geometry.cylinders = "{cylinders}"', 'ddb.geometry.heads = "16"',
                          'ddb.geometry.sectors = "63"', 'ddb.adapterType = "ide"']


def test_vmdk_descriptor_plain_build(work, tmp_path):
    desc = tmp_path / "plain.vmdk"
    out = tmp_path / "plain.erofs"
    run_mkerofs(*FIXED, f"--vmdk-desc={desc}", out, work / "L2")
    extents = [l for l in desc.read_text().splitlines() if l.startswith("RW ")]
    assert extents == [f'RW {os.path.getsize(out) // 512} FLAT "{out}" 0']


def test_vmdk_not_written_on_failure(work, tmp_path):
    desc = tmp_path / "x.vmdk"
    out = tmp_path / "o.erofs"
    r = run_mkerofs(*FIXED, f"--vmdk-desc={desc}", out, layers(work, "b1k")[0],
                    layers(work, "ni")[1], check=False)
    assert_clean_failure(r, mentions=["block"], image=out)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["clean0", "cleanfoo", "not-erofs", "mixed", "itself",
                                  "missing", "clean-dir"])
def test_refusals(work, tmp_path, case):
    out = tmp_path / "o.erofs"
    ni = layers(work, "ni")
    if case == "clean0":
        args, mentions = ["--clean=0", out, *ni], ["--clean=0"]
    elif case == "cleanfoo":
        args, mentions = ["--clean=foo", out, *ni], ["--clean=foo"]
    elif case == "not-erofs":
        junk = tmp_path / "junk"
        junk.write_bytes(b"x" * 8192)
        args, mentions = [out, ni[0], junk], ["junk", "EROFS"]
    elif case == "mixed":
        args, mentions = [out, layers(work, "b1k")[0], ni[1]], ["1024", "--clean=data"]
    elif case == "itself":
        out = tmp_path / "self.erofs"
        out.write_bytes(ni[0].read_bytes())
        before = out.read_bytes()
        r = run_mkerofs(*FIXED, out, out, ni[1], check=False)
        assert_clean_failure(r, mentions=["being written"], image=out, image_before=before)
        return
    elif case == "missing":
        args, mentions = [out, ni[0], tmp_path / "nope.erofs"], ["nope.erofs"]
    else:
        args, mentions = ["--clean", out, work / "L1"], ["--clean"]
    r = run_mkerofs(*FIXED, *args, check=False)
    assert_clean_failure(r, mentions=mentions, image=out)
    assert not os.path.exists(out)


def test_mixed_block_sizes_copied_with_clean_data(work):
    sources = [layers(work, "b1k")[0], layers(work, "ni")[1], layers(work, "ni")[2]]
    out = rebuild(work, "mixed.erofs", sources, clean="data")
    with Image.open(out) as img:
        assert img.block_size == 4096
        assert regular(files(img)) == expected_files(work)


def _tiny_tar(path: Path, name: str, data: bytes) -> Path:
    import io
    import tarfile
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


def test_several_tar_layers_only_in_full_mode(tmp_path):
    """Several tars stack only with --tar=f: --tar=i and headerballs take one tar, and
    --sort=none (data in one tar's order) too."""
    a = _tiny_tar(tmp_path / "a.tar", "f", b"lower")
    b = _tiny_tar(tmp_path / "b.tar", "f", b"upper")
    for mode in ("--tar=i", "--tar=headerball"):
        r = run_mkerofs(mode, tmp_path / "x.erofs", a, b, check=False)
        assert_clean_failure(r, mentions=["several SOURCEs"], image=tmp_path / "x.erofs")
    r = run_mkerofs("--tar=f", "--sort=none", "-Enoinline_data", tmp_path / "y.erofs", a, b,
                    check=False)
    assert_clean_failure(r, mentions=["--sort=none", "one tar"], image=tmp_path / "y.erofs")
    run_mkerofs("--tar=f", "--quiet", tmp_path / "z.erofs", a, b)
    with Image.open(tmp_path / "z.erofs") as img:
        assert img.read(img.lookup(b"/f")) == b"upper"
