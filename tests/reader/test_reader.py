"""mkerofs.reader: what it reads back from images of every option set, checked against the
kernel's view of the same image (the kernel is the oracle), against the source tree where no
kernel is at hand, and against images written by mkfs.erofs (Debian's 1.5 in CI; a local
erofs-utils 1.9.3, when present, for fragments, dedupe, chunks, 48-bit and extent records).
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from support import mounts, trees
from support.compare import host_content
from support.run import build_image, run_mkerofs
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Extent, Image, ImageError, Inode, NotFoundError
from reader_corpus import make_small_tree, text

MKFS_EROFS_NEW = os.environ.get("MKFS_EROFS_NEW", "/work/erofs-utils-install/bin/mkfs.erofs")


# -- views: path -> everything stat/readlink/getxattr can tell ---------------------------------

def _digest(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def reader_view(img: Image) -> dict:
    view = {}
    for path, ino in img.walk():
        if ino.is_reg():
            content = _digest(img.iter_data(ino))
        elif ino.is_lnk():
            content = img.readlink(ino)
        elif ino.is_chr() or ino.is_blk():
            content = (ino.major, ino.minor)
        else:
            content = None
        size = ino.size if not (ino.is_fifo() or ino.is_sock() or ino.is_chr() or ino.is_blk()) \
            else 0
        view[path] = (stat.S_IFMT(ino.mode), stat.S_IMODE(ino.mode), ino.uid, ino.gid, ino.nlink,
                      ino.mtime * 10**9 + ino.mtime_nsec, size, content,
                      tuple(sorted(img.xattrs(ino))))
    return view


def _xattrs_of(path: bytes) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n.encode(), os.getxattr(path, n, follow_symlinks=False))
                        for n in names))


def tree_view(root, *, mtime_ns=None, nlink_in_tree: bool = True) -> dict:
    """The same view of a directory tree (a mount or a source); nlink counted inside it."""
    root = os.fsencode(root)
    stats = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        st = os.lstat(full)
        stats[rel] = st
        if stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(rel, n) if rel else n for n in os.listdir(full))
    links: dict = {}
    subdirs: dict = {}
    for rel, st in stats.items():
        if stat.S_ISDIR(st.st_mode):
            if rel:
                parent = os.path.dirname(rel)
                subdirs[parent] = subdirs.get(parent, 0) + 1
        else:
            links[st.st_ino] = links.get(st.st_ino, 0) + 1
    view = {}
    for rel, st in stats.items():
        full = os.path.join(root, rel) if rel else root
        mode = st.st_mode
        content = host_content(full, st)
        if not nlink_in_tree:
            nlink = st.st_nlink
        elif stat.S_ISDIR(mode):
            nlink = 2 + subdirs.get(rel, 0)
        else:
            nlink = links[st.st_ino]
        size = st.st_size if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode) \
            else 0
        view[b"/" + rel] = (stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid, nlink,
                            st.st_mtime_ns if mtime_ns is None else mtime_ns, size, content,
                            _xattrs_of(full))
    return view


def hard_link_groups(img: Image) -> set:
    groups: dict = {}
    for path, ino in img.walk():
        if not ino.is_dir():
            groups.setdefault(ino.nid, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def mount_link_groups(mnt) -> set:
    groups: dict = {}
    root = os.fsencode(mnt)
    for dirpath, dirs, files in os.walk(root):
        for n in files:
            full = os.path.join(dirpath, n)
            groups.setdefault(os.lstat(full).st_ino, set()).add(b"/" + os.path.relpath(full, root))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def differences(a: dict, b: dict, what_a: str, what_b: str, *, compare_dir_size=True) -> list:
    out = [f"{p!r}: only in {what_a}" for p in sorted(set(a) - set(b))]
    out += [f"{p!r}: only in {what_b}" for p in sorted(set(b) - set(a))]
    fields = ("type", "mode", "uid", "gid", "nlink", "mtime", "size", "content", "xattrs")
    for p in sorted(set(a) & set(b)):
        for name, x, y in zip(fields, a[p], b[p]):
            if name == "size" and not compare_dir_size and a[p][0] == stat.S_IFDIR:
                continue
            if x != y:
                out.append(f"{p!r}: {name} {x!r} in {what_a}, {y!r} in {what_b}")
    return out


def assert_reader_matches_kernel(image: Path) -> None:
    with Image.open(image) as img:
        problems = img.verify()
        assert problems == [], problems[:20]
        rv = reader_view(img)
        groups = hard_link_groups(img)
    with mounts.kernel_mount(image) as mnt:
        kv = tree_view(mnt, nlink_in_tree=False)
        kgroups = mount_link_groups(mnt)
    diffs = differences(rv, kv, "reader", "kernel")
    assert not diffs, f"{len(diffs)} differences:\n" + "\n".join(diffs[:40])
    assert groups == kgroups


# -- source trees --------------------------------------------------------------------------------

def _compressible_tree(root: Path) -> None:
    rng = random.Random(99)
    root.mkdir(parents=True)
    for i, n in enumerate([1, 100, 4095, 4096, 4097, 12289, 65537, 300000, 3 << 20]):
        (root / f"t{i}").write_bytes(text(rng, n))
    dup = text(rng, 50000)
    for i in range(3):
        (root / f"dup{i}").write_bytes(dup)
    (root / "mixed").write_bytes(text(rng, 20000) + rng.randbytes(20000) + text(rng, 20000))
    (root / "zeros").write_bytes(bytes(200000))


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory) -> Path:
    """Everything mkerofs handles (devices, big ids, hard links, xattrs...) plus compressible
    files; needs root for owners and device nodes."""
    if os.geteuid() != 0:
        pytest.skip("building the full tree needs root (owners, device nodes)")
    root = tmp_path_factory.mktemp("reader-full") / "src"
    trees.make_full_tree(root, xattrs=True)
    _compressible_tree(root / "comp")
    trees.set_tree_times(root)
    return root


@pytest.fixture(scope="module")
def user_tree(tmp_path_factory) -> Path:
    """A tree any user can build: files of every size, symlinks, awkward names, xattrs."""
    root = tmp_path_factory.mktemp("reader-user") / "src"
    make_small_tree(root)
    trees.make_size_files(root / "sizes", (512, 4096))
    trees.make_symlinks(root / "symlinks", [1, 60, 100, 1000, 4000, 4095])
    trees.make_names_tree(root / "names")
    _compressible_tree(root / "comp")
    trees.set_tree_times(root)
    return root


@pytest.fixture(scope="module")
def debian_tree(tmp_path_factory) -> Path:
    """user_tree without the awkward names, which mkfs.erofs 1.5 cannot store."""
    root = tmp_path_factory.mktemp("reader-debian") / "src"
    make_small_tree(root)
    trees.make_size_files(root / "sizes", (4096,))
    trees.make_symlinks(root / "symlinks", [1, 100, 4095])
    _compressible_tree(root / "comp")
    trees.set_tree_times(root)
    return root


def _refuses(option: str) -> bool:
    """True while mkerofs refuses `option` (fragments and dedupe are being added)."""
    with __import__("tempfile").TemporaryDirectory() as d:
        src = Path(d) / "src"
        src.mkdir()
        (src / "f").write_bytes(b"x" * 10000)
        r = run_mkerofs("-zlz4hc", option, Path(d) / "i.erofs", src, check=False, timeout=120)
        return r.returncode != 0


_REFUSES_FRAGMENTS = _refuses("-Efragments")
_REFUSES_DEDUPE = _refuses("-Ededupe")
_needs_fragments = pytest.mark.skipif(_REFUSES_FRAGMENTS, reason="mkerofs refuses -Efragments")
_needs_dedupe = pytest.mark.skipif(_REFUSES_DEDUPE, reason="mkerofs refuses -Ededupe")

# every option set of the builder that changes what is on disk
OPTION_SETS = {
    "default": [],
    "b512": ["-b512"],
    "b1024": ["-b1024"],
    "b2048": ["-b2048"],
    "timestamp": ["-T1234567890"],
    "ignore-mtime": ["--ignore-mtime"],
    "inode-extended": ["-Eforce-inode-extended"],
    "no-inline": ["-E^inline_data"],
    "hard-dereference": ["--hard-dereference"],
    "xattr-prefix": ["--xattr-prefix=user.shared", "--xattr-prefix=trusted.", "-x1"],
    "root-xattr-isize": ["--root-xattr-isize=300"],
    "nosbcrc": ["-Enosbcrc"],
    "lz4": ["-zlz4"],
    "lz4hc-C16k-ztail": ["-zlz4hc", "-C16384", "-Eztailpacking"],
    "lz4-legacy": ["-zlz4", "-Elegacy-compress"],
    "lz4hc-C64k-legacy-ztail": ["-zlz4hc,12", "-C65536", "-Elegacy-compress", "-Eztailpacking"],
    "lzma": ["-zlzma"],
    "lzma-b512-ztail": ["-b512", "-zlzma", "-Eztailpacking"],
    "deflate-b1024": ["-b1024", "-zdeflate", "-C8192"],
    "zstd-C64k": ["-zzstd", "-C65536"],
    "several-algorithms": ["-zlz4hc:zstd:lzma", "-C32768"],
    "fragments": pytest.param(["-zlz4hc", "-Efragments"], marks=_needs_fragments),
    "fragments-ztail": pytest.param(["-zlz4hc", "-Efragments", "-Eztailpacking"],
                                    marks=_needs_fragments),
    "dedupe": pytest.param(["-zzstd", "-Ededupe", "-C65536"], marks=_needs_dedupe),
    "fragments-dedupe-legacy": pytest.param(
        ["-zlzma", "-Efragments,dedupe", "-C32768", "-Elegacy-compress"],
        marks=[_needs_fragments, _needs_dedupe]),
    "all-fragments-b1024": pytest.param(["-b1024", "-zdeflate", "-Eall-fragments"],
                                        marks=_needs_fragments),
    "dedupe-max-extent": pytest.param(["-zlz4hc", "-Ededupe", "--max-extent-bytes=16384"],
                                      marks=_needs_dedupe),
    "no-xattr-filter": ["-E^xattr-name-filter", "-Eplain-xattr-prefixes",
                        "--xattr-prefix=user."],
}


def _option_params():
    for name, value in OPTION_SETS.items():
        if isinstance(value, list):
            yield pytest.param(value, id=name)
        else:
            yield pytest.param(*value.values, marks=value.marks, id=name)


# -- round trips through the kernel -------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.parametrize("options", _option_params())
def test_mkerofs_image_matches_kernel(options, full_tree, tmp_path):
    image = tmp_path / "image.erofs"
    build_image(image, full_tree, *options)
    assert_reader_matches_kernel(image)


@pytest.mark.kernel
@pytest.mark.parametrize("bs", [512, 4096])
def test_big_directories_and_deep_trees_match_kernel(bs, tmp_path):
    src = tmp_path / "src"
    trees.make_big_dir(src / "big", 3000)
    trees.make_deep_tree(src / "deep", 150)
    image = tmp_path / "image.erofs"
    build_image(image, src, f"-b{bs}")
    assert_reader_matches_kernel(image)


@pytest.mark.kernel
def test_head2_lclusters_match_kernel(tmp_path, user_tree):
    """HEAD2 lclusters take the second algorithm of h_algorithmtype: turn every HEAD1 of a
    full-index lz4 image into HEAD2 and make the HEAD1 algorithm one nobody can decode."""
    image = tmp_path / "image.erofs"
    build_image(image, user_tree, "-zlz4hc", "-Elegacy-compress", "-Enosbcrc")
    data = bytearray(image.read_bytes())
    changed = 0
    with Image(bytes(data)) as img:
        for _path, ino in img.walk():
            if ino.datalayout != fmt.EROFS_INODE_COMPRESSED_FULL or not ino.size:
                continue
            _ext, header, lc = img._compressed(ino)
            hpos = fmt.z_erofs_map_header_pos(ino.data_pos)
            data[hpos + 6] = 0x0F | fmt.Z_EROFS_COMPRESSION_LZ4 << 4
            for lcn, t in enumerate(lc.types):
                if t == fmt.Z_EROFS_LCLUSTER_TYPE_HEAD1:
                    pos = fmt.z_erofs_full_index_start(ino.data_pos) + 8 * lcn
                    data[pos] = data[pos] & ~3 | fmt.Z_EROFS_LCLUSTER_TYPE_HEAD2
                    changed += 1
    assert changed
    image.write_bytes(bytes(data))
    with Image.open(image) as img:
        assert img.verify() == []
        assert differences(reader_view(img), tree_view(user_tree), "image", "source",
                           compare_dir_size=False) == []
    assert_reader_matches_kernel(image)


@pytest.mark.kernel
def test_compress_hints_match_kernel(full_tree, tmp_path):
    """Per-file algorithms and pcluster sizes (--compress-hints), when mkerofs has them."""
    hints = tmp_path / "hints"
    hints.write_text("4096 1 comp/t.*\n65536 2 comp/dup.*\n0 sizes/.*\n")
    image = tmp_path / "image.erofs"
    r = build_image(image, full_tree, "-zlzma:lz4hc:deflate", "-C65536",
                    f"--compress-hints={hints}", check=False)
    if r.returncode and "hints" in r.stderr:
        pytest.skip("mkerofs refuses --compress-hints")
    assert r.returncode == 0, r.stderr
    with Image.open(image) as img:
        assert img.algorithms() == ["lz4", "lzma", "deflate"]
        used = {e.algorithm for _p, i in img.walk() if i.is_reg() for e in img.extents(i)}
        assert {"lz4", "lzma", "deflate"} <= used
    assert_reader_matches_kernel(image)


# -- round trips without a kernel ----------------------------------------------------------------

@pytest.mark.parametrize("options", [[], ["-b512"], ["-zlz4hc", "-C16384", "-Eztailpacking"],
                                     ["-zlzma", "-Elegacy-compress"], ["-zdeflate"],
                                     ["-zzstd", "-C65536"], ["-zlz4", "-b1024"]],
                         ids=["default", "b512", "lz4hc-ztail", "lzma-legacy", "deflate", "zstd",
                              "lz4-b1024"])
def test_mkerofs_image_matches_source(options, user_tree, tmp_path):
    image = tmp_path / "image.erofs"
    build_image(image, user_tree, *options)
    with Image.open(image) as img:
        assert img.verify() == []
        diffs = differences(reader_view(img), tree_view(user_tree), "image", "source",
                            compare_dir_size=False)
    assert not diffs, "\n".join(diffs[:40])


def test_fixed_timestamp_and_image_offset(user_tree, tmp_path):
    image = tmp_path / "image.erofs"
    build_image(image, user_tree, "-T1000000000", "--offset=12345", "-zlz4")
    with pytest.raises(ImageError, match="bad magic"):
        Image.open(image)
    with Image.open(image, offset=12345) as img:
        assert img.verify() == []
        assert img.build_time == 1000000000
        view = reader_view(img)
    assert differences(view, tree_view(user_tree, mtime_ns=10**18), "image", "source",
                       compare_dir_size=False) == []


# -- mkfs.erofs images ---------------------------------------------------------------------------

DEBIAN_SETS = {
    "plain": [],
    "lz4": ["-zlz4"],
    "lz4hc-C16k": ["-zlz4hc", "-C16384"],
    "lz4hc-ztail": ["-zlz4hc", "-Eztailpacking"],
    "lz4-legacy": ["-zlz4", "-Elegacy-compress"],
    "lz4hc-C64k-ztail": ["-zlz4hc,12", "-C65536", "-Eztailpacking"],
    "chunks": ["--chunksize=8192"],
}


def _mkfs_erofs(binary: str, image: Path, source: Path, options) -> None:
    r = subprocess.run([binary, *options, str(image), str(source)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"{binary} {' '.join(options)} failed: {r.stderr[-2000:]}")


@pytest.mark.fsck
@pytest.mark.parametrize("options", DEBIAN_SETS.values(), ids=DEBIAN_SETS.keys())
def test_debian_mkfs_erofs_image_matches_source(options, debian_tree, tmp_path):
    binary = shutil.which("mkfs.erofs")
    if binary is None:
        pytest.skip("mkfs.erofs not installed")
    image = tmp_path / "image.erofs"
    _mkfs_erofs(binary, image, debian_tree, options)
    with Image.open(image) as img:
        assert img.verify() == []
        diffs = differences(reader_view(img), tree_view(debian_tree), "image", "source",
                            compare_dir_size=False)
    # mkfs.erofs 1.5 keeps mtimes only to the second in compact inodes: compare the rest
    diffs = [d for d in diffs if ": mtime " not in d]
    assert not diffs, "\n".join(diffs[:40])


@pytest.mark.fsck
@pytest.mark.kernel
@pytest.mark.parametrize("options", DEBIAN_SETS.values(), ids=DEBIAN_SETS.keys())
def test_debian_mkfs_erofs_image_matches_kernel(options, full_tree, tmp_path):
    binary = shutil.which("mkfs.erofs")
    if binary is None:
        pytest.skip("mkfs.erofs not installed")
    image = tmp_path / "image.erofs"
    _mkfs_erofs(binary, image, full_tree, options)
    assert_reader_matches_kernel(image)


NEW_SETS = {
    "fragments": ["-zlz4hc", "-Efragments"],
    "fragments-dedupe-C64k": ["-zlz4hc,12", "-Efragments,dedupe", "-C65536"],
    # not "-Efragments -Eztailpacking": mkfs.erofs 1.9.3 stores the packed inode's inline tail
    # unrotated although the inode says interlaced, and the kernel shows other bytes there
    "dedupe-zstd": ["-zzstd", "-Ededupe", "-C32768"],
    "dedupe-legacy": ["-zlz4", "-Elegacy-compress", "-Ededupe"],
    "lzma-lz4hc": ["-zlzma:lz4hc", "-C16384"],
    "deflate-ztail": ["-zdeflate", "-Eztailpacking"],
    "chunks": ["--chunksize=8192"],
    "chunks-4k": ["--chunksize=4096"],
    "48bit": ["-E48bit"],
    "48bit-lz4hc": ["-zlz4hc", "-E48bit"],
    "48bit-lzma-fragments": ["-zlzma", "-E48bit", "-Efragments"],
    "48bit-deflate-extent-bytes": ["-zdeflate", "-E48bit", "--max-extent-bytes=65536"],
    "b1024-fragments-dedupe": ["-b1024", "-zlz4hc", "-Efragments,dedupe"],
    "xattr-prefix-in-packed": ["--xattr-prefix=user.shared", "-Efragments", "-zlz4hc"],
}


@pytest.mark.kernel
@pytest.mark.parametrize("options", NEW_SETS.values(), ids=NEW_SETS.keys())
def test_new_mkfs_erofs_image_matches_kernel(options, full_tree, tmp_path):
    if not os.access(MKFS_EROFS_NEW, os.X_OK):
        pytest.skip(f"no erofs-utils 1.9 mkfs.erofs at {MKFS_EROFS_NEW} (set MKFS_EROFS_NEW)")
    image = tmp_path / "image.erofs"
    _mkfs_erofs(MKFS_EROFS_NEW, image, full_tree, ["--quiet", *options])
    assert_reader_matches_kernel(image)


@pytest.mark.slow
def test_big_sparse_file_streams(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    trees.make_big_sparse_file(src / "big")
    image = tmp_path / "image.erofs"
    build_image(image, src)
    with Image.open(image) as img:
        ino = img.lookup("/big")
        assert ino.size == 4 * 2**30 + 4096 + 123 and ino.extended
        assert img.read(ino, 0, 10) == b"beginbegin"
        assert img.read(ino, 2**32 - 10, 20) == b"across-4GiB-boundary"
        assert img.read(ino, ino.size - 7) == b"the end"
        total = 0
        for piece in img.iter_data(ino, 1 << 24):
            assert len(piece) <= 1 << 24
            total += len(piece)
        assert total == ino.size
        with pytest.raises(ImageError, match="iter_data"):
            img.read(ino)


# -- the API -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_image(tmp_path_factory, user_tree) -> Path:
    image = tmp_path_factory.mktemp("reader-api") / "image.erofs"
    build_image(image, user_tree, "-zlz4hc", "-C16384", "-Eztailpacking")
    return image


def test_open_forms(small_image):
    data = small_image.read_bytes()
    with Image.open(small_image) as a, Image(data) as b, Image(bytearray(data)) as c:
        assert a.root.nid == b.root.nid == c.root.nid
    with open(small_image, "rb") as f, Image(f) as d:
        assert d.block_size == 4096
    with open(small_image, "rb") as f:
        e = Image(io.BytesIO(f.read()))
        e.close()
        e.close()
    with pytest.raises(ImageError, match="cannot open"):
        Image.open(small_image.parent / "missing.erofs")


def test_superblock_summary(small_image, tmp_path, user_tree):
    with Image.open(small_image) as img:
        assert img.checksum_ok is True
        assert img.algorithms() == ["lz4"]
        assert {"sb_csum", "lz4_0padding", "big_pcluster", "ztailpacking"} <= set(img.features())
        assert img.superblock.magic == fmt.EROFS_SUPER_MAGIC_V1
        assert img.blocks * img.block_size == small_image.stat().st_size
    image = tmp_path / "nocrc.erofs"
    build_image(image, user_tree, "-Enosbcrc")
    with Image.open(image) as img:
        assert img.checksum_ok is None
        assert img.algorithms() == []
        assert "sb_csum" not in img.features()


def test_lookup_listdir_walk(small_image, user_tree):
    with Image.open(small_image) as img:
        assert img.lookup("/").nid == img.root_nid
        assert img.lookup(b"d/e/f").nid == img.lookup("/d//e/f/").nid
        assert img.lookup("/d/lnk").is_lnk()
        assert img.lookup("/d/hard").nid == img.lookup("/a").nid
        with pytest.raises(NotFoundError) as e:
            img.lookup("/d/nope")
        assert isinstance(e.value, FileNotFoundError) and "/d/nope" in str(e.value)
        with pytest.raises(ImageError, match="not a directory"):
            img.lookup("/a/x")
        names = [n for n, _nid, _t in img.listdir(img.lookup("/d"))]
        assert names == sorted(os.listdir(os.fsencode(user_tree / "d")))
        paths = [p for p, _i in img.walk()]
        assert paths[0] == b"/" and len(paths) == len(set(paths))
        assert paths == [p for p, _i in img.walk()]
        assert [p for p, _i in img.walk("/d/e")] == [b"/d/e", b"/d/e/f", b"/d/e/g"]
        assert [p for p, _i in img.walk(img.lookup("/d/e"))] == [b"/", b"/f", b"/g"]
        # depth first, entries in directory order
        index = {p: i for i, p in enumerate(paths)}
        assert index[b"/d"] < index[b"/d/c"] < index[b"/d/e"] < index[b"/d/e/f"] < index[b"/d/fifo"]


def test_read_ranges_and_streaming(small_image, user_tree):
    rng = random.Random(5)
    with Image.open(small_image) as img:
        for rel in ("comp/t8", "comp/mixed", "d/e/g", "sizes/size_004097", "comp/zeros"):
            want = (user_tree / rel).read_bytes()
            ino = img.lookup(rel)
            assert img.read(ino) == want
            assert b"".join(img.iter_data(ino, 1000)) == want
            assert all(len(p) <= 1000 for p in img.iter_data(ino, 1000))
            for _ in range(30):
                off = rng.randrange(len(want) + 10)
                n = rng.randrange(20000)
                assert img.read(ino, off, n) == want[off:off + n], (rel, off, n)
        assert img.readlink(img.lookup("/symlinks/link_4095")) == \
            os.readlink(os.fsencode(user_tree / "symlinks" / "link_4095"))
        with pytest.raises(ImageError, match="not a symlink"):
            img.readlink(img.lookup("/a"))


def test_extents_describe_layouts(small_image):
    with Image.open(small_image) as img:
        kinds = set()
        for _path, ino in img.walk():
            if not ino.is_reg():
                continue
            extents = img.extents(ino)
            pos = 0
            for ext in extents:
                assert isinstance(ext, Extent) and ext.logical == pos and ext.length > 0
                pos += ext.length
                kinds.add((ext.kind, ext.algorithm))
            assert pos == ino.size
        assert {("compressed", "lz4"), ("ztailpacking", "lz4"), ("plain", None),
                ("inline", None)} <= kinds


def test_xattrs_inline_shared_and_long_prefixes(user_tree, tmp_path):
    image = tmp_path / "image.erofs"
    build_image(image, user_tree, "--xattr-prefix=user.sh", "-x1")
    with Image.open(image) as img:
        assert "xattr_prefixes" in img.features()
        assert img.long_xattr_prefixes() == [(fmt.EROFS_XATTR_INDEX_USER, b"sh")]
        assert img.xattrs(img.lookup("/a")) == [(b"user.shared", b"1" * 30)]
        assert img.xattrs(img.lookup("/d")) == [(b"user.dir", b"v")]
        assert img.xattrs(img.lookup("/d/e")) in ([(b"trusted.big", b"z" * 200)],
                                                  [(b"user.big", b"z" * 200)])
        assert img.xattrs(img.lookup("/d/fifo")) == []


@pytest.mark.root
def test_inode_fields(full_tree, tmp_path):
    image = tmp_path / "image.erofs"
    build_image(image, full_tree)
    with Image.open(image) as img:
        ino = img.lookup("/special/big_minor")
        assert isinstance(ino, Inode) and ino.is_blk()
        assert (ino.major, ino.minor) == (259, 70000)
        assert ino.rdev == fmt.new_encode_dev(259, 70000)
        owner = img.lookup("/owners/f_4294967294_4294967294")
        assert (owner.uid, owner.gid, owner.extended) == (2**32 - 2, 2**32 - 2, True)
        assert img.lookup("/special/fifo").is_fifo()
        assert img.lookup("/special/socket").is_sock()
        assert img.lookup("/links/a/three").nlink == 3
        st = os.lstat(full_tree / "files" / "text")
        text_ino = img.lookup("/files/text")
        assert text_ino.mtime * 10**9 + text_ino.mtime_nsec == st.st_mtime_ns
        assert stat.S_IMODE(img.lookup("/modes/f7777").mode) == 0o7777
