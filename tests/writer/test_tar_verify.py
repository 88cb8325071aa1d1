"""mkerofs --tar --verify: the finished image is read back (no mount) and compared with the tree
the tar stream gave, before the spool goes (so stdin works too): GNU tar archives of the full
test tree with xattrs, POSIX ACLs and sparse files, from a file and from stdin, flat and
compressed, with --aufs whiteouts, exclusions, -T and headerballs; and builds whose image is
made wrong on purpose (a flipped data byte, a changed owner) fail naming the path and keep the
image."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile

import pytest

from support.run import run_mkerofs
from support.trees import make_full_tree
from mkerofs import BuildError, BuildOptions, build
from mkerofs.reader import Image
from mkerofs.writer import build as build_module, verify
from mkerofs.writer.data import DataArea
from mkerofs.writer.options import TarOptions

ACL_FILE = "files/text"
ACL_DIR = "nested"


def _gnu_tar(*args) -> None:
    subprocess.run(["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--acls",
                    "--sparse", "--numeric-owner", *args], check=True, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The full tree with xattrs and ACLs, as GNU tar archives it (bytes)."""
    if shutil.which("tar") is None or shutil.which("setfacl") is None:
        pytest.skip("GNU tar and setfacl needed")
    base = tmp_path_factory.mktemp("tarverify")
    tree = make_full_tree(base / "tree", xattrs=True)
    os.unlink(tree / "special" / "socket")          # GNU tar leaves sockets out anyway
    subprocess.run(["setfacl", "-m", "u:1000:rwx,g:100:r-x,m:rwx", str(tree / ACL_FILE)],
                   check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1000:rwx,g:100:r-x", str(tree / ACL_DIR)],
                   check=True)
    tarball = base / "tree.tar"
    _gnu_tar("-C", str(tree), "-cf", str(tarball), ".")
    return tarball.read_bytes()


def _with_aufs_entries(data: bytes, tmp_path) -> bytes:
    """`data` plus a whiteout and an opaque marker, appended by GNU tar."""
    layer = tmp_path / "layer.tar"
    layer.write_bytes(data)
    extra = tmp_path / "extra"
    (extra / "files").mkdir(parents=True)
    (extra / "files" / ".wh.gone").write_bytes(b"")
    (extra / "nested" / "a").mkdir(parents=True)
    (extra / "nested" / "a" / ".wh..wh..opq").write_bytes(b"")
    _gnu_tar("-C", str(extra), "-rf", str(layer), "./files/.wh.gone",
             "./nested/a/.wh..wh..opq")
    return layer.read_bytes()


def _build_verified(args, data: bytes, tmp_path, stdin: bool):
    image = tmp_path / "out.erofs"
    if stdin:
        r = run_mkerofs("--tar=f", "--verify", *args, image, input=data, check=False)
    else:
        tarball = tmp_path / "in.tar"
        tarball.write_bytes(data)
        r = run_mkerofs("--tar=f", "--verify", *args, image, tarball, check=False)
    assert r.returncode == 0, r.stderr
    assert "verification failed" not in r.stderr
    return image


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
@pytest.mark.parametrize("args", [[], ["-zlz4hc"]], ids=["flat", "lz4hc"])
def test_verify_passes(args, stdin, archive, tmp_path):
    image = _build_verified(args, archive, tmp_path, stdin)
    with Image.open(str(image)) as img:
        names = {n for n, _ in img.xattrs(img.lookup(b"/" + ACL_FILE.encode()))}
        assert b"system.posix_acl_access" in names
        names = {n for n, _ in img.xattrs(img.lookup(b"/" + ACL_DIR.encode()))}
        assert b"system.posix_acl_default" in names


@pytest.mark.parametrize("args", [
    ["--exclude-regex=sym", "--exclude-path=files/medium", "-T1000"],
    ["-T1000", "--mkfs-time", "-zlz4hc", "-Eztailpacking"],
    ["--all-root", "--uid-offset=7", "-x-1", "-Enoinline_data", "--sort=none"],
    ["--hard-dereference", "-b1024"],
], ids=["exclude-T", "mkfs-time", "owners", "hard-dereference"])
def test_verify_passes_with_options(args, archive, tmp_path):
    _build_verified(args, archive, tmp_path, stdin=False)


def test_verify_passes_with_source_date_epoch(archive, tmp_path):
    image = tmp_path / "out.erofs"
    r = run_mkerofs("--tar=f", "--verify", image, input=gzip.compress(archive, 1),
                    env={"SOURCE_DATE_EPOCH": "1700000000"}, check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("strip", [False, True], ids=["aufs", "ovlfs-strip"])
def test_verify_passes_with_aufs(strip, archive, tmp_path):
    data = _with_aufs_entries(archive, tmp_path)
    args = ["--aufs", "--ovlfs-strip"] if strip else ["--aufs"]
    image = _build_verified(args, data, tmp_path, stdin=True)
    with Image.open(str(image)) as img:
        opaque = dict(img.xattrs(img.lookup(b"/nested/a")))
        names = {name for name, _nid, _ftype in img.listdir(img.lookup(b"/files"))}
        if strip:
            assert b"gone" not in names
            assert b"trusted.overlay.opaque" not in opaque
        else:
            assert b"gone" in names
            assert opaque.get(b"trusted.overlay.opaque") == b"y"


def test_verify_passes_on_a_headerball(tmp_path):
    buf = io.BytesIO()
    for name, size in {"f": 5000, "g": 10, "big": 3 * 4096, "empty": 0}.items():
        info = tarfile.TarInfo(name)
        info.size, info.mtime = size, 1_700_000_000
        buf.write(info.tobuf(tarfile.USTAR_FORMAT))     # the header alone: no payload
    buf.write(bytes(1024))
    image = tmp_path / "hb.erofs"
    for args in ([], ["-zlz4"]):
        r = run_mkerofs("--tar=headerball", "--verify", *args, image, input=buf.getvalue(),
                        check=False)
        assert r.returncode == 0, r.stderr


# -- the verification catches what is wrong ---------------------------------------------------

VICTIM = b"victim"
VICTIM_DATA = bytes(range(256)) * 20          # 5120 bytes: a 1024-byte tail kept inline


def _small_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in ((b"a", b"A" * 100), (VICTIM, VICTIM_DATA)):
            info = tarfile.TarInfo(name.decode())
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def _input(kind: str, tmp_path):
    data = _small_tar()
    if kind == "path":                  # a plain tar file: data read in place
        tarball = tmp_path / "in.tar"
        tarball.write_bytes(data)
        return tarball
    return io.BytesIO(gzip.compress(data))  # a stream: data goes through the spool


@pytest.mark.parametrize("kind", ["path", "stream"])
def test_verify_catches_a_flipped_data_byte(kind, tmp_path, spool_dir, monkeypatch):
    copy = DataArea.copy_regular

    def copy_and_flip(self, node, tail_view):
        copy(self, node, tail_view)
        if node.path == VICTIM:
            tail_view[0] ^= 0x01            # the first byte of the inline tail

    monkeypatch.setattr(DataArea, "copy_regular", copy_and_flip)
    image = tmp_path / "bad.erofs"
    options = BuildOptions(tar=TarOptions(), verify=True, workers=1)
    with pytest.raises(BuildError) as err:
        build(image, _input(kind, tmp_path), options)
    message = str(err.value)
    assert "verification failed" in message
    assert "/victim: data differs at byte 4096" in message
    assert "/a:" not in message
    assert image.exists()                   # kept for inspection
    assert list(spool_dir.iterdir()) == []  # the spool is gone all the same


def test_verify_catches_a_changed_owner(tmp_path, spool_dir, monkeypatch):
    plan_inodes = build_module.plan_inodes

    def plan_and_change(root, options, build_time):
        plan = plan_inodes(root, options, build_time)
        for node in plan.inodes:
            if node.path == VICTIM:
                node.uid += 1
        return plan

    monkeypatch.setattr(build_module, "plan_inodes", plan_and_change)
    image = tmp_path / "bad.erofs"
    with pytest.raises(BuildError) as err:
        build(image, _input("stream", tmp_path), BuildOptions(tar=TarOptions(), verify=True))
    assert "/victim: uid 1 in the image, expected 0" in str(err.value)
    assert image.exists()


def test_unchanged_build_verifies_in_process(tmp_path, spool_dir):
    """The same in-process builds as above, unpatched, pass (the failures come from the patch)."""
    for kind in ("path", "stream"):
        image = tmp_path / f"good-{kind}.erofs"
        build(image, _input(kind, tmp_path), BuildOptions(tar=TarOptions(), verify=True,
                                                          workers=1))
    assert list(spool_dir.iterdir()) == []


def test_verify_catches_an_extra_path(tmp_path, spool_dir, monkeypatch):
    """A name the tar did not give (here: hidden from the captured tree) is reported."""
    capture = verify.TarSource.capture.__func__

    def capture_without_victim(cls, root, *rest):
        source = capture(cls, root, *rest)
        source._names[b""].remove(VICTIM)
        return source

    monkeypatch.setattr(verify.TarSource, "capture", classmethod(capture_without_victim))
    image = tmp_path / "bad.erofs"
    with pytest.raises(BuildError) as err:
        build(image, _input("path", tmp_path), BuildOptions(tar=TarOptions(), verify=True))
    assert "/victim: regular file in the image, not in the source" in str(err.value)
