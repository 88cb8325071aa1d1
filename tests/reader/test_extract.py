"""`mkerofs-read extract` and `mkerofs-read tar`: what comes out equals the kernel's view of the
image (every attribute), subtrees, sparse output, refusals, and hostile images that try to make
the extraction write outside its destination.
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.compare import compare_trees, host_xattrs, tree_differences, walk_tree
from support.mounts import kernel_mount
from support.paths import fsb, show
from support.run import build_image, mkerofs_env
from test_readcli import assert_clean_error, built, read_command, run_read, source_tree

EXTRACT_SETS = ["plain", "lz4hc-big-ztail", "zstd", "b1024", "legacy-compress"]


# ---------------------------------------------------------------------------
# extraction equals the mount

@pytest.mark.kernel
@pytest.mark.parametrize("name", EXTRACT_SETS)
def test_extract_equals_mount(name, tmp_path):
    image = built(name)
    dest = tmp_path / "out"
    r = run_read("extract", image, dest)
    assert "extracted" in r.stdout and r.stderr == "", r.stderr
    with kernel_mount(image) as mnt:
        compare_trees(mnt, dest, xattrs=True)
    # and so the source itself (the image is exact)
    compare_trees(source_tree(), dest, xattrs=True)


@pytest.mark.kernel
def test_extract_is_sparse(tmp_path):
    dest = tmp_path / "out"
    run_read("extract", "-q", built("plain"), dest)
    st = os.stat(dest / "files" / "sparse_10m")
    assert st.st_size == 10 * 1024 * 1024 + 123
    assert st.st_blocks * 512 < 1024 * 1024, st.st_blocks       # holes stayed holes
    st = os.stat(dest / "files" / "hole_at_end")
    assert st.st_size == 70000


def test_extract_subtree_and_single_file(tmp_path):
    image = built("lz4hc-big-ztail")
    dest = tmp_path / "links"
    run_read("extract", "--path", "/links", image, dest)
    assert tree_differences(source_tree() / "links", dest, xattrs=True) == []
    assert os.stat(dest / "a" / "three").st_ino == os.stat(dest / "three_3").st_ino
    one = tmp_path / "one"
    run_read("extract", "--path", "files/text", image, one)
    assert os.listdir(one) == ["text"]
    assert (one / "text").read_bytes() == (source_tree() / "files" / "text").read_bytes()
    st, sst = os.lstat(one / "text"), os.lstat(source_tree() / "files" / "text")
    assert (st.st_mode, st.st_mtime_ns, st.st_uid) == (sst.st_mode, sst.st_mtime_ns, sst.st_uid)
    r = run_read("extract", "--path", "/nope", image, tmp_path / "x", check=False)
    assert_clean_error(r, 1, "nope")


def test_extract_refuses_non_empty_dest(tmp_path):
    image = built("plain")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "something").write_text("keep")
    r = run_read("extract", image, dest, check=False)
    assert_clean_error(r, 1, "not empty", "--force")
    assert os.listdir(dest) == ["something"]
    f = tmp_path / "afile"
    f.write_text("x")
    assert_clean_error(run_read("extract", image, f, check=False), 2, "afile")   # usage error


def test_extract_force_never_follows_existing_symlinks(tmp_path):
    """--force into a folder whose entries are symlinks pointing elsewhere: they are replaced,
    nothing is written through them."""
    image = built("plain")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "text").write_text("precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "files")                    # a directory in the image
    os.symlink(outside / "text", dest / "README")          # not in the image
    os.symlink(outside, dest / "nested")
    run_read("extract", "--force", "-q", image, dest)
    assert (outside / "text").read_text() == "precious"
    assert os.listdir(outside) == ["text"]
    assert not (dest / "files").is_symlink() and (dest / "files").is_dir()
    assert (dest / "files" / "text").read_bytes() == \
        (source_tree() / "files" / "text").read_bytes()
    assert (dest / "README").is_symlink()                 # left alone: not in the image


def test_extract_force_replaces_files(tmp_path):
    image = built("plain")
    dest = tmp_path / "dest"
    (dest / "files").mkdir(parents=True)
    (dest / "files" / "text").write_text("old")
    (dest / "sizes").write_text("a file where the image has a directory")
    run_read("extract", "--force", "-q", image, dest)
    assert (dest / "files" / "text").read_bytes() == \
        (source_tree() / "files" / "text").read_bytes()
    assert (dest / "sizes").is_dir()
    # a directory where the image has a file: a clear error, not a crash
    dest2 = tmp_path / "dest2"
    (dest2 / "files" / "text").mkdir(parents=True)
    r = run_read("extract", "--force", image, dest2, check=False)
    assert_clean_error(r, 1, "files/text", "directory")


@pytest.mark.kernel
def test_extract_no_owner_no_xattrs(tmp_path):
    image = built("plain")
    dest = tmp_path / "out"
    run_read("extract", "-q", "--no-owner", "--no-xattrs", image, dest)
    me = (os.geteuid(), os.getegid())
    for rel, st in walk_tree(fsb(dest)).items():
        assert (st.st_uid, st.st_gid) == me, rel
        assert host_xattrs(os.path.join(fsb(dest), rel)) == {}, rel
    with kernel_mount(image) as mnt:
        diffs = tree_differences(mnt, dest, xattrs=False)
    assert diffs and all("uid" in d or "gid" in d for d in diffs), diffs[:5]


def test_extract_as_non_root():
    """Without privilege: no device nodes (a warning each, exit 1), no trusted. xattrs, but
    everything else is there. (Runs the command in a forked child that drops to nobody.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    import tempfile
    import traceback
    from mkerofs.cli.read import main
    box = Path(tempfile.mkdtemp(prefix="mkerofs-nobody-", dir="/tmp"))
    try:
        os.chmod(box, 0o755)
        image = box / "i.erofs"
        shutil.copyfile(built("plain"), image)
        os.chmod(image, 0o644)
        dest = box / "out"
        dest.mkdir()
        os.chown(dest, 65534, 65534)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:                                      # the child: never returns
            code = 99
            try:
                os.close(rfd)
                sys.stdout = sys.stderr = open(wfd, "w", closefd=False)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                code = main(["extract", str(image), str(dest)])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as f:
            output = f.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 1, output
        assert "Traceback" not in output, output
        assert "special/null" in output and "cannot create device" in output, output
        assert "trusted./security. xattrs not restored" in output, output
        assert (dest / "files" / "text").read_bytes() == \
            (source_tree() / "files" / "text").read_bytes()
        assert os.getxattr(dest / "files" / "text", "user.big") == b"x" * 3000
        assert "trusted.t" not in os.listxattr(dest / "files" / "empty")
        assert stat.S_ISFIFO(os.lstat(dest / "special" / "fifo").st_mode)
        assert stat.S_IMODE(os.lstat(dest / "modes" / "d0000").st_mode) == 0
        assert os.lstat(dest / "modes" / "f4755").st_uid == 65534
        assert stat.S_IMODE(os.lstat(dest / "modes" / "f4755").st_mode) == 0o4755
    finally:
        shutil.rmtree(box)


# ---------------------------------------------------------------------------
# tar

def _strip_sockets(diffs: list[str]) -> list[str]:
    return [d for d in diffs if "socket" not in d]


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["plain", "lz4hc-big-ztail"])
def test_tar_extracted_by_gnu_tar_equals_mount(name, tmp_path):
    image = built(name)
    dest = tmp_path / "out"
    dest.mkdir()
    read = subprocess.Popen(read_command() + ["tar", str(image)], env=mkerofs_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-f", "-", "-C", str(dest), "--numeric-owner",
                            "--xattrs", "--xattrs-include=*", "--same-permissions",
                            "--warning=no-timestamp", "--warning=no-unknown-keyword"],
                           stdin=read.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    read.stdout.close()
    err = read.stderr.read().decode()
    assert read.wait() == 0, err
    assert untar.returncode == 0, untar.stderr.decode()
    assert "sockets cannot be stored in tar" in err
    with kernel_mount(image) as mnt:
        diffs = tree_differences(mnt, dest, xattrs=True)
    socks = [d for d in diffs if "socket" in d]
    assert socks == ["/special/socket: missing from the image"], diffs
    assert _strip_sockets(diffs) == [], diffs


@pytest.mark.kernel
def test_tar_read_by_python_tarfile(tmp_path):
    """Every member's header against the kernel's stat: exact ns mtimes from the pax header,
    xattrs as SCHILY.xattr.*, hard links as link members, devices, data."""
    image = built("zstd")
    out = tmp_path / "x.tar"
    run_read("tar", "-o", out, image)
    with kernel_mount(image) as mnt, tarfile.open(out, encoding="utf-8",
                                                  errors="surrogateescape") as tf:
        m = fsb(mnt)
        members = tf.getmembers()
        assert members[0].name == "." and members[0].isdir()
        names = {}
        for ti in members:
            rel = b"" if ti.name == "." else os.fsencode(ti.name[2:] if ti.name.startswith("./")
                                                          else ti.name).rstrip(b"/")
            names[rel] = ti
            full = os.path.join(m, rel) if rel else m
            st = os.lstat(full)
            where = show(rel)
            assert stat.S_IMODE(st.st_mode) == ti.mode, where
            assert (st.st_uid, st.st_gid) == (ti.uid, ti.gid), where
            pax_mtime = ti.pax_headers.get("mtime")
            if pax_mtime is not None:
                sec, _, frac = pax_mtime.partition(".")
                ns = int(sec) * 10**9 + (int(frac.ljust(9, "0")) if frac else 0) \
                    if not sec.startswith("-") else None
                if ns is not None:
                    assert ns == st.st_mtime_ns, (where, pax_mtime, st.st_mtime_ns)
            else:
                assert st.st_mtime_ns == ti.mtime * 10**9, where
            xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                      for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            assert xattrs == host_xattrs(full), where
            if ti.islnk():
                target = os.fsencode(ti.linkname[2:])
                assert os.lstat(os.path.join(m, target)).st_ino == st.st_ino, where
                continue
            if ti.isreg():
                assert stat.S_ISREG(st.st_mode)
                assert tf.extractfile(ti).read() == Path(os.fsdecode(full)).read_bytes(), where
            elif ti.issym():
                assert os.fsencode(ti.linkname) == os.readlink(full), where
            elif ti.ischr() or ti.isblk():
                assert (ti.devmajor, ti.devminor) == (os.major(st.st_rdev),
                                                      os.minor(st.st_rdev)), where
            elif ti.isfifo():
                assert stat.S_ISFIFO(st.st_mode)
            else:
                assert ti.isdir() and stat.S_ISDIR(st.st_mode), where
        # everything but the socket is in the archive
        on_disk = set(walk_tree(m)) - {b"special/socket"}
        assert set(names) == on_disk


def test_tar_subtree_and_no_xattrs(tmp_path):
    image = built("plain")
    r = run_read("tar", "--path", "/nested", "--no-xattrs", image)
    with tarfile.open(fileobj=io.BytesIO(r.stdout_bytes)) as tf:
        names = tf.getnames()
        assert names[0] == "."
        assert "./a/b/c/d/leaf" in names
        assert all(not k.startswith("SCHILY") for ti in tf for k in ti.pax_headers)
    r = run_read("tar", "--path", "/nested", image)
    with tarfile.open(fileobj=io.BytesIO(r.stdout_bytes)) as tf:
        assert tf.getmembers()[0].pax_headers["SCHILY.xattr.user.dir"] == "on a dir"


def test_tar_broken_pipe_is_quiet():
    cmd = " ".join(read_command()) + f" tar {built('plain')} | head -c 1000 >/dev/null"
    r = subprocess.run(["bash", "-c", cmd], env=mkerofs_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.stderr == "", r.stderr


# ---------------------------------------------------------------------------
# hostile images

def _patched(image: Path, old: bytes, new: bytes, dest: Path) -> Path:
    raw = bytearray(image.read_bytes())
    assert len(old) == len(new)
    pos = raw.find(old)
    assert pos >= 0 and raw.find(old, pos + 1) < 0, f"{old!r} not found once"
    raw[pos:pos + len(old)] = new
    dest.write_bytes(bytes(raw))
    return dest


def _hostile_source(tmp_path: Path) -> Path:
    """Names made unique so they can be found and patched in the image."""
    src = tmp_path / "hsrc"
    (src / "QQ").mkdir(parents=True)                    # -> ".." : a directory escaping DEST
    (src / "QQ" / "escaped_file").write_bytes(b"owned")
    (src / "ZSLASHZ").mkdir()                           # -> "Z/../Z" would need more bytes;
    (src / "ZSLASHZ" / "inner").write_bytes(b"x")       #    "ZS/LAS" style patches below
    (src / "KK").write_bytes(b"k")                      # -> "./" style names
    (src / "NUL_NAME").write_bytes(b"n")
    return src


@pytest.mark.parametrize("old,new,what", [
    (b"QQ", b"..", "'..'"),
    (b"ZSLASHZ", b"Z/../..", "'Z/../..'"),
    (b"KK", b"./", "'./'"),
    (b"NUL_NAME", b"NUL\0NAME", "NUL"),
])
@pytest.mark.parametrize("sbcrc", [True, False])
def test_hostile_names_never_escape(tmp_path, old, new, what, sbcrc):
    src = _hostile_source(tmp_path)
    image = tmp_path / "h.erofs"
    build_image(image, src, "-T0", *([] if sbcrc else ["-Enosbcrc"]))
    bad = _patched(image, old, new, tmp_path / "bad.erofs")
    if sbcrc:
        _fix_checksum(bad)
    outer = tmp_path / "outer"
    box = outer / "box"
    box.mkdir(parents=True)
    dest = box / "dest"
    before = sorted(os.listdir(tmp_path))
    r = run_read("extract", bad, dest, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    # nothing was written outside dest (up to two levels above it)
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(outer) == ["box"]
    assert os.listdir(box) == ["dest"]
    for root, dirs, files in os.walk(dest):
        for n in dirs + files:
            assert Path(root, n).resolve(strict=False).is_relative_to(dest.resolve()) or \
                Path(root, n).is_symlink(), (root, n)
    if r.returncode:
        assert_clean_error(r, 1, "name")
    else:
        # a reader may drop an entry named ".." like the real one: then it is simply absent
        assert new == b"..", r
    # tar never emits such a name
    t = run_read("tar", bad, check=False)
    if t.returncode == 0:
        with tarfile.open(fileobj=io.BytesIO(t.stdout_bytes)) as tf:
            for n in tf.getnames():
                parts = n.split("/")
                assert ".." not in parts and "\0" not in n, n
    else:
        assert_clean_error(t, 1, "name")


def _fix_checksum(image: Path) -> None:
    from mkerofs.ondisk import format as fmt
    raw = bytearray(image.read_bytes())
    sb = fmt.SuperBlock.unpack(raw[fmt.EROFS_SUPER_OFFSET:])
    span = fmt.sb_checksum_span(1 << sb.blkszbits)
    area = bytearray(raw[fmt.EROFS_SUPER_OFFSET:fmt.EROFS_SUPER_OFFSET + span])
    area[4:8] = bytes(4)
    crc = fmt.erofs_crc32c(bytes(area))
    raw[fmt.EROFS_SUPER_OFFSET + 4:fmt.EROFS_SUPER_OFFSET + 8] = crc.to_bytes(4, "little")
    image.write_bytes(bytes(raw))


def test_directory_loop_is_an_error(tmp_path):
    """A directory entry pointing back at its parent directory: extraction stops with a clear
    error instead of recursing forever."""
    src = tmp_path / "s"
    (src / "dir1" / "loop").mkdir(parents=True)
    image = tmp_path / "l.erofs"
    build_image(image, src, "-T0", "-Enosbcrc")
    from mkerofs.reader import Image
    with Image.open(image) as img:
        d1 = img.lookup(b"/dir1")
        loop = img.lookup(b"/dir1/loop")
    raw = bytearray(image.read_bytes())
    # dirents are (nid le64, nameoff le16, type u8, reserved u8): point "loop" at dir1
    import struct
    needle = struct.pack("<Q", loop.nid)
    hits = [i for i in range(0, len(raw) - 12)
            if raw[i:i + 8] == needle and raw[i + 10] == 2]
    assert hits
    for i in hits:
        raw[i:i + 8] = struct.pack("<Q", d1.nid)
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(bytes(raw))
    r = run_read("extract", bad, tmp_path / "out", check=False, timeout=60)
    assert_clean_error(r, 1, "loop")
    r = run_read("ls", "-R", bad, check=False, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr


class _FakeImage:
    """Just enough of reader.Image for extract/tar: a root holding whatever entries a test
    gives (a reader might one day pass a bad name through: the front end must still refuse)."""

    def __init__(self, entries):
        from mkerofs.reader import Inode
        self._entries = entries
        self.nodes = {
            1: Inode(1, stat.S_IFDIR | 0o755, 0, 0, 3, 0, 0, 0, 0, 1, 0, True, 0),
            2: Inode(2, stat.S_IFREG | 0o644, 0, 0, 1, 5, 0, 0, 0, 2, 0, True, 0),
            3: Inode(3, stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 3, 0, True, 0),
        }

    root = property(lambda self: self.nodes[1])

    def inode(self, nid):
        return self.nodes[nid]

    def listdir(self, inode):
        return self._entries if inode.nid == 1 else [(b"up", 1, 2)]

    def iter_data(self, inode, chunk=1 << 20):
        yield b"owned"

    def xattrs(self, inode):
        return []

    def readlink(self, inode):
        raise AssertionError("no symlinks here")


@pytest.mark.parametrize("name", [b"..", b".", b"", b"a/b", b"../x", b"/abs", b"a\0b"])
def test_front_end_refuses_unsafe_names(tmp_path, name):
    from mkerofs.reader.extract import extract, write_tar
    from mkerofs.reader import ImageError
    img = _FakeImage([(b"fine", 2, 1), (name, 2, 1)])
    dest = tmp_path / "box" / "dest"
    with pytest.raises(ImageError, match="not a single path component"):
        extract(img, dest)
    assert sorted(os.listdir(tmp_path / "box")) == ["dest"]
    assert sorted(os.listdir(dest)) == ["fine"]
    with pytest.raises(ImageError, match="not a single path component"):
        write_tar(img, io.BytesIO())


def test_front_end_stops_directory_loops(tmp_path):
    from mkerofs.reader.extract import extract, write_tar
    from mkerofs.reader import ImageError
    img = _FakeImage([(b"sub", 3, 2)])
    with pytest.raises(ImageError, match="reached twice"):
        extract(img, tmp_path / "dest")
    with pytest.raises(ImageError, match="reached twice"):
        write_tar(img, io.BytesIO())


MKFS_CASES = [
    ("/usr/bin/mkfs.erofs", ["-zlz4hc"]),
    ("/work/erofs-utils-install/bin/mkfs.erofs", ["-zlzma", "-C65536",
                                                  "-Eztailpacking,fragments,dedupe"]),
    ("/work/erofs-utils-install/bin/mkfs.erofs", ["-zzstd", "-Eall-fragments"]),
]


@pytest.mark.kernel
@pytest.mark.parametrize("mkfs,args", MKFS_CASES,
                         ids=["debian-lz4hc", "local-lzma-fragments-dedupe",
                              "local-zstd-all-fragments"])
def test_extract_and_tar_of_mkfs_erofs_images(mkfs, args, tmp_path):
    """Images written by erofs-utils' mkfs.erofs (layouts mkerofs does not write: fragments,
    dedupe) come out equal to the kernel's view, as a folder and through GNU tar."""
    if not os.access(mkfs, os.X_OK):
        pytest.skip(f"{mkfs} not installed")
    image = tmp_path / "m.erofs"
    r = subprocess.run([mkfs, *args, str(image), str(source_tree())], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        pytest.skip(f"{mkfs} {' '.join(args)} failed: {r.stdout[-500:]}")
    dest = tmp_path / "out"
    run_read("extract", "-q", image, dest)
    untarred = tmp_path / "untarred"
    untarred.mkdir()
    read = subprocess.Popen(read_command() + ["tar", str(image)], env=mkerofs_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    untar = subprocess.run(["tar", "-x", "-f", "-", "-C", str(untarred), "--numeric-owner",
                            "--xattrs", "--xattrs-include=*", "--warning=no-timestamp",
                            "--warning=no-unknown-keyword"],
                           stdin=read.stdout, stderr=subprocess.PIPE)
    read.stdout.close()
    assert read.wait() == 0 and untar.returncode == 0, untar.stderr
    run_read("verify", image)
    with kernel_mount(image) as mnt:
        compare_trees(mnt, dest, xattrs=True)
        assert _strip_sockets(tree_differences(mnt, untarred, xattrs=True)) == []
