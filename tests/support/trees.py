"""Source trees with every case mkerofs must handle: file sizes around block boundaries, holes,
modes, symlink lengths, awkward names, big and deep directories, hard links, devices, sockets,
xattrs; deterministic mtimes that never equal the time of a test run; and a metadata-preserving
copy in reverse order."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import stat
from pathlib import Path
from typing import Optional, Sequence

from .paths import PathLike, fsb

BLOCK_SIZES = (512, 1024, 2048, 4096)

# mtimes used by the tree builders: all in the past or far in the future so
# that they never coincide with the build time of a test run.
BASE_MTIME_NS = 1_500_000_000 * 10**9          # 2017-07-14
FIXED_T = 1_234_567_890                         # a -T value no source file has


def _rand_bytes(n: int, seed) -> bytes:
    return random.Random(seed).randbytes(n)


def write_file(path: PathLike, size: int, seed=None, *, pattern: Optional[bytes] = None) -> None:
    """A file of ``size`` bytes: deterministic pseudo-random data (seed
    defaults to the path) or a repeated pattern."""
    if pattern is not None:
        data = (pattern * (size // len(pattern) + 1))[:size]
    else:
        data = _rand_bytes(size, seed if seed is not None else fsb(path))
    with open(path, "wb") as f:
        f.write(data)


def write_files(root: PathLike, files: dict[str, bytes]) -> Path:
    """Files by path below ``root`` (their directories made as needed); returns ``root``."""
    root = Path(os.fsdecode(root))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def make_socket(path: PathLike) -> None:
    """A UNIX socket node at ``path`` (bound via a relative name so long
    directories do not hit the 108-byte sun_path limit)."""
    path = fsb(path)
    d, n = os.path.split(path)
    old = os.open(".", os.O_RDONLY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(d or b".")
        s.bind(n)
    finally:
        s.close()
        os.fchdir(old)
        os.close(old)


def mtime_for(rel: bytes, i: int = 0) -> int:
    """A deterministic, varied mtime in ns for a relative path: mostly in
    2017-2020 with nanoseconds, some after 2038 and far future."""
    h = int.from_bytes(hashlib.sha256(rel + b"#%d" % i).digest()[:8], "little")
    kind = h % 10
    ns = (h >> 8) % 10**9
    if kind == 0:
        sec = 2**31 + (h >> 40) % 10**6         # just after 2038-01-19
    elif kind == 1:
        sec = 4_102_444_800 + (h >> 40) % 10**6  # after 2100
    elif kind == 2:
        ns = 0
        sec = BASE_MTIME_NS // 10**9 + (h >> 40) % 10**8
    else:
        sec = BASE_MTIME_NS // 10**9 + (h >> 40) % 10**8
    return sec * 10**9 + ns


def set_tree_times(root: PathLike, fixed: Optional[dict] = None) -> None:
    """Give every entry of the tree (root included, children before their
    directory) a deterministic mtime from mtime_for(); ``fixed`` maps
    relative bytes paths to explicit ns values. Keeps the trees free of
    mtimes equal to the build time of a test run."""
    root = fsb(root)
    fixed = {fsb(k): v for k, v in (fixed or {}).items()}
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            entries.append(os.path.relpath(full, root))
    entries.sort(key=lambda r: r.count(b"/"), reverse=True)
    for rel in entries + [b""]:
        full = os.path.join(root, rel) if rel else root
        ns = fixed.get(rel, mtime_for(rel))
        os.utime(full, ns=(ns, ns), follow_symlinks=False)


def boundary_sizes(block_sizes: Sequence[int] = BLOCK_SIZES) -> list[int]:
    """File sizes around block boundaries for every block size, with tails
    that do/don't fit next to a 32- or 64-byte inode."""
    sizes = {0, 1, 2, 31, 32, 33, 63, 64, 65, 100, 255, 256, 257}
    for bs in block_sizes:
        for k in (1, 2, 3):
            for d in (-65, -64, -63, -33, -32, -31, -1, 0, 1, 31, 32, 33):
                sizes.add(k * bs + d)
        sizes.add(bs // 2)
    return sorted(s for s in sizes if s >= 0)


def make_size_files(d: PathLike, block_sizes: Sequence[int] = BLOCK_SIZES) -> list[bytes]:
    d = fsb(d)
    os.makedirs(d, exist_ok=True)
    names = []
    for size in boundary_sizes(block_sizes):
        n = b"size_%06d" % size
        write_file(os.path.join(d, n), size)
        names.append(n)
    return names


def make_symlinks(d: PathLike, lengths: Optional[Sequence[int]] = None) -> None:
    """Symlinks whose targets are 1..4095 bytes long."""
    d = fsb(d)
    os.makedirs(d, exist_ok=True)
    if lengths is None:
        lengths = sorted({1, 2, 30, 59, 60, 61, 100, 255, 256, 511, 512, 513, 1000,
                          1023, 1024, 1025, 2000, 2047, 2048, 2049, 3000, 4000,
                          4031, 4032, 4033, 4063, 4064, 4065, 4094, 4095})
    for n in lengths:
        target = (b"t/" * (n // 2 + 1))[:n - 1] + b"x" if n > 1 else b"x"
        os.symlink(target, os.path.join(d, b"link_%04d" % n))


def make_full_tree(root: PathLike, *, xattrs: bool = False, big_ids: bool = True,
                   block_sizes: Sequence[int] = BLOCK_SIZES) -> Path:
    """A source tree with every case mkerofs must handle (see the module
    docstring of test_kernel_core). ``big_ids`` gives some entries
    uid/gid up to 2**32-2 (leave it off for -Eforce-inode-compact)."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    j = lambda *p: os.path.join(root, *[fsb(x) for x in p])

    # regular files of many sizes and contents
    make_size_files(j("sizes"), block_sizes)
    os.makedirs(j("files"))
    write_file(j("files", "empty"), 0)
    write_file(j("files", "zeros_8k"), 8192, pattern=b"\0")
    write_file(j("files", "text"), 5000, pattern=b"hello erofs\n")
    write_file(j("files", "medium"), 3 * 1024 * 1024 + 17)
    with open(j("files", "sparse_10m"), "wb") as f:       # holes inside
        f.truncate(10 * 1024 * 1024 + 123)
        f.seek(4096 * 3 + 5)
        f.write(b"data in the middle")
        f.seek(10 * 1024 * 1024)
        f.write(b"tail")
    with open(j("files", "hole_at_end"), "wb") as f:
        f.write(b"start")
        f.truncate(70000)

    # modes incl. suid/sgid/sticky
    os.makedirs(j("modes"))
    for mode in (0o000, 0o400, 0o644, 0o755, 0o777, 0o4755, 0o2755, 0o6711,
                 0o1755, 0o7777, 0o4000, 0o2000):
        p = j("modes", "f%04o" % mode)
        write_file(p, 10)
        os.chmod(p, mode)
    for mode in (0o700, 0o755, 0o1777, 0o2775, 0o3777, 0o000):
        p = j("modes", "d%04o" % mode)
        os.mkdir(p)
        write_file(os.path.join(p, b"inner"), 3)
        os.chmod(p, mode)

    # special files
    os.makedirs(j("special"))
    for nm, kind, maj, mnr in (("null", stat.S_IFCHR, 1, 3),
                               ("tty0", stat.S_IFCHR, 4, 0),
                               ("sda", stat.S_IFBLK, 8, 0),
                               ("big_major", stat.S_IFCHR, 300, 5),
                               ("big_minor", stat.S_IFBLK, 259, 70000),
                               ("max_both", stat.S_IFCHR, 4095, 0xFFFFF),
                               ("minor_256", stat.S_IFBLK, 7, 256),
                               ("zero_zero", stat.S_IFCHR, 0, 0)):
        os.mknod(j("special", nm), kind | 0o640, os.makedev(maj, mnr))
    os.mkfifo(j("special", "fifo"), 0o620)
    make_socket(j("special", "socket"))
    os.chmod(j("special", "socket"), 0o755)

    # symlinks
    make_symlinks(j("symlinks"))
    os.symlink(b"/absolute/target", j("symlinks", "abs"))
    os.symlink(b"../files/text", j("symlinks", "rel"))
    os.symlink(b"dangling-nowhere", j("symlinks", "dangling"))
    os.symlink(b"\xff\xfe non-utf8 target", j("symlinks", "nonutf8"))

    # hard links (across directories, to special files and symlinks)
    os.makedirs(j("links", "a"))
    os.makedirs(j("links", "b"))
    write_file(j("links", "a", "three"), 12345)
    os.link(j("links", "a", "three"), j("links", "b", "three_2"))
    os.link(j("links", "a", "three"), j("links", "three_3"))
    write_file(j("links", "a", "empty"), 0)
    os.link(j("links", "a", "empty"), j("links", "b", "empty_2"))
    os.symlink(b"shared-symlink-target", j("links", "a", "sym"))
    os.link(j("links", "a", "sym"), j("links", "b", "sym_2"), follow_symlinks=False)
    os.mkfifo(j("links", "a", "fifo"))
    os.link(j("links", "a", "fifo"), j("links", "b", "fifo_2"))
    os.mknod(j("links", "a", "dev"), stat.S_IFCHR | 0o600, os.makedev(10, 200))
    os.link(j("links", "a", "dev"), j("links", "b", "dev_2"))
    write_file(j("links", "a", "small"), 7)
    for i in range(5):
        os.link(j("links", "a", "small"), j("links", "b", "small_%d" % i))

    # ownership incl. big ids
    os.makedirs(j("owners"))
    ids = [(0, 0), (1, 2), (1000, 1000), (65534, 65534), (65535, 65535)]
    if big_ids:
        ids += [(65536, 65537), (100000, 5), (7, 2**31), (2**32 - 2, 2**32 - 2)]
    for uid, gid in ids:
        p = j("owners", "f_%d_%d" % (uid, gid))
        write_file(p, 20)
        os.chown(p, uid, gid)
    os.mkdir(j("owners", "dir_owned"))
    os.chown(j("owners", "dir_owned"), 1234, 4321)
    os.symlink(b"x", j("owners", "sym_owned"))
    os.chown(j("owners", "sym_owned"), 4242, 2424, follow_symlinks=False)
    if big_ids:
        os.symlink(b"y", j("owners", "sym_bigid"))
        os.chown(j("owners", "sym_bigid"), 2**32 - 2, 70000, follow_symlinks=False)

    # a few nested and empty directories
    os.makedirs(j("nested", "a", "b", "c", "d"))
    os.makedirs(j("nested", "empty"))
    for i in range(5):
        os.mkdir(j("nested", "a", "sub%d" % i))
    write_file(j("nested", "a", "b", "c", "d", "leaf"), 42)

    if xattrs:
        add_xattrs(root)

    set_tree_times(root)
    return Path(os.fsdecode(root))


def add_xattrs(root: PathLike) -> None:
    """user./trusted. xattrs of several sizes (for the xattr issue)."""
    root = fsb(root)
    j = lambda *p: os.path.join(root, *[fsb(x) for x in p])
    os.setxattr(j("files", "text"), "user.small", b"v")
    os.setxattr(j("files", "text"), "user.empty", b"")
    os.setxattr(j("files", "text"), "user.big", b"x" * 3000)
    os.setxattr(j("files", "empty"), "trusted.t", b"\0\1\2")
    os.setxattr(j("nested"), "user.dir", b"on a dir")
    os.setxattr(j("symlinks", "abs"), "trusted.sym", b"on a symlink",
                follow_symlinks=False)
    for i in range(20):
        os.setxattr(j("links", "a", "three"), f"user.shared{i}", b"same value")
        os.setxattr(j("sizes", "size_000001"), f"user.shared{i}", b"same value")


def make_big_dir(root: PathLike, n: int = 5000, *, name_len_cycle: int = 40) -> list[bytes]:
    """A directory with ``n`` entries (names of varying length so the
    dirents span many blocks; a few subdirs, symlinks and fifos among the
    files). Returns the names."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    names = []
    for i in range(n):
        pad = b"_" * (i % name_len_cycle)
        nm = b"e%05d%s" % (i, pad)
        p = os.path.join(root, nm)
        if i % 500 == 1:
            os.mkdir(p)
        elif i % 500 == 2:
            os.symlink(b"target%d" % i, p)
        elif i % 500 == 3:
            os.mkfifo(p)
        elif i % 100 == 4:
            write_file(p, i % 700)
        else:
            open(p, "wb").close()
        names.append(nm)
    set_tree_times(root)
    return names


def make_deep_tree(root: PathLike, depth: int = 300) -> bytes:
    """Nested directories ``depth`` levels deep, each with a file; a file
    and a symlink at the bottom. Returns the relative path of the deepest
    directory."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    rel = b""
    for i in range(depth):
        rel = os.path.join(rel, b"d%03d" % i) if rel else b"d%03d" % i
        os.mkdir(os.path.join(root, rel))
        write_file(os.path.join(root, rel, b"f"), i % 50)
    write_file(os.path.join(root, rel, b"bottom"), 4097)
    os.symlink(b"../" * 5 + b"f", os.path.join(root, rel, b"up"))
    set_tree_times(root)
    return rel


def names_tree_names() -> list[bytes]:
    """Awkward but valid file names."""
    names = [
        b"a" * 255,                                  # longest name
        b"b" * 254,
        "é".encode() * 127 + b"x",                   # 255 bytes, multi-byte UTF-8
        "日本語".encode() * 28 + b"abc",             # 255 bytes
        b"\xff\xfe\xfd",                             # not UTF-8
        b"caf\xe9",                                  # latin-1
        b"\x80",
        b"mixed\xc3\x28bad",
        b"!a", b"#", b"+", b"-a", b",", b"%", b"&", b"'quote", b'"dq',
        b" leading space", b"trailing space ", b"\ttab", b"new\nline",
        b"\x01ctrl", b"\x7f",
        b"...", b"..a", b".a", b".hidden", b"a.", b"a..b",
        b"a", b"aa", b"aaa", b"a.b", b"a-b", b"a_b", b"A", b"B", b"Z", b"z",
        b"0", b"00", b"9", b"~", b"{}", b"[x]", b"*", b"?", b"\\", b"|", b":", b";",
        b"=", b"@", b"^", b"`",
    ]
    return names


def make_names_tree(root: PathLike) -> list[bytes]:
    """A directory of awkward names (255 bytes, non-UTF-8, names sorting
    before '.', control characters), each as a file, plus a subdirectory
    with the same names as directories and a few as symlinks."""
    root = fsb(root)
    os.makedirs(root, exist_ok=True)
    names = names_tree_names()
    for i, nm in enumerate(names):
        write_file(os.path.join(root, nm), i * 37 % 300)
    sub = os.path.join(root, b"dirs")
    os.mkdir(sub)
    for nm in names:
        os.mkdir(os.path.join(sub, nm))
    syms = os.path.join(root, b"syms")
    os.mkdir(syms)
    for nm in names[:12]:
        os.symlink(nm, os.path.join(syms, nm))
    set_tree_times(root)
    return names


def make_big_sparse_file(path: PathLike, size: int = 4 * 2**30 + 4096 + 123) -> None:
    """A sparse file just over 4 GiB with data at the start, around the
    4 GiB boundary and at the end."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"begin" * 100)
        f.seek(2**32 - 10)
        f.write(b"across-4GiB-boundary")
        f.seek(size - 7)
        f.write(b"the end")


# (size, [(offset, length) of data]) of make_sparse_tree's files; the rest is hole.  Sizes
# straddle mkerofs's 16 MiB compression segments; offsets are unaligned; one file is all hole,
# one has 4 KiB holes between its data blocks.
SPARSE_FILES = {
    "middle": (40 * 2**20 + 123, [(17 * 2**20 + 5, 70000), (33 * 2**20 - 3000, 9000)]),
    "start-end": (20 * 2**20 + 4097, [(0, 5000), (20 * 2**20 + 4000, 97)]),
    "all-hole": (18 * 2**20 + 1, []),
    "end-data": (3 * 2**20, [(3 * 2**20 - 10000, 10000)]),
    "every-other-block": (2 * 2**20 + 100, [(k, 4096) for k in range(0, 2 * 2**20, 8192)]),
}


def make_sparse_tree(root: PathLike, *, dense: bool = False) -> None:
    """The files of SPARSE_FILES, with holes (or, `dense`, the same bytes all written), half
    random and half repetitive data, fixed mtimes: a sparse and a dense tree image alike."""
    rng = random.Random(15)
    root = Path(os.fsdecode(root))
    root.mkdir()
    for name, (size, extents) in SPARSE_FILES.items():
        path = root / name
        with open(path, "wb") as f:
            if dense:
                f.write(bytes(size))
            f.truncate(size)
            for off, n in extents:
                half = n // 2
                f.seek(off)
                f.write(rng.randbytes(half) + (b"sparse " * (n // 7 + 1))[:n - half])
        os.utime(path, (1_600_000_000, 1_600_000_000))
    os.utime(root, (1_600_000_000, 1_600_000_000))


def copy_tree(src: PathLike, dst: PathLike, *, reverse: bool = True) -> None:
    """Copy a tree with all metadata (types, data, modes, owners, ns mtimes,
    rdev, hard links), creating the entries of every directory in reverse
    name order by default, so that readdir order (and inode numbers) differ
    from the original's while the content is identical."""
    src, dst = fsb(src), fsb(dst)
    links: dict[tuple, bytes] = {}
    dirs: list[tuple[bytes, os.stat_result]] = []

    def meta(path, st):
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

    def rec(s, d, st):
        os.mkdir(d)
        dirs.append((d, st))
        for name in sorted(os.listdir(s), reverse=reverse):
            sp, dp = os.path.join(s, name), os.path.join(d, name)
            cst = os.lstat(sp)
            mode = cst.st_mode
            if stat.S_ISDIR(mode):
                rec(sp, dp, cst)
                continue
            key = (cst.st_dev, cst.st_ino)
            if cst.st_nlink > 1 and key in links:
                os.link(links[key], dp, follow_symlinks=False)
                continue
            if stat.S_ISREG(mode):
                with open(sp, "rb") as fi, open(dp, "wb") as fo:
                    shutil.copyfileobj(fi, fo, 1 << 20)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), dp)
            elif stat.S_ISSOCK(mode):
                make_socket(dp)
            else:
                os.mknod(dp, mode, cst.st_rdev)
            meta(dp, cst)
            links[key] = dp

    rec(src, dst, os.lstat(src))
    for d, st in reversed(dirs):
        meta(d, st)
