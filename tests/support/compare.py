"""Comparing a source tree with a mounted (or extracted) image: every difference in type, size,
data, mode, owner, mtime, symlink target, device number, link count, hard-link grouping and
xattrs, after the transforms the build options ask for (``Expect``)."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Optional, Sequence

from .paths import PATH_MAX, PathLike, deep_call, fsb, show


@dataclass
class Expect:
    """What the image should contain relative to the source tree."""
    timestamp: Optional[int] = None      # -T N (all-time): every mtime is N s, 0 ns
    clamp: Optional[int] = None          # SOURCE_DATE_EPOCH: mtime >= clamp -> clamp, 0 ns
    compact_mtime: Optional[int] = None  # --ignore-mtime / force-inode-compact: inodes that
                                         # can be compact get this mtime (0 ns); inodes that
                                         # must be extended (big uid/gid/size/nlink) keep theirs
    all_root: bool = False
    force_uid: Optional[int] = None
    force_gid: Optional[int] = None
    uid_offset: int = 0
    gid_offset: int = 0
    hard_dereference: bool = False
    exclude_paths: Sequence[PathLike] = ()     # relative to the source
    exclude_regexes: Sequence[str] = ()        # re.search on the relative path
    check_root_mtime: bool = True
    xattrs: bool = False

    def uid(self, st) -> int:
        base = 0 if self.all_root else (self.force_uid if self.force_uid is not None
                                         else st.st_uid)
        return (base + self.uid_offset) & 0xFFFFFFFF

    def gid(self, st) -> int:
        base = 0 if self.all_root else (self.force_gid if self.force_gid is not None
                                         else st.st_gid)
        return (base + self.gid_offset) & 0xFFFFFFFF

    def excluded(self, rel: bytes) -> bool:
        paths = {fsb(p).strip(b"/") for p in self.exclude_paths}
        if rel in paths:
            return True
        s = os.fsdecode(rel)
        return any(re.search(rx, s) for rx in self.exclude_regexes)


def walk_tree(root: bytes, expect: Optional[Expect] = None) -> dict[bytes, os.stat_result]:
    """{relative path (b'' for the root): lstat} of a tree, pruning excluded
    entries (and their subtrees); paths may be of any length."""
    out = {b"": os.lstat(root)}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        for name in sorted(deep_call(os.listdir, full)):
            r = rel + b"/" + name if rel else name
            if expect is not None and expect.excluded(r):
                continue
            st = deep_call(os.lstat, os.path.join(root, r))
            out[r] = st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)
    return out


_ZERO = bytes(4 << 20)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Data extents of a file via SEEK_DATA/SEEK_HOLE (whole file if the
    filesystem does not report holes)."""
    ranges = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size)))
            pos = end
    except OSError:
        return [(0, size)]
    return ranges


def compare_file_data(a: PathLike, b: PathLike, size: int, chunk: int = 4 << 20) -> Optional[str]:
    """Compare the first ``size`` bytes of two files chunk by chunk; holes
    of ``a`` (SEEK_DATA) are checked against zeros in ``b`` without reading
    ``a``. Returns None or a description of the first difference."""
    fa = deep_call(os.open, a, os.O_RDONLY)
    fb = deep_call(os.open, b, os.O_RDONLY)
    try:
        ranges = _data_ranges(fa, size) if size > (64 << 20) else [(0, size)]
        pos = 0
        segments = []
        for s, e in ranges:
            if s > pos:
                segments.append((pos, s, False))
            segments.append((s, e, True))
            pos = e
        if pos < size:
            segments.append((pos, size, False))
        for s, e, is_data in segments:
            p = s
            while p < e:
                n = min(chunk, e - p)
                db = os.pread(fb, n, p)
                if len(db) != n:
                    return f"short read in image at {p} ({len(db)} of {n})"
                if is_data:
                    da = os.pread(fa, n, p)
                    if len(da) != n:
                        return f"short read in source at {p}"
                    if da != db:
                        off = next(i for i in range(n) if da[i] != db[i])
                        return f"data differs at byte {p + off}"
                elif db != _ZERO[:n]:
                    off = next(i for i in range(n) if db[i])
                    return f"hole not zero at byte {p + off}"
                p += n
        if os.pread(fb, 1, size):
            return "image file has data past its size"
        return None
    finally:
        os.close(fa)
        os.close(fb)


def host_xattrs(path: bytes) -> dict:
    if len(path) >= PATH_MAX:
        return deep_call(host_xattrs, path)
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def _type_name(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), f"type {stat.S_IFMT(mode):o}")


def _needs_extended(st, uid: int, gid: int, nlink: int) -> bool:
    return (not stat.S_ISDIR(st.st_mode) and st.st_size > 0xFFFFFFFF) or \
        uid > 0xFFFF or gid > 0xFFFF or nlink > 0xFFFF


def tree_differences(src: PathLike, mnt: PathLike, *, expect: Optional[Expect] = None,
                     xattrs: Optional[bool] = None, **kw) -> list[str]:
    """Every difference between a source tree and a mounted image, as
    readable strings (empty list: identical). See compare_trees."""
    if expect is None:
        expect = Expect(**kw)
    elif kw:
        raise TypeError("give either expect= or keyword expectations, not both")
    if xattrs is not None:
        expect.xattrs = xattrs
    src_b, mnt_b = fsb(src), fsb(mnt)
    s_tree = walk_tree(src_b, expect)
    m_tree = walk_tree(mnt_b)
    diffs: list[str] = []

    def name(rel):
        return "/" + show(rel) if rel else "/ (root)"

    for rel in sorted(set(s_tree) - set(m_tree)):
        diffs.append(f"{name(rel)}: missing from the image")
    for rel in sorted(set(m_tree) - set(s_tree)):
        why = " (should have been excluded)" if expect.excluded(rel) else ""
        diffs.append(f"{name(rel)}: in the image but not in the source{why}")
    for p in expect.exclude_paths:
        rel = fsb(p).strip(b"/")
        if os.path.lexists(os.path.join(mnt_b, rel)):
            diffs.append(f"/{show(rel)}: excluded path present in the image")

    # expected link counts: links inside the (filtered) tree
    groups: dict[tuple, list[bytes]] = {}
    subdirs: dict[bytes, int] = {}
    for rel, st in s_tree.items():
        if stat.S_ISDIR(st.st_mode):
            subdirs.setdefault(rel, 0)
            if rel:
                parent = rel.rpartition(b"/")[0]
                subdirs[parent] = subdirs.get(parent, 0) + 1
        else:
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)

    def exp_nlink(rel, st):
        if stat.S_ISDIR(st.st_mode):
            return 2 + subdirs.get(rel, 0)
        if expect.hard_dereference:
            return 1
        return len(groups[(st.st_dev, st.st_ino)])

    for rel in sorted(set(s_tree) & set(m_tree)):
        s, m = s_tree[rel], m_tree[rel]
        sp, mp = os.path.join(src_b, rel), os.path.join(mnt_b, rel)
        n = name(rel)
        if stat.S_IFMT(s.st_mode) != stat.S_IFMT(m.st_mode):
            diffs.append(f"{n}: type {_type_name(m.st_mode)} in the image, "
                         f"{_type_name(s.st_mode)} in the source")
            continue
        if stat.S_IMODE(s.st_mode) != stat.S_IMODE(m.st_mode):
            diffs.append(f"{n}: mode {stat.S_IMODE(m.st_mode):04o}, expected "
                         f"{stat.S_IMODE(s.st_mode):04o}")
        uid, gid = expect.uid(s), expect.gid(s)
        if m.st_uid != uid:
            diffs.append(f"{n}: uid {m.st_uid}, expected {uid}")
        if m.st_gid != gid:
            diffs.append(f"{n}: gid {m.st_gid}, expected {gid}")
        nl = exp_nlink(rel, s)
        if m.st_nlink != nl:
            diffs.append(f"{n}: nlink {m.st_nlink}, expected {nl}")
        # mtime
        if rel or expect.check_root_mtime:
            if expect.timestamp is not None:
                want = expect.timestamp * 10**9
            elif expect.compact_mtime is not None and not _needs_extended(s, uid, gid, nl):
                want = expect.compact_mtime * 10**9
            elif expect.clamp is not None and s.st_mtime_ns >= expect.clamp * 10**9:
                want = expect.clamp * 10**9
            else:
                want = s.st_mtime_ns
            if m.st_mtime_ns != want:
                diffs.append(f"{n}: mtime {m.st_mtime_ns} ns, expected {want} ns")
        if stat.S_ISREG(s.st_mode):
            if m.st_size != s.st_size:
                diffs.append(f"{n}: size {m.st_size}, expected {s.st_size}")
            else:
                d = compare_file_data(sp, mp, s.st_size)
                if d:
                    diffs.append(f"{n}: {d}")
        elif stat.S_ISLNK(s.st_mode):
            ts, tm = deep_call(os.readlink, sp), deep_call(os.readlink, mp)
            if ts != tm:
                diffs.append(f"{n}: symlink target differs ({len(tm)} bytes "
                             f"{show(tm[:60])!r}..., expected {len(ts)} bytes {show(ts[:60])!r}...)")
            if m.st_size != s.st_size:
                diffs.append(f"{n}: symlink size {m.st_size}, expected {s.st_size}")
        elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            if m.st_rdev != s.st_rdev:
                diffs.append(f"{n}: rdev {os.major(m.st_rdev)}:{os.minor(m.st_rdev)}, "
                             f"expected {os.major(s.st_rdev)}:{os.minor(s.st_rdev)}")
        elif stat.S_ISFIFO(s.st_mode) or stat.S_ISSOCK(s.st_mode):
            if m.st_size != 0:
                diffs.append(f"{n}: size {m.st_size}, expected 0")
        if expect.xattrs:
            xs, xm = host_xattrs(sp), host_xattrs(mp)
            if xs != xm:
                diffs.append(f"{n}: xattrs {sorted(xm)} differ from the source's {sorted(xs)}"
                             + ("" if set(xs) != set(xm) else " (values)"))

    # hard-link groups: same source inode <=> same image inode
    common = {r for r in set(s_tree) & set(m_tree)
              if not stat.S_ISDIR(s_tree[r].st_mode)}
    by_img: dict[int, set] = {}
    for r in common:
        by_img.setdefault(m_tree[r].st_ino, set()).add(r)
    for members in groups.values():
        members = [r for r in members if r in common]
        if len(members) < 2:
            continue
        inos = {m_tree[r].st_ino for r in members}
        if expect.hard_dereference:
            if len(inos) != len(members):
                diffs.append(f"hard links {[show(r) for r in members]} share inodes in the "
                             "image despite --hard-dereference")
        elif len(inos) != 1:
            diffs.append(f"hard links {[show(r) for r in members]} are "
                         f"{len(inos)} different inodes in the image")
    for ino, members in by_img.items():
        src_inodes = {(s_tree[r].st_dev, s_tree[r].st_ino) for r in members}
        if len(src_inodes) > 1 or (expect.hard_dereference and len(members) > 1):
            diffs.append(f"unrelated files {[show(r) for r in sorted(members)]} share "
                         f"inode {ino} in the image")
    return diffs


def compare_trees(src: PathLike, mnt: PathLike, *, expect: Optional[Expect] = None,
                  xattrs: Optional[bool] = None, **kw) -> None:
    """Walk ``src`` and ``mnt`` (os.lstat, bytes paths) and fail with a list
    of every difference in type, size, data, mode (incl. suid/sgid/sticky),
    uid/gid (after Expect's transforms), mtime in ns (or the fixed time),
    symlink target, rdev, nlink (links inside the tree; dirs 2 + subdirs),
    hard-link grouping and, with xattrs=True, extended attributes.
    Excluded paths (Expect.exclude_paths / exclude_regexes) must be absent.
    Expectations are given as ``expect=Expect(...)`` or as keywords."""
    diffs = tree_differences(src, mnt, expect=expect, xattrs=xattrs, **kw)
    if diffs:
        head = diffs[:300]
        more = f"\n... and {len(diffs) - 300} more" if len(diffs) > 300 else ""
        raise AssertionError(f"{len(diffs)} difference(s) between {show(src)} and the "
                             f"image mounted at {show(mnt)}:\n  " + "\n  ".join(head) + more)


def host_content(path: PathLike, st: os.stat_result):
    """What an inode of the host's tree holds, as views of trees compare it: a regular file's
    sha256 (hex, read in pieces), a symlink's target, a device's (major, minor), else None."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        h = hashlib.sha256()
        with open(deep_call(os.open, path, os.O_RDONLY), "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
        return h.hexdigest()
    if stat.S_ISLNK(mode):
        return deep_call(os.readlink, path)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return (os.major(st.st_rdev), os.minor(st.st_rdev))
    return None
