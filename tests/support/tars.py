"""Tar archives for the tar-input tests (``mkerofs --tar``): a source tree with every kind of entry,
archived by GNU tar, bsdtar (libarchive) or Python's tarfile in each of their formats, compressed
or not, fed by path or on stdin; and tars written block by block for the cases no archiver writes.

What a format carries decides what the mounted image can be compared against (`Carries`):

* ustar (any producer): names must fit ``prefix`` (155) + ``name`` (100) with no component over
  100 bytes, link targets 100 bytes, ids below 8**7 (2097152), mtimes in whole seconds, no xattrs.
* GNU (``gnu``/``oldgnu``, tarfile GNU_FORMAT, bsdtar ``gnutar``): long names and link targets
  (``L``/``K``), base-256 ids, whole seconds; GNU tar's ``--sparse`` writes old-GNU ``S`` entries.
* PAX (GNU ``posix``, tarfile PAX_FORMAT, bsdtar ``pax``): everything; mtimes with ns, except
  tarfile, which writes ``st_mtime`` (a float: exact only for multiples of 1/8 s here). Only GNU
  tar (``--xattrs --xattrs-include=* --acls``) and bsdtar (``--xattrs --acls``) write xattrs and
  POSIX ACLs (access + default, named users and groups).
* Hard links: tarfile links only regular files, GNU tar and bsdtar also symlinks; a second name
  of a fifo or device is a separate entry for all three (bsdtar links fifos), so the trees have
  hard links to regular files and, except for tarfile, to a symlink.

The tree builder makes, under one root, only what the format carries, so that the image of the
tar must equal the tree exactly (`support.compare.compare_trees` with ``xattrs=True``).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from .paths import PathLike, fsb
from .tarfiles import header, member, pax  # noqa: F401  (pax, header: re-exported)
from .trees import set_tree_times, write_file

# -T value given with --mkfs-time: the build time, never an mtime of the trees
MKFS_TIME = 1_000_000_000
# a real file capability (VFS_CAP_REVISION_2 | effective, permitted cap_net_raw), as setcap writes
CAP_NET_RAW_EP = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)


# -- what a format carries and the tree that matches it ----------------------------------------

@dataclass(frozen=True)
class Carries:
    long_names: bool = True         # components > 100 bytes, paths > 255, link targets > 100
    big_ids: bool = True            # uid/gid >= 8**7 (base-256 or PAX)
    mtime_quantum_ns: int = 1       # mtimes are multiples of this (10**9: whole seconds)
    xattrs: bool = False            # user./trusted./security. xattrs and POSIX ACLs
    special_links: bool = True      # hard links to symlinks (GNU tar and bsdtar store links to
                                    # fifos and devices as separate entries)


USTAR = Carries(long_names=False, big_ids=False, mtime_quantum_ns=10**9)
GNU = Carries(mtime_quantum_ns=10**9)
PAX = Carries(xattrs=True)


@dataclass(frozen=True)
class Recipe:
    """One way of archiving a tree: the producer, its format name and what that carries."""
    producer: str                   # "gnu", "bsdtar" or "python"
    format: str                     # the producer's own name of the format
    carries: Carries
    sparse: bool = False            # GNU tar --sparse

    @property
    def name(self) -> str:
        return f"{self.producer}-{self.format}" + ("-sparse" if self.sparse else "")


RECIPES = {r.name: r for r in (
    Recipe("gnu", "ustar", USTAR),
    Recipe("gnu", "gnu", GNU, sparse=True),
    Recipe("gnu", "oldgnu", GNU, sparse=True),
    Recipe("gnu", "posix", PAX, sparse=True),
    Recipe("gnu", "posix", PAX),
    Recipe("python", "ustar", Carries(long_names=False, big_ids=False, mtime_quantum_ns=10**9,
                                      special_links=False)),
    Recipe("python", "gnu", Carries(mtime_quantum_ns=10**9, special_links=False)),
    Recipe("python", "pax", Carries(mtime_quantum_ns=125_000_000, special_links=False)),
    Recipe("bsdtar", "ustar", USTAR),
    Recipe("bsdtar", "gnutar", GNU),
    Recipe("bsdtar", "pax", PAX),
)}


class Archives:
    """Trees and their tars, made once per recipe name under ``tmp_path_factory`` (a module
    fixture holds one); a missing archiver skips the test."""

    def __init__(self, tmp_path_factory):
        self._factory = tmp_path_factory
        self._made: dict[str, tuple[Path, Path]] = {}

    def __call__(self, name: str) -> tuple[Path, Path]:
        """(tar path, source tree) of RECIPES[name]."""
        recipe = RECIPES[name]
        problem = producer_problem(recipe.producer)
        if problem:
            pytest.skip(problem)
        if name not in self._made:
            base = self._factory.mktemp(name)
            src = make_tar_tree(base / "src", recipe.carries)
            self._made[name] = (make_tar(recipe, src, base / "t.tar"), src)
        return self._made[name]


def producer_problem(producer: str) -> Optional[str]:
    """None if the archiver is installed, else why not (a missing tool, not a kernel problem)."""
    tool = {"gnu": "tar", "bsdtar": "bsdtar", "python": None}[producer]
    if tool and shutil.which(tool) is None:
        pkg = {"tar": "tar", "bsdtar": "libarchive-tools"}[tool]
        return f"{tool} not installed (apt-get install {pkg})"
    return None


def round_tree_times(root: PathLike, quantum_ns: int) -> None:
    """Floor every mtime of the tree to a multiple of ``quantum_ns`` (children before parents,
    so setting one does not disturb another)."""
    if quantum_ns == 1:
        return
    root = fsb(root)
    paths = [root]
    for dirpath, dirs, files in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in dirs + files]
    for p in sorted(paths, key=lambda p: p.count(b"/"), reverse=True):
        ns = os.lstat(p).st_mtime_ns
        ns -= ns % quantum_ns
        os.utime(p, ns=(ns, ns), follow_symlinks=False)


def write_sparse(path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    """A file of `size` bytes holding only `pieces` (offset, bytes); the rest are holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)


FILE_SIZES = (0, 1, 100, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097,
              8191, 8192, 8193, 12289, 65536, 200_003)


def make_tar_tree(root: PathLike, carries: Carries) -> Path:
    """A tree of what ``carries`` allows (see the module docstring): files of many sizes (0, block
    boundaries of 512 to 4096, a 200 KB one), sparse files, setuid/setgid/sticky modes, devices,
    fifos, symlinks, hard links (to files, and to specials where the format can), empty
    directories, owners; with long_names components of 120 and 255 bytes and a 315-byte path;
    with big_ids uid/gid 3000000 and 2**32-2; with xattrs user./trusted./security. xattrs on
    files, a directory and a symlink, and access and default POSIX ACLs with named users and
    groups. Mtimes are varied, with ns, floored to the format's resolution."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    j = lambda *p: os.path.join(root, *[fsb(x) for x in p])      # noqa: E731

    os.mkdir(j("files"))
    for size in FILE_SIZES:
        write_file(j("files", "size_%06d" % size), size)
    write_file(j("files", "zeros_8k"), 8192, pattern=b"\0")
    write_file(j("files", "text"), 5000, pattern=b"hello erofs\n")

    os.mkdir(j("sparse"))
    write_sparse(j("sparse", "holes"), 1 << 20, [(70_000, b"A" * 4), (500_000, b"B" * 5000)])
    write_sparse(j("sparse", "hole_at_end"), 70_000, [(0, b"start")])
    write_sparse(j("sparse", "data_at_end"), 2 << 20, [(0, b"C" * 10), ((2 << 20) - 3, b"END")])
    write_sparse(j("sparse", "all_hole"), 100_000, [])

    os.mkdir(j("modes"))
    for mode in (0o4755, 0o2755, 0o6711, 0o1755, 0o0000, 0o0400, 0o0640):
        write_file(j("modes", "f%04o" % mode), 10)
        os.chmod(j("modes", "f%04o" % mode), mode)
    for mode in (0o1777, 0o2775, 0o0700, 0o0555):
        os.mkdir(j("modes", "d%04o" % mode))
        write_file(j("modes", "d%04o" % mode, "inner"), 3)
        os.chmod(j("modes", "d%04o" % mode), mode)

    os.mkdir(j("special"))
    for name, kind, major, minor in (("null", stat.S_IFCHR, 1, 3), ("sda", stat.S_IFBLK, 8, 300),
                                     ("big_minor", stat.S_IFCHR, 259, 70_000),
                                     ("zero_zero", stat.S_IFCHR, 0, 0)):
        os.mknod(j("special", name), kind | 0o640, os.makedev(major, minor))
    os.mkfifo(j("special", "fifo"), 0o620)

    os.mkdir(j("symlinks"))
    os.symlink(b"../files/text", j("symlinks", "rel"))
    os.symlink(b"/absolute/target", j("symlinks", "abs"))
    os.symlink(b"dangling-nowhere", j("symlinks", "dangling"))
    os.symlink(b"t" * 99, j("symlinks", "target_99"))
    if carries.long_names:
        os.symlink(b"u" * 150, j("symlinks", "target_150"))
        os.symlink((b"v/" * 600)[:1199] + b"w", j("symlinks", "target_1200"))

    os.makedirs(j("links", "a"))
    os.mkdir(j("links", "b"))
    for first, others, size in (("a/three", ("b/three_2", "three_3"), 12345),
                                ("a/empty", ("b/empty_2",), 0)):
        write_file(j("links", first), size)
        for other in others:
            os.link(j("links", first), j("links", other))
    if carries.special_links:
        os.symlink(b"shared-symlink-target", j("links", "a", "sym"))
        os.link(j("links", "a", "sym"), j("links", "b", "sym_2"), follow_symlinks=False)

    os.mkdir(j("owners"))
    ids = [(1, 2), (1000, 1000), (65534, 65535), (70_000, 80_000)]
    if carries.big_ids:
        ids += [(3_000_000, 3_000_001), (2**32 - 2, 2**31)]
    for uid, gid in ids:
        write_file(j("owners", "f_%d_%d" % (uid, gid)), 20)
        os.chown(j("owners", "f_%d_%d" % (uid, gid)), uid, gid)
    os.mkdir(j("owners", "dir_owned"))
    os.chown(j("owners", "dir_owned"), 1234, 4321)
    os.symlink(b"x", j("owners", "sym_owned"))
    os.chown(j("owners", "sym_owned"), 4242, 2424, follow_symlinks=False)

    os.makedirs(j("empty"))
    os.makedirs(j("nested", "a", "b", "c"))
    write_file(j("nested", "a", "b", "leaf"), 42)

    if carries.long_names:
        deep = [b"d" * 100, b"e" * 100, b"f" * 100]
        os.makedirs(j("long", "L" * 120))
        write_file(j("long", "L" * 120, "f"), 3)
        os.makedirs(j("long", *deep))
        write_file(j("long", *deep, "deep"), 9)                 # a 315-byte path
        write_file(j("long", "n" * 255), 13)
        os.link(j("long", *deep, "deep"), j("long", "hard_to_deep"))

    if carries.xattrs:
        add_tar_xattrs(root)

    os.chmod(root, 0o755)
    os.chown(root, 0, 0)
    set_tree_times(root)
    round_tree_times(root, carries.mtime_quantum_ns)
    return Path(os.fsdecode(root))


def add_tar_xattrs(root: PathLike) -> None:
    """xattrs in the namespaces the kernel shows (user., trusted., security.) and POSIX ACLs
    (named users and groups, a default ACL) as the xattrs tests of a tar need."""
    root = fsb(root)
    j = lambda *p: os.path.join(root, *[fsb(x) for x in p])      # noqa: E731
    os.mkdir(j("xattr"))
    f = j("xattr", "file")
    write_file(f, 100)
    os.setxattr(f, "user.small", b"v")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.big", b"x" * 2000)
    os.setxattr(f, "user.bin", bytes(range(256)))
    os.setxattr(f, "trusted.t", b"\0\1\2")
    os.setxattr(f, "security.label", b"some label")
    write_file(j("xattr", "capability"), 10)
    os.setxattr(j("xattr", "capability"), "security.capability", CAP_NET_RAW_EP)
    os.mkdir(j("xattr", "dir"))
    os.setxattr(j("xattr", "dir"), "user.on_dir", b"on a dir")
    os.setxattr(j("xattr", "dir"), "trusted.dir", b"y")
    os.symlink(b"file", j("xattr", "sym"))
    os.setxattr(j("xattr", "sym"), "trusted.sym", b"on a symlink", follow_symlinks=False)
    write_file(j("xattr", "acl"), 3)
    subprocess.run(["setfacl", "-m", "u:4242:rwx,u:4343:r,g:100:r-x,g:4545:w", f"{os.fsdecode(j('xattr', 'acl'))}"],
                   check=True)
    os.mkdir(j("xattr", "acldir"))
    subprocess.run(["setfacl", "-m", "u:4242:rx", "-d", "-m", "u:4242:rwx,g:4545:rx,o::-",
                    os.fsdecode(j("xattr", "acldir"))], check=True)
    os.setxattr(j("xattr", "acldir"), "user.too", b"1")


def zero_file_data(root: PathLike) -> None:
    """Every regular file of the tree becomes zeros of the same size (what ``--tar=headerball``
    reads back), keeping mtimes and hard links."""
    root = fsb(root)
    for dirpath, _dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "r+b") as f:
                    f.truncate(0)
                    f.truncate(st.st_size)
                os.utime(p, ns=(st.st_mtime_ns, st.st_mtime_ns))


# -- archiving and compressing -------------------------------------------------------------------

def make_tar(recipe: Recipe, src: PathLike, out: PathLike) -> Path:
    """Archive the whole tree ``src`` (its root as ``./``) with ``recipe`` into ``out``."""
    src, out = os.fsdecode(src), os.fsdecode(out)
    if recipe.producer == "gnu":
        args = ["tar", f"--format={recipe.format}", "--numeric-owner"]
        if recipe.carries.xattrs:
            args += ["--xattrs", "--xattrs-include=*", "--acls"]
        if recipe.sparse:
            args.append("--sparse")
        subprocess.run(args + ["-cf", out, "-C", src, "."], check=True)
    elif recipe.producer == "bsdtar":
        args = ["bsdtar", f"--format={recipe.format}", "--numeric-owner"]
        args += ["--xattrs", "--acls"] if recipe.carries.xattrs else ["--no-xattrs", "--no-acls"]
        subprocess.run(args + ["-cf", out, "-C", src, "."], check=True)
    else:
        fmt = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT,
               "pax": tarfile.PAX_FORMAT}[recipe.format]
        with tarfile.open(out, "w", format=fmt) as t:
            t.add(src, arcname=".")
    return Path(out)


COMPRESSORS = {
    "gzip": ["gzip", "-c"],
    "xz": ["xz", "-c"],
    "lzma": ["xz", "--format=lzma", "-c"],
    "zstd": ["zstd", "-q", "-c"],
}
# the mkfs.erofs option that names each (zstd has none: mkerofs knows it by its magic)
DECODE_OPTION = {"gzip": "--ungzip", "xz": "--unxz", "lzma": "--unlzma", "zstd": None}


def compress(tar: PathLike, kind: str, out: PathLike) -> Path:
    with open(tar, "rb") as fin, open(out, "wb") as fout:
        subprocess.run(COMPRESSORS[kind], stdin=fin, stdout=fout, check=True)
    return Path(os.fsdecode(out))


def headerball(tar: PathLike) -> bytes:
    """The tar without the data of regular files (``--tar=headerball`` input): every header block,
    PAX and long-name payloads included, and the end marker. Needs a tar without sparse entries."""
    raw = Path(os.fsdecode(tar)).read_bytes()
    out = bytearray()
    with tarfile.open(os.fsdecode(tar)) as t:
        for m in t.getmembers():
            if m.issparse():
                raise ValueError("headerball() needs a tar without sparse entries")
            out += raw[m.offset:m.offset_data]
            if not m.isreg():
                out += raw[m.offset_data:m.offset_data + -(-m.size // 512) * 512]
    return bytes(out + bytes(1024))


# -- tars written block by block (support/tarfiles.py writes the blocks) ---------------------------

END = bytes(1024)


def entry(name: bytes, data: bytes = b"", typeflag: bytes = b"0", *, devmajor=None, devminor=None,
          **kw) -> bytes:
    """A header (support.tarfiles.header; device numbers may be ints) and its padded payload;
    the size is len(data) unless given."""
    kw.setdefault("size", len(data))
    devmajor = b"%07o\0" % devmajor if isinstance(devmajor, int) else devmajor
    devminor = b"%07o\0" % devminor if isinstance(devminor, int) else devminor
    return member(header(name, typeflag, devmajor=devmajor, devminor=devminor, **kw), data)


def oldgnu_sparse(pairs: list[tuple[int, int]], realsize: int) -> bytes:
    """The ``prefix`` area of an old-GNU ``S`` header (GNU magic) for up to 4 (offset, length)
    pairs: sparse map at byte 386, isextended at 482, realsize at 483."""
    area = bytearray(155)
    for i, (offset, length) in enumerate(pairs):
        at = 386 - 345 + 24 * i
        area[at:at + 24] = b"%011o\0%011o\0" % (offset, length)
    area[483 - 345:495 - 345] = b"%011o\0" % realsize
    return bytes(area)
