"""Images built by mkerofs, mounted by the Linux kernel and compared with
their source trees, entry by entry (type, size, data, mode, owner, mtime in
ns, symlink target, rdev, nlink, hard-link groups).

Covers: every block size with the full tree (all file types, sizes around
block boundaries, devices with big major/minor, hard links incl. symlinks,
big uids, mtimes with ns and after 2038), big directories (every name
looked up), deep trees, awkward names, inline data on/off, forced inode
forms, -T / --all-time / --mkfs-time, --ignore-mtime, ownership options,
--hard-dereference, exclusion, the image inside its own source,
reproducibility (-T/-U, SOURCE_DATE_EPOCH), UUID/label/checksum fields,
the Python API, and a >4 GiB sparse file (marked slow).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from support.compare import compare_trees, tree_differences
from support.mounts import tmpfs_mount
from support.oracle import image_inodes, read_superblock, superblock_checksum_ok
from support.run import assert_clean_failure, build_image, run_mkerofs
from support.trees import (BLOCK_SIZES, FIXED_T, copy_tree, make_big_dir, make_big_sparse_file,
                           make_deep_tree, make_full_tree, make_names_tree, set_tree_times,
                           write_file)

pytestmark = pytest.mark.kernel

UUID1 = "0123abcd-4567-89ef-0123-456789abcdef"


def regular_inodes(image):
    return {p: i for p, i in image_inodes(image).items() if stat.S_ISREG(i.mode)}


# ---------------------------------------------------------------------------
# the full tree at every block size
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_full_tree_every_block_size(bs, src, image, kernel, fsck):
    make_full_tree(src)
    build_image(image, src, f"-b{bs}")
    sb = read_superblock(image)
    assert sb.magic == 0xE0F5E1E2
    assert sb.block_size == bs
    assert os.path.getsize(image) % bs == 0
    assert os.path.getsize(image) == sb.blocks * bs, "superblock block count != image size"
    with kernel(image) as mnt:
        compare_trees(src, mnt)
    fsck(image, bs)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_big_directory_every_name_looked_up(bs, src, image, kernel):
    names = make_big_dir(src / "big", 5000)
    build_image(image, src, "-b", bs)
    with kernel(image) as mnt:
        big = os.path.join(os.fsencode(mnt), b"big")
        assert sorted(os.listdir(big)) == sorted(names)
        missing = []
        for nm in names:       # the kernel binary-searches dirents: look every name up
            try:
                st = os.lstat(os.path.join(big, nm))
            except FileNotFoundError:
                missing.append(nm)
                continue
            assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(
                os.lstat(os.path.join(os.fsencode(src), b"big", nm)).st_mode)
        assert not missing, f"{len(missing)} names not found by lookup, e.g. {missing[:5]}"
        for absent in (b"e00000_x", b"a", b"zzzz", b"e99999", b"e02500" + b"_" * 39):
            assert not os.path.lexists(os.path.join(big, absent))
        compare_trees(src, mnt)
    # it really spans many directory blocks
    with_dirs = image_inodes(image)
    assert with_dirs[b"/big"].size > 20 * bs


@pytest.mark.parametrize("bs", (512, 2048))
def test_big_directory_long_names(bs, src, image, kernel):
    """Names of 200..255 bytes: at 512-byte blocks one dirent block holds a
    single long name, so block boundaries fall everywhere."""
    d = src / "long"
    d.mkdir()
    names = []
    for i in range(400):
        nm = (b"%04d" % i) + b"n" * (196 + i % 56)
        assert len(nm) <= 255
        write_file(os.path.join(os.fsencode(d), nm), i % 3)
        names.append(nm)
    set_tree_times(src)
    build_image(image, src, "-b", bs)
    with kernel(image) as mnt:
        m = os.path.join(os.fsencode(mnt), b"long")
        for nm in names:
            assert os.path.exists(os.path.join(m, nm)), f"lookup of {nm[:8]!r}... failed"
        compare_trees(src, mnt)


def test_empty_source(src, image, kernel, fsck):
    os.utime(src, ns=(1_600_000_000_123_456_789,) * 2)
    build_image(image, src)
    with kernel(image) as mnt:
        assert os.listdir(mnt) == []
        compare_trees(src, mnt)
    fsck(image)


def test_root_directory_attributes(src, image, kernel):
    """The root inode takes mode, owner and mtime of SOURCE itself."""
    write_file(src / "f", 1)
    os.chmod(src, 0o1750)
    os.chown(src, 1234, 5678)
    os.utime(src, ns=(2_000_000_000_000_000_001,) * 2)
    build_image(image, src)
    with kernel(image) as mnt:
        st = os.stat(mnt)
        assert stat.S_IMODE(st.st_mode) == 0o1750
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert st.st_mtime_ns == 2_000_000_000_000_000_001
        compare_trees(src, mnt)


def test_large_file(src, image, kernel):
    """A 40 MiB file of random data (no holes), to catch chunking errors."""
    size = 40 * 1024 * 1024 + 4095
    with open(src / "large", "wb") as f:
        f.write(os.urandom(size))
    set_tree_times(src)
    build_image(image, src, "-b", "1024")
    with kernel(image) as mnt:
        compare_trees(src, mnt)


def test_source_spanning_mount_points(src, image, kernel):
    """Like mkfs.erofs, the walk crosses into other filesystems below SOURCE;
    hard links are told apart by (device, inode)."""
    make_full_tree(src)
    sub = src / "othermount"
    sub.mkdir()
    with tmpfs_mount("16m") as fs:
        write_file(fs / "x", 5000)
        os.link(fs / "x", fs / "x_link")
        write_file(fs / "y", 10)
        subprocess.run(["mount", "--bind", str(fs), str(sub)], check=True)
        try:
            set_tree_times(sub)
            os.utime(src, ns=(1_600_000_000 * 10**9,) * 2)
            build_image(image, src)
            with kernel(image) as mnt:
                assert os.lstat(Path(mnt) / "othermount/x").st_nlink == 2
                compare_trees(src, mnt)
        finally:
            subprocess.run(["umount", str(sub)], check=True)


@pytest.mark.parametrize("bs", (512, 4096))
def test_deep_tree(bs, src, image, kernel, fsck):
    deepest = make_deep_tree(src, 300)
    build_image(image, src, "-b", str(bs))
    with kernel(image) as mnt:
        bottom = os.path.join(os.fsencode(mnt), deepest, b"bottom")
        assert os.path.getsize(bottom) == 4097
        compare_trees(src, mnt)
    fsck(image, bs)


@pytest.mark.parametrize("bs", (512, 4096))
def test_awkward_names(bs, src, image, kernel):
    names = make_names_tree(src)
    build_image(image, src, f"-b{bs}")
    with kernel(image) as mnt:
        m = os.fsencode(mnt)
        for nm in names:
            assert os.path.isfile(os.path.join(m, nm)), f"lookup of {nm!r} failed"
            assert os.path.isdir(os.path.join(m, b"dirs", nm)), f"lookup of dirs/{nm!r} failed"
        assert set(os.listdir(m)) == set(names) | {b"dirs", b"syms"}
        compare_trees(src, mnt)


def test_compare_trees_detects_differences(src, image, kernel):
    """Guard for the helper itself: a mutated source must not compare equal."""
    make_full_tree(src)
    build_image(image, src)
    f = src / "files" / "text"
    with open(f, "r+b") as fh:
        fh.seek(4000)
        fh.write(b"X")
    os.chmod(src / "modes" / "f0644", 0o4644)
    os.chown(src / "owners" / "f_1_2", 3, 2)
    os.utime(src / "nested", ns=(1, 1))
    os.unlink(src / "links" / "b" / "small_0")
    os.symlink("new", src / "nested" / "new_symlink")
    with kernel(image) as mnt:
        diffs = "\n".join(tree_differences(src, mnt))
    for expected in ("/files/text: data differs at byte 4000", "/modes/f0644: mode",
                     "/owners/f_1_2: uid", "/nested: mtime", "/links/b/small_0: in the image",
                     "/nested/new_symlink: missing", "/links/a/small: nlink"):
        assert expected in diffs, f"{expected!r} not reported in:\n{diffs}"


# ---------------------------------------------------------------------------
# data layout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bs", (512, 4096))
@pytest.mark.parametrize("flag", ["-E^inline_data", "-Enoinline_data"])
def test_inline_data_on_and_off(bs, flag, tmp_path, src, kernel):
    make_full_tree(src, block_sizes=[bs])
    inline_img, plain_img = tmp_path / "inline.erofs", tmp_path / "plain.erofs"
    build_image(inline_img, src, "-b", bs, "-T", FIXED_T)
    build_image(plain_img, src, "-b", bs, "-T", FIXED_T, flag)
    for img in (inline_img, plain_img):
        with kernel(img) as mnt:
            compare_trees(src, mnt, timestamp=FIXED_T)
    inl, pln = regular_inodes(inline_img), regular_inodes(plain_img)
    inline_files = [p for p, i in inl.items() if i.layout == 2]
    assert inline_files, "no regular file has its tail inline by default"
    # a 100-byte file must be inline by default (its tail fits next to its inode)
    assert inl[b"/sizes/size_000100"].layout == 2
    assert not [p for p, i in pln.items() if i.layout == 2], \
        f"{flag}: regular files still inline"
    assert os.path.getsize(plain_img) > os.path.getsize(inline_img)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_tails_that_do_and_do_not_fit_inline(bs, src, image, kernel):
    """Sizes k*bs + (bs-33/-32/-31/-65/-64/-63): with compact (32 B) and
    extended (64 B) inodes some tails fit the inode's block exactly, some
    don't; all must read back right."""
    make_full_tree(src, block_sizes=[bs])
    for args, timestamp in (([], None), (["-T", FIXED_T], FIXED_T),
                            (["-Eforce-inode-extended"], None)):
        build_image(image, src, "-b", bs, *args)
        with kernel(image) as mnt:
            compare_trees(src, mnt, timestamp=timestamp)
        layouts = {i.layout for i in regular_inodes(image).values()}
        assert layouts <= {0, 2}


# ---------------------------------------------------------------------------
# inode forms and timestamps
# ---------------------------------------------------------------------------

def test_force_inode_compact_with_timestamp(src, image, kernel, fsck):
    make_full_tree(src, big_ids=False)
    build_image(image, src, "-T", FIXED_T, "-Eforce-inode-compact")
    inodes = image_inodes(image)
    extended = [p for p, i in inodes.items() if i.extended]
    assert not extended, f"extended inodes despite force-inode-compact: {extended[:5]}"
    with kernel(image) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T)
    fsck(image)


def test_force_inode_compact_without_timestamp(src, image, kernel):
    """mkfs.erofs 1.9.3: -Eforce-inode-compact implies --ignore-mtime, so files
    whose mtime differs from the build time get the build time (no error)."""
    make_full_tree(src, big_ids=False)
    before = int(time.time())
    build_image(image, src, "-Eforce-inode-compact")
    after = int(time.time())
    sb = read_superblock(image)
    assert before <= sb.mkfs_time <= after
    assert not [p for p, i in image_inodes(image).items() if i.extended]
    with kernel(image) as mnt:
        compare_trees(src, mnt, compact_mtime=sb.mkfs_time)


@pytest.mark.parametrize("what", ["uid", "gid"])
def test_force_inode_compact_refuses_big_ids(what, src, image):
    """An id > 65535 cannot be stored in a compact inode: mkfs.erofs fails
    ("file X cannot be in compact form")."""
    write_file(src / "ok", 10)
    write_file(src / "too_big", 10)
    os.chown(src / "too_big", 70000 if what == "uid" else 0, 70000 if what == "gid" else 0)
    r = run_mkerofs("-T", FIXED_T, "-Eforce-inode-compact", image, src, check=False)
    assert_clean_failure(r, mentions=["too_big"], image=image)


def test_force_inode_compact_ok_with_all_root(src, image, kernel):
    make_full_tree(src, big_ids=True)
    build_image(image, src, "-T", FIXED_T, "--all-root", "-Eforce-inode-compact")
    assert not [p for p, i in image_inodes(image).items() if i.extended]
    with kernel(image) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T, all_root=True)


def test_force_inode_extended(src, image, kernel, fsck):
    make_full_tree(src)
    build_image(image, src, "-T", FIXED_T, "-Eforce-inode-extended")
    compact = [p for p, i in image_inodes(image).items() if not i.extended]
    assert not compact, f"compact inodes despite force-inode-extended: {compact[:5]}"
    with kernel(image) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T)
    fsck(image)


def test_default_inode_forms_as_mkfs_erofs(src, image):
    """With -T every inode that fits is compact (mkfs.erofs); ids > 65535
    need the extended form."""
    make_full_tree(src, big_ids=True)
    build_image(image, src, "-T", FIXED_T)
    for p, i in image_inodes(image).items():
        need = i.uid > 0xFFFF or i.gid > 0xFFFF
        assert i.extended == need, f"{p!r}: extended={i.extended}, uid={i.uid} gid={i.gid}"
    # without -T, files keep their own mtimes: they need extended inodes
    build_image(image, src)
    assert image_inodes(image)[b"/files/text"].extended


@pytest.mark.parametrize("args", [["-T", FIXED_T], [f"-T{FIXED_T}", "--all-time"],
                                  ["--all-time", "-T", FIXED_T]])
def test_fixed_timestamp_all_time(args, src, image, kernel):
    make_full_tree(src)
    build_image(image, src, *args)
    sb = read_superblock(image)
    assert sb.mkfs_time == FIXED_T
    with kernel(image) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T)
        assert os.stat(mnt).st_mtime_ns == FIXED_T * 10**9


@pytest.mark.parametrize("t", [0, 2**31 + 5, 2**32 + 5, 5_000_000_000])
def test_fixed_timestamp_extremes(t, src, image, kernel):
    """-T 0, after 2038 and after 2106 (beyond 32 bits)."""
    make_full_tree(src)
    build_image(image, src, "-T", t)
    assert read_superblock(image).mkfs_time == t
    with kernel(image) as mnt:
        compare_trees(src, mnt, timestamp=t)


@pytest.mark.parametrize("args", [["-T", FIXED_T, "--mkfs-time"], ["--mkfs-time", f"-T{FIXED_T}"]])
def test_fixed_timestamp_mkfs_time_only(args, src, image, kernel):
    make_full_tree(src)
    build_image(image, src, *args)
    assert read_superblock(image).mkfs_time == FIXED_T
    with kernel(image) as mnt:
        compare_trees(src, mnt)          # per-file mtimes kept, with ns


def test_mtime_preserved_by_default(src, image, kernel):
    """ns precision, after 2038, directories too, no -T."""
    make_full_tree(src)
    special = {b"files/text": 2**31 * 10**9 + 123456789,
               b"files/empty": 4_102_444_800 * 10**9 + 999_999_999,
               b"nested": 1_000_000_000 * 10**9 + 1,
               b"nested/a/b": 3_000_000_000 * 10**9 + 500}
    set_tree_times(src, special)
    build_image(image, src)
    with kernel(image) as mnt:
        for rel, ns in special.items():
            assert os.lstat(os.path.join(os.fsencode(mnt), rel)).st_mtime_ns == ns, rel
        compare_trees(src, mnt)


def test_ignore_mtime(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--ignore-mtime")
    sb = read_superblock(image)
    with kernel(image) as mnt:
        compare_trees(src, mnt, compact_mtime=sb.mkfs_time)


def test_preserve_mtime_overrides_ignore_mtime(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--ignore-mtime", "--preserve-mtime")
    with kernel(image) as mnt:
        compare_trees(src, mnt)


def test_ignore_mtime_with_timestamp(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--ignore-mtime", "-T", FIXED_T, "--mkfs-time")
    with kernel(image) as mnt:
        compare_trees(src, mnt, compact_mtime=FIXED_T)


# ---------------------------------------------------------------------------
# ownership
# ---------------------------------------------------------------------------

def test_all_root(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--all-root")
    with kernel(image) as mnt:
        compare_trees(src, mnt, all_root=True)
        for dirpath, dirs, files in os.walk(mnt):
            for n in dirs + files + ["."]:
                st = os.lstat(os.path.join(dirpath, n))
                assert (st.st_uid, st.st_gid) == (0, 0)


def test_force_uid_gid(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--force-uid=4321", "--force-gid", "100000")
    with kernel(image) as mnt:
        compare_trees(src, mnt, force_uid=4321, force_gid=100000)


def test_uid_gid_offsets(src, image, kernel):
    make_full_tree(src, big_ids=False)
    build_image(image, src, "--uid-offset=100000", "--gid-offset", "7")
    with kernel(image) as mnt:
        compare_trees(src, mnt, uid_offset=100000, gid_offset=7)


def test_force_ids_plus_offsets(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--force-uid=10", "--force-gid=20",
                "--uid-offset=1000", "--gid-offset=2000")
    with kernel(image) as mnt:
        compare_trees(src, mnt, force_uid=10, force_gid=20, uid_offset=1000, gid_offset=2000)
        assert os.stat(mnt).st_uid == 1010 and os.stat(mnt).st_gid == 2020


def test_all_root_with_offsets(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--all-root", "--uid-offset=5", "--gid-offset=6")
    with kernel(image) as mnt:
        compare_trees(src, mnt, all_root=True, uid_offset=5, gid_offset=6)


# ---------------------------------------------------------------------------
# hard links
# ---------------------------------------------------------------------------

def test_hard_links_share_one_inode(src, image, kernel):
    make_full_tree(src)
    build_image(image, src)
    with kernel(image) as mnt:
        m = Path(mnt)
        a = os.lstat(m / "links/a/three")
        assert a.st_nlink == 3
        assert os.lstat(m / "links/b/three_2").st_ino == a.st_ino
        assert os.lstat(m / "links/three_3").st_ino == a.st_ino
        sym = os.lstat(m / "links/a/sym")
        assert stat.S_ISLNK(sym.st_mode) and sym.st_nlink == 2
        assert os.lstat(m / "links/b/sym_2").st_ino == sym.st_ino
        assert os.lstat(m / "links/a/small").st_nlink == 6
        compare_trees(src, mnt)


def test_hard_links_outside_the_tree_not_counted(tmp_path, image, kernel):
    """nlink counts the links inside SOURCE only."""
    src = tmp_path / "src"
    src.mkdir()
    write_file(src / "inside", 100)
    os.link(src / "inside", tmp_path / "outside_link")
    os.link(src / "inside", src / "inside2")
    set_tree_times(src)
    build_image(image, src)
    with kernel(image) as mnt:
        assert os.lstat(Path(mnt) / "inside").st_nlink == 2
        compare_trees(src, mnt)


def test_hard_dereference(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--hard-dereference")
    with kernel(image) as mnt:
        m = Path(mnt)
        assert os.lstat(m / "links/a/three").st_nlink == 1
        assert os.lstat(m / "links/a/three").st_ino != os.lstat(m / "links/b/three_2").st_ino
        compare_trees(src, mnt, hard_dereference=True)


# ---------------------------------------------------------------------------
# exclusion
# ---------------------------------------------------------------------------

def test_exclude_paths(src, image, kernel):
    make_full_tree(src)
    excluded = ["files/text", "nested/a", "links/b", "special/fifo"]
    build_image(image, src, *[f"--exclude-path={p}" for p in excluded])
    with kernel(image) as mnt:
        m = Path(mnt)
        for p in excluded:
            assert not os.path.lexists(m / p), p
        # links/a/three keeps the links outside links/b only
        assert os.lstat(m / "links/a/three").st_nlink == 2
        assert os.lstat(m / "nested").st_nlink == 2 + 1          # only 'empty' left
        compare_trees(src, mnt, exclude_paths=excluded)


def test_exclude_path_is_literal_and_relative(src, image, kernel):
    """As mkfs.erofs (lib/exclude.c): an exact literal match of the path
    relative to SOURCE; no globbing, a longer/shorter path does not match."""
    make_full_tree(src)
    build_image(image, src, "--exclude-path=files/tex", "--exclude-path=files/*",
                "--exclude-path", "sizes/size_000001")
    with kernel(image) as mnt:
        m = Path(mnt)
        assert (m / "files/text").exists()
        assert not os.path.lexists(m / "sizes/size_000001")
        compare_trees(src, mnt, exclude_paths=["sizes/size_000001"])


def test_exclude_path_with_source_prefix_is_not_a_match(src, image, kernel):
    """mkfs.erofs 1.5 and 1.9.3 compare the pattern with the path relative to
    SOURCE (erofs_fspath): SRC/files/text does not exclude files/text."""
    make_full_tree(src)
    build_image(image, src, f"--exclude-path={src}/files/text")
    with kernel(image) as mnt:
        assert (Path(mnt) / "files/text").exists()


def test_exclude_regex(src, image, kernel):
    make_full_tree(src)
    regexes = [r"^sizes/size_0000[0-9][0-9]$", r"fifo", r"^links/a$"]
    build_image(image, src, *[f"--exclude-regex={r}" for r in regexes])
    with kernel(image) as mnt:
        m = Path(mnt)
        assert not os.path.lexists(m / "sizes/size_000010")
        assert (m / "sizes/size_000100").exists()
        assert not os.path.lexists(m / "special/fifo")
        assert not os.path.lexists(m / "links/a")
        assert (m / "links/b/three_2").exists()
        compare_trees(src, mnt, exclude_regexes=regexes)


def test_exclude_regex_is_posix_extended(src, image, kernel):
    """mkfs.erofs compiles --exclude-regex with regcomp(REG_EXTENDED): POSIX
    bracket classes like [[:digit:]] must work."""
    make_full_tree(src)
    rx = "^sizes/size_[[:digit:]]{6}$"
    build_image(image, src, f"--exclude-regex={rx}")
    with kernel(image) as mnt:
        assert os.listdir(Path(mnt) / "sizes") == []
        compare_trees(src, mnt, exclude_regexes=[r"^sizes/size_[0-9]{6}$"])


def test_exclude_path_and_regex_together(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "--exclude-path=owners", "--exclude-regex=^symlinks/link_0[0-9]")
    with kernel(image) as mnt:
        compare_trees(src, mnt, exclude_paths=["owners"],
                      exclude_regexes=["^symlinks/link_0[0-9]"])


def test_image_inside_source_is_not_included(src, kernel):
    make_full_tree(src)
    image = src / "img.erofs"
    build_image(image, src)
    with kernel(image) as mnt:
        assert not os.path.lexists(Path(mnt) / "img.erofs")
        compare_trees(src, mnt, exclude_paths=["img.erofs"], check_root_mtime=False)
    # rebuilding over the existing image inside the source: still not included
    build_image(image, src, "-T", FIXED_T)
    with kernel(image) as mnt:
        assert not os.path.lexists(Path(mnt) / "img.erofs")
        compare_trees(src, mnt, exclude_paths=["img.erofs"], timestamp=FIXED_T)


def test_image_inside_subdirectory_of_source(src, kernel):
    make_full_tree(src)
    image = src / "nested" / "empty" / "img.erofs"
    build_image(image, src, "-T", FIXED_T)
    with kernel(image) as mnt:
        assert os.listdir(Path(mnt) / "nested" / "empty") == []
        compare_trees(src, mnt, exclude_paths=["nested/empty/img.erofs"], timestamp=FIXED_T)


# ---------------------------------------------------------------------------
# superblock fields and reproducibility
# ---------------------------------------------------------------------------

def test_reproducible_with_timestamp_and_uuid(tmp_path, src, kernel):
    make_full_tree(src)
    a, b = tmp_path / "a.erofs", tmp_path / "b.erofs"
    build_image(a, src, "-T", FIXED_T, "-U", UUID1)
    for f in (src / "files").iterdir():          # touch atimes, not content
        f.read_bytes()
    build_image(b, src, "-T", FIXED_T, "-U", UUID1)
    assert a.read_bytes() == b.read_bytes()
    sb = read_superblock(a)
    assert sb.uuid == uuidlib.UUID(UUID1).bytes
    assert a.read_bytes()[1024 + 48:1024 + 64] == uuidlib.UUID(UUID1).bytes
    with kernel(a) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T)


@pytest.mark.parametrize("how", ["T-U", "SOURCE_DATE_EPOCH"])
def test_reproducible_across_copies_of_the_tree(how, tmp_path, src, kernel):
    """Same content, another filesystem (tmpfs), other inode numbers and
    another readdir order (entries created in reverse): byte-identical
    images, as mkfs.erofs, which sorts directory entries before laying out
    inodes."""
    make_full_tree(src)
    make_big_dir(src / "bigdir", 600)
    set_tree_times(src)
    args, env = ((["-T", FIXED_T, "-U", UUID1], None) if how == "T-U"
                 else ([], {"SOURCE_DATE_EPOCH": 1_600_000_000}))
    a, b = tmp_path / "a.erofs", tmp_path / "b.erofs"
    build_image(a, src, *args, env=env)
    with tmpfs_mount("256m") as fs:
        copy = fs / "copy"
        copy_tree(src, copy, reverse=True)
        assert os.listdir(src / "sizes") != os.listdir(copy / "sizes"), \
            "the copy did not change the readdir order; the test would prove nothing"
        build_image(b, copy, *args, env=env)
    with kernel(b) as mnt:
        compare_trees(src, mnt, **({"timestamp": FIXED_T} if how == "T-U"
                                   else {"clamp": 1_600_000_000}))
    assert a.read_bytes() == b.read_bytes(), "images of identical trees differ"


def test_uuid_shown_by_dump_erofs(src, image):
    if shutil.which("dump.erofs") is None:
        pytest.skip("dump.erofs not installed")
    make_full_tree(src)
    build_image(image, src, "-U", UUID1)
    import subprocess
    out = subprocess.run(["dump.erofs", "-s", str(image)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    assert UUID1 in out.lower()


def test_uuid_random_clear_and_label(tmp_path, src, kernel):
    write_file(src / "f", 10)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_image(a, src, "-T", FIXED_T)
    build_image(b, src, "-T", FIXED_T, "-U", "random")
    build_image(c, src, "-T", FIXED_T, "-Uclear", "-L", "my-label")
    ua, ub, uc = (read_superblock(x).uuid for x in (a, b, c))
    assert ua != ub, "random UUIDs of two builds are equal"
    assert ua != bytes(16) and ub != bytes(16)
    assert uc == bytes(16)
    raw = c.read_bytes()
    assert raw[1024 + 64:1024 + 80] == b"my-label".ljust(16, b"\0")
    assert read_superblock(a).label == b""
    with kernel(c) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T)


def test_label_of_15_bytes(src, image):
    write_file(src / "f", 1)
    label = "ab\u00e9cdefghijklm"          # 15 bytes in UTF-8
    assert len(label.encode()) == 15
    build_image(image, src, "-L", label)
    assert read_superblock(image).volume_name == label.encode() + b"\0"


def test_source_date_epoch_reproducible_and_clamped(tmp_path, src, kernel):
    sde = 1_600_000_000
    make_full_tree(src)
    future = 1_700_000_000 * 10**9 + 5          # newer than SOURCE_DATE_EPOCH
    old = 1_500_000_000 * 10**9 + 77
    os.utime(src / "files" / "text", ns=(future, future))
    os.utime(src / "files" / "empty", ns=(old, old))
    a, b = tmp_path / "a.erofs", tmp_path / "b.erofs"
    build_image(a, src, env={"SOURCE_DATE_EPOCH": sde})
    time.sleep(1.1)
    build_image(b, src, env={"SOURCE_DATE_EPOCH": sde})
    assert a.read_bytes() == b.read_bytes(), "SOURCE_DATE_EPOCH builds differ"
    sb = read_superblock(a)
    assert sb.mkfs_time == sde
    assert sb.uuid != bytes(16)
    with kernel(a) as mnt:
        m = Path(mnt)
        assert os.lstat(m / "files/text").st_mtime_ns == sde * 10**9
        assert os.lstat(m / "files/empty").st_mtime_ns == old
        compare_trees(src, mnt, clamp=sde)


def test_source_date_epoch_uuid_depends_on_nothing_random(tmp_path, src):
    write_file(src / "f", 10)
    set_tree_times(src)
    a, b = tmp_path / "a", tmp_path / "b"
    build_image(a, src, env={"SOURCE_DATE_EPOCH": "1000000000"})
    build_image(b, src, env={"SOURCE_DATE_EPOCH": "1000000000"})
    assert read_superblock(a).uuid == read_superblock(b).uuid


def test_timestamp_overrides_source_date_epoch(src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "-T", FIXED_T, env={"SOURCE_DATE_EPOCH": 1_600_000_000})
    assert read_superblock(image).mkfs_time == FIXED_T
    with kernel(image) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_superblock_checksum(bs, src, image, kernel):
    make_full_tree(src)
    build_image(image, src, "-b", bs)
    sb = read_superblock(image)
    assert sb.has_sb_checksum, "sb_csum compat bit not set by default"
    assert superblock_checksum_ok(image), "superblock checksum does not verify"
    build_image(image, src, "-b", bs, "-Enosbcrc")
    raw = image.read_bytes()
    compat = int.from_bytes(raw[1024 + 8:1024 + 12], "little")
    assert not compat & 1, "-Enosbcrc left the sb_csum bit set"
    with kernel(image) as mnt:
        compare_trees(src, mnt)


def test_corrupted_checksum_is_rejected_by_kernel(src, image, kernel):
    """Makes sure the checksum checks above mean something: the kernel
    verifies it."""
    write_file(src / "f", 10)
    build_image(image, src)
    raw = bytearray(image.read_bytes())
    raw[1024 + 4] ^= 0xFF
    image.write_bytes(bytes(raw))
    from support.mounts import MountError
    with pytest.raises(MountError):
        with kernel(image):
            pass


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------

def test_python_api_matches_cli(tmp_path, src, kernel):
    from mkerofs import BuildOptions, build
    make_full_tree(src)
    fields = {f.name: f for f in dataclasses.fields(BuildOptions)}
    u = uuidlib.UUID(UUID1)
    wanted = {"block_size": 1024, "timestamp": FIXED_T, "label": b"api",
              "uuid": u.bytes, "all_root": True, "exclude_paths": ["files/text"]}
    kwargs = {}
    for k, v in wanted.items():
        if k not in fields:
            continue
        ann = str(fields[k].type)
        if k == "uuid" and "bytes" not in ann:
            v = str(u) if "str" in ann else u
        if k == "label" and "bytes" not in ann:
            v = v.decode()
        kwargs[k] = v
    if "all_root" not in fields:
        kwargs["force_uid"] = kwargs["force_gid"] = 0
    opts = BuildOptions(**kwargs)
    api_img, cli_img = tmp_path / "api.erofs", tmp_path / "cli.erofs"
    build(api_img, src, opts)
    build_image(cli_img, src, "-b1024", "-T", FIXED_T, "-L", "api", "-U", UUID1,
                "--all-root", "--exclude-path=files/text")
    assert api_img.read_bytes() == cli_img.read_bytes(), "API and CLI builds differ"
    with kernel(api_img) as mnt:
        compare_trees(src, mnt, timestamp=FIXED_T, all_root=True, exclude_paths=["files/text"])


def test_python_api_accepts_str_and_path(tmp_path, src, kernel):
    from mkerofs import BuildOptions, build
    write_file(src / "f", 5000)
    set_tree_times(src)
    build(str(tmp_path / "s.erofs"), str(src), BuildOptions())
    build(tmp_path / "p.erofs", src, BuildOptions())
    for img in ("s.erofs", "p.erofs"):
        with kernel(tmp_path / img) as mnt:
            compare_trees(src, mnt)


# ---------------------------------------------------------------------------
# > 4 GiB
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sparse_file_over_4gib(src, image, kernel):
    big = src / "big.sparse"
    make_big_sparse_file(big)
    write_file(src / "small", 100)
    set_tree_times(src)
    build_image(image, src, "-T", FIXED_T)
    ino = image_inodes(image)[b"/big.sparse"]
    assert ino.extended and ino.size == os.path.getsize(big)
    with kernel(image) as mnt:
        m = Path(mnt)
        with open(m / "big.sparse", "rb") as f:
            f.seek(2**32 - 10)
            assert f.read(20) == b"across-4GiB-boundary"
        compare_trees(src, mnt, timestamp=FIXED_T)
    # and it cannot be squeezed into a compact inode
    image.unlink()
    r = run_mkerofs("-T", FIXED_T, "-Eforce-inode-compact", image, src, check=False)
    assert_clean_failure(r, mentions=["big.sparse"], image=image)


@pytest.mark.slow
def test_link_counts_beyond_16_bits(tmp_path, kernel):
    """A file with 65601 links and a directory with 65600 subdirectories
    (built on tmpfs, which has no link limit): nlink does not fit a compact
    inode's 16 bits, so even with -T those inodes must be extended."""
    n = 65600
    with tmpfs_mount("128m") as fs:
        src = fs / "src"
        src.mkdir()
        (src / "f").write_bytes(b"linked")
        (src / "links").mkdir()
        (src / "dirs").mkdir()
        for i in range(n):
            os.link(src / "f", src / "links" / f"l{i}")
        for i in range(n):
            os.mkdir(src / "dirs" / f"d{i}")
        image = tmp_path / "image.erofs"
        build_image(image, src, "-T", FIXED_T)
        inodes = image_inodes(image)
        assert inodes[b"/f"].extended and inodes[b"/f"].nlink == n + 1
        assert inodes[b"/dirs"].extended and inodes[b"/dirs"].nlink == n + 2
        assert not inodes[b"/links"].extended
        with kernel(image) as mnt:
            m = Path(mnt)
            assert os.lstat(m / "f").st_nlink == n + 1
            assert os.lstat(m / "links" / "l65599").st_ino == os.lstat(m / "f").st_ino
            assert os.lstat(m / "dirs").st_nlink == n + 2
            compare_trees(src, mnt, timestamp=FIXED_T)
