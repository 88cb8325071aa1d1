"""``mkerofs --tar``: images built from tar archives, mounted by Linux and compared with the tree
the archive was made of (or, for hand-written tars, with what each entry says).

* Producers and formats: GNU tar (ustar, gnu, oldgnu, posix with ``--xattrs --acls --sparse``),
  bsdtar (ustar, gnutar, pax with ``--xattrs --acls``) and Python's tarfile (USTAR, GNU, PAX), each
  from a tree holding only what its format carries (support/tars.py), so the mounted image must
  equal the tree: types, data, modes, owners, mtimes to the format's resolution, symlink targets,
  device numbers, hard-link groups and every xattr and ACL (an image of a format without xattrs
  must have none). Builds use ``-T 1000000000 --mkfs-time``: ``-T`` alone would replace every
  mtime (tested on its own).
* Input: gzip, xz, lzma-alone and zstd (zstd known by its magic, gzip with or without
  ``--ungzip``), from a path or on stdin; ``--ungzip=F`` writes the decompressed stream to F.
* Build options on a tar: -zlz4hc, -zlzma with ztailpacking/fragments/dedupe, -b1024, -b512,
  --sort=none with -Enoinline_data, -T alone, --exclude-path/--exclude-regex (on archive paths),
  -x-1, -U, --offset, --verify, ``--tar=headerball`` (files read back as zeros).
* The minimal cases of the tar-input note (section 10), hand-written block by block, with
  mkerofs's expected result. Where mkfs.erofs 1.9.3 loses entries (cases 15, 16, 19) mkerofs keeps
  every one (case 17, a device without numbers, is refused with a message instead of ending the
  archive silently: see writer/test_tar_errors.py).
* ``--aufs`` whiteouts and opaque directories (also at the root), ``--ovlfs-strip``, and an
  overlayfs mount of two layer images proving the whiteouts and the opaque directory hide the
  lower layer; containerd's command lines verbatim, with the layer on stdin.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import stat
import uuid as uuidlib
from pathlib import Path

import pytest

from support.compare import Expect, compare_trees, host_xattrs
from support.mounts import overlay_mount
from support.oracle import read_superblock
from support.run import build_image, run_mkerofs
from support.tars import (DECODE_OPTION, END, MKFS_TIME, RECIPES, Archives, compress, entry, header,
                          headerball, oldgnu_sparse, pax, zero_file_data)
from support.trees import copy_tree

pytestmark = pytest.mark.kernel

BASE = ("--tar=f", "--quiet", "-T", str(MKFS_TIME), "--mkfs-time", "-Uclear")
UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OPAQUE, ORIGIN = "trusted.overlay.opaque", "trusted.overlay.origin"


# -- archives of trees (built once per module) ---------------------------------------------------

@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archives:
    """archive(name) -> (tar path, source tree) for a recipe of support.tars.RECIPES."""
    return Archives(tmp_path_factory)


def build_tar(image: Path, tar, *opts, stdin: bool = False, base=BASE, **kw):
    """Build IMAGE from a tar given by path, or (stdin=True) on standard input."""
    if stdin:
        return run_mkerofs(*base, *opts, image, input=Path(tar).read_bytes(), **kw)
    return run_mkerofs(*base, *opts, image, tar, **kw)


def assert_image_equals_tree(image: Path, src: Path, kernel, expect: Expect | None = None,
                             offset: int | None = None) -> None:
    expect = expect or Expect()
    expect.xattrs = True
    with kernel(image, offset=offset) as mnt:
        compare_trees(src, mnt, expect=expect)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_producer_and_format(name, archive, tmp_path, kernel):
    tar, src = archive(name)
    build_tar(tmp_path / "i.erofs", tar)
    assert_image_equals_tree(tmp_path / "i.erofs", src, kernel)


# -- compressed input, stdin -------------------------------------------------------------------

@pytest.mark.parametrize("kind,flag,stdin", [
    ("gzip", True, False), ("gzip", False, False), ("gzip", True, True), ("xz", True, False),
    ("lzma", True, False), ("lzma", True, True), ("zstd", False, False), ("zstd", False, True),
    (None, False, True),
])
def test_compressed_and_stdin_input(kind, flag, stdin, archive, tmp_path, kernel):
    """Without a flag a gzip or zstd stream is known by its magic (mkfs.erofs reads zstd not at
    all and gzip only with --ungzip); lzma-alone has no magic and needs --unlzma."""
    tar, src = archive("gnu-posix-sparse")
    if kind:
        tar = compress(tar, kind, tmp_path / f"t.{kind}")
    opts = [DECODE_OPTION[kind]] if flag else []
    build_tar(tmp_path / "i.erofs", tar, *opts, stdin=stdin)
    assert_image_equals_tree(tmp_path / "i.erofs", src, kernel)


def test_gzip_flag_without_value_and_dump_of_the_stream(archive, tmp_path, kernel):
    tar, src = archive("gnu-posix")
    gz = compress(tar, "gzip", tmp_path / "t.gz")
    build_tar(tmp_path / "a.erofs", gz, "--gzip")
    assert_image_equals_tree(tmp_path / "a.erofs", src, kernel)
    dump = tmp_path / "dump.tar"
    build_tar(tmp_path / "b.erofs", gz, f"--ungzip={dump}", stdin=True)
    assert dump.read_bytes() == tar.read_bytes(), "--ungzip=F must hold the decompressed tar"
    assert_image_equals_tree(tmp_path / "b.erofs", src, kernel)


# -- build options on a tar --------------------------------------------------------------------

OPTION_CASES = {
    "lz4hc": ("-zlz4hc",),
    "lzma-ztailpacking": ("-zlzma", "-Eztailpacking"),
    "lzma-fragments": ("-zlzma", "-Efragments"),
    "lzma-dedupe": ("-zlzma", "-Ededupe"),
    "b1024": ("-b1024",),
    "b512": ("-b512",),
    "sort-none-noinline": ("--sort=none", "-Enoinline_data"),
    "sort-path": ("--sort=path",),
    "noinline": ("-Enoinline_data",),
    "verify": ("--verify",),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_build_options(case, archive, tmp_path, kernel):
    tar, src = archive("gnu-posix-sparse")
    build_tar(tmp_path / "i.erofs", tar, *OPTION_CASES[case])
    assert_image_equals_tree(tmp_path / "i.erofs", src, kernel)


def test_sort_none_from_stdin(archive, tmp_path, kernel):
    tar, src = archive("bsdtar-pax")
    build_tar(tmp_path / "i.erofs", tar, "--sort=none", "-Enoinline_data", stdin=True)
    assert_image_equals_tree(tmp_path / "i.erofs", src, kernel)


def test_T_alone_sets_every_mtime(archive, tmp_path, kernel):
    tar, src = archive("gnu-posix")
    build_tar(tmp_path / "i.erofs", tar, base=("--tar=f", "--quiet", "-T", str(MKFS_TIME)))
    assert_image_equals_tree(tmp_path / "i.erofs", src, kernel, Expect(timestamp=MKFS_TIME))


def test_exclude_on_archive_paths(archive, tmp_path, kernel):
    tar, src = archive("gnu-posix")
    paths = ("files/size_000513", "modes/d1777", "long/" + "L" * 120)
    regexes = (r"^symlinks/dang", r"size_0040", r"^xattr/acl$")
    opts = [f"--exclude-path={p}" for p in paths] + [f"--exclude-regex={r}" for r in regexes]
    build_tar(tmp_path / "i.erofs", tar, *opts)
    assert_image_equals_tree(tmp_path / "i.erofs", src, kernel,
                             Expect(exclude_paths=paths, exclude_regexes=regexes))


def test_no_xattrs_with_x_minus_1(archive, tmp_path, kernel):
    tar, src = archive("gnu-posix")
    build_tar(tmp_path / "i.erofs", tar, "-x-1")
    with kernel(tmp_path / "i.erofs") as mnt:
        compare_trees(src, mnt, xattrs=False)
        found = {}
        for dirpath, dirs, files in os.walk(mnt):
            for n in [dirpath] + [os.path.join(dirpath, f) for f in dirs + files]:
                if host_xattrs(os.fsencode(n)):
                    found[n] = host_xattrs(os.fsencode(n))
        assert not found, f"-x-1 must store no xattrs: {found}"


def test_uuid_and_offset(archive, tmp_path, kernel):
    tar, src = archive("python-gnu")
    image = tmp_path / "i.erofs"
    build_tar(image, tar, "-U", UUID, "--offset=8192", base=BASE[:-1])
    assert read_superblock(image, offset=8192).uuid_obj == uuidlib.UUID(UUID)
    assert image.read_bytes()[:8192] == bytes(8192), "--offset leaves the first bytes alone"
    assert_image_equals_tree(image, src, kernel, offset=8192)


def test_headerball_reads_back_zeros(archive, tmp_path, kernel):
    tar, src = archive("python-pax")
    (tmp_path / "h.tar").write_bytes(headerball(tar))
    zeroed = tmp_path / "zeroed"
    copy_tree(src, zeroed)
    zero_file_data(zeroed)
    image = tmp_path / "i.erofs"
    build_tar(image, tmp_path / "h.tar", "--tar=headerball")
    assert image.stat().st_size < tar.stat().st_size // 2, "headerball stores no file data"
    assert_image_equals_tree(image, zeroed, kernel)
    # the same from stdin
    build_tar(tmp_path / "s.erofs", tmp_path / "h.tar", "--tar=headerball", stdin=True)
    assert_image_equals_tree(tmp_path / "s.erofs", zeroed, kernel)


# -- the note's minimal cases (section 10) -----------------------------------------------------

@contextlib.contextmanager
def mounted_tar(tmp_path: Path, kernel, data: bytes, *opts, base=BASE):
    (tmp_path / "in.tar").write_bytes(data)
    build_tar(tmp_path / "out.erofs", tmp_path / "in.tar", *opts, base=base)
    with kernel(tmp_path / "out.erofs") as mnt:
        yield mnt


def lst(path) -> os.stat_result:
    return os.lstat(path)


def perm(st) -> tuple[int, int, int]:
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def xattrs_of(path) -> dict:
    return {k: v for k, v in host_xattrs(os.fsencode(path)).items()}


T0, T1 = MKFS_TIME * 10**9, 1_700_000_000 * 10**9


def test_case01_basic_ustar(tmp_path, kernel):
    data = entry(b"d/", typeflag=b"5", mode=0o755, uid=1000, gid=1000) + \
        entry(b"d/f", b"hello\n", mode=0o640, uid=1000, gid=100) + \
        entry(b"d/l", typeflag=b"2", linkname=b"f", mode=0o777) + \
        entry(b"d/x", mode=0o4755) + END
    with mounted_tar(tmp_path, kernel, data) as m:
        root = lst(m)
        assert (perm(root), root.st_mtime_ns, root.st_nlink) == ((0o777, 0, 0), T0, 3)
        d = lst(m / "d")
        assert (perm(d), d.st_nlink, d.st_mtime_ns) == ((0o755, 1000, 1000), 2, T1)
        assert (m / "d/f").read_bytes() == b"hello\n" and perm(lst(m / "d/f")) == (0o640, 1000, 100)
        assert os.readlink(m / "d/l") == "f" and stat.S_IMODE(lst(m / "d/l").st_mode) == 0o777
        x = lst(m / "d/x")
        assert stat.S_ISREG(x.st_mode) and x.st_size == 0 and stat.S_IMODE(x.st_mode) == 0o4755


def test_case02_implicit_parents(tmp_path, kernel):
    data = entry(b"a/b/f", b"z", uid=5, gid=6) + END
    with mounted_tar(tmp_path, kernel, data) as m:
        a, b, f = lst(m / "a"), lst(m / "a/b"), lst(m / "a/b/f")
        assert (perm(a), a.st_mtime_ns, a.st_nlink) == ((0o777, 0, 0), T0, 3)
        assert (perm(b), b.st_mtime_ns, b.st_nlink) == ((0o777, 0, 0), T0, 2)
        assert (f.st_uid, f.st_gid, f.st_mtime_ns) == (5, 6, T1)


def test_case03_late_root_entry(tmp_path, kernel):
    data = entry(b"a/f") + entry(b"./", typeflag=b"5", mode=0o750, uid=1000, gid=1000,
                                 mtime=1_600_000_000) + entry(b"b/f") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert (perm(lst(m)), lst(m).st_mtime_ns) == ((0o750, 1000, 1000), 1_600_000_000 * 10**9)
        assert (perm(lst(m / "a")), lst(m / "a").st_mtime_ns) == ((0o777, 0, 0), T0)
        assert (perm(lst(m / "b")), lst(m / "b").st_mtime_ns) == \
            ((0o755, 1000, 1000), 1_600_000_000 * 10**9)


def test_case04_duplicate_file_later_wins(tmp_path, kernel):
    data = entry(b"f", b"first", mode=0o600) + entry(b"f", b"second!", uid=7) + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert os.listdir(m) == ["f"]
        assert (m / "f").read_bytes() == b"second!" and perm(lst(m / "f")) == (0o644, 7, 0)


def test_case05_directory_merge(tmp_path, kernel):
    data = entry(b"d/", typeflag=b"5", mode=0o700) + entry(b"d/x") + \
        entry(b"d/", typeflag=b"5", uid=7, mode=0o755) + entry(b"d/y") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert perm(lst(m / "d")) == (0o755, 7, 0) and sorted(os.listdir(m / "d")) == ["x", "y"]


def test_case06_type_replacement(tmp_path, kernel):
    data = entry(b"p", b"file") + entry(b"p/", typeflag=b"5") + entry(b"p/c") + \
        entry(b"q/", typeflag=b"5") + entry(b"q/c") + entry(b"q", b"nowfile") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert stat.S_ISDIR(lst(m / "p").st_mode) and os.listdir(m / "p") == ["c"]
        assert stat.S_ISREG(lst(m / "q").st_mode) and (m / "q").read_bytes() == b"nowfile"


def test_case07_hard_links_share_the_target_inode(tmp_path, kernel):
    data = entry(b"t", b"tt") + entry(b"h", typeflag=b"1", linkname=b"t", mode=0o600, uid=9) + \
        entry(b"sub/h2", typeflag=b"1", linkname=b"./t") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        sts = [lst(m / p) for p in ("t", "h", "sub/h2")]
        assert len({s.st_ino for s in sts}) == 1
        assert all((s.st_nlink, stat.S_IMODE(s.st_mode), s.st_uid) == (3, 0o644, 0) for s in sts)
        assert stat.S_IMODE(lst(m / "sub").st_mode) == 0o777


def test_case09_devices_and_fifo(tmp_path, kernel):
    data = entry(b"c", typeflag=b"3", mode=0o666, devmajor=1, devminor=3) + \
        entry(b"bl", typeflag=b"4", mode=0o660, devmajor=8, devminor=300) + \
        entry(b"fifo", typeflag=b"6", mode=0o600) + END
    with mounted_tar(tmp_path, kernel, data) as m:
        c, bl, fifo = lst(m / "c"), lst(m / "bl"), lst(m / "fifo")
        assert stat.S_ISCHR(c.st_mode) and c.st_rdev == os.makedev(1, 3) and \
            stat.S_IMODE(c.st_mode) == 0o666
        assert stat.S_ISBLK(bl.st_mode) and bl.st_rdev == os.makedev(8, 300) and \
            stat.S_IMODE(bl.st_mode) == 0o660
        assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o600
        assert c.st_size == bl.st_size == fifo.st_size == 0


def test_case10_pax(tmp_path, kernel):
    path = b"p/" + b"n" * 100 + b"/" + b"m" * 100 + b"/file.txt"
    data = pax([(b"path", path), (b"mtime", b"1234567890.123456789"), (b"uid", b"70000"),
                (b"gid", b"80000"), (b"uname", b"bob"), (b"atime", b"1.5"),
                (b"SCHILY.xattr.user.foo", b"bar"), (b"SCHILY.xattr.trusted.t", b"tv"),
                (b"LIBARCHIVE.xattr.user.b%3Dz", b"aGVsbG8=")]) + \
        entry(b"ignored", b"paxdata") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        f = Path(os.fsdecode(bytes(m) + b"/" + path))
        assert f.read_bytes() == b"paxdata" and not (m / "ignored").exists()
        st = lst(f)
        assert (st.st_mtime_ns, st.st_uid, st.st_gid) == (1_234_567_890_123_456_789, 70000, 80000)
        assert xattrs_of(f) == {"user.foo": b"bar", "trusted.t": b"tv", "user.b=z": b"hello"}
        assert stat.S_IMODE(lst(m / "p").st_mode) == 0o777


def test_case11_gnu_extensions(tmp_path, kernel):
    import tarfile
    import io
    longdir = "D" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        d = tarfile.TarInfo(longdir)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o711, 1_700_000_000
        t.addfile(d)
        f = tarfile.TarInfo(longdir + "/f")
        f.size, f.mtime = 3, 1_700_000_000
        t.addfile(f, io.BytesIO(b"abc"))
        lnk = tarfile.TarInfo("lnk")
        lnk.type, lnk.linkname = tarfile.SYMTYPE, "T" * 150
        t.addfile(lnk)
        big = tarfile.TarInfo("big")
        big.uid, big.gid, big.mtime = 3_000_000, 3_000_001, 2**34
        t.addfile(big)
    with mounted_tar(tmp_path, kernel, buf.getvalue()) as m:
        assert stat.S_IMODE(lst(m / longdir).st_mode) == 0o711
        assert (m / longdir / "f").read_bytes() == b"abc"
        assert os.readlink(m / "lnk") == "T" * 150
        b = lst(m / "big")
        assert (b.st_uid, b.st_gid, b.st_mtime_ns) == (3_000_000, 3_000_001, 2**34 * 10**9)


def test_case15_old_regular_and_gnu_sparse_entries_kept(tmp_path, kernel):
    """mkfs.erofs 1.9.3 drops ``\\0`` (AREGTYPE) and old-GNU ``S`` entries without a word; mkerofs
    keeps every entry: f0 is a regular file, sp a 10-byte sparse file holding "abc" at 0."""
    data = entry(b"f0", b"old", typeflag=b"\0") + \
        entry(b"sp", b"abc", typeflag=b"S", magic=b"ustar  \0",
              prefix=oldgnu_sparse([(0, 3)], 10)) + \
        entry(b"ok", b"ok") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert sorted(os.listdir(m)) == ["f0", "ok", "sp"]
        assert (m / "f0").read_bytes() == b"old"
        assert (m / "sp").read_bytes() == b"abc" + bytes(7)


def test_case16_payload_of_a_symlink_is_skipped(tmp_path, kernel):
    """mkfs.erofs 1.9.3 reads the 8 payload bytes as the next header and silently drops
    everything after the symlink; mkerofs skips the payload and keeps ``after``."""
    data = entry(b"s", b"\xff" * 8, typeflag=b"2", linkname=b"target") + entry(b"after", b"A") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert sorted(os.listdir(m)) == ["after", "s"]
        assert os.readlink(m / "s") == "target" and (m / "after").read_bytes() == b"A"


def test_case18_global_pax_applies_to_every_later_entry(tmp_path, kernel):
    """mkfs.erofs 1.9.3 applies the global uid only from the second entry on (one has uid 0)."""
    data = pax([(b"uid", b"42"), (b"SCHILY.xattr.user.g", b"G")], typeflag=b"g") + \
        entry(b"one") + entry(b"two") + END
    with mounted_tar(tmp_path, kernel, data) as m:
        for n in ("one", "two"):
            assert lst(m / n).st_uid == 42 and xattrs_of(m / n) == {"user.g": b"G"}


def test_case20_path_normalisation(tmp_path, kernel):
    """Paths are walked as mkfs.erofs walks them: ``./x/../y`` passes through x (made as an
    implicit directory, left empty) and back up."""
    data = entry(b"/abs/f") + entry(b"./x/../y") + entry(b"a//b///c") + \
        entry(b".", typeflag=b"5", mode=0o700) + END
    with mounted_tar(tmp_path, kernel, data) as m:
        assert sorted(os.listdir(m)) == ["a", "abs", "x", "y"]
        assert (m / "abs/f").is_file() and (m / "a/b/c").is_file() and (m / "y").is_file()
        assert os.listdir(m / "x") == [] and perm(lst(m / "x")) == (0o777, 0, 0)
        assert (stat.S_IMODE(lst(m).st_mode), lst(m).st_mtime_ns) == (0o700, T1)


def test_case22_headerball(tmp_path, kernel):
    data = header(b"f", size=5000) + header(b"g", size=10) + END
    with mounted_tar(tmp_path, kernel, data, "--tar=headerball") as m:
        assert (m / "f").read_bytes() == bytes(5000) and (m / "g").read_bytes() == bytes(10)


def test_case23_gzip(tmp_path, kernel):
    data = gzip.compress(entry(b"g", b"gz-data") + END)
    for opts in (("--ungzip",), ()):
        with mounted_tar(tmp_path, kernel, data, *opts) as m:
            assert (m / "g").read_bytes() == b"gz-data"


def test_case24_xattr_namespaces(tmp_path, kernel):
    data = pax([(b"SCHILY.xattr.foo.bar", b"v1"), (b"SCHILY.xattr.user.ok", b"v2"),
                (b"SCHILY.xattr.user.ok", b"v3")]) + entry(b"f") + END
    (tmp_path / "in.tar").write_bytes(data)
    r = build_tar(tmp_path / "out.erofs", tmp_path / "in.tar", check=False)
    if r.returncode == 0:
        with kernel(tmp_path / "out.erofs") as m:
            assert xattrs_of(m / "f") == {"user.ok": b"v3"}
    else:       # refusing a name the kernel cannot show is fine too, if it says which
        assert "foo.bar" in r.stderr and not (tmp_path / "out.erofs").exists()


# -- --aufs and overlayfs ----------------------------------------------------------------------

AUFS_TAR = entry(b"d/", typeflag=b"5") + entry(b"d/.wh..wh..opq") + entry(b"d/f", b"f") + \
    entry(b".wh.gone", uid=3) + entry(b"e/.wh.g2") + entry(b"keep", b"k") + END


def assert_whiteout(st, uid: int = 0) -> None:
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0
    assert st.st_uid == uid


def test_case12_aufs(tmp_path, kernel):
    with mounted_tar(tmp_path, kernel, AUFS_TAR, "--aufs") as m:
        assert sorted(os.listdir(m)) == ["d", "e", "gone", "keep"]
        assert_whiteout(lst(m / "gone"), uid=3)
        assert_whiteout(lst(m / "e/g2"))
        assert os.listdir(m / "d") == ["f"]
        assert xattrs_of(m / "d") == {OPAQUE: b"y"}
        assert xattrs_of(m) == {ORIGIN: b""} and xattrs_of(m / "e") == {ORIGIN: b""}


def test_case13_aufs_ovlfs_strip(tmp_path, kernel):
    with mounted_tar(tmp_path, kernel, AUFS_TAR, "--aufs", "--ovlfs-strip") as m:
        assert sorted(os.listdir(m)) == ["d", "e", "keep"] and os.listdir(m / "e") == []
        for p in (m, m / "d", m / "e", m / "d/f", m / "keep"):
            assert not any(k.startswith("trusted.overlay.") for k in xattrs_of(p)), p


def test_case14_no_aufs_keeps_whiteout_names_as_files(tmp_path, kernel):
    with mounted_tar(tmp_path, kernel, AUFS_TAR) as m:
        for p in (".wh.gone", "d/.wh..wh..opq", "e/.wh.g2"):
            assert stat.S_ISREG(lst(m / p).st_mode) and lst(m / p).st_size == 0
        for p in (m, m / "d", m / "e"):
            assert xattrs_of(p) == {}


def test_case19_root_opaque_marker(tmp_path, kernel):
    """mkfs.erofs 1.9.3 fails with ENOTDIR on a root-level ``.wh..wh..opq``; the root is a
    directory like any other, so mkerofs marks it opaque."""
    data = entry(b".wh..wh..opq") + entry(b"f", b"f") + END
    with mounted_tar(tmp_path, kernel, data, "--aufs") as m:
        assert os.listdir(m) == ["f"] and xattrs_of(m) == {OPAQUE: b"y"}


def test_case25_native_whiteout_kept_with_ovlfs_strip(tmp_path, kernel):
    data = entry(b"wh", typeflag=b"3") + entry(b"k") + END
    with mounted_tar(tmp_path, kernel, data, "--aufs", "--ovlfs-strip") as m:
        assert sorted(os.listdir(m)) == ["k", "wh"]
        st = lst(m / "wh")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0o644


def test_overlay_of_two_layers(tmp_path, kernel):
    """overlayfs never looks up the root of a layer, so an opaque root (test_case19) cannot be
    seen here: the opaque directory is d."""
    lower = tmp_path / "lower"
    for rel in ("gone", "keep", "d/old", "d/sub/deep", "e/g2", "e/stay", "top"):
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_bytes(rel.encode())
    build_image(tmp_path / "lower.erofs", lower, "-Uclear")
    upper = entry(b"d/", typeflag=b"5") + entry(b"d/.wh..wh..opq") + entry(b"d/new", b"n") + \
        entry(b".wh.gone") + entry(b"e/.wh.g2") + entry(b"keep", b"K")
    (tmp_path / "upper.tar").write_bytes(upper + END)
    build_tar(tmp_path / "upper.erofs", tmp_path / "upper.tar", "--aufs")
    with kernel(tmp_path / "lower.erofs") as lo, kernel(tmp_path / "upper.erofs") as up, \
            overlay_mount(up, lo) as merged:
        assert sorted(os.listdir(merged)) == ["d", "e", "keep", "top"]
        assert os.listdir(merged / "e") == ["stay"], "the whiteout hides e/g2"
        assert os.listdir(merged / "d") == ["new"], "the opaque d hides d/old and d/sub"
        assert (merged / "keep").read_bytes() == b"K"
        assert not (merged / "gone").exists()


# -- containerd --------------------------------------------------------------------------------

CONTAINERD = ["--tar=f", "--aufs", "--quiet", "-Enoinline_data"]


@pytest.mark.parametrize("extra", [(), ("--sort=none",), ("-zlz4hc",), ("--ovlfs-strip=1",)],
                         ids=["plain", "sort-none", "lz4hc", "ovlfs-strip"])
def test_containerd_command_line(extra, archive, tmp_path, kernel):
    """ConvertTarErofs: ``mkfs.erofs --tar=f --aufs --quiet -Enoinline_data [opts] -U UUID
    LAYER`` with the layer on stdin: exit 0, nothing printed, the UUID stored."""
    tar, src = archive("gnu-posix")
    layer = tmp_path / "LAYER.erofs"
    r = run_mkerofs(*CONTAINERD, *extra, "-U", UUID, layer, input=tar.read_bytes())
    assert (r.stdout, r.stderr) == ("", "")
    assert read_superblock(layer).uuid_obj == uuidlib.UUID(UUID)
    assert_image_equals_tree(layer, src, kernel)
