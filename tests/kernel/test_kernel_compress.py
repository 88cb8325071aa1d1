"""Compressed images mounted by the Linux kernel and compared with their source.

Every algorithm x block size (4096, 1024; 512 for lz4) x a spread of physical cluster sizes
(-C) and layouts (compact indexes, -Elegacy-compress full indexes, -Eztailpacking), on a tree of
incompressible, highly compressible and mixed data in files of every size around block and
cluster boundaries, all-zero and sparse files, many duplicates and multi-megabyte files. Besides
a whole-tree comparison (bytes, mode, owner, mtime ...) every file is read at random offsets
through the mount, which exercises the kernel's index lookups rather than a sequential stream.
Debian's fsck.erofs 1.5 checks what it knows (lz4 with 4 KiB blocks); it predates zstd and
deflate support, so the kernel is the judge there.
"""
from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from support.compare import compare_trees
from support.oracle import image_inodes, read_superblock
from support.run import assert_clean_failure, build_image, run_mkerofs

pytestmark = pytest.mark.kernel

ALGORITHMS = ["lz4", "lz4hc", "zstd", "deflate", "lzma"]
# (extra options, what they exercise)
LAYOUTS = {
    "compact": [],
    "C16k": ["-C16384"],
    "C64k-ztail": ["-C65536", "-Eztailpacking"],
    "C128k-legacy": ["-C131072", "-Elegacy-compress"],
    "ztail": ["-Eztailpacking"],
    "legacy": ["-Elegacy-compress"],
    "C64k-legacy-ztail": ["-C65536", "-Elegacy-compress", "-Eztailpacking"],
    "fragments": ["-Efragments"],
    "C64k-fragments-dedupe": ["-C65536", "-Efragments", "-Ededupe"],
    "all-fragments": ["-Eall-fragments"],
    "C16k-dedupe-ztail": ["-C16384", "-Ededupe", "-Eztailpacking"],
}
# layouts whose files may use full indexes whatever -Elegacy-compress says (whole-file
# fragments and deduplicated extents can only be described by them); Debian's fsck.erofs 1.5
# predates fragments and dedupe
NEWER = {"fragments", "C64k-fragments-dedupe", "all-fragments", "C16k-dedupe-ztail"}
SIZES = [1, 511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 8193, 16383, 16384, 16385,
         65535, 65536, 65537, 131071, 131073, 200000]

EROFS_INODE_COMPRESSED_FULL = 1
EROFS_INODE_COMPRESSED_COMPACT = 3


def _text(rng: random.Random, size: int) -> bytes:
    words = [b"erofs", b"kernel", b"cluster", b"block", b"inode", b"zero", b"padding", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _mixed(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        n = rng.randint(1, 9000)
        out += rng.randbytes(n) if rng.random() < 0.4 else _text(rng, n)
    return bytes(out[:size])


@pytest.fixture(scope="module")
def ztree(tmp_path_factory) -> Path:
    rng = random.Random(20261126)
    root = tmp_path_factory.mktemp("ztree") / "src"
    for kind, make in (("random", lambda n: rng.randbytes(n)), ("text", lambda n: _text(rng, n)),
                       ("mixed", lambda n: _mixed(rng, n))):
        d = root / kind
        d.mkdir(parents=True)
        for size in SIZES:
            (d / f"{kind}_{size}").write_bytes(make(size))
    big = root / "big"
    big.mkdir()
    (big / "mixed_3m").write_bytes(_mixed(rng, 3 * 2**20 + 777))
    (big / "zeros_1m").write_bytes(bytes(2**20))
    with open(big / "sparse_6m", "wb") as f:       # holes read back as zeros
        f.write(_text(rng, 10000))
        f.seek(3 * 2**20)
        f.write(rng.randbytes(5000))
        f.truncate(6 * 2**20 + 11)
    (big / "empty").write_bytes(b"")
    dup = root / "dups"
    dup.mkdir()
    same = _mixed(rng, 70000)
    for i in range(12):
        (dup / f"copy_{i:02d}").write_bytes(same)
    os.symlink("big/mixed_3m", root / "link")
    return root


def _random_reads(src: Path, mnt: Path, rng: random.Random, per_file: int = 12) -> list[str]:
    """Read every regular file at random offsets through the mount; return the mismatches."""
    bad = []
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            s = Path(dirpath) / name
            if not stat.S_ISREG(os.lstat(s).st_mode):
                continue
            m = mnt / s.relative_to(src)
            size = s.stat().st_size
            with open(s, "rb") as fs, open(m, "rb") as fm:
                for _ in range(per_file if size else 1):
                    off = rng.randrange(size + 1)
                    n = rng.choice([1, 7, 512, 4096, 5000, 70000])
                    if os.pread(fs.fileno(), n, off) != os.pread(fm.fileno(), n, off):
                        bad.append(f"{s.relative_to(src)} @ {off}+{n}")
    return bad


def _cases():
    for alg in ALGORITHMS:
        for bs in (4096, 1024):
            for layout in LAYOUTS:
                yield pytest.param(alg, bs, layout, id=f"{alg}-b{bs}-{layout}")
    for layout in LAYOUTS:
        yield pytest.param("lz4", 512, layout, id=f"lz4-b512-{layout}")


@pytest.mark.parametrize("alg,bs,layout", list(_cases()))
def test_compressed_image_reads_back(alg, bs, layout, ztree, tmp_path, kernel, fsck):
    image = tmp_path / "z.erofs"
    build_image(image, ztree, f"-z{alg}", f"-b{bs}", *LAYOUTS[layout])
    sb = read_superblock(image)
    incompat = int.from_bytes(image.read_bytes()[1024 + 80:1024 + 84], "little")
    assert incompat & 0x1, "zero padding (LZ4_0PADDING) must be set on compressed images"
    if alg not in ("lz4", "lz4hc") or any(o.startswith("-C") for o in LAYOUTS[layout]):
        assert incompat & 0x2, "COMPR_CFGS/BIG_PCLUSTER must be set for this configuration"
    assert sb.blocks * bs == os.path.getsize(image)

    # compressible files really are compressed, with the index form asked for
    want = (EROFS_INODE_COMPRESSED_FULL if "-Elegacy-compress" in LAYOUTS[layout]
            else EROFS_INODE_COMPRESSED_COMPACT)
    inodes = image_inodes(image)
    wanted = {want} if layout not in NEWER else {EROFS_INODE_COMPRESSED_FULL, want}
    for size in (65536, 200000):
        assert inodes[f"/text/text_{size}".encode()].layout in wanted
    assert inodes[b"/big/zeros_1m"].layout in wanted
    assert os.path.getsize(image) < 6 * 2**20, "a tree of ~10 MiB, mostly compressible"

    with kernel(image) as mnt:
        compare_trees(ztree, mnt)
        bad = _random_reads(ztree, Path(mnt), random.Random(f"{alg}{bs}{layout}"))
        assert not bad, f"{len(bad)} random reads differ, e.g. {bad[:5]}"
    if alg == "lz4" and bs == 4096 and "-Eztailpacking" not in LAYOUTS[layout] and (
            layout not in NEWER):
        fsck(image, bs)


def test_several_algorithms_and_levels(ztree, tmp_path, kernel):
    for spec in ("lz4hc,12", "zstd,level=19", "lzma,level=109,dictsize=65536",
                 "deflate,level=9", "lz4:lzma:zstd:deflate"):
        image = tmp_path / "z.erofs"
        build_image(image, ztree, f"-z{spec}", "-C65536")
        with kernel(image) as mnt:
            compare_trees(ztree, mnt)


def test_incompressible_files_are_stored_flat(ztree, tmp_path, kernel):
    image = tmp_path / "z.erofs"
    build_image(image, ztree, "-zlz4")
    inodes = image_inodes(image)
    # random data cannot save a block: plain or inline, never a compressed layout
    assert inodes[b"/random/random_131073"].layout in (0, 2)
    with kernel(image) as mnt:
        compare_trees(ztree, mnt)


@pytest.mark.parametrize("alg", ["zstd", "deflate", "lzma"])
def test_compressed_builds_are_reproducible(alg, ztree, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [f"-z{alg}", "-C65536", "-T0", "-Uclear", "--workers=2"]
    build_image(a, ztree, *common)
    build_image(b, ztree, *common, "--workers=1")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("args,mentions", [
    (["-zfoo"], ["foo"]),
    (["-zlz4hc,level=13"], ["13"]),
    (["-zzstd,level=99"], ["99"]),
    (["-zlzma,dictsize=1"], ["dictsize"]),
    (["-zlz4", "-C5000"], ["5000"]),
    (["-zlz4", "-C4194304"], ["4194304"]),
    (["-zlz4", "-Ebogus-feature"], ["bogus-feature"]),
])
def test_bad_compression_options(args, mentions, ztree, tmp_path):
    image = tmp_path / "z.erofs"
    r = run_mkerofs(*args, image, ztree, check=False)
    assert_clean_failure(r, mentions=mentions, image=image)
    image.write_bytes(b"old image")
    r = run_mkerofs(*args, image, ztree, check=False)
    assert_clean_failure(r, mentions=mentions, image=image, image_before=b"old image")


@pytest.mark.parametrize("opts", [["-zlz4", "-Eztailpacking"], ["-zlzma", "-Elegacy-compress"],
                                  ["-zzstd", "-C65536", "-Eztailpacking", "-b1024"]])
def test_compressed_files_with_xattrs(opts, tmp_path, kernel):
    """Inline xattrs of different sizes move the map header (aligned to 8 after inode + xattrs):
    every alignment must still decompress, and the xattrs must survive."""
    rng = random.Random(7)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):
        f = src / f"f{i}"
        f.write_bytes(_mixed(rng, 5000 + 9000 * i))
        for j in range(i % 5):
            os.setxattr(f, f"user.k{j}", bytes(rng.randrange(1, 40)))   # ibody sizes vary by 4s
        os.setxattr(f, "trusted.unique", str(i).encode())
    image = tmp_path / "z.erofs"
    build_image(image, src, *opts)
    with kernel(image) as mnt:
        compare_trees(src, mnt, xattrs=True)
        assert not _random_reads(src, Path(mnt), rng)
