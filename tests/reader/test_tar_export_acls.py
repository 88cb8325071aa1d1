"""`mkerofs-read tar` and POSIX ACLs: the exported tar gives GNU tar what it restores ACLs from
(``SCHILY.acl.access`` / ``default`` text; with --acls and no text record GNU tar replaces the ACL
with the one the mode implies, over a raw ``system.posix_acl_*`` xattr it has just set) and keeps
the raw xattrs beside them, which GNU tar --xattrs and mkerofs's own tar reader restore exactly.

A source tree with access and default ACLs (named users and groups, one id with no passwd or
group entry), xattrs, a name with "=" and "%", hard links, a device, a fifo, an empty directory
and ns mtimes is built into an image, exported, extracted by GNU tar into an empty folder and
compared with the source (getfacl, every xattr, every attribute); the tar is also read back by
mkerofs.writer.tarstream.TarReader, whose entries must carry the image's xattrs and attributes.
"""
from __future__ import annotations

import grp
import io
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mkerofs.ondisk import posix_acl as acl
from mkerofs.reader import Image
from mkerofs.reader.extract import write_tar
from mkerofs.writer.tarstream import HARDLINK, TarReader, acl_from_text
from support.compare import tree_differences
from support.run import build_image
from test_readcli import run_read

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, trusted. xattrs)"),
    pytest.mark.skipif(not (shutil.which("setfacl") and shutil.which("getfacl")),
                       reason="needs setfacl/getfacl"),
]

NOBODY_ID = 4242            # an id with no passwd or group entry: text must carry the number
GNU_TAR_X = ["tar", "--numeric-owner", "--same-permissions", "--warning=no-timestamp",
             # tarfile marks binary xattr values with hdrcharset, which GNU tar 1.34 ignores
             "--warning=no-unknown-keyword"]


def _setfacl(path: Path, spec: str, *extra: str) -> None:
    subprocess.run(["setfacl", *extra, "-m", spec, str(path)], check=True)


def _make_tree(root: Path) -> None:
    root.mkdir()
    (root / "file").write_bytes(b"data with an ACL\n")
    os.link(root / "file", root / "hardlink")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_bytes(b"inner\n")
    (root / "emptydir").mkdir()
    (root / "plain").write_bytes(b"no ACL\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.symlink("file", root / "link")

    _setfacl(root / "file", f"u:1000:rw,u:{NOBODY_ID}:r,u:0:w,g:{NOBODY_ID}:rwx,g:0:r,m::rwx")
    _setfacl(root / "dir", f"u:{NOBODY_ID}:rx,g:100:r")
    _setfacl(root / "dir", f"u:{NOBODY_ID}:rwx,g:{NOBODY_ID}:r,u:1000:x,o::-", "-d")
    _setfacl(root / "emptydir", f"g:{NOBODY_ID}:rw,o::-", "-d")      # a default ACL only
    _setfacl(root / "fifo", f"u:{NOBODY_ID}:w")
    _setfacl(root, f"u:{NOBODY_ID}:rx", "-m", "d:u:1000:rw")         # the root: both kinds
    _setfacl(root / "dir" / "inner", "g::rw,m::r")       # a mask and no named entry
    # no ACL under a directory with a default one: an extraction inherits one unless told
    # (GNU tar --acls sets the mode's ACL and removes an inherited default)
    (root / "dir" / "noacl").write_bytes(b"")
    (root / "dir" / "sub").mkdir()
    for rel in ("noacl", "sub"):
        subprocess.run(["setfacl", "-b", "-k", str(root / "dir" / rel)], check=True)

    os.setxattr(root / "file", "user.plain", b"value")
    os.setxattr(root / "dir", "user.key=with%signs", b"v=1%")
    os.setxattr(root / "fifo", "trusted.t", b"\0\xff binary")
    os.setxattr(root / "link", "trusted.on-link", b"symlink xattr", follow_symlinks=False)

    os.chown(root / "file", NOBODY_ID, NOBODY_ID)
    os.chown(root / "fifo", 1000, NOBODY_ID)
    os.chown(root / "link", NOBODY_ID, 0, follow_symlinks=False)
    # mtimes with nanoseconds, children before their directories
    for i, rel in enumerate(["file", "dir/inner", "dir/noacl", "dir/sub", "fifo", "null",
                             "link", "plain", "emptydir", "dir", "."]):
        ns = 1_600_000_000_000_000_000 + i * 1_000_003_007
        os.utime(root / rel, ns=(ns, ns), follow_symlinks=False)


def _getfacl(root: Path) -> str:
    return subprocess.run(["getfacl", "-R", "-P", "-n", "."], cwd=root, check=True,
                          stdout=subprocess.PIPE, text=True).stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(source tree, image, exported tar)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        with pytest.raises(KeyError):
            lookup(NOBODY_ID)
    base = tmp_path_factory.mktemp("tar-acls")
    src = base / "src"
    _make_tree(src)
    assert "default:group:4242:rw-" in _getfacl(src)
    image = base / "image.erofs"
    build_image(image, src)
    tar = base / "export.tar"
    r = run_read("tar", "-o", tar, image)
    assert r.stderr == "", r.stderr
    return src, image, tar


def _gnu_untar(tar: Path, dest: Path, *options: str) -> None:
    dest.mkdir()
    r = subprocess.run([*GNU_TAR_X, *options, "-x", "-f", str(tar), "-C", str(dest)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_export_carries_acl_text_beside_raw_xattrs(exported):
    _src, _image, tar = exported
    raw = tar.read_bytes()
    # numeric ids in libacl's long text form, one entry a line, as GNU tar writes it
    text = (f"SCHILY.acl.access=user::rw-\nuser:0:-w-\nuser:1000:rw-\nuser:{NOBODY_ID}:r--\n"
            f"group::r--\ngroup:0:r--\ngroup:{NOBODY_ID}:rwx\nmask::rwx\nother::r--\n")
    assert text.encode() in raw
    assert f"SCHILY.acl.default=user::rwx\ngroup::r-x\ngroup:{NOBODY_ID}:rw-\nmask::rwx\n" \
           f"other::---\n".encode() in raw
    assert raw.count(b"SCHILY.acl.access=") == 6        # ., dir, inner, file, hardlink, fifo
    assert raw.count(b"SCHILY.acl.default=") == 3       # ., dir, emptydir
    assert raw.count(b"SCHILY.xattr.system.posix_acl_access=") == 6
    assert b"SCHILY.xattr.user.key%3Dwith%25signs=v=1%" in raw


def test_gnu_tar_restores_every_acl_and_xattr(exported, tmp_path):
    src, _image, tar = exported
    out = tmp_path / "out"
    _gnu_untar(tar, out, "--xattrs", "--xattrs-include=*", "--acls")
    assert _getfacl(out) == _getfacl(src)
    # every attribute and xattr (the raw ACL values included), hard links, the root's too
    assert tree_differences(src, out, xattrs=True) == []


def test_gnu_tar_acls_alone_restore_acls_from_the_text(exported, tmp_path):
    # without --xattrs GNU tar reads no SCHILY.xattr record: the text alone carries the ACLs
    src, _image, tar = exported
    out = tmp_path / "out"
    _gnu_untar(tar, out, "--acls")
    assert _getfacl(out) == _getfacl(src)


def test_tar_reader_reads_back_the_image_xattrs(exported):
    _src, image, tar = exported
    seen = set()
    with Image.open(image) as img, open(tar, "rb") as f:
        for entry in TarReader(f):
            inode = img.lookup(b"/" + entry.path) if entry.path else img.root
            where = entry.path.decode()
            assert entry.xattrs == list(img.xattrs(inode)), where
            assert (entry.mode, entry.uid, entry.gid) == (inode.mode, inode.uid, inode.gid), where
            assert entry.mtime_ns == inode.mtime * 10**9 + inode.mtime_nsec, where
            seen.add(entry.path)
            if entry.kind == HARDLINK:
                assert entry.link_path == b"file", where
    assert seen == {b"", b"file", b"hardlink", b"dir", b"dir/inner", b"dir/noacl", b"dir/sub",
                    b"emptydir", b"plain", b"fifo", b"null", b"link"}


def test_tar_reader_reads_the_text_alone_to_the_same_value(exported):
    """The SCHILY.acl.* text (what another reader of the tar might use) decodes to the very
    value the image holds: nothing is lost between the two forms."""
    _src, image, tar = exported
    with Image.open(image) as img:
        for path in (b"/", b"/file", b"/dir", b"/emptydir", b"/fifo"):
            inode = img.lookup(path) if path != b"/" else img.root
            for name, value in img.xattrs(inode):
                if name.startswith(b"system.posix_acl_"):
                    text = acl.posix_acl_text(acl.decode_posix_acl(value)).encode()
                    assert acl.encode_posix_acl(acl_from_text(text)) == value, (path, name)


class _WithXattr:
    """An image with one more xattr on its regular files (one ext4 would not let us set)."""

    def __init__(self, img: Image, name: bytes, value: bytes):
        self._img, self._extra = img, (name, value)

    def __getattr__(self, attr):
        return getattr(self._img, attr)

    def xattrs(self, inode):
        return self._img.xattrs(inode) + ([self._extra] if inode.is_reg() else [])


def test_unusable_acl_value_is_written_raw_with_a_warning(tmp_path):
    """A value the kernel would refuse (named entries but no mask) has no text form GNU tar
    would accept: the raw record stays and the export says GNU tar --acls will not restore it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    image = tmp_path / "i.erofs"
    build_image(image, src)
    bad = acl.posix_acl_xattr_header.pack(acl.POSIX_ACL_XATTR_VERSION) + b"".join(
        acl.posix_acl_xattr_entry.pack(*e) for e in [
            (acl.ACL_USER_OBJ, 6, acl.ACL_UNDEFINED_ID), (acl.ACL_USER, 6, 7),
            (acl.ACL_GROUP_OBJ, 4, acl.ACL_UNDEFINED_ID), (acl.ACL_OTHER, 4, acl.ACL_UNDEFINED_ID)])
    for value, why in ((bad, "has named entries but no mask entry"),
                       (bad[:-1], "is not a 4-byte header and 8-byte entries")):
        warnings = []
        out = io.BytesIO()
        with Image.open(image) as img:
            stats = write_tar(_WithXattr(img, b"system.posix_acl_access", value), out,
                              warn=warnings.append)
        assert len(warnings) == 1 and warnings[0].startswith("/f: system.posix_acl_access: ") \
            and why in warnings[0], warnings
        assert stats.problems == warnings
        raw = out.getvalue()
        assert b"SCHILY.xattr.system.posix_acl_access=" + value + b"\n" in raw
        assert b"SCHILY.acl.access" not in raw


def test_non_utf8_xattr_name_is_left_out_with_a_warning(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", b"user.\xff", b"1")
    os.setxattr(src / "f", b"user.ok", b"2")
    image = tmp_path / "i.erofs"
    build_image(image, src)
    tar = tmp_path / "x.tar"
    r = run_read("tar", "-o", tar, image)
    assert "user.\\xff is not UTF-8; left out" in r.stderr, r.stderr
    with open(tar, "rb") as f:
        entries = {e.path: e.xattrs for e in TarReader(f)}
    assert entries[b"f"] == [(b"user.ok", b"2")]
