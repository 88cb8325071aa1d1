"""Extended attributes through the kernel: images built by mkerofs from trees
full of xattrs, mounted by Linux and compared with their source, name by name
and byte by byte.

Every mounted image is checked four ways against the source:

* ``compare_trees(..., xattrs=True)`` (types, data, modes, owners, mtimes,
  hard links and os.listxattr/os.getxattr of every entry, symlinks not
  followed);
* ``getfattr -R -d -m - -h --absolute-names -e hex`` and
  ``getfacl -R -P -n -p`` output, with the root path replaced and the
  per-file blocks/lines sorted (readdir and listxattr order differ between
  tmpfs and erofs; the content may not);
* the name filter: getxattr of ~150 names per inode, most of them absent
  (near misses of present names, other namespaces, long-prefix names), must
  give the same answer as on the source (ENODATA for absent names), so a
  wrong bloom-filter bit that hid a present name, or a filter that let an
  absent one through, shows up;
* the on-disk layout, decoded here independently of mkerofs (ibody header,
  shared ids, inline entries, shared area, long-prefix table), so that each
  option is seen to have its effect (-x0 shares everything, -x5 less than
  the default, --xattr-prefix uses long-prefix indexes, the filter is in use
  by default and zero with -E^xattr-name-filter, the root ibody is padded by
  --root-xattr-isize) and not merely to produce something mountable.

Sources live on a tmpfs (ext4 refuses values larger than a block); the trees
are small so the module stays fast.

fsck.erofs: Debian's erofs-utils 1.5 predates long xattr prefixes (incompat
feature 0x40, so it refuses those images) and the xattr name filter (a compat
bit it ignores); it only handles 4 KiB blocks. It is run where it can judge
the image. erofs-utils >= 1.9 at /work/erofs-utils-install/bin is used as an
optional second opinion when present (not in CI).
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.compare import Expect, compare_trees
from support.mounts import fsck_erofs, tmpfs_mount
from support.oracle import ErofsImage, read_superblock
from support.paths import fsb, show
from support.run import assert_clean_failure, build_image, leftovers, run_mkerofs
from support.trees import set_tree_times, write_file

UUID1 = "0123abcd-4567-89ef-0123-456789abcdef"

COMPAT_XATTR_FILTER = 0x4
COMPAT_PLAIN_XATTR_PFX = 0x10
INCOMPAT_XATTR_PREFIXES = 0x40
INDEX_USER, INDEX_ACL_ACCESS, INDEX_ACL_DEFAULT, INDEX_TRUSTED, INDEX_SECURITY = 1, 2, 3, 4, 6
LONG_PREFIX = 0x80
SHORT_PREFIXES = {INDEX_USER: b"user.", INDEX_ACL_ACCESS: b"system.posix_acl_access",
                  INDEX_ACL_DEFAULT: b"system.posix_acl_default", INDEX_TRUSTED: b"trusted.",
                  INDEX_SECURITY: b"security."}

NEW_FSCK = Path("/work/erofs-utils-install/bin/fsck.erofs")

# a real file capability: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted cap_net_raw
# (what `setcap cap_net_raw+ep` writes)
CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
IMA_HASH = b"\x04\x04" + hashlib.sha256(b"ima").digest()     # digest-ng, sha256
BIG = random.Random(60000).randbytes(60000)
BIGGEST = random.Random(65535).randbytes(65535)
WIDE = 260


# ---------------------------------------------------------------------------
# fixtures and tree builders
# ---------------------------------------------------------------------------

@pytest.fixture
def xsrc(kernel):
    """An empty source directory on a fresh tmpfs (it takes xattr values up to
    64 KiB, user. xattrs and POSIX ACLs); needs root like the kernel mount."""
    with tmpfs_mount("64m") as mnt:
        yield mnt


def setx(path, name, value):
    os.setxattr(path, name, value, follow_symlinks=False)


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([os.fsdecode(c) for c in cmd], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, **kw)
    if r.returncode:
        raise AssertionError(f"{cmd}: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    return r


def make_xattr_tree(root) -> Path:
    """Every kind of xattr on every kind of inode. Returns the root as a Path."""
    root = Path(os.fsdecode(root))
    j = lambda *p: root.joinpath(*p)
    for d in ("files", "dirs/sub/deeper", "dirs/empty", "links", "special", "ovl/upper",
              "ovl/lower", "shared"):
        j(d).mkdir(parents=True, exist_ok=True)

    setx(root, "user.root", b"root value")
    setx(root, "trusted.root", b"\0\1\2\3")

    # regular files with the three namespaces, binary values and empty values
    for i, size in enumerate((0, 1, 100, 4095, 4096, 5000)):
        p = j("files", f"plain_{i}")
        write_file(p, size)
        setx(p, "user.idx", str(i).encode())
        setx(p, "user.empty", b"")
        setx(p, "trusted.bin", bytes(range(256)) * (i + 1))
        setx(p, "security.test", b"sec\0with nul")
        setx(p, f"user.own{i}", b"unique to plain_%d" % i)
    # real security labels
    p = j("files", "caps")
    write_file(p, 123)
    setx(p, "security.capability", CAP_NET_RAW_EP)
    setx(p, "security.ima", IMA_HASH)
    setx(p, "security.selinux", b"system_u:object_r:bin_t:s0\0")
    # many attributes on one inode, of many lengths
    p = j("files", "many")
    write_file(p, 77)
    for k in range(200):
        setx(p, f"user.attr_{k:03d}", bytes([k]) * (k % 41))
    # the longest names (XATTR_NAME_MAX 255 bytes)
    p = j("files", "longnames")
    write_file(p, 5)
    setx(p, "user." + "n" * 250, b"longest user name")
    setx(p, "trusted." + "t" * 247, b"longest trusted name")
    # large values, inline (each occurs once)
    p = j("files", "big")
    write_file(p, 3000)
    setx(p, "user.big", BIG)
    setx(p, "trusted.biggest", BIGGEST)
    setx(p, "user.small", b"s")
    # names that are not UTF-8, with control characters, spaces, a newline
    p = j("files", "weird")
    write_file(p, 9)
    os.setxattr(p, b"user.\xff\xfe-latin\xe9", b"v1")
    os.setxattr(p, "user.日本語", b"v2")
    os.setxattr(p, b"trusted.\x01ctl\x7f", b"v3")
    os.setxattr(p, b"user.sp ace\n", b"v4")
    # no xattrs at all, next to ones that have some
    write_file(j("files", "none"), 10)

    # directories: xattrs and default + access ACLs
    setx(j("dirs"), "user.dir", b"on a dir")
    setx(j("dirs/sub"), "trusted.dir", random.Random(3000).randbytes(3000))
    sh("setfacl", "-m", "u:1000:rwx,g:100:r-x,m:rwx", j("dirs"))
    sh("setfacl", "-d", "-m", "u:1000:rwx,g:100:r-x", j("dirs"))
    sh("setfacl", "-d", "-m", "u:2000:r--", j("dirs/sub/deeper"))
    # access ACLs on files (one call for several files)
    for i in range(3):
        write_file(j("dirs", f"acl_{i}"), 10 * i)
    sh("setfacl", "-m", "u:1000:rwx,u:1001:r--,g:50:-w-", j("dirs/acl_0"), j("dirs/acl_1"),
       j("dirs/acl_2"))
    setx(j("dirs/acl_1"), "user.with_acl", b"and a user xattr")

    # symlinks: trusted. and security. (user. is not allowed on symlinks)
    os.symlink("../files/plain_1", j("links", "sym"))
    setx(j("links", "sym"), "trusted.sym", b"on a symlink")
    setx(j("links", "sym"), "security.selinux", b"u:object_r:link:s0")
    os.symlink("x" * 3000, j("links", "longsym"))
    setx(j("links", "longsym"), "trusted.lsym", random.Random(2000).randbytes(2000))
    os.symlink("plain", j("links", "sym_noxattr"))
    # hard links with xattrs: 4 paths, so the pair is shared at the default -x2
    p = j("links", "hard")
    write_file(p, 33)
    setx(p, "user.hard", b"linked")
    setx(p, "trusted.hard", b"linked too")
    for k in range(3):
        os.link(p, j("links", f"hard_{k}"))

    # devices and FIFOs (trusted./security. only, as for symlinks)
    os.mknod(j("special", "chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(j("special", "blk"), stat.S_IFBLK | 0o640, os.makedev(8, 1))
    os.mkfifo(j("special", "fifo"), 0o620)
    for n in ("chr", "blk", "fifo"):
        setx(j("special", n), "trusted.dev", n.encode())
        setx(j("special", n), "security.selinux", b"u:object_r:%s_device:s0" % n.encode())

    # overlayfs-style attributes (the use case of --xattr-prefix=trusted.overlay.)
    setx(j("ovl/upper"), "trusted.overlay.opaque", b"y")
    setx(j("ovl/upper"), "trusted.overlay.origin",
         b"\x00\xfb\x21\x00\x81" + random.Random("fh").randbytes(24))
    setx(j("ovl/upper"), "trusted.overlay.impure", b"y")
    setx(j("ovl"), "trusted.overlay.redirect", b"/somewhere/else")
    setx(j("ovl"), "trusted.overlay.", b"empty suffix")
    setx(j("ovl"), "trusted.other", b"not overlay")
    setx(j("ovl/lower"), "trusted.overlay.whiteouts", b"")
    for k in range(3):                     # whiteouts: 0/0 character devices
        w = j("ovl/upper", f"gone_{k}")
        os.mknod(w, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        setx(w, "trusted.overlay.origin", b"\x00\xfb" + bytes([k]) * 20)
        setx(w, "trusted.overlay.whiteout", b"")
    p = j("ovl/lower", "xwhiteout")         # an xwhiteout: a regular file marked as one
    write_file(p, 0)
    setx(p, "trusted.overlay.whiteout", b"y")
    p = j("ovl/upper", "metacopy")
    write_file(p, 0)
    setx(p, "trusted.overlay.metacopy", b"")
    setx(p, "trusted.overlay.redirect", b"/lower/data")

    # shared and unique: the same pairs on many files, plus per-file ones
    for k in range(30):
        p = j("shared", f"s{k:02d}")
        write_file(p, k)
        setx(p, "user.common", b"the same value everywhere")
        setx(p, "security.selinux", b"u:object_r:shared:s0")
        setx(p, "user.own", b"own %d" % k)
        if k < 6:
            setx(p, "user.six", b"6")        # > 5: shared even with -x5
        if k < 4:
            setx(p, "user.four", b"4")       # shared at -x2, inline at -x5
        if k < 2:
            setx(p, "user.two", b"2")        # inline at -x2
    # more than 255 shared xattrs on one inode (h_shared_count is a u8): the rest go inline
    for k in range(3):
        p = j("shared", f"wide{k}")
        write_file(p, 1)
        for a in range(WIDE):
            setx(p, f"trusted.w{a:03d}", b"w%d" % a)
    set_tree_times(root)
    return root


# ---------------------------------------------------------------------------
# reading xattrs: source and mount
# ---------------------------------------------------------------------------

def all_paths(root) -> list[bytes]:
    """Relative paths (b'' for the root) of a tree, symlinks not followed."""
    root = fsb(root)
    out = [b""]
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def xattrs_of(path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def probe(path, name):
    """getxattr's answer: the value, or the errno name."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


def probe_names(present: set[str]) -> list[str]:
    """Names to ask for: near misses of the present ones and a fixed set of
    absent names in every namespace (incl. long-prefix ones and the ACLs)."""
    names = set()
    for n in present:
        ns, _, rest = n.partition(".")
        names.update({n + "x", n[:-1] if len(n) > len(ns) + 2 else n + "y", n.upper(),
                      n + "_", ns + "." + rest[::-1]})
        for other in ("user", "trusted", "security"):
            if other != ns and len(other) + 1 + len(rest) <= 255:
                names.add(other + "." + rest)       # same suffix, other namespace
    for k in range(40):
        names.add(f"user.absent{k}")
        names.add(f"trusted.absent{k}")
        names.add(f"security.absent{k}")
    for k in range(15):
        names.add(f"trusted.overlay.absent{k}")
        names.add(f"user.attr_{200 + k:03d}")
    names.update({"trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.origin",
                  "security.selinux", "security.capability", "security.ima",
                  "system.posix_acl_access", "system.posix_acl_default", "user.", "trusted.",
                  "trusted.overlay.", "user.common", "user.own", "user.four"})
    return sorted(n for n in names if 0 < len(os.fsencode(n)) <= 255 and "\0" not in n)


def check_probes(src, mnt) -> int:
    """Every name in probe_names(): same answer on the source and the image.
    Returns how many absent-name probes gave ENODATA on the image."""
    src_b, mnt_b = fsb(src), fsb(mnt)
    problems, absent = [], 0
    for rel in all_paths(src_b):
        sp = os.path.join(src_b, rel) if rel else src_b
        mp = os.path.join(mnt_b, rel) if rel else mnt_b
        present = set(os.listxattr(sp, follow_symlinks=False))
        for name in probe_names(present):
            want, got = probe(sp, name), probe(mp, name)
            if want != got:
                problems.append(f"/{show(rel)}: getxattr {name!r}: image gives "
                                f"{got if isinstance(got, str) else f'{len(got)} bytes'}, "
                                f"source {want if isinstance(want, str) else f'{len(want)} bytes'}")
            elif got == "ENODATA":
                absent += 1
        # and every present name, one by one (listxattr order is not needed for this)
        for name in present:
            if probe(mp, name) != probe(sp, name):
                problems.append(f"/{show(rel)}: present {name!r} not read back")
    assert not problems, f"{len(problems)} getxattr mismatches:\n  " + "\n  ".join(problems[:60])
    return absent


def _canon_dump(text: bytes, root) -> list[bytes]:
    """getfattr/getfacl output with ROOT for the tree's path, as a sorted list of
    per-file blocks, each with sorted lines."""
    text = text.replace(fsb(root).rstrip(b"/"), b"ROOT")
    blocks = [b for b in text.split(b"\n\n") if b.strip()]
    return sorted(b"\n".join(sorted(b.split(b"\n"))) for b in blocks)


def getfattr_dump(root) -> list[bytes]:
    r = subprocess.run(["getfattr", "-R", "-d", "-m", "-", "-h", "--absolute-names", "-e", "hex",
                        os.fsdecode(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return _canon_dump(r.stdout, root)


def getfacl_dump(root) -> list[bytes]:
    r = subprocess.run(["getfacl", "-R", "-P", "-n", "-p", os.fsdecode(root)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return _canon_dump(r.stdout, root)


def assert_same_dump(a: list[bytes], b: list[bytes], what: str) -> None:
    if a != b:
        sa, sb = set(a), set(b)
        only_src = [x[:300] for x in a if x not in sb][:3]
        only_img = [x[:300] for x in b if x not in sa][:3]
        raise AssertionError(f"{what} output differs: source-only blocks {only_src!r}, "
                             f"image-only blocks {only_img!r}")


def check_mounted(src, mnt, expect: Expect | None = None) -> None:
    """The four comparisons of the module docstring (minus the layout)."""
    compare_trees(src, mnt, expect=expect or Expect(), xattrs=True)
    absent = check_probes(src, mnt)
    assert absent > 1000, "the probes hardly asked for absent names"
    dump_src, dump_img = getfattr_dump(src), getfattr_dump(mnt)
    for needle in (b"user.attr_199=", b"system.posix_acl_access=0x02", b"system.posix_acl_default=",
                   b"security.capability=0x0100000200200000", b"trusted.overlay.opaque=0x79"):
        assert any(needle in blk for blk in dump_src), f"getfattr did not dump {needle!r}"
    assert_same_dump(dump_src, dump_img, "getfattr -d -m -")
    facl_src = getfacl_dump(src)
    assert any(b"default:user:2000:r--" in blk for blk in facl_src)
    assert_same_dump(facl_src, getfacl_dump(mnt), "getfacl")


# ---------------------------------------------------------------------------
# decoding the on-disk xattrs (independently of mkerofs)
# ---------------------------------------------------------------------------

@dataclass
class Entry:
    index: int
    suffix: bytes
    value: bytes


@dataclass
class Ibody:
    size: int
    name_filter: int
    shared: list[Entry] = field(default_factory=list)
    inline: list[Entry] = field(default_factory=list)
    padding: int = 0           # empty 4-byte entries (root padding)


@dataclass
class Layout:
    compat: int
    incompat: int
    xattr_blkaddr: int
    prefixes: list[tuple[int, bytes]]          # (base index, infix)
    ibodies: dict[bytes, Ibody]                 # path -> ibody (inodes with one)
    inodes: dict[bytes, object]

    def full_name(self, e: Entry) -> bytes:
        if e.index & LONG_PREFIX:
            base, infix = self.prefixes[e.index & 0x7F]
            return SHORT_PREFIXES[base] + infix + e.suffix
        return SHORT_PREFIXES[e.index] + e.suffix

    def names(self, path: bytes) -> dict[bytes, bytes]:
        ib = self.ibodies.get(path)
        if ib is None:
            return {}
        return {self.full_name(e): e.value for e in ib.shared + ib.inline}

    def all_entries(self):
        for ib in self.ibodies.values():
            yield from ib.shared
            yield from ib.inline


def _entry(buf: bytes, off: int) -> tuple[Entry, int]:
    nlen, index, vsize = struct.unpack_from("<BBH", buf, off)
    start = off + 4
    e = Entry(index, buf[start:start + nlen], buf[start + nlen:start + nlen + vsize])
    return e, start + (nlen + vsize + 3) // 4 * 4


def read_layout(image) -> Layout:
    sb = read_superblock(image)
    raw = sb.raw
    prefix_count, prefix_start = raw[91], struct.unpack_from("<I", raw, 92)[0]
    with open(image, "rb") as f:
        data = f.read()
    prefixes = []
    pos = prefix_start * 4
    for _ in range(prefix_count):
        length, base = struct.unpack_from("<HB", data, pos)
        prefixes.append((base, data[pos + 3:pos + 2 + length]))
        pos += (2 + length + 3) // 4 * 4
    bs = sb.block_size
    ibodies = {}
    with ErofsImage(image) as img:
        inodes = img.walk()
    for path, ino in inodes.items():
        if not ino.xattr_icount:
            continue
        size = 12 + 4 * (ino.xattr_icount - 1)
        start = sb.meta_blkaddr * bs + ino.nid * 32 + (64 if ino.extended else 32)
        body = data[start:start + size]
        name_filter, shared_count = struct.unpack_from("<IB", body, 0)
        ib = Ibody(size, name_filter)
        for k in range(shared_count):
            sid, = struct.unpack_from("<I", body, 12 + 4 * k)
            e, _ = _entry(data, sb.xattr_blkaddr * bs + sid * 4)
            ib.shared.append(e)
        off = 12 + 4 * shared_count
        while off < size:
            e, nxt = _entry(body, off)
            if e.index == 0 and not e.suffix and not e.value:
                ib.padding += 1
            else:
                ib.inline.append(e)
            off = nxt
        assert off == size, f"{show(path)}: xattr entries overrun the ibody"
        ibodies[path] = ib
    return Layout(sb.feature_compat, sb.feature_incompat, sb.xattr_blkaddr, prefixes, ibodies,
                  inodes)


def assert_layout_matches_source(layout: Layout, src) -> None:
    """What the image says on disk is exactly the source's xattrs."""
    src_b = fsb(src)
    problems = []
    for rel in all_paths(src_b):
        sp = os.path.join(src_b, rel) if rel else src_b
        want = {os.fsencode(n): v for n, v in xattrs_of(sp).items()}
        key = b"/" + rel if rel else b"/"
        got = layout.names(key)
        ib = layout.ibodies.get(key)
        if ib is not None and len(ib.shared) + len(ib.inline) != len(got):
            problems.append(f"/{show(rel)}: a name is stored twice")
        if want != got:
            problems.append(f"/{show(rel)}: on disk {sorted(got)} vs {sorted(want)}")
    assert not problems, "decoded xattrs differ:\n  " + "\n  ".join(problems[:30])


# ---------------------------------------------------------------------------
# fsck
# ---------------------------------------------------------------------------

def run_fscks(image, *, bs: int, long_prefixes: bool) -> None:
    """Debian's fsck.erofs 1.5 where it knows the features (4 KiB blocks, no
    long prefixes); erofs-utils >= 1.9 on everything when installed."""
    if shutil.which("fsck.erofs") and bs == 4096 and not long_prefixes:
        r = fsck_erofs(image)
        assert r.returncode == 0, f"fsck.erofs 1.5 rejects the image:\n{r.stdout}\n{r.stderr}"
    if NEW_FSCK.exists():
        r = subprocess.run([str(NEW_FSCK), "--extract", os.fsdecode(image)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 0, f"{NEW_FSCK} rejects the image:\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------
# every layout option on the rich tree
# ---------------------------------------------------------------------------

LAYOUTS = {
    "default": [],
    "T0": ["-T0"],
    "x0": ["-x0"],
    "x5": ["-x5"],
    "prefix": ["--xattr-prefix=trusted.overlay."],
    "two-prefixes": ["--xattr-prefix=trusted.overlay.", "--xattr-prefix=user.attr_"],
    "plain-prefixes": ["--xattr-prefix=trusted.overlay.", "-Eplain-xattr-prefixes"],
    # nested, most specific first (mkfs.erofs takes the first match, mkerofs the longest: the
    # same here); one is a whole name (empty suffix), one a bare short prefix (empty infix)
    "nested-prefixes": ["--xattr-prefix=trusted.overlay.opaque", "--xattr-prefix=trusted.overlay.",
                        "--xattr-prefix=trusted.", "--xattr-prefix=user."],
    "no-filter": ["-E^xattr-name-filter"],
    "root-isize": ["--root-xattr-isize=256"],
}

CASES = [("default", 4096), ("default", 1024), ("default", 512), ("T0", 4096), ("T0", 512),
         ("x0", 4096), ("x0", 1024), ("x5", 4096), ("prefix", 4096), ("two-prefixes", 512),
         ("plain-prefixes", 1024), ("nested-prefixes", 4096), ("no-filter", 4096),
         ("root-isize", 4096), ("root-isize", 1024)]


@pytest.mark.parametrize("layout,bs", CASES, ids=[f"{l}-b{b}" for l, b in CASES])
def test_xattr_tree(layout, bs, xsrc, image, kernel):
    args = LAYOUTS[layout]
    src = make_xattr_tree(xsrc)
    build_image(image, src, f"-b{bs}", *args)
    lay = read_layout(image)
    assert_layout_matches_source(lay, src)

    # -- the option had its effect on disk --------------------------------------------------
    n_shared = {(lay.full_name(e), e.value) for ib in lay.ibodies.values() for e in ib.shared}
    n_inline = {(lay.full_name(e), e.value) for ib in lay.ibodies.values() for e in ib.inline}
    if layout == "x0":
        # everything shared, except the root's own xattrs: mkfs.erofs counts them 0 times
        # (checked against mkfs.erofs 1.9.3), and 0 is not > 0
        root_pairs = {(lay.full_name(e), e.value) for e in lay.ibodies[b"/"].inline}
        assert root_pairs == {(b"user.root", b"root value"), (b"trusted.root", b"\0\1\2\3")}
        wide_pairs = {(b"trusted.w%03d" % a, b"w%d" % a) for a in range(255, WIDE)}
        assert not n_inline - root_pairs - wide_pairs, \
            f"-x0 left inline xattrs: {sorted(n_inline - root_pairs - wide_pairs)[:5]}"
        assert (b"user.big", BIG) in n_shared
    else:
        assert (b"user.big", BIG) in n_inline, "a value used once should be inline"
        assert (b"user.own", b"own 7") in n_inline
    if layout == "x5":
        assert (b"user.four", b"4") in n_inline and (b"user.six", b"6") in n_shared
    elif layout != "x0":
        assert (b"user.four", b"4") in n_shared and (b"user.two", b"2") in n_inline
        assert (b"user.hard", b"linked") in n_shared, "4 hard-link paths should share"
        assert (b"user.common", b"the same value everywhere") in n_shared
    assert (lay.xattr_blkaddr != 0) == bool(n_shared)
    wide = lay.ibodies[b"/shared/wide1"]
    if layout == "x5":
        assert not wide.shared and len(wide.inline) == WIDE
    else:
        assert len(wide.shared) == 255 and len(wide.inline) == WIDE - 255

    prefixes = [a.split("=", 1)[1].encode() for a in args if a.startswith("--xattr-prefix=")]
    if prefixes:
        assert lay.incompat & INCOMPAT_XATTR_PREFIXES
        assert lay.compat & COMPAT_PLAIN_XATTR_PFX
        assert [SHORT_PREFIXES[b] + i for b, i in lay.prefixes] == prefixes
        used = {e.index & 0x7F for e in lay.all_entries() if e.index & LONG_PREFIX}
        assert used == set(range(len(prefixes))), f"long prefixes used: {used}"
        # every name that starts with a given prefix is stored under the (first = longest,
        # as ordered here) one; the others keep their short index
        for e in lay.all_entries():
            name = lay.full_name(e)
            match = next((k for k, p in enumerate(prefixes) if name.startswith(p)), None)
            want = e.index == (LONG_PREFIX | match) if match is not None else e.index < LONG_PREFIX
            assert want, f"{name!r} stored with index {e.index:#x}"
        # the empty suffix of "trusted.overlay." itself
        ovl = lay.ibodies[b"/ovl"]
        assert any(e.index & LONG_PREFIX and e.suffix == b"" for e in ovl.shared + ovl.inline)
    else:
        assert not lay.incompat & INCOMPAT_XATTR_PREFIXES and not lay.prefixes
        assert not any(e.index & LONG_PREFIX for e in lay.all_entries())

    filters = [ib.name_filter for ib in lay.ibodies.values()]
    if layout == "no-filter":
        assert not lay.compat & COMPAT_XATTR_FILTER, "filter bit set with -E^xattr-name-filter"
        assert not any(filters)
    else:
        assert lay.compat & COMPAT_XATTR_FILTER, "filter bit clear though xattrs exist"
        assert sum(1 for f in filters if f) > len(filters) // 2, "the name filter is hardly used"
        # xattrs reach the filter: an inode with 200 xattrs has (almost) every bit cleared
        assert bin(lay.ibodies[b"/files/many"].name_filter).count("1") <= 2

    root = lay.ibodies[b"/"]
    if layout == "root-isize":
        assert root.size >= 256 and root.padding > 0
    else:
        assert root.padding == 0

    # -- the kernel sees exactly the source -------------------------------------------------
    expect = Expect(timestamp=0) if "-T0" in args else Expect()
    with kernel(image) as mnt:
        check_mounted(src, mnt, expect)
    run_fscks(image, bs=bs, long_prefixes=bool(prefixes))


# ---------------------------------------------------------------------------
# -x -1: no xattrs at all
# ---------------------------------------------------------------------------

def test_negative_tolerance_stores_no_xattrs(xsrc, tmp_path, image, kernel, fsck):
    src = make_xattr_tree(xsrc)
    fc = tmp_path / "file_contexts"
    fc.write_text("/.*  u:object_r:everything:s0\n")
    build_image(image, src, "-x", "-1", f"--file-contexts={fc}")
    lay = read_layout(image)
    assert lay.ibodies == {}, f"ibodies with -x -1: {sorted(lay.ibodies)[:5]}"
    assert lay.xattr_blkaddr == 0 and lay.prefixes == []
    assert not lay.compat & COMPAT_XATTR_FILTER
    with kernel(image) as mnt:
        compare_trees(src, mnt)             # everything but the xattrs
        m = fsb(mnt)
        listed = {}
        for rel in all_paths(m):
            p = os.path.join(m, rel) if rel else m
            names = os.listxattr(p, follow_symlinks=False)
            if names:
                listed[rel] = names
            for name in ("user.idx", "trusted.bin", "security.selinux", "user.root",
                         "system.posix_acl_access", "trusted.overlay.opaque"):
                # ACLs on a symlink: EOPNOTSUPP (errno.errorcode spells it ENOTSUP)
                assert probe(p, name) in ("ENODATA", "ENOTSUP", "EOPNOTSUPP"), (rel, name)
        assert listed == {}, f"-x -1 but the image lists xattrs: {listed}"
        r = subprocess.run(["getfattr", "-R", "-d", "-m", "-", "-h", "--absolute-names",
                            os.fsdecode(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert r.stdout.strip() == b""
    fsck(image)


def test_filter_bit_clear_without_xattrs(src, image, kernel):
    write_file(src / "f", 10)
    (src / "d").mkdir()
    build_image(image, src)
    sb = read_superblock(image)
    assert not sb.feature_compat & COMPAT_XATTR_FILTER
    with open(image, "rb") as f:
        f.seek(1024 + 8)
        assert not struct.unpack("<I", f.read(4))[0] & 0x4
    with kernel(image) as mnt:
        for p in (mnt, mnt / "f", mnt / "d"):
            assert os.listxattr(p) == []
            assert probe(p, "user.x") == "ENODATA"


def test_filter_compat_bit_at_byte_1032(xsrc, tmp_path, kernel):
    """The raw superblock word: bit 0x4 set by default, clear with the filter off."""
    p = xsrc / "f"
    write_file(p, 1)
    setx(p, "user.a", b"1")
    words = {}
    for name, args in (("on", []), ("off", ["-E^xattr-name-filter"]),
                       ("on-again", ["-E^xattr-name-filter", "-Exattr-name-filter"])):
        img = tmp_path / f"{name}.erofs"
        build_image(img, xsrc, *args)
        with open(img, "rb") as f:
            f.seek(1024 + 8)
            words[name] = struct.unpack("<I", f.read(4))[0]
        with kernel(img) as mnt:
            assert xattrs_of(mnt / "f") == {"user.a": b"1"}
            assert probe(mnt / "f", "user.b") == "ENODATA"
    assert words["on"] & 0x4 and words["on-again"] & 0x4
    assert not words["off"] & 0x4
    assert words["on"] & ~0x4 == words["off"] & ~0x4


# ---------------------------------------------------------------------------
# the name filter against many names
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", [False, True], ids=["short", "long-prefix"])
def test_name_filter_many_names(prefix, xsrc, image, kernel):
    """Files with 1..64 xattrs drawn from a pool of 300 names over every
    namespace; every pool name is asked for on every file: present ones must be
    found (a wrong filter bit would hide them), absent ones give ENODATA."""
    rnd = random.Random(1234)
    pool = ([f"user.n{k}" for k in range(100)] + [f"trusted.n{k}" for k in range(60)]
            + [f"security.n{k}" for k in range(40)]
            + [f"trusted.overlay.n{k}" for k in range(60)]
            + [f"user.{rnd.randbytes(6).hex()}" for _ in range(40)])
    files = {}
    for i, count in enumerate((1, 2, 3, 5, 8, 13, 21, 34, 64, 1, 1, 2)):
        p = xsrc / f"f{i:02d}"
        write_file(p, i)
        chosen = rnd.sample(pool, count)
        for n in chosen:
            setx(p, n, n.encode()[::-1])
        files[p.name] = set(chosen)
    d = xsrc / "dir"
    d.mkdir()
    setx(d, "trusted.overlay.n3", b"3n.yalrevo.detsurt")
    files["dir"] = {"trusted.overlay.n3"}
    args = ["--xattr-prefix=trusted.overlay."] if prefix else []
    build_image(image, xsrc, "-x100", *args)
    lay = read_layout(image)
    assert all(lay.ibodies[b"/" + n.encode()].name_filter for n in files if n != "f08")
    with kernel(image) as mnt:
        found = missing = 0
        for name, present in files.items():
            for n in pool:
                got = probe(mnt / name, n)
                if n in present:
                    assert got == n.encode()[::-1], f"{name}: present {n} gives {got!r}"
                    found += 1
                else:
                    assert got == "ENODATA", f"{name}: absent {n} gives {got!r}"
                    missing += 1
            assert set(os.listxattr(mnt / name)) == present
        assert found == sum(map(len, files.values())) and missing > 3000


# ---------------------------------------------------------------------------
# sharing, hard links, limits
# ---------------------------------------------------------------------------

def test_hard_links_with_xattrs(xsrc, image, kernel, fsck):
    a = xsrc / "a"
    a.mkdir()
    (xsrc / "b").mkdir()
    write_file(a / "f", 100)
    setx(a / "f", "user.x", b"one inode")
    setx(a / "f", "security.selinux", b"u:object_r:linked:s0")
    for k in range(4):
        os.link(a / "f", xsrc / "b" / f"l{k}")
    write_file(a / "g", 5)
    setx(a / "g", "user.x", b"other inode")
    os.link(a / "g", xsrc / "b" / "g2")
    set_tree_times(xsrc)
    build_image(image, xsrc, "-T0")
    lay = read_layout(image)
    # 5 paths of one inode: its pairs count 5 > 2 and are shared; the other file's pair (2
    # paths) stays inline
    ib = lay.ibodies[b"/a/f"]
    assert {(lay.full_name(e), e.value) for e in ib.shared} == {
        (b"user.x", b"one inode"), (b"security.selinux", b"u:object_r:linked:s0")}
    assert [lay.full_name(e) for e in lay.ibodies[b"/a/g"].inline] == [b"user.x"]
    with kernel(image) as mnt:
        compare_trees(xsrc, mnt, xattrs=True, timestamp=0)
        assert os.stat(mnt / "a" / "f").st_ino == os.stat(mnt / "b" / "l3").st_ino
        assert os.getxattr(mnt / "b" / "l2", "user.x") == b"one inode"
    fsck(image)
    # --hard-dereference: separate inodes, each with the xattrs
    build_image(image, xsrc, "-T0", "--hard-dereference")
    lay = read_layout(image)
    assert lay.inodes[b"/a/f"].nid != lay.inodes[b"/b/l0"].nid
    assert lay.names(b"/b/l0") == lay.names(b"/a/f") == {
        b"user.x": b"one inode", b"security.selinux": b"u:object_r:linked:s0"}
    with kernel(image) as mnt:
        compare_trees(xsrc, mnt, xattrs=True, timestamp=0, hard_dereference=True)


def test_value_of_65536_bytes_refused(xsrc, image):
    """Linux allows 65536-byte values; EROFS's le16 e_value_size does not
    (mkfs.erofs 1.9.3 writes a corrupt image here; mkerofs must refuse)."""
    p = xsrc / "huge"
    write_file(p, 1)
    setx(p, "trusted.huge", b"x" * 65536)
    r = build_image(image, xsrc, check=False)
    assert_clean_failure(r, mentions=["huge", "trusted.huge", "65536"], image=image)
    assert not [n for n in os.listdir(image.parent) if n.endswith(".tmp")]


def test_inline_body_over_the_limit_refused_unless_shared(xsrc, tmp_path, kernel):
    """Five 60000-byte values on one inode exceed what i_xattr_icount can
    describe inline (262148 bytes); sharing them (-x0) makes the inode fit."""
    p = xsrc / "fat"
    write_file(p, 1)
    for k in range(5):
        setx(p, f"trusted.v{k}", random.Random(k).randbytes(60000))
    img = tmp_path / "fat.erofs"
    r = build_image(img, xsrc, check=False)
    assert_clean_failure(r, mentions=["fat"], image=img)
    build_image(img, xsrc, "-x0")
    with kernel(img) as mnt:
        for k in range(5):
            assert os.getxattr(mnt / "fat", f"trusted.v{k}") == random.Random(k).randbytes(60000)


# ---------------------------------------------------------------------------
# --file-contexts
# ---------------------------------------------------------------------------

FILE_CONTEXTS = """\
# comments and blank lines are skipped

/system(/.*)?                   u:object_r:system_file:s0
/system/bin(/.*)?               u:object_r:system_bin:s0
/system/bin/sh          --      u:object_r:shell_exec:s0
/system/bin/[a-z]+d     --      u:object_r:daemon_exec:s0
/system/etc(/.*)?       -d      u:object_r:etc_dir:s0
/system/etc/.*\\.conf    --      u:object_r:conf_file:s0
/system/lnk             -l      u:object_r:link_file:s0
/system/lnk             --      u:object_r:not_a_link:s0
/system/nolabel(/.*)?           <<none>>
/system/app/.*                  u:object_r:app_early:s0
/system/app(/.*)?               u:object_r:app_late:s0
/system/[0-9]+\\.dat             u:object_r:numbered:s0
/system/special/p       -p      u:object_r:fifo_file:s0
/system/special/.*      -c      u:object_r:chr_file:s0
"""

# path in the image -> label (None: no security.selinux at all)
EXPECTED_LABELS = {
    "": b"u:object_r:system_file:s0",                       # the root is /system itself
    "readme": b"u:object_r:system_file:s0",
    "bin": b"u:object_r:system_bin:s0",                     # later line overrides /system(/.*)?
    "bin/ls": b"u:object_r:system_bin:s0",
    "bin/sh": b"u:object_r:shell_exec:s0",
    "bin/netd": b"u:object_r:daemon_exec:s0",
    "bin/net2d": b"u:object_r:system_bin:s0",                # digit: the daemon regex fails
    "bin/sh_dir": b"u:object_r:system_bin:s0",
    "etc": b"u:object_r:etc_dir:s0",
    "etc/sub": b"u:object_r:etc_dir:s0",                    # -d applies to directories only
    "etc/hosts": b"u:object_r:system_file:s0",              # ... so a file falls back
    "etc/a.conf": b"u:object_r:conf_file:s0",
    "etc/sub/b.conf": b"u:object_r:conf_file:s0",
    "etc/conf.d": b"u:object_r:etc_dir:s0",                 # a directory: -- does not apply
    "lnk": b"u:object_r:link_file:s0",                      # -l, though the -- line is later
    "nolabel": None,
    "nolabel/f": None,                                      # had a label in the source
    "app": b"u:object_r:app_late:s0",
    "app/x.apk": b"u:object_r:app_late:s0",                 # the later line wins
    "12.dat": b"u:object_r:numbered:s0",
    "x12.dat": b"u:object_r:system_file:s0",                # regexes are anchored
    "special/p": b"u:object_r:fifo_file:s0",
    "special/c": b"u:object_r:chr_file:s0",
}


def make_contexts_tree(root) -> Path:
    root = Path(os.fsdecode(root))
    for d in ("bin/sh_dir", "etc/sub", "etc/conf.d", "nolabel", "app", "special"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("readme", "bin/ls", "bin/sh", "bin/netd", "bin/net2d", "etc/hosts", "etc/a.conf",
              "etc/sub/b.conf", "nolabel/f", "app/x.apk", "12.dat", "x12.dat"):
        write_file(root / f, 10)
    os.symlink("readme", root / "lnk")
    os.mkfifo(root / "special" / "p")
    os.mknod(root / "special" / "c", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    # labels and other xattrs in the source: the label is replaced, the rest kept
    setx(root / "nolabel" / "f", "security.selinux", b"u:object_r:source_label:s0\0")
    setx(root / "readme", "security.selinux", b"u:object_r:source_label:s0\0")
    setx(root / "readme", "user.keep", b"kept")
    setx(root / "bin" / "sh", "security.capability", CAP_NET_RAW_EP)
    set_tree_times(root)
    return root


def getfattr_selinux(path) -> bytes | None:
    r = subprocess.run(["getfattr", "-h", "--absolute-names", "--only-values", "-n",
                        "security.selinux", os.fsdecode(path)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode:
        assert b"No such attribute" in r.stderr, r.stderr
        return None
    return r.stdout


@pytest.mark.parametrize("mount_point", ["/system", "/system/"])
def test_file_contexts(mount_point, xsrc, tmp_path, image, kernel):
    src = make_contexts_tree(xsrc)
    fc = tmp_path / "file_contexts"
    fc.write_text(FILE_CONTEXTS)
    build_image(image, src, f"--file-contexts={fc}", f"--mount-point={mount_point}")
    with kernel(image) as mnt:
        got = {rel: getfattr_selinux(mnt / rel if rel else mnt) for rel in EXPECTED_LABELS}
        wrong = {rel: (got[rel], want) for rel, want in EXPECTED_LABELS.items()
                 if got[rel] != want}
        assert not wrong, f"labels (got, expected): {wrong}"
        for rel, want in EXPECTED_LABELS.items():
            p = mnt / rel if rel else mnt
            names = os.listxattr(p, follow_symlinks=False)
            assert ("security.selinux" in names) == (want is not None), rel
        # other xattrs survive; the source's own label is gone
        assert os.getxattr(mnt / "readme", "user.keep") == b"kept"
        assert os.getxattr(mnt / "bin" / "sh", "security.capability") == CAP_NET_RAW_EP
        # every other path: a label from the file (all of /system matches something)
        for rel in all_paths(mnt):
            p = os.path.join(fsb(mnt), rel) if rel else fsb(mnt)
            if os.fsdecode(rel) not in EXPECTED_LABELS:
                assert getfattr_selinux(os.fsdecode(p)) is not None, rel
        compare_trees(src, mnt)


def test_file_contexts_default_mount_point(xsrc, tmp_path, image, kernel):
    """Without --mount-point, paths are looked up from / : the /system lines
    do not match, the / ones do."""
    src = make_contexts_tree(xsrc)
    fc = tmp_path / "file_contexts"
    fc.write_text(FILE_CONTEXTS + "/bin(/.*)?  u:object_r:rootbin:s0\n"
                  "/                 -d  u:object_r:rootdir:s0\n")
    build_image(image, src, f"--file-contexts={fc}")
    with kernel(image) as mnt:
        assert getfattr_selinux(mnt) == b"u:object_r:rootdir:s0"
        assert getfattr_selinux(mnt / "bin" / "sh") == b"u:object_r:rootbin:s0"
        assert getfattr_selinux(mnt / "bin") == b"u:object_r:rootbin:s0"
        assert getfattr_selinux(mnt / "readme") is None         # source label dropped
        assert getfattr_selinux(mnt / "etc" / "a.conf") is None
        assert os.getxattr(mnt / "readme", "user.keep") == b"kept"


@pytest.mark.parametrize("case", ["missing", "bad-regex", "bad-type", "one-field"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_file_contexts_bad_input(case, existing, tmp_path, src, image):
    write_file(src / "f", 3)
    fc = tmp_path / "file_contexts"
    lines = ["/f  u:object_r:ok:s0", "# comment", ""]
    bad_line = {"bad-regex": "/f(oo  u:object_r:x:s0",
                "bad-type": "/f  -x  u:object_r:x:s0",
                "one-field": "/lonely"}.get(case)
    if case != "missing":
        fc.write_text("\n".join(lines + [bad_line, "/g  u:object_r:ok:s0"]) + "\n")
    before = None
    if existing:
        image.write_bytes(b"precious old image" * 100)
        before = image.read_bytes()
    r = run_mkerofs(f"--file-contexts={fc}", image, src, check=False)
    msg = assert_clean_failure(r, mentions=[str(fc)], image=image, image_before=before)
    if case != "missing":
        assert f"{fc}:4" in msg, f"message does not name FILE:LINE: {msg!r}"
    assert [n for n in leftovers(tmp_path) if n.endswith(".tmp")] == []


# ---------------------------------------------------------------------------
# a value that cannot be read (Python API)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["getxattr", "listxattr"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_unreadable_xattr_is_a_build_error(which, existing, tmp_path, src, image, monkeypatch):
    from mkerofs import BuildError, BuildOptions, build

    (src / "d").mkdir()
    bad = src / "d" / "secret"
    write_file(bad, 5)
    write_file(src / "d" / "fine", 5)
    setx(src / "d" / "fine", "user.ok", b"1")
    setx(bad, "user.ok", b"1")
    before = None
    if existing:
        image.write_bytes(b"old image")
        before = image.read_bytes()
    real = getattr(os, which)
    target = fsb(bad)

    def failing(path, *a, **kw):
        if fsb(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, *a, **kw)

    monkeypatch.setattr(os, which, failing)
    with pytest.raises(BuildError) as info:
        build(image, src, BuildOptions(timestamp=0))
    msg = str(info.value)
    assert "d/secret" in msg and "\n" not in msg
    assert "ermission denied" in msg
    if existing:
        assert image.read_bytes() == before
    else:
        assert not image.exists()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


# ---------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------

def make_ordered_tree(root: Path, reverse: bool) -> None:
    """The same xattrs and ACLs, set (and files created) in opposite orders."""
    root.mkdir()
    os.chmod(root, 0o755)
    names = [f"f{k}" for k in range(8)]
    attrs = [("user.zeta", b"z"), ("user.alpha", b"a"), ("trusted.mid", b"m" * 300),
             ("user.beta", b"b"), ("security.selinux", b"u:object_r:r:s0"),
             ("trusted.overlay.opaque", b"y"), ("user.shared", b"same")]
    order = (lambda s: list(reversed(s))) if reverse else list
    (root / "d").mkdir()
    for n in order(names):
        write_file(root / "d" / n, 100 + 10 * int(n[1:]), seed=n)
        for a, v in order(attrs):
            setx(root / "d" / n, a, v + n.encode() if a != "user.shared" else v)
    acl = ["u:1000:rwx", "u:1001:r--", "g:7:-w-"]
    for a in order(acl):
        sh("setfacl", "-m", a, root / "d" / "f0")
    for a, v in order(attrs):
        setx(root / "d", a, v)
    set_tree_times(root)


def test_reproducible_whatever_the_xattr_order(tmp_path, as_root):
    # both trees on the same disk filesystem, whose listxattr order is the insertion order
    a, b = tmp_path / "a", tmp_path / "b"
    make_ordered_tree(a, reverse=False)
    make_ordered_tree(b, reverse=True)
    order_a = os.listxattr(a / "d" / "f3")
    order_b = os.listxattr(b / "d" / "f3")
    assert sorted(order_a) == sorted(order_b)
    if order_a == order_b:
        pytest.skip("this filesystem lists xattrs in a fixed order: nothing to compare")
    imgs = []
    for name, tree in (("a", a), ("b", b)):
        img = tmp_path / f"{name}.erofs"
        build_image(img, tree, "-T0", f"-U{UUID1}", "--xattr-prefix=trusted.overlay.")
        imgs.append(img.read_bytes())
    assert imgs[0] == imgs[1], "same tree, xattrs set in another order: different images"
    lay = read_layout(tmp_path / "a.erofs")
    assert lay.names(b"/d/f3")[b"user.alpha"] == b"af3"
