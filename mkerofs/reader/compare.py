"""Compare an image with a source directory: every path, type, mode, owner, mtime (ns), size,
byte of data, symlink target, device number, hard-link grouping and extended attribute.

`compare_image` takes the expectations explicitly (owners forced or shifted, a fixed or
clamped mtime, excluded paths); the writer's `verify.compare_build` derives them from the
BuildOptions of the build that made the image (for `mkerofs --verify`). Both return the differences as readable strings,
each naming the path ("/" is the top of the comparison); an empty list means equal.
"""
from __future__ import annotations

import os
import stat
from typing import Callable, Optional

from ..ondisk import format as fmt
from .extract import ENTER, LEAVE, device_numbers, iter_tree, resolve, show, type_name
from .image import Image, Inode
from ..util import read_xattrs

__all__ = ["compare_image"]

_CHUNK = 1 << 20


def _fmt_ns(sec: int, nsec: int) -> str:
    return f"{sec}.{nsec:09d}"


def _fmt_xattrs(pairs: list[tuple[bytes, bytes]]) -> str:
    return "[" + ", ".join(show(n) for n, _ in pairs) + "]"


def _data_difference(img: Image, inode: Inode, source: bytes) -> Optional[str]:
    """None if the source file's bytes equal the image file's, else what differs."""
    try:
        f = open(source, "rb", buffering=0)
    except OSError as err:
        return f"cannot read the source file: {err.strerror or err}"
    with f:
        pos = 0
        try:
            for chunk in img.iter_data(inode):
                n = len(chunk)
                theirs = f.read(n)
                while len(theirs) < n:
                    more = f.read(n - len(theirs))
                    if not more:
                        break
                    theirs += more
                if theirs != chunk:
                    if len(theirs) < n and chunk[:len(theirs)] == theirs:
                        return f"the source file ends at byte {pos + len(theirs)}"
                    off = next(i for i in range(min(n, len(theirs))) if theirs[i] != chunk[i])
                    return f"data differs at byte {pos + off}"
                pos += n
            if f.read(1):
                return f"the source file has data past byte {pos}"
        except OSError as err:
            return f"cannot read the source file: {err.strerror or err}"
    return None


def compare_image(img: Image, source, *, path: Optional[str | bytes] = None,
                  check_owner: bool = True, check_mtime: bool = True, check_xattrs: bool = True,
                  uid: Optional[int] = None, gid: Optional[int] = None,
                  uid_offset: int = 0, gid_offset: int = 0,
                  mtime: Optional[int] = None, clamp_mtime: Optional[int] = None,
                  compact_mtime: Optional[int] = None,
                  hard_dereference: bool = False,
                  exclude: Optional[Callable[[bytes], bool]] = None,
                  source_xattrs: Optional[Callable[[bytes, bytes, int], list]] = None,
                  limit: int = 0) -> list[str]:
    """Compare the image (or its subtree at `path`) with the directory `source`.

    Expectations, as a build applies them to the source's attributes:
    `uid`/`gid` replace every owner (--force-uid/--force-gid/--all-root), then
    `uid_offset`/`gid_offset` are added; `mtime` is the one mtime every inode has (-T with
    --all-time; 0 ns), `clamp_mtime` the time newer mtimes are clamped to (SOURCE_DATE_EPOCH),
    `compact_mtime` the time every inode that fits a compact inode gets (--ignore-mtime,
    -Eforce-inode-compact); `hard_dereference`: hard links are separate inodes;
    `exclude(relpath)` (relative to `source`, no leading slash) leaves a source path and its
    subtree out, as --exclude-path/--exclude-regex do; `source_xattrs(path, relpath, mode)`
    replaces reading a source file's xattrs (sorted (name, value) pairs) when the build
    changes them. `check_*` false skips that attribute. `limit` > 0 stops after that many
    differences. Returns the differences (empty: equal)."""
    source = os.fsencode(source)
    top_path, top = resolve(img, path)
    diffs: list[str] = []

    class _Full(Exception):
        pass

    def add(rel: bytes, msg: str) -> None:
        diffs.append(f"/{show(rel)}: {msg}" if rel else f"/: {msg}")
        if limit and len(diffs) >= limit:
            raise _Full

    def want_ids(st: os.stat_result) -> tuple[int, int]:
        u = st.st_uid if uid is None else uid
        g = st.st_gid if gid is None else gid
        return (u + uid_offset) & 0xFFFFFFFF, (g + gid_offset) & 0xFFFFFFFF

    # image side: relative path -> inode (directories are compared as the walk goes)
    try:
        st_top = os.stat(source)
    except OSError as err:
        return [f"{show(source)}: cannot read the source: {err.strerror or err}"]
    if not stat.S_ISDIR(st_top.st_mode):
        return [f"{show(source)}: the source is not a directory"]
    if not stat.S_ISDIR(top.mode):
        return [f"{show(top_path)}: is a {type_name(top.mode)} in the image, the source is a "
                "directory"]

    # source side: walk once, keeping only what is needed (lstat results are small)
    src: dict[bytes, os.stat_result] = {b"": st_top}
    groups: dict[tuple[int, int], list[bytes]] = {}
    pending = [b""]
    try:
        while pending:
            rel = pending.pop()
            full = os.path.join(source, rel) if rel else source
            try:
                names = os.listdir(full)
            except OSError as err:
                add(rel, f"cannot list the source directory: {err.strerror or err}")
                continue
            for name in names:
                r = rel + b"/" + name if rel else name
                if exclude is not None and exclude(r):
                    continue
                try:
                    st = os.lstat(os.path.join(source, r))
                except OSError as err:
                    add(r, f"cannot stat the source: {err.strerror or err}")
                    continue
                src[r] = st
                if stat.S_ISDIR(st.st_mode):
                    pending.append(r)
                else:
                    groups.setdefault((st.st_dev, st.st_ino), []).append(r)

        seen: set[bytes] = set()
        entered: set[bytes] = set()          # directories in both, whose entries were compared
        nid_of: dict[bytes, int] = {}
        base_len = len(top_path) if top_path != b"/" else 0
        for event, p, inode in iter_tree(img, top, top_path):
            if event == LEAVE:
                continue
            rel = p[base_len:].lstrip(b"/")
            st = src.get(rel)
            if st is None:
                add(rel, f"{type_name(inode.mode)} in the image, not in the source")
                continue
            seen.add(rel)
            if event == ENTER and stat.S_ISDIR(st.st_mode):
                entered.add(rel)
            if not stat.S_ISDIR(inode.mode):
                nid_of[rel] = inode.nid
            _compare_one(img, inode, st, rel, os.path.join(source, rel) if rel else source,
                         add, want_ids, check_owner, check_mtime, check_xattrs, mtime,
                         clamp_mtime, compact_mtime, hard_dereference, groups, source_xattrs)
        # (entries below a directory missing from the image are covered by its own message)
        for rel in sorted(set(src) - seen):
            if rel.rpartition(b"/")[0] in entered:
                add(rel, f"{type_name(src[rel].st_mode)} in the source, not in the image")

        # hard-link grouping: same source inode <=> same image inode
        for members in groups.values():
            present = [r for r in members if r in nid_of]
            if len(present) < 2:
                continue
            nids = {nid_of[r] for r in present}
            names = ", ".join("/" + show(r) for r in present)
            if hard_dereference:
                if len(nids) != len(present):
                    add(present[0], f"hard links {names} share an inode in the image despite "
                                    "--hard-dereference")
            elif len(nids) != 1:
                add(present[0], f"hard links {names} are {len(nids)} different inodes in the "
                                "image")
        by_nid: dict[int, list[bytes]] = {}
        for rel, nid in nid_of.items():
            by_nid.setdefault(nid, []).append(rel)
        for nid, rels in by_nid.items():
            if len(rels) > 1 and len({(src[r].st_dev, src[r].st_ino) for r in rels}) > 1:
                add(rels[0], "unrelated source files " + ", ".join("/" + show(r) for r in rels)
                    + f" share one inode (nid {nid}) in the image")
    except _Full:
        pass
    return diffs


def _compare_one(img, inode, st, rel, spath, add, want_ids, check_owner, check_mtime,
                 check_xattrs, mtime, clamp_mtime, compact_mtime, hard_dereference, groups,
                 source_xattrs) -> None:
    if stat.S_IFMT(inode.mode) != stat.S_IFMT(st.st_mode):
        add(rel, f"{type_name(inode.mode)} in the image, {type_name(st.st_mode)} in the source")
        return
    if stat.S_IMODE(inode.mode) != stat.S_IMODE(st.st_mode):
        add(rel, f"mode {stat.S_IMODE(inode.mode):04o} in the image, "
                 f"{stat.S_IMODE(st.st_mode):04o} in the source")
    u, g = want_ids(st)
    if check_owner:
        if inode.uid != u:
            add(rel, f"uid {inode.uid} in the image, expected {u}")
        if inode.gid != g:
            add(rel, f"gid {inode.gid} in the image, expected {g}")
    is_dir = stat.S_ISDIR(st.st_mode)
    if not is_dir:
        nl = 1 if hard_dereference else len(groups.get((st.st_dev, st.st_ino), ()))
        if inode.nlink != nl:
            add(rel, f"{inode.nlink} links in the image, {nl} in the source")
    else:
        nl = inode.nlink
    if check_mtime:
        want_sec, want_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
        if mtime is not None:
            want_sec, want_nsec = mtime, 0
        else:
            if clamp_mtime is not None and want_sec >= clamp_mtime:
                want_sec, want_nsec = clamp_mtime, 0
            if compact_mtime is not None:
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                if fmt.fits_compact_inode(size, u, g, nl):
                    want_sec, want_nsec = compact_mtime, 0
        if (inode.mtime, inode.mtime_nsec) != (want_sec, want_nsec):
            add(rel, f"mtime {_fmt_ns(inode.mtime, inode.mtime_nsec)} in the image, expected "
                     f"{_fmt_ns(want_sec, want_nsec)}")
    if stat.S_ISREG(st.st_mode):
        if inode.size != st.st_size:
            add(rel, f"size {inode.size} in the image, {st.st_size} in the source")
        else:
            d = _data_difference(img, inode, spath)
            if d:
                add(rel, d)
    elif stat.S_ISLNK(st.st_mode):
        try:
            theirs = os.readlink(spath)
        except OSError as err:
            add(rel, f"cannot read the source symlink: {err.strerror or err}")
        else:
            ours = img.readlink(inode)
            if ours != theirs:
                add(rel, f"symlink target {show(ours)!r} in the image, {show(theirs)!r} in "
                         "the source")
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        ours = device_numbers(inode)
        theirs = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if ours != theirs:
            add(rel, f"device {ours[0]}:{ours[1]} in the image, {theirs[0]}:{theirs[1]} in "
                     "the source")
    if check_xattrs:
        try:
            if source_xattrs is not None:
                theirs = sorted(source_xattrs(spath, rel, st.st_mode))
            else:
                theirs = read_xattrs(spath)
        except OSError as err:
            add(rel, f"cannot read the source's xattrs: {err.strerror or err}")
            return
        ours = sorted(img.xattrs(inode))
        if ours != theirs:
            if [n for n, _ in ours] != [n for n, _ in theirs]:
                add(rel, f"xattrs {_fmt_xattrs(ours)} in the image, {_fmt_xattrs(theirs)} in "
                         "the source")
            else:
                names = [show(a[0]) for a, b in zip(ours, theirs) if a[1] != b[1]]
                add(rel, f"xattr values differ: {', '.join(names)}")


