"""Fragments, dedupe, compress hints, --max-extent-bytes and --zfeature-bits, mounted by the
kernel.  (Debian's erofs-utils 1.5 predates fragments and dedupe: the kernel is the judge.)"""
from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from support.compare import compare_trees
from support.mounts import tmpfs_mount
from support.oracle import image_inodes, read_superblock
from support.run import assert_clean_failure, build_image, run_mkerofs
from test_kernel_compress import _mixed, _random_reads, _text, ztree  # noqa: F401 (fixture)

pytestmark = pytest.mark.kernel

INCOMPAT_FRAGMENTS = 0x20          # also DEDUPE: one bit
INCOMPAT_ZTAILPACKING = 0x10
FULL, COMPACT = 1, 3
ADVISE_FRAGMENT_PCLUSTER = 0x20


def _incompat(image: Path) -> int:
    return int.from_bytes(image.read_bytes()[1024 + 80:1024 + 84], "little")


def _packed_nid(image: Path) -> int:
    return int.from_bytes(image.read_bytes()[1024 + 96:1024 + 104], "little")


def _packed_size(image: Path) -> int:
    sb = read_superblock(image)
    raw = image.read_bytes()
    pos = sb.meta_blkaddr * (1 << sb.blkszbits) + _packed_nid(image) * 32
    extended = raw[pos] & 1
    return struct.unpack_from("<Q" if extended else "<I", raw, pos + 8)[0]


def _map_header(image: Path, info) -> tuple[int, int, int, int]:
    """(h_fragmentoff or idata word, h_advise, h_algorithmtype, h_clusterbits) of an inode."""
    sb = read_superblock(image)
    bs = 1 << sb.blkszbits
    raw = image.read_bytes()
    pos = sb.meta_blkaddr * bs + info.nid * 32
    isize = 64 if info.extended else 32
    xsize = 12 + 4 * (info.xattr_icount - 1) if info.xattr_icount else 0
    hpos = (pos + isize + xsize + 7) // 8 * 8
    return struct.unpack_from("<IHBB", raw, hpos)


@pytest.mark.parametrize("opts", [
    ["-zlz4", "-Efragments"],
    ["-zlz4hc", "-C65536", "-Efragments", "-Eztailpacking"],
    ["-zzstd", "-Eall-fragments"],
    ["-zlzma", "-C65536", "-Efragments=16384"],
    ["-zdeflate", "-b1024", "-Efragments", "-Elegacy-compress"],
    ["-zlz4", "-Efragments", "-E^fragdedupe"],
    ["-zlz4hc", "-Efragments,fragdedupe=inode"],
])
def test_fragments(opts, ztree, tmp_path, kernel):
    image = tmp_path / "f.erofs"
    build_image(image, ztree, *opts)
    assert _incompat(image) & INCOMPAT_FRAGMENTS
    packed = _packed_nid(image)
    assert packed, "a packed inode must be announced in the superblock"
    inodes = image_inodes(image)
    assert packed not in {i.nid for i in inodes.values()}, "the packed inode has no name"
    small = inodes[b"/text/text_1023"]
    assert small.layout == FULL, "a small file is a whole-file fragment"
    word, advise, _alg, clusterbits = _map_header(image, small)
    assert clusterbits & 0x80, "whole-file fragments set the top bit of the map header"
    big = inodes[b"/big/mixed_3m"]
    if "-Eall-fragments" not in opts:
        assert big.raw_blkaddr, "a big file keeps pclusters of its own"
        assert _map_header(image, big)[1] & ADVISE_FRAGMENT_PCLUSTER
    with kernel(image) as mnt:
        compare_trees(ztree, mnt)
        bad = _random_reads(ztree, Path(mnt), random.Random(" ".join(opts)))
        assert not bad, f"{len(bad)} random reads differ, e.g. {bad[:5]}"


def test_fragments_make_small_files_smaller(ztree, tmp_path):
    plain, frag = tmp_path / "p.erofs", tmp_path / "f.erofs"
    build_image(plain, ztree, "-zlz4hc")
    build_image(frag, ztree, "-zlz4hc", "-Efragments")
    assert os.path.getsize(frag) < os.path.getsize(plain) * 0.95


def test_identical_files_share_one_fragment(tmp_path, kernel):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    body = rng.randbytes(3000)          # incompressible: a fragment costs its full size
    for i in range(40):
        (src / f"same_{i}").write_bytes(body)
    (src / "other").write_bytes(rng.randbytes(3000))
    on, off = tmp_path / "on.erofs", tmp_path / "off.erofs"
    build_image(on, src, "-zlz4", "-Efragments")
    build_image(off, src, "-zlz4", "-Efragments", "-E^fragdedupe")
    # 40 copies stored once in the packed inode (compression might hide copies in the image
    # size, so look at the packed inode's own size)
    assert _packed_size(on) == 2 * 3000
    assert _packed_size(off) == 41 * 3000
    for image in (on, off):
        with kernel(image) as mnt:
            compare_trees(src, mnt)


@pytest.mark.parametrize("opts", [["-zlz4"], ["-zlz4hc", "-C65536"], ["-zzstd", "-C16384"],
                                  ["-zlzma", "-Eztailpacking"], ["-zdeflate", "-b1024"]])
def test_dedupe(opts, ztree, tmp_path, kernel):
    with_dedupe, without = tmp_path / "d.erofs", tmp_path / "n.erofs"
    build_image(with_dedupe, ztree, *opts, "-Ededupe")
    build_image(without, ztree, *opts)
    # twelve copies of a 70000-byte file: eleven of them cost no data blocks
    saved = os.path.getsize(without) - os.path.getsize(with_dedupe)
    assert saved >= 11 * 4096, f"dedupe saved only {saved} bytes"
    assert _incompat(with_dedupe) & INCOMPAT_FRAGMENTS, "DEDUPE bit"
    assert not _packed_nid(with_dedupe)
    inodes = image_inodes(with_dedupe)
    copies = [inodes[f"/dups/copy_{i:02d}".encode()] for i in range(12)]
    assert all(c.layout == FULL for c in copies[1:]), "deduplicated files use full indexes"
    with kernel(with_dedupe) as mnt:
        compare_trees(ztree, mnt)
        bad = _random_reads(ztree, Path(mnt), random.Random(" ".join(opts)))
        assert not bad, f"{len(bad)} random reads differ, e.g. {bad[:5]}"


def test_dedupe_within_one_file(tmp_path, kernel):
    src = tmp_path / "src"
    src.mkdir()
    unit = random.Random(5).randbytes(4096)     # incompressible: raw blocks, all the same
    (src / "repeated").write_bytes(unit * 300)
    image = tmp_path / "d.erofs"
    build_image(image, src, "-zlz4", "-Ededupe")
    assert os.path.getsize(image) < 40 * 4096
    with kernel(image) as mnt:
        compare_trees(src, mnt)


@pytest.mark.parametrize("opts", [["-zlz4hc", "-Efragments", "-Ededupe"],
                                  ["-zzstd", "-C65536", "-Eall-fragments"],
                                  ["-zlz4", "-Ededupe", "-Eztailpacking"]])
def test_fragments_and_dedupe_are_reproducible(opts, ztree, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*opts, "-T0", "-Uclear"]
    build_image(a, ztree, *common, "--workers=2")
    build_image(b, ztree, *common, "--workers=1")
    assert a.read_bytes() == b.read_bytes()


def test_fragments_with_long_xattr_prefixes(tmp_path, kernel):
    """With a packed inode the prefix table goes into it (older kernels look there) and
    PLAIN_XATTR_PFX stays clear; -Eplain-xattr-prefixes keeps it in the metadata."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    for i in range(8):
        f = src / f"f{i}"
        f.write_bytes(_text(rng, 1000 * i + 10))
        os.setxattr(f, f"trusted.overlay.k{i}", b"v" * i)
        os.setxattr(f, "user.common.prefix.name", str(i).encode())
    for extra in ([], ["-Eplain-xattr-prefixes"]):
        image = tmp_path / "x.erofs"
        build_image(image, src, "-zlz4", "-Efragments", "--xattr-prefix=trusted.overlay.",
                    "--xattr-prefix=user.common.", *extra)
        compat = int.from_bytes(image.read_bytes()[1024 + 8:1024 + 12], "little")
        assert bool(compat & 0x10) == bool(extra), "PLAIN_XATTR_PFX"
        with kernel(image) as mnt:
            compare_trees(src, mnt, xattrs=True)


def test_compress_hints(tmp_path, kernel):
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    rng = random.Random(9)
    for name in ("a.c", "b.h", "c.txt", "keep/d.txt", "e.big"):
        (src / name).write_bytes(_text(rng, 300000))
    hints = tmp_path / "hints"
    hints.write_text("# comment\n\n0 \\.c$\n1048577 \\.h$\n8192 1 ^keep/\n65536 \\.big$\n")
    image = tmp_path / "h.erofs"
    r = build_image(image, src, "-zlz4:lzma", f"--compress-hints={hints}")
    assert "1048577" in r.stderr, "a size that is not a block multiple is warned about"
    inodes = image_inodes(image)
    assert inodes[b"/a.c"].layout in (0, 2), "size 0: stored uncompressed"
    assert inodes[b"/c.txt"].layout == COMPACT
    assert _map_header(image, inodes[b"/c.txt"])[2] == 0, "default: the first algorithm (lz4)"
    assert _map_header(image, inodes[b"/keep/d.txt"])[2] == 1, "algorithm #1 of -z: lzma"
    incompat = _incompat(image)
    assert incompat & 0x2, "hints raise the largest pcluster: big pclusters announced"
    big_blocks = inodes[b"/e.big"].raw_blkaddr
    assert big_blocks
    with kernel(image) as mnt:
        compare_trees(src, mnt)
        assert not _random_reads(src, Path(mnt), rng)


@pytest.mark.parametrize("text,mentions", [
    ("0\n", ["hints:1", "pattern"]),
    ("4096 \\.c$\n4096 7 x\n", ["hints:2", "7"]),
    ("4096 (unclosed\n", ["hints:1", "regex"]),
    ("2097152 x\n", ["hints:1", "2097152"]),
])
def test_bad_compress_hints(text, mentions, ztree, tmp_path):
    hints = tmp_path / "hints"
    hints.write_text(text)
    image = tmp_path / "h.erofs"
    r = run_mkerofs("-zlz4", f"--compress-hints={hints}", image, ztree, check=False)
    assert_clean_failure(r, mentions=mentions, image=image)


def test_unreadable_compress_hints(ztree, tmp_path):
    image = tmp_path / "h.erofs"
    r = run_mkerofs("-zlz4", f"--compress-hints={tmp_path / 'missing'}", image, ztree,
                    check=False)
    assert_clean_failure(r, mentions=["missing"], image=image)


def test_max_extent_bytes(ztree, tmp_path, kernel):
    capped, free = tmp_path / "c.erofs", tmp_path / "f.erofs"
    build_image(capped, ztree, "-zlz4hc", "-C65536", "--max-extent-bytes=8192")
    build_image(free, ztree, "-zlz4hc", "-C65536")
    # extents of at most 8 KiB compress worse than 64 KiB ones
    assert os.path.getsize(capped) > os.path.getsize(free)
    with kernel(capped) as mnt:
        compare_trees(ztree, mnt)


@pytest.mark.parametrize("value,mentions", [("100", ["100"]), ("-8192", ["48-bit"]),
                                            ("x", ["x"])])
def test_bad_max_extent_bytes(value, mentions, ztree, tmp_path):
    image = tmp_path / "m.erofs"
    r = run_mkerofs("-zlz4", f"--max-extent-bytes={value}", image, ztree, check=False)
    assert_clean_failure(r, mentions=mentions, image=image)


@pytest.mark.parametrize("bits,extended", [("4", ["-Efragments"]), ("0x12", ["-Eztailpacking",
                                            "-Ededupe"]), ("1", ["-Elegacy-compress"])])
def test_zfeature_bits_match_extended_options(bits, extended, ztree, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-zlz4hc", "-T0", "-Uclear"]
    build_image(a, ztree, *common, f"--zfeature-bits={bits}")
    build_image(b, ztree, *common, *extended)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("bits,mentions", [("256", ["8"]), ("64", ["48bit"])])
def test_bad_zfeature_bits(bits, mentions, ztree, tmp_path):
    image = tmp_path / "z.erofs"
    r = run_mkerofs("-zlz4", f"--zfeature-bits={bits}", image, ztree, check=False)
    assert_clean_failure(r, mentions=mentions, image=image)


@pytest.mark.parametrize("opts,mentions", [(["-C16384", "-Efragments=65536"], ["65536"]),
                                           (["-Efragments=5000"], ["5000"]),
                                           (["-Efragments=abc"], ["abc"]),
                                           (["-Efragdedupe=inode,dedupe=1"], ["dedupe=1"])])
def test_bad_fragment_options(opts, mentions, ztree, tmp_path):
    image = tmp_path / "f.erofs"
    r = run_mkerofs("-zlz4", *opts, image, ztree, check=False)
    assert_clean_failure(r, mentions=mentions, image=image)


def test_fragments_temporary_file_trouble_is_a_clean_error(ztree, tmp_path, as_root):
    """Fragments are gathered in a temporary file under TMPDIR: running out of room there is
    a clean failure naming it."""
    image = tmp_path / "f.erofs"
    with tmpfs_mount("1m") as small:
        r = run_mkerofs("-zlz4", "-Eall-fragments", image, ztree, check=False,
                        env={"TMPDIR": str(small)})
        assert_clean_failure(r, mentions=["TMPDIR", "No space left"], image=image)
        assert not os.listdir(small), "the temporary file is removed"
