"""The `mkerofs-read` commands: info, ls, stat, cat, verify, compare (extract and tar are in
test_extract.py), checked against the kernel's view of the same images where there is one.

Images are built once per option set (``built``) from one full source tree (every file type,
size, mode, owner, hard link, xattr) and shared by the tests of this module and
test_extract.py.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support.mounts import kernel_mount
from support.paths import fsb
from support.run import build_image, mkerofs_env
from support.trees import copy_tree, make_full_tree, write_file

# option sets of the builder the reader must read back (name -> mkerofs options)
OPTION_SETS = {
    "plain": [],
    "lz4": ["-zlz4"],
    "lz4hc-big-ztail": ["-zlz4hc", "-C65536", "-Eztailpacking"],
    "zstd": ["-zzstd"],
    "lzma": ["-zlzma"],
    "deflate": ["-zdeflate"],
    "legacy-compress": ["-zlz4", "-Elegacy-compress"],
    "b1024": ["-b1024"],
    "b512-lz4": ["-b512", "-zlz4"],
}
# a fixed build time for the superblock only: files keep their own (ns) mtimes
FIXED = ["-T1700000000", "--mkfs-time", "-U", "12345678-1234-5678-1234-567812345678", "-Lreadtest"]


def read_command() -> list[str]:
    return [sys.executable, "-m", "mkerofs.cli.read"]


def run_read(*args, check: bool | int = True, input: bytes | None = None,
             timeout: float = 600, cwd=None) -> subprocess.CompletedProcess:
    """Run mkerofs-read; stdout kept as bytes in .stdout_bytes and decoded in .stdout.
    ``check``: True = must exit 0, an int = must exit with it, False = anything."""
    cmd = read_command() + [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run(cmd, env=mkerofs_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       input=input, timeout=timeout, cwd=cwd)
    r.stdout_bytes = r.stdout
    r.stdout = r.stdout.decode("utf-8", "backslashreplace")
    r.stderr = r.stderr.decode("utf-8", "backslashreplace")
    want = 0 if check is True else check
    if check is not False and r.returncode != want:
        raise AssertionError(f"mkerofs-read {' '.join(map(os.fsdecode, args))}: exit "
                             f"{r.returncode}, expected {want}\n--- stdout ---\n{r.stdout[-3000:]}"
                             f"\n--- stderr ---\n{r.stderr[-3000:]}")
    return r


def assert_clean_error(r: subprocess.CompletedProcess, status: int, *mentions: str) -> str:
    """Exit status, one message line on stderr naming what is wrong, no traceback."""
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines, "no message on stderr"
    for m in mentions:
        assert m.lower() in r.stderr.lower(), (m, r.stderr)
    return lines[-1]


# ---------------------------------------------------------------------------
# shared images (built once per session)

_WORK = None


def workdir() -> Path:
    global _WORK
    if _WORK is None:
        _WORK = Path(tempfile.mkdtemp(prefix="mkerofs-readtests-"))
        atexit.register(shutil.rmtree, _WORK, True)
    return _WORK


@functools.lru_cache(maxsize=None)
def source_tree() -> Path:
    """The full tree (with user./trusted. xattrs and a POSIX ACL) all images are built from."""
    root = workdir() / "src"
    make_full_tree(root, xattrs=True)
    # compressible data over many clusters (the full tree's big files are random)
    (root / "files" / "compressible").write_bytes(
        b"".join(b"line %d of some compressible text\n" % (i * i) for i in range(40000)))
    acl = bytes.fromhex("02000000" "01000600ffffffff" "02000600e8030000" "04000400ffffffff"
                        "10000600ffffffff" "20000000ffffffff")   # u::rw- u:1000:rw- g::r-- m::rw- o::---
    os.setxattr(root / "files" / "text", "system.posix_acl_access", acl)
    # a file capability (VFS_CAP_REVISION_2, effective, cap_net_bind_service): chown clears
    # it, so an extraction must set xattrs after owners; and an SELinux label
    caps = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)
    os.setxattr(root / "modes" / "f0755", "security.capability", caps)
    os.setxattr(root / "files" / "empty", "security.selinux", b"system_u:object_r:etc_t:s0\0")
    # restore the times the xattr/ACL calls did not change but make_full_tree set before
    from support.trees import set_tree_times
    set_tree_times(root)
    return root


@functools.lru_cache(maxsize=None)
def built(name: str) -> Path:
    """The image of source_tree() built with OPTION_SETS[name] (+ fixed time/UUID/label)."""
    image = workdir() / f"{name}.erofs"
    build_image(image, source_tree(), *FIXED, *OPTION_SETS[name])
    return image


@pytest.fixture(scope="module")
def plain() -> Path:
    return built("plain")


@pytest.fixture(scope="module")
def compressed() -> Path:
    return built("lz4hc-big-ztail")


# ---------------------------------------------------------------------------
# info

def info_fields(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in out.splitlines())}


def test_info_shows_superblock(plain):
    from support.oracle import read_superblock
    sb = read_superblock(plain)
    f = info_fields(run_read("info", plain).stdout)
    assert f["block size"] == "4096"
    assert f["blocks"] == f"{sb.blocks} ({sb.blocks * 4096} bytes)"
    assert f["inodes"] == f"{sb.inos}"
    assert f["uuid"] == "12345678-1234-5678-1234-567812345678"
    assert f["label"] == "readtest"
    assert f["build time"].startswith("2023-11-14 22:13:20")     # -T1700000000
    assert f["checksum"] == "ok"
    assert f["root nid"] == f"{sb.root_nid}"
    assert "sb_csum" in f["features"] or "checksum" in f["features"], f["features"]


def test_info_compressed_lists_algorithm(compressed):
    assert "lz4" in info_fields(run_read("info", compressed).stdout)["algorithms"]


def test_info_without_checksum(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    write_file(src / "f", 100)
    img = tmp_path / "i.erofs"
    build_image(img, src, "-Enosbcrc")
    assert info_fields(run_read("info", img).stdout)["checksum"].startswith("none")


def test_info_at_offset(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    write_file(src / "f", 100)
    img = tmp_path / "i.img"
    build_image(img, src, "--offset=8192", "-Lofs")
    assert "ofs" in run_read("info", "--offset", "8192", img).stdout
    r = run_read("info", img, check=False)
    assert_clean_error(r, 2, str(img))


# ---------------------------------------------------------------------------
# ls

def _mount_walk(mnt: Path) -> dict[bytes, os.stat_result]:
    out = {}
    root = fsb(mnt)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            out[b"/" + os.path.relpath(full, root)] = os.lstat(full)
    return out


@pytest.mark.kernel
def test_ls_matches_mount(compressed):
    with kernel_mount(compressed) as mnt:
        root_names = sorted(os.listdir(fsb(mnt)))
        r = run_read("ls", compressed)
        assert r.stdout_bytes.splitlines() == root_names
        # -R: every path, as the kernel sees the tree
        tree = _mount_walk(mnt)
        r = run_read("ls", "-R", compressed)
        lines = r.stdout_bytes.split(b"\n")[:-1]
        # (one name in the tree has a newline: compare the set of -b escaped lines instead)
        rb = run_read("ls", "-R", "-b", compressed)
        from mkerofs.cli.read import escape
        assert sorted(rb.stdout_bytes.splitlines()) == sorted(escape(p) for p in tree)
        assert len(lines) >= len(tree)
        # -l of one directory: columns as the kernel's stat
        r = run_read("ls", "-l", compressed, "/special")
        for line in r.stdout.splitlines():
            fields = line.split()
            name = fields[-1]
            st = os.lstat(mnt / "special" / name)
            assert fields[0] == stat.filemode(st.st_mode), line
            assert int(fields[1]) == st.st_nlink
            assert (int(fields[2]), int(fields[3])) == (st.st_uid, st.st_gid)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                assert fields[4] == f"{os.major(st.st_rdev)},", line
                assert int(fields[5]) == os.minor(st.st_rdev)
            else:
                assert int(fields[4]) == st.st_size


@pytest.mark.kernel
def test_ls_long_symlinks_and_times(plain):
    with kernel_mount(plain) as mnt:
        r = run_read("ls", "-l", "--full-time", plain, "/symlinks")
        lines = {l.split()[7]: l for l in r.stdout_bytes.decode("utf-8", "surrogateescape")
                 .splitlines()}
        line = lines["rel"]
        assert line.endswith(" -> ../files/text")
        st = os.lstat(mnt / "symlinks" / "rel")
        import time as _t
        sec, ns = divmod(st.st_mtime_ns, 10**9)
        assert _t.strftime("%Y-%m-%d %H:%M:%S", _t.gmtime(sec)) + f".{ns:09d}" in line


def test_ls_of_a_file_and_escaping(tmp_path):
    src = tmp_path / "s"
    (src / "d").mkdir(parents=True)
    write_file(src / "d" / "f", 10)
    (src / "d" / os.fsdecode(b"bad\xffname\n")).write_bytes(b"")
    img = tmp_path / "i.erofs"
    build_image(img, src)
    assert run_read("ls", img, "/d/f").stdout == "/d/f\n"
    out = run_read("ls", "-b", img, "d").stdout_bytes
    assert out.splitlines() == [b"bad\\xffname\\n", b"f"]
    raw = run_read("ls", img, "d").stdout_bytes
    assert raw == b"bad\xffname\n\nf\n"


def test_ls_missing_path(plain):
    r = run_read("ls", plain, "/no/such/thing", check=False)
    assert_clean_error(r, 1, "no/such")


# ---------------------------------------------------------------------------
# stat

@pytest.mark.kernel
def test_stat_fields(compressed):
    with kernel_mount(compressed) as mnt:
        st = os.lstat(mnt / "links" / "a" / "three")
        out = run_read("stat", compressed, "/links/a/three").stdout
        assert "regular file" in out
        assert f"{stat.S_IMODE(st.st_mode):04o}" in out
        assert f"{st.st_uid}/{st.st_gid}" in out
        assert f"links:" in out and f" {st.st_nlink}" in out
        assert f"size:" in out and f"{st.st_size}" in out
        assert "user.shared0" in out
        assert "extents:" in out
        # a big compressed file: many extents with lz4hc
        out = run_read("stat", compressed, "/files/compressible").stdout
        n = int(next(l for l in out.splitlines() if l.startswith("extents:")).split()[1])
        assert n > 1
        assert "compressed (" in out and "lz4" in out
        out = run_read("stat", compressed, "/special/big_minor").stdout
        assert "259, 70000" in out and "block device" in out
        out = run_read("stat", compressed, "/symlinks/abs").stdout
        assert "/absolute/target" in out and "trusted.sym" in out


# ---------------------------------------------------------------------------
# cat

@pytest.mark.kernel
@pytest.mark.parametrize("name", ["plain", "lz4hc-big-ztail", "b512-lz4"])
def test_cat_matches_mount(name):
    image = built(name)
    with kernel_mount(image) as mnt:
        for rel in ("files/text", "files/medium", "files/sparse_10m", "files/hole_at_end",
                    "files/empty", "sizes/size_004097", "links/b/small_3"):
            r = run_read("cat", image, "/" + rel)
            assert r.stdout_bytes == (mnt / rel).read_bytes(), rel
        # several paths, and a symlink followed inside the image
        r = run_read("cat", image, "files/text", "symlinks/rel")
        assert r.stdout_bytes == (mnt / "files/text").read_bytes() * 2


def test_cat_errors(plain):
    r = run_read("cat", plain, "/files", check=False)
    assert_clean_error(r, 1, "/files", "directory")
    r = run_read("cat", plain, "/files/nope", check=False)
    assert_clean_error(r, 1, "nope")
    r = run_read("cat", plain, "/symlinks/dangling", check=False)
    assert_clean_error(r, 1, "dangling-nowhere")


def test_cat_broken_pipe_is_quiet(plain):
    cmd = " ".join(read_command()) + f" cat {plain} /files/sparse_10m | head -c 10 >/dev/null"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=mkerofs_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.stderr == "", r.stderr
    assert r.returncode in (0, 1, 141)      # (click exits 1 on EPIPE, quietly)


# ---------------------------------------------------------------------------
# verify

@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_verify_clean(name):
    image = built(name)
    r = run_read("verify", image)
    assert r.stdout.startswith(f"{image}: clean ("), r.stdout
    assert "inodes" in r.stdout and "bytes of data" in r.stdout


def _corrupt(image: Path, dest: Path, at: int, data: bytes) -> Path:
    shutil.copyfile(image, dest)
    with open(dest, "r+b") as f:
        f.seek(at)
        f.write(data)
    return dest


def test_verify_bad_magic_and_missing(plain, tmp_path):
    bad = _corrupt(plain, tmp_path / "bad.erofs", 1024, b"\0\0\0\0")
    r = run_read("verify", bad, check=False)
    assert_clean_error(r, 2, str(bad))
    r = run_read("verify", tmp_path / "absent.erofs", check=False)
    assert_clean_error(r, 2, "absent.erofs")
    empty = tmp_path / "empty.erofs"
    empty.write_bytes(b"")
    assert_clean_error(run_read("verify", empty, check=False), 2, "empty.erofs")


def test_verify_bad_checksum(plain, tmp_path):
    # a byte of the superblock's reserved tail changed: checksum no longer matches
    bad = _corrupt(plain, tmp_path / "crc.erofs", 1024 + 127, b"\x55")
    r = run_read("verify", bad, check=False)
    assert r.returncode in (1, 2), r
    assert "checksum" in (r.stdout + r.stderr).lower()
    assert "Traceback" not in r.stderr


def test_verify_truncated(compressed, tmp_path):
    data = compressed.read_bytes()
    cut = tmp_path / "cut.erofs"
    cut.write_bytes(data[:len(data) // 2])
    r = run_read("verify", cut, check=False)
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r
    assert "clean" not in r.stdout


def test_verify_corrupted_data(tmp_path):
    """Garbage in the compressed data of a file: verify names the file and exits 1."""
    src = tmp_path / "s"
    src.mkdir()
    write_file(src / "victim", 300_000, pattern=b"some compressible text 0123456789\n")
    img = tmp_path / "i.erofs"
    build_image(img, src, "-zlz4", "-T0")
    raw = bytearray(img.read_bytes())
    # the data area starts at block 1 (after the superblock); metadata follows the data
    pos = raw.find(b"some compressible", 4096)
    assert pos > 0
    raw[pos:pos + 64] = bytes(range(200, 255)) + bytes(9)
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(bytes(raw))
    r = run_read("verify", bad, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "victim" in r.stdout
    assert "Traceback" not in r.stderr


def test_verify_progress_option(plain):
    r = run_read("verify", "--progress", plain)
    assert "clean" in r.stdout


# ---------------------------------------------------------------------------
# compare

@pytest.fixture(scope="module")
def editable(tmp_path_factory):
    """A copy of the source tree (every attribute kept) and the plain image of the original."""
    d = tmp_path_factory.mktemp("cmp")
    copy = d / "copy"
    copy_tree(source_tree(), copy)
    # copy_tree does not copy xattrs: copy them
    src = fsb(source_tree())
    for dirpath, dirnames, filenames in os.walk(src):
        for n in [b""] + dirnames + filenames:
            full = os.path.join(dirpath, n) if n else dirpath
            rel = os.path.relpath(full, src)
            for x in os.listxattr(full, follow_symlinks=False):
                os.setxattr(os.path.join(fsb(copy), rel), x,
                            os.getxattr(full, x, follow_symlinks=False), follow_symlinks=False)
    from support.compare import walk_tree
    # re-apply mtimes (setxattr does not touch mtime, but be sure of directories)
    for rel, st in sorted(walk_tree(src).items(), key=lambda kv: -kv[0].count(b"/")):
        os.utime(os.path.join(fsb(copy), rel) if rel else fsb(copy),
                 ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
    return copy


def _same_mtime_edit(path: Path, edit) -> None:
    """Run edit() and put back the mtimes it changed (of path, if it stays, and its parent),
    so that only the intended difference shows."""
    st = os.lstat(path) if os.path.lexists(path) else None
    parent = os.lstat(path.parent)
    edit()
    if st is not None and os.path.lexists(path):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    os.utime(path.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))


def test_compare_equal(plain, compressed):
    for image in (plain, compressed):
        r = run_read("compare", image, source_tree())
        assert "no differences" in r.stdout


def test_compare_reports_each_change(plain, editable, tmp_path):
    assert run_read("compare", plain, editable).returncode == 0
    c = editable
    # one byte of data
    p = c / "files" / "medium"
    _same_mtime_edit(p, lambda: _poke(p, 1_000_000))
    # mode
    os.chmod(c / "modes" / "f0644", 0o640)
    # mtime
    os.utime(c / "files" / "text", ns=(0, 123_456_789_012))
    # xattr value
    os.setxattr(c / "nested", "user.dir", b"changed")
    # symlink target
    t = c / "symlinks" / "rel"
    _same_mtime_edit(t, lambda: (t.unlink(), os.symlink("../files/other", t)))
    # extra and missing files
    _same_mtime_edit(c / "nested" / "extra", lambda: write_file(c / "nested" / "extra", 5))
    _same_mtime_edit(c / "sizes" / "size_000100",
                     lambda: (c / "sizes" / "size_000100").unlink())
    # broken hard link group: b/small_2 becomes its own copy
    s = c / "links" / "b" / "small_2"
    data = s.read_bytes()
    st = os.lstat(s)

    def relink():
        s.unlink()
        s.write_bytes(data)
        os.chown(s, st.st_uid, st.st_gid)
        os.chmod(s, stat.S_IMODE(st.st_mode))
        for x in os.listxattr(c / "links" / "a" / "small"):
            os.setxattr(s, x, os.getxattr(c / "links" / "a" / "small", x))
    _same_mtime_edit(s, relink)

    r = run_read("compare", plain, editable, check=1)
    out = r.stdout
    expect = {
        "/files/medium": "data differs at byte 1000000",
        "/modes/f0644": "mode 0644 in the image, 0640",
        "/files/text": "mtime",
        "/nested": "xattr values differ: user.dir",
        "/symlinks/rel": "symlink target '../files/text' in the image, '../files/other'",
        "/nested/extra": "in the source, not in the image",
        "/sizes/size_000100": "in the image, not in the source",
    }
    for path, what in expect.items():
        assert any(l.startswith(path + ":") and what in l for l in out.splitlines()), \
            (path, what, out)
    assert "hard links" in out or "links in the image" in out, out
    assert "differ (" in r.stderr
    # ignore options hide what they say
    r = run_read("compare", "--ignore-mtime", plain, editable, check=1)
    assert "mtime" not in r.stdout
    r = run_read("compare", "--ignore-xattrs", plain, editable, check=1)
    assert "xattr" not in r.stdout
    r = run_read("compare", "--max", "2", plain, editable, check=1)
    assert len(r.stdout.splitlines()) == 2
    r = run_read("compare", "-q", plain, editable, check=1)
    assert r.stdout == ""


def _poke(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_compare_owner_options(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    write_file(src / "f", 10)
    os.chown(src / "f", 1000, 2000)
    img = tmp_path / "i.erofs"
    build_image(img, src, "--all-root")
    r = run_read("compare", img, src, check=1)
    assert "/f: uid 0 in the image, expected 1000" in r.stdout
    run_read("compare", "--all-root", img, src)
    run_read("compare", "--ignore-owner", img, src)
    build_image(img, src, "--uid-offset=5", "--force-gid=7")
    run_read("compare", "--uid-offset=5", "--force-gid=7", img, src)
    run_read("compare", "--uid-offset=4", "--force-gid=7", img, src, check=1)


def test_compare_subtree_and_exclude(plain, tmp_path):
    run_read("compare", "--path", "/links", plain, source_tree() / "links")
    r = run_read("compare", "--path", "/links", plain, source_tree() / "nested", check=1)
    assert "/a/three" in r.stdout or "/a:" in r.stdout
    img = tmp_path / "ex.erofs"
    build_image(img, source_tree(), *FIXED, "--exclude-path=files",
                "--exclude-regex=^sizes/size_00[0-9]")
    run_read("compare", "--exclude-path=files", "--exclude-regex=^sizes/size_00[0-9]",
             img, source_tree())
    r = run_read("compare", img, source_tree(), check=1)
    assert "/files: directory in the source, not in the image" in r.stdout
    assert "/files/text" not in r.stdout          # covered by its directory's line


def test_compare_build_api(tmp_path):
    """compare_build derives the expectations from BuildOptions (for mkerofs --verify)."""
    from mkerofs.writer.verify import compare_build
    from mkerofs.writer.options import BuildOptions
    from mkerofs.reader import Image
    src = source_tree()
    cases = [
        (["-T1000000", "--all-root"], BuildOptions(timestamp=1000000, force_uid=0, force_gid=0)),
        (["--ignore-mtime", "-T1000000", "--mkfs-time"], None),
        (["--exclude-regex=links", "-x-1"], BuildOptions(exclude_regexes=["links"],
                                                          xattr_tolerance=-1)),
        (["--hard-dereference", "--uid-offset=10", "--exclude-path=owners"],
         BuildOptions(hard_dereference=True, uid_offset=10, exclude_paths=["owners"])),
    ]
    from mkerofs.writer.options import TimeInherit
    for args, opts in cases:
        if opts is None:
            opts = BuildOptions(timestamp=1000000, time_inherit=TimeInherit.SOURCE,
                                ignore_mtime=True)
        img = tmp_path / "b.erofs"
        build_image(img, src, *args)
        with Image.open(img) as image:
            assert compare_build(image, src, opts) == [], args
            # and the plain expectations do see the difference
            assert compare_build(image, src, BuildOptions()) != [], args


# ---------------------------------------------------------------------------
# errors and help

def test_errors_are_clean(plain, tmp_path):
    r = run_read("stat", plain, "/nope", check=False)
    assert_clean_error(r, 1, str(plain), "nope")
    r = run_read("stat", "--debug", plain, "/nope", check=False)
    assert "Traceback" in r.stderr
    r = run_read("-d9", "stat", plain, "/nope", check=False)
    assert "Traceback" in r.stderr
    r = run_read("stat", plain, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_read("bogus", check=False)
    assert r.returncode == 2


def test_help_lists_commands():
    out = run_read("--help").stdout
    for c in ("info", "ls", "stat", "cat", "extract", "tar", "verify", "compare"):
        assert f"  {c} " in out, c
    for c in ("info", "ls", "stat", "cat", "extract", "tar", "verify", "compare"):
        assert run_read(c, "--help").returncode == 0


# ---------------------------------------------------------------------------
# integers, exit statuses and -d9/--debug: the runner and integer syntax shared with mkerofs

def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("small") / "src"
    src.mkdir()
    write_file(src / "f", 5000)
    os.chown(src / "f", 1000, 1000)
    return src


@pytest.mark.parametrize("form,value", [("8", 8), ("010", 8), ("0x400", 1024), ("0X400", 1024)])
def test_offset_forms_agree_with_mkerofs(form, value, small_tree, tmp_path):
    """What mkerofs --offset takes, mkerofs-read --offset takes, with the same meaning."""
    img = tmp_path / "i.img"
    build_image(img, small_tree, f"--offset={form}", "-Lofs")
    assert img.read_bytes()[value + 1024:value + 1028] == bytes.fromhex("e2e1f5e0")
    for args in (["--offset", form], [f"--offset={form}"]):
        f = info_fields(run_read("info", *args, img).stdout)
        assert f["label"] == "ofs" and f["image"] == f"{img} (at offset {value})"
    assert run_read("ls", f"--offset={form}", img).stdout == "f\n"


@pytest.mark.parametrize("form", ["1k", "-1", "junk", "0x", "08", "", "1.5"])
def test_offset_forms_refused_by_both(form, small_tree, tmp_path):
    img = tmp_path / "i.img"
    r = subprocess.run([sys.executable, "-m", "mkerofs", f"--offset={form}", img, small_tree],
                       env=mkerofs_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "invalid offset" in _one_line(r)
    assert not img.exists()
    img.write_bytes(bytes(8192))
    for cmd in ("info", "ls", "verify", "cat"):
        r = run_read(cmd, f"--offset={form}", img, *(["/f"] if cmd == "cat" else []),
                     check=2)
        line = _one_line(r)
        assert line.startswith(f"mkerofs-read: Invalid value for '--offset': invalid offset")
        assert line.endswith(f"(try 'mkerofs-read {cmd} --help')"), line


def test_owner_options_in_c_syntax(small_tree, tmp_path):
    """compare takes the build's owner options in the build's syntax."""
    img = tmp_path / "i.erofs"
    build_image(img, small_tree, "--uid-offset=0x5", "--force-gid=07")
    run_read("compare", "--uid-offset=0x5", "--force-gid=07", img, small_tree)
    run_read("compare", "--uid-offset=05", "--force-gid=0x7", img, small_tree)
    r = run_read("compare", "--uid-offset=010", "--force-gid=7", img, small_tree, check=1)
    assert "uid 1005 in the image, expected 1008" in r.stdout, r.stdout
    for bad in (["--uid-offset=-1"], ["--force-gid=x"], ["--force-uid=1k"], ["--max=junk"]):
        assert "Invalid value" in _one_line(run_read("compare", *bad, img, small_tree,
                                                     check=2))


def test_max_in_c_syntax(small_tree, tmp_path):
    img = tmp_path / "i.erofs"
    build_image(img, small_tree)
    other = tmp_path / "other"
    other.mkdir()
    for name in "abcdefghijk":                  # 11 files the image does not have, and no f
        write_file(other / name, 1)
    full = run_read("compare", img, other, check=1).stdout.splitlines()
    assert len(full) >= 12
    for form, n in (("0x2", 2), ("010", 8), ("9", 9)):
        assert run_read("compare", "--max", form, img, other, check=1).stdout.splitlines() \
            == full[:n]


@pytest.mark.parametrize("debug", [["--debug"], ["-d9"], ["-d", "9"], ["-d011"]],
                         ids=["debug", "d9", "d-9", "d-octal-9"])
def test_debug_shows_traceback_and_keeps_status(debug, plain, tmp_path):
    # on the group and on the subcommand
    for args in ([*debug, "stat", plain, "/nope"], ["stat", *debug, plain, "/nope"]):
        r = run_read(*args, check=1)
        assert "Traceback" in r.stderr and "NotFoundError" in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1].startswith(f"mkerofs-read: {plain}: /nope")
    # an unreadable image keeps its status 2
    r = run_read("verify", *debug, tmp_path / "absent.erofs", check=2)
    assert "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("mkerofs-read: ")


def test_no_traceback_without_debug_or_for_usage_errors(plain):
    r = run_read("-d8", "stat", plain, "/nope", check=1)
    assert _one_line(r).startswith(f"mkerofs-read: {plain}: /nope")
    for args in (["--debug", "stat", plain], ["-d9", "bogus"], ["stat", "-d10", plain, "/"],
                 ["ls", "--debug", "--offset", "junk", plain]):
        line = _one_line(run_read(*args, check=2))
        assert line.startswith("mkerofs-read: ") and "--help" in line, line


def test_os_error_is_one_line(plain, tmp_path):
    out = tmp_path / "no" / "dir" / "x.tar"
    r = run_read("tar", "-o", out, plain, check=1)
    assert _one_line(r) == f"mkerofs-read: {out}: No such file or directory"


def test_usage_error_is_one_line():
    line = _one_line(run_read("cat", check=2))
    assert line.startswith("mkerofs-read: Missing argument 'IMAGE'")
    assert line.endswith("(try 'mkerofs-read cat --help')")


def test_listing_walk_reads_only_directories(plain):
    """ls -R (names only) walks with iter_tree(leaf_inodes=False): the same paths as the full
    walk, reading no inode but directories'."""
    from mkerofs.reader import Image
    from mkerofs.reader.extract import ENTER, LEAF, LEAVE, iter_tree
    with Image.open(plain) as img:
        full = [(e, p) for e, p, _ in iter_tree(img, img.root, check=False)]
        dirs = sum(1 for e, _ in full if e == ENTER)
        read = []
        real = img.inode
        img.inode = lambda nid: read.append(nid) or real(nid)
        names = [(e, p, i) for e, p, i in iter_tree(img, img.root, check=False,
                                                     leaf_inodes=False)]
    assert [(e, p) for e, p, _ in names] == full
    assert all(i is None for e, _, i in names if e == LEAF)
    assert len(read) == dirs                            # (img.root reads the root's)
    out = run_read("ls", "-R", plain).stdout_bytes.split(b"\n")[:-1]
    # (one name holds a newline: compare the number of lines it adds)
    assert len(out) == len([p for e, p in full if e != LEAVE and p != b"/"]) + \
        sum(p.count(b"\n") for e, p in full if e != LEAVE)
