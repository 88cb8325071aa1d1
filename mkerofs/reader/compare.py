"""Compare an image with its source: every path, type, mode, owner, mtime (ns), size, byte of
data, symlink target, device number, hard-link grouping and extended attribute.

The source is a directory on disk or any other tree behind the `SourceTree` interface (the
writer's --verify passes the tree it read from a tar stream). `compare_image` takes the
expectations explicitly (owners forced or shifted, a fixed or clamped mtime, excluded paths);
the writer's `verify.compare_build` derives them from the BuildOptions of the build that made
the image (for `mkerofs --verify`). Both return the differences as readable strings, each
naming the path ("/" is the top of the comparison); an empty list means equal.
"""
from __future__ import annotations

import os
import stat
from typing import Any, BinaryIO, Callable, Hashable, Optional, Protocol

from ..ondisk import format as fmt
from .extract import ENTER, LEAVE, device_numbers, iter_tree, resolve, show, type_name
from .image import Image, Inode
from ..util import PageBudget, listdir_path, lstat_path, open_path, read_xattrs, readlink_path

__all__ = ["compare_image", "SourceTree", "DirectoryTree"]


# A source entry's attributes: any object with st_mode, st_uid, st_gid, st_size, st_mtime_ns
# and st_rdev (an os.stat_result has them, and so does the writer's SourceStat).
SourceStat = Any


class SourceTree(Protocol):
    """The source side of a comparison.  Entries are named by their path relative to the top
    (b"" is the top, components joined by b"/"); any method may raise OSError, which becomes a
    difference at that path."""

    def describe(self) -> str:
        """The source as a whole, for a message that is about all of it."""

    def lstat(self, rel: bytes) -> SourceStat:
        """The entry itself (a symlink is not followed, except at the top)."""

    def listdir(self, rel: bytes) -> list[bytes]:
        """The names in a directory."""

    def inode_key(self, rel: bytes, st: SourceStat) -> Hashable:
        """Equal for two non-directories exactly when they are hard links of one inode."""

    def readlink(self, rel: bytes) -> bytes:
        """A symlink's target."""

    def open(self, rel: bytes) -> BinaryIO:
        """A regular file's bytes, to read() in order (a context manager)."""

    def xattrs(self, rel: bytes, st: SourceStat) -> list[tuple[bytes, bytes]]:
        """The entry's xattrs as the image should hold them, sorted by name."""


class DirectoryTree:
    """A directory on disk as a SourceTree; `source_xattrs(path, rel, mode)`, if given,
    replaces reading an entry's xattrs (when a build changes them).  Paths may be longer than
    the kernel takes at once (util.open_parent)."""

    def __init__(self, top: str | bytes | os.PathLike,
                 source_xattrs: Optional[Callable[[bytes, bytes, int], list]] = None):
        self.top = os.fsencode(top)
        self._source_xattrs = source_xattrs

    def _path(self, rel: bytes) -> bytes:
        return os.path.join(self.top, rel) if rel else self.top

    def describe(self) -> str:
        return show(self.top)

    def lstat(self, rel: bytes) -> os.stat_result:
        return lstat_path(self._path(rel)) if rel else os.stat(self.top)

    def listdir(self, rel: bytes) -> list[bytes]:
        return listdir_path(self._path(rel))

    def inode_key(self, rel: bytes, st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def readlink(self, rel: bytes) -> bytes:
        return readlink_path(self._path(rel))

    def open(self, rel: bytes) -> BinaryIO:
        return os.fdopen(open_path(self._path(rel), os.O_RDONLY | os.O_CLOEXEC), "rb", buffering=0)

    def xattrs(self, rel: bytes, st: os.stat_result) -> list[tuple[bytes, bytes]]:
        if self._source_xattrs is not None:
            return sorted(self._source_xattrs(self._path(rel), rel, st.st_mode))
        return read_xattrs(self._path(rel))


def _fmt_ns(sec: int, nsec: int) -> str:
    return f"{sec}.{nsec:09d}"


def _fmt_xattrs(pairs: list[tuple[bytes, bytes]]) -> str:
    return "[" + ", ".join(show(n) for n, _ in pairs) + "]"


def _data_difference(img: Image, inode: Inode, tree: SourceTree, rel: bytes) -> Optional[str]:
    """None if the source file's bytes equal the image file's, else what differs."""
    try:
        f = tree.open(rel)
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


# bytes of file data compared between two rounds of giving pages back: read through
# mappings, every page of a whole image would otherwise stay in the resident size, twice when
# the source is mapped images too (--verify in rebuild mode: the layers, read as the image's
# devices and as the source)
_DROP_EVERY = 32 << 20


def _page_budget(img: Image, tree) -> PageBudget:
    """The image's pages (and the source's, if it has drop_pages) given back every
    _DROP_EVERY bytes of file data compared."""
    if hasattr(tree, "drop_pages"):
        return PageBudget(_DROP_EVERY, img.drop_pages, tree.drop_pages)
    return PageBudget(_DROP_EVERY, img.drop_pages)


def compare_image(img: Image, source: str | bytes | os.PathLike | SourceTree, *,
                  path: Optional[str | bytes] = None,
                  check_owner: bool = True, check_mtime: bool = True, check_xattrs: bool = True,
                  uid: Optional[int] = None, gid: Optional[int] = None,
                  uid_offset: int = 0, gid_offset: int = 0,
                  mtime: Optional[int] = None, clamp_mtime: Optional[int] = None,
                  compact_mtime: Optional[int] = None,
                  hard_dereference: bool = False,
                  exclude: Optional[Callable[[bytes], bool]] = None,
                  source_xattrs: Optional[Callable[[bytes, bytes, int], list]] = None,
                  as_is: Optional[Callable[[bytes], bool]] = None,
                  limit: int = 0) -> list[str]:
    """Compare the image (or its subtree at `path`) with `source`: a directory, or a SourceTree.

    Expectations, as a build applies them to the source's attributes:
    `uid`/`gid` replace every owner (--force-uid/--force-gid/--all-root), then
    `uid_offset`/`gid_offset` are added; `mtime` is the one mtime every inode has (-T with
    --all-time; 0 ns), `clamp_mtime` the time newer mtimes are clamped to (SOURCE_DATE_EPOCH),
    `compact_mtime` the time every inode that fits a compact inode gets (--ignore-mtime,
    -Eforce-inode-compact); `hard_dereference`: hard links are separate inodes;
    `exclude(relpath)` (relative to `source`, no leading slash) leaves a source path and its
    subtree out, as --exclude-path/--exclude-regex do; `source_xattrs(path, relpath, mode)`
    replaces reading a source directory's file's xattrs (sorted (name, value) pairs) when the
    build changes them (a SourceTree says itself what its xattrs are). `as_is(relpath)` true:
    the build kept that entry as the source has it (an increment's base inodes): its owner,
    mtime and hard links are compared without the expectations above and its link count is
    not compared (a kept inode keeps its own). `check_*` false skips
    that attribute. `limit` > 0 stops after that many differences. Returns the differences
    (empty: equal)."""
    if isinstance(source, (str, bytes, os.PathLike)):
        tree = DirectoryTree(source, source_xattrs)
    else:
        tree = source
    top_path, top = resolve(img, path)
    budget = _page_budget(img, tree)
    diffs: list[str] = []

    class _Full(Exception):
        pass

    def add(rel: bytes, msg: str) -> None:
        diffs.append(f"/{show(rel)}: {msg}" if rel else f"/: {msg}")
        if limit and len(diffs) >= limit:
            raise _Full

    def want_ids(st: SourceStat) -> tuple[int, int]:
        u = st.st_uid if uid is None else uid
        g = st.st_gid if gid is None else gid
        return (u + uid_offset) & 0xFFFFFFFF, (g + gid_offset) & 0xFFFFFFFF

    try:
        st_top = tree.lstat(b"")
    except OSError as err:
        return [f"{tree.describe()}: cannot read the source: {err.strerror or err}"]
    if not stat.S_ISDIR(st_top.st_mode):
        return [f"{tree.describe()}: the source is not a directory"]
    if not stat.S_ISDIR(top.mode):
        return [f"{show(top_path)}: is a {type_name(top.mode)} in the image, the source is a "
                "directory"]

    # source side: walk once, keeping only what is needed (lstat results are small)
    src: dict[bytes, SourceStat] = {b"": st_top}
    key_of: dict[bytes, Hashable] = {}          # non-directories: their inode
    groups: dict[Hashable, list[bytes]] = {}
    pending = [b""]
    try:
        while pending:
            rel = pending.pop()
            try:
                names = tree.listdir(rel)
            except OSError as err:
                add(rel, f"cannot list the source directory: {err.strerror or err}")
                continue
            for name in names:
                r = rel + b"/" + name if rel else name
                if exclude is not None and exclude(r):
                    continue
                try:
                    st = tree.lstat(r)
                except OSError as err:
                    add(r, f"cannot stat the source: {err.strerror or err}")
                    continue
                src[r] = st
                if stat.S_ISDIR(st.st_mode):
                    pending.append(r)
                else:
                    key = key_of[r] = tree.inode_key(r, st)
                    groups.setdefault(key, []).append(r)

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
            if stat.S_ISREG(inode.mode):
                budget.spend(inode.size)
            if as_is is not None and as_is(rel):
                _compare_one(img, inode, st, rel, tree, inode.nlink, add, _own_ids,
                             check_owner, check_mtime, check_xattrs, None, None, None)
                continue
            links = 1 if hard_dereference else len(groups.get(key_of.get(rel), ()))
            _compare_one(img, inode, st, rel, tree, links, add, want_ids, check_owner,
                         check_mtime, check_xattrs, mtime, clamp_mtime, compact_mtime)
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
            if hard_dereference and not (as_is is not None and as_is(present[0])):
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
            if len(rels) > 1 and len({key_of.get(r) for r in rels}) > 1:
                add(rels[0], "unrelated source files " + ", ".join("/" + show(r) for r in rels)
                    + f" share one inode (nid {nid}) in the image")
    except _Full:
        pass
    return diffs


def _own_ids(st: SourceStat) -> tuple[int, int]:
    return st.st_uid, st.st_gid


def _compare_one(img, inode, st, rel, tree, links, add, want_ids, check_owner, check_mtime,
                 check_xattrs, mtime, clamp_mtime, compact_mtime) -> None:
    """One path present on both sides; `links`: the link count its image inode should have
    (ignored for directories)."""
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
    if stat.S_ISDIR(st.st_mode):
        nl = inode.nlink
    else:
        nl = links
        if inode.nlink != nl:
            add(rel, f"{inode.nlink} links in the image, {nl} in the source")
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
            d = _data_difference(img, inode, tree, rel)
            if d:
                add(rel, d)
    elif stat.S_ISLNK(st.st_mode):
        try:
            theirs = tree.readlink(rel)
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
            theirs = tree.xattrs(rel, st)
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
