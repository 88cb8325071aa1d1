"""Build the source tree from a tar stream (``mkerofs --tar``), as mkfs.erofs 1.9.3 does.

The result is what walk_source gives for a directory: TreeInodes with sorted entries,
directory nlink 2 + subdirectories, file nlink the names the file has in the final tree, parent
links, sorted xattrs. `TreeInode.path` is the entry's path in the archive (for messages: there
is no such file on this host); each regular file's bytes are located by its `data` (a DataRef):
in the tar itself when it is a plain tar file read by path or from a redirected stdin
(or only indexed, ``--tar=i``: `DataRef.indexed`, the offset then counts in the decompressed
stream and nothing is read),
nowhere for an empty file or a headerball (zeros), else copied into the Spool as the stream
passes (a sparse file's too under --tar=i: its bytes are not one range of the tar), since the image takes files in another order than the tar gives them (or, with
--sort=none from a stream, written straight into the image by a spool.ImageSpool).

The tree, entry by entry in tar order:

* A path is resolved from the root: empty and ``.`` components are skipped, ``..`` goes to the
  parent (the root's parent is the root) after the directory it leaves has been walked into,
  so ``x/../y`` creates ``x``. Symlinks are never followed; a non-directory in the middle of a
  path is an error. A path that resolves to the root updates the root if it is a directory
  entry and is an error otherwise.
* A missing directory on the way is created: mode 0755 plus the group/other write bits of its
  parent, owner and mtime of its parent. It keeps these until an entry names it. The initial
  root is 0777, owned by the uid/gid mkfs runs as, with the build time as mtime, so implicit
  directories under an unnamed root are 0777.
* A later entry for an existing name wins. Two directories merge: the later header's mode,
  owner, mtime, its xattrs added to (or replacing) the earlier ones, the children kept. In
  every other case the old inode leaves the tree (a directory with its subtree) and the new one
  takes its place; a hard link to the old inode keeps it (and its data) alive.
* A hard link (type 1) names a file already in the tree, by its normalised path: it shares that
  inode; its own header's attributes are ignored. A target not (yet) there or a directory is an
  error; a link to itself does nothing.

``--aufs`` reads aufs/docker whiteouts in the last path component: ``.wh..wh..opq`` makes its
directory opaque (xattr trusted.overlay.opaque=y; at the root too, where mkfs.erofs 1.9.3 fails
with ENOTDIR), ``.wh.NAME`` makes NAME a whiteout (a character device 0:0, mode 0000, owner and
mtime from the header) and gives its directory an empty trusted.overlay.origin xattr (as
mkfs.erofs does: the directory still holds a name from a lower layer). Other ``.wh..wh.X``
names become whiteouts named ``.wh.X``. ``--ovlfs-strip`` then deletes those whiteouts and all
trusted.overlay.opaque xattrs and adds no origin: the layer as it would look merged. A ``c 0:0``
entry of the tar itself is an ordinary device node, never stripped (mkfs.erofs 1.9.3 decides by
the inode alone and so may strip one that shares a directory with an aufs whiteout).
"""
from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable

from ..ondisk.format import EROFS_NAME_LEN
from .spool import ImageSpool, Spool
from .tarstream import BLK, CHR, DIR, HARDLINK, REG, SYMLINK, TarEntry, TarError, TarReader
from .walk import (DataRef, NamedDirInode, OffsetRef, SortedEntries, TreeInode, count_links,
                   link_children, offset_refs)

_OPAQUE = b"trusted.overlay.opaque"
_ORIGIN = b"trusted.overlay.origin"
_WHITEOUT = b".wh."
_OPAQUE_MARKER = b".wh..wh..opq"
_INHERITED_BITS = stat.S_IWGRP | stat.S_IWOTH
_NO_DATA = DataRef(None)
# the xattrs of every inode without any (most of them): one tuple, not a list each (56 bytes
# an inode); nothing changes a TreeInode's xattrs in place, they are always assigned anew
_NO_XATTRS: tuple = ()


@dataclass
class TarTreeOptions:
    aufs: bool = False              # --aufs: whiteouts and opaque markers (module docstring)
    ovlfs_strip: bool = False       # --ovlfs-strip
    headerball: bool = False        # --tar=headerball: files hold zeros (no data in the stream)
    index: bool = False             # --tar=i: data stays in the tar, at entry.data_offset
                                    # (sparse files excepted)
    root_uid: int = 0               # owner of the initial root (mkfs.erofs: its own uid/gid)
    root_gid: int = 0
    build_time: int = 0             # seconds: mtime of the initial root
    tar_path: bytes | None = None   # the input, when it is a plain tar in a regular file read
                                    # from its start: file data is then referenced in place
    sorted_entries: bool = False    # directories' entries as walk.SortedEntries, not a list
                                    # of (name, child): for a tree only planned, not merged


@dataclass(frozen=True, slots=True)
class LinkCount:
    """What on_file gets where walk_source passes an os.stat_result (build reads st_nlink)."""
    st_nlink: int


_ONE_LINK = LinkCount(1)


class _Tree:
    """The tree while the tar is read: each directory's `entries` a dict of its children by
    name (finish makes them what a tree's entries are), not one apart: ~130 bytes a
    directory less at the peak of reading."""

    def __init__(self, opts: TarTreeOptions):
        self.opts = opts
        self.root = TreeInode(b".", stat.S_IFDIR | 0o777, opts.root_uid, opts.root_gid, 0,
                                opts.build_time * 10**9, entries={})
        self.root.parent = self.root
        self.whiteouts: set[TreeInode] = set()          # made from .wh. names
        # directories already walked to, by normalised path (entries come grouped by directory):
        # valid while no directory leaves the tree, so _forget empties it
        self.dirs: dict[bytes, TreeInode] = {b"": self.root}
        self.with_whiteouts: set[TreeInode] = set()     # directories that got one

    # -- resolving paths ------------------------------------------------------------------

    def directory(self, entry: TarEntry, parts: list[bytes]) -> TreeInode:
        """The directory `parts` names, created (with its parents) where missing."""
        directory = self.root
        for i, part in enumerate(parts):
            directory = self._step(entry, directory, part, parts, i)
        return directory

    def _step(self, entry: TarEntry, directory: TreeInode, part: bytes, parts: list[bytes],
              i: int) -> TreeInode:
        child = directory.entries.get(part)
        if child is None:
            if len(part) > EROFS_NAME_LEN:
                raise TarError(f"a path component is longer than {EROFS_NAME_LEN} bytes",
                               entry.name, entry.header_offset)
            return self._mkdir(directory, part, b"/".join(parts[:i + 1]))
        if child.entries is None:
            raise TarError(f"{_show(b'/'.join(parts[:i + 1]))} is not a directory (ENOTDIR)",
                           entry.name, entry.header_offset)
        return child

    def _mkdir(self, parent: TreeInode, name: bytes, path: bytes) -> TreeInode:
        node = TreeInode(path, stat.S_IFDIR | 0o755 | (parent.mode & _INHERITED_BITS),
                           parent.uid, parent.gid, 0, parent.mtime_ns, entries={})
        return self._add_dir(parent, name, node)

    def _add_dir(self, parent: TreeInode, name: bytes, node: TreeInode) -> TreeInode:
        parent.entries[name] = node
        return node

    def split(self, entry: TarEntry) -> tuple[TreeInode, bytes]:
        """(parent directory, last name) of `entry`; name b"" for the root."""
        name = entry.name
        if b"/.." in name or name.startswith(b".."):
            return self._split_dotdot(entry)
        if not entry.path:
            return self.root, b""
        head, _slash, name = entry.path.rpartition(b"/")
        directory = self.dirs.get(head)
        if directory is None:
            directory = self.remember(head, self.walk_to(entry, head))
        return directory, name

    def remember(self, head: bytes, directory: TreeInode) -> TreeInode:
        """Note `directory` as the one at normalised path `head`: keyed by its own path where
        that is `head` (one bytes object a directory kept, not two: ~90 bytes)."""
        where = directory.where
        self.dirs[where if where == head else head] = directory
        return directory

    def walk_to(self, entry: TarEntry, head: bytes) -> TreeInode:
        """The directory at normalised path `head` (not the root), made where missing: one
        step from its parent when that was walked to already (a tar's directories come
        before their contents, so it usually was)."""
        parent_head, _slash, last = head.rpartition(b"/")
        parent = self.dirs.get(parent_head)
        if parent is None:
            return self.directory(entry, head.split(b"/"))
        parts = head.split(b"/")
        return self._step(entry, parent, last, parts, len(parts) - 1)

    def _split_dotdot(self, entry: TarEntry) -> tuple[TreeInode, bytes]:
        """As split, walking the name as written: a directory left by ``..`` is still made."""
        stack: list[TreeInode] = [self.root]
        parts: list[bytes] = []
        names = [p for p in entry.name.split(b"/") if p not in (b"", b".")]
        for i, part in enumerate(names):
            if part != b"..":
                if i + 1 < len(names):
                    parts.append(part)
                    stack.append(self._step(entry, stack[-1], part, parts, len(parts) - 1))
                else:
                    return stack[-1], part
            elif len(stack) > 1:
                stack.pop()
                parts.pop()
        if len(stack) == 1:
            return self.root, b""
        last = parts.pop()
        return stack[-2], last

    def lookup(self, path: bytes) -> TreeInode | None:
        """The inode at normalised `path`, or None (nothing is created)."""
        node = self.root
        if not path:
            return node
        for part in path.split(b"/"):
            children = node.entries
            node = children.get(part) if children is not None else None
            if node is None:
                return None
        return node

    # -- entries --------------------------------------------------------------------------

    def replace(self, parent: TreeInode, name: bytes, node: TreeInode) -> None:
        """Put `node` at `name`; an inode there before leaves the tree (unless linked elsewhere)."""
        children = parent.entries
        old = children.get(name)
        if old is not None and old.entries is not None and old is not node:
            self._forget(old)
        children[name] = node

    def _forget(self, directory: TreeInode) -> None:
        """Drop the bookkeeping of a directory subtree that left the tree."""
        self.dirs.clear()               # (in place: read_tar_tree holds it)
        self.dirs[b""] = self.root
        pending = [directory]
        while pending:
            node = pending.pop()
            kids = node.entries
            if kids:
                pending.extend(k for k in kids.values() if k.entries is not None)
            self.with_whiteouts.discard(node)

    def xattrs(self, entry: TarEntry) -> list[tuple[bytes, bytes]]:
        """The entry's xattrs, sorted (--ovlfs-strip drops every opaque mark)."""
        xattrs = sorted(entry.xattrs) if entry.xattrs else []
        if self.opts.ovlfs_strip and xattrs:
            xattrs = [x for x in xattrs if x[0] != _OPAQUE]
        return xattrs

    def merge_dir(self, node: TreeInode, entry: TarEntry) -> None:
        node.mode = entry.mode
        node.uid, node.gid = entry.uid, entry.gid
        node.mtime_ns = entry.mtime_ns
        xattrs = self.xattrs(entry)
        if xattrs:
            node.xattrs = _merge_xattrs(node.xattrs, xattrs)

    def opaque(self, directory: TreeInode) -> None:
        if not self.opts.ovlfs_strip:
            directory.xattrs = _merge_xattrs(directory.xattrs, [(_OPAQUE, b"y")])

    def whiteout(self, parent: TreeInode, name: bytes, path: bytes, entry: TarEntry) -> None:
        if name in (b"", b".", b".."):
            raise TarError(f"an aufs whiteout for {_show(name)}", entry.name, entry.header_offset)
        node = TreeInode(path, stat.S_IFCHR, entry.uid, entry.gid, 0, entry.mtime_ns)
        self.replace(parent, name, node)
        self.whiteouts.add(node)
        self.with_whiteouts.add(parent)

    # -- the result -----------------------------------------------------------------------

    def finish(self) -> tuple[TreeInode, int]:
        """Sorted entries, nlink, parents, whiteout handling; (root, distinct inodes).  Once:
        the directories' dicts are used up."""
        self.dirs.clear()               # (let go before the entries are made)
        strip = self.opts.ovlfs_strip
        for directory in self.with_whiteouts:
            if strip:
                kids = directory.entries
                for name in [n for n, k in kids.items() if k in self.whiteouts]:
                    del kids[name]
            else:
                directory.xattrs = _merge_xattrs(directory.xattrs, [(_ORIGIN, b"")])
        root = self.root
        root.nlink, count = 2, 1
        pending = deque([root])
        # (each directory's dict is let go as its entries are made: not all of both at once)
        two_lists = self.opts.sorted_entries
        while pending:
            directory = pending.popleft()
            kids = directory.entries
            if not two_lists:
                count += link_children(directory, sorted(kids.items()), pending)
                continue
            subdirs = len(pending)
            count += count_links(directory, kids.values(), pending)
            if len(pending) > subdirs:          # (it has subdirectories)
                for name, child in kids.items():
                    if child.entries is not None:   # (its name is in `names`: a path less)
                        child.where = name
                        child.__class__ = NamedDirInode
            # (no tuple an entry, and each list made at its size, once: the shape takes
            # them as they are, with the dots, whose inodes are known now)
            kids[b"."], kids[b".."] = directory, directory.parent
            names = tuple(sorted(kids))
            directory.entries = SortedEntries(names, itemgetter(*names)(kids))
        return root, count


def _merge_xattrs(old: list[tuple[bytes, bytes]], new: list[tuple[bytes, bytes]]
                  ) -> list[tuple[bytes, bytes]]:
    merged = dict(old)
    merged.update(new)
    return sorted(merged.items())


def _show(path: bytes) -> str:
    return repr(path.decode("utf-8", "backslashreplace"))


# Names read_tar_tree keeps to share (then it starts afresh): the commonest names come back
# soon.  On the bench's tar (59,600 names, 34,400 distinct): 1.0 MiB less, where all of them
# would make 1.3 MiB less but cost a lookup in a table out of the CPU's caches (~7 ms).
_NAMES_KEPT = 1024


def read_tar_tree(reader: TarReader, opts: TarTreeOptions, spool: Spool | ImageSpool,
                  on_file: Callable[[TreeInode, bytes, LinkCount], object] | None = None
                  ) -> tuple[TreeInode, int]:
    """Read the whole stream into a tree (module docstring); return the root and the number of
    distinct inodes, as walk_source does.

    Regular files' data is referenced in place (opts.tar_path, opts.index), absent
    (opts.headerball, or an empty file: DataRef(None)) or stored by `spool` (a Spool, which the
    caller keeps open until the image is written, or an ImageSpool, which writes it into the
    image). `on_file(inode, relative path, LinkCount)` is called
    for each regular file once its data is stored, in tar order, until it returns False; a later
    hard link can still raise its link count, and a later entry of the same name can still
    replace it (the inode is then not in the tree, unless a hard link keeps it)."""
    tree = _Tree(opts)
    dirs, aufs, root = tree.dirs, opts.aufs, tree.root
    # the DataRef class of a plain file's bytes read in place or left in the tar (--tar=i),
    # if they are (_file_data's common case inline)
    in_tar = _in_tar_refs(opts)
    # One int a file size, shared by the files of that size (an int above 256 is 32 bytes
    # a file; on a tree of 42,000 such files, 17,000 sizes): only while reading, the dict
    # let go before later allocations
    same_size = {}.setdefault
    # One bytes object a name, shared by the entries of that name (kept as a file's `where`,
    # a directory's, and its parent's key): a tree of packages repeats __init__.py,
    # __pycache__... (see _NAMES_KEPT)
    names: dict[bytes, bytes] = {}
    same_name = names.setdefault
    for entry in reader:
        path = entry.path
        written = entry.name
        # (a path normalising left as it was has no ".." to walk: most files')
        if not path or path is not written and (b"/.." in written or written.startswith(b"..")):
            parent, name = tree.split(entry)
            head = None
        else:
            # (split's common case inline)
            head, _slash, name = path.rpartition(b"/")
            name = same_name(name, name)
            if len(names) > _NAMES_KEPT:
                names.clear()
            parent = dirs.get(head)
            if parent is None:
                parent = tree.remember(head, tree.walk_to(entry, head))
        kind = entry.kind
        if not name:
            if kind != DIR:
                raise TarError("the archive's root can only be a directory (ENOTDIR)",
                               entry.name, entry.header_offset)
            tree.merge_dir(tree.root, entry)
            continue
        if aufs and name.startswith(_WHITEOUT):
            if name == _OPAQUE_MARKER:
                tree.opaque(parent)
            else:
                whiteout_path = path[:len(path) - len(name)] + name[len(_WHITEOUT):]
                tree.whiteout(parent, name[len(_WHITEOUT):], whiteout_path, entry)
            continue
        if kind == HARDLINK:
            _hard_link(tree, parent, name, entry)
            continue
        if kind == DIR:
            old = parent.entries.get(name)
            if old is not None and old.entries is not None:
                tree.merge_dir(old, entry)
                continue
        xattrs = tree.xattrs(entry) if entry.xattrs else _NO_XATTRS
        # A non-directory keeps its name and its directory where they spell its path (not at
        # the root, "." there): the whole path would be held to the end, ~100 bytes a file.
        where, found_in = path, None
        if parent is not root and kind != DIR:
            # (path is head + "/" + name: the parent's path is head; after a "..", test it)
            if head is not None:
                if parent.where == head:
                    where, found_in = name, parent
            elif path == parent.where + b"/" + name:
                where, found_in = name, parent
        if kind == REG:
            if in_tar is not None and entry.size and entry.sparse is None:
                data = in_tar(entry.data_offset)
            else:
                data = _file_data(reader, entry, opts, spool)
            # (the most common entry)
            size = entry.size
            node = TreeInode(where, entry.mode, entry.uid, entry.gid, same_size(size, size),
                               entry.mtime_ns, xattrs=xattrs, data=data, found_in=found_in)
        elif kind == DIR:
            node = TreeInode(path, entry.mode, entry.uid, entry.gid, 0, entry.mtime_ns,
                               xattrs=xattrs, entries={})
        elif kind == SYMLINK:
            node = TreeInode(where, entry.mode, entry.uid, entry.gid, len(entry.linkname),
                               entry.mtime_ns, xattrs=xattrs, target=entry.linkname,
                               found_in=found_in)
        elif kind in (CHR, BLK):
            node = TreeInode(where, entry.mode, entry.uid, entry.gid, 0, entry.mtime_ns,
                               os.makedev(entry.devmajor, entry.devminor), xattrs=xattrs,
                               found_in=found_in)
        else:
            node = TreeInode(where, entry.mode, entry.uid, entry.gid, 0, entry.mtime_ns,
                               xattrs=xattrs, found_in=found_in)
        siblings = parent.entries
        if name in siblings:
            tree.replace(parent, name, node)
        else:
            siblings[name] = node           # (replace's common case)
        if on_file is not None and kind == REG:
            spool.flush()
            if on_file(node, path, _ONE_LINK) is False:
                on_file = None
    spool.flush()
    return tree.finish()


def _hard_link(tree: _Tree, parent: TreeInode, name: bytes, entry: TarEntry) -> None:
    target = tree.lookup(entry.link_path)
    if target is None:
        raise TarError(f"hard link to {_show(entry.linkname)}, which is not in the archive "
                       "before it", entry.name, entry.header_offset)
    if target.entries is not None:
        raise TarError(f"hard link to the directory {_show(entry.linkname)}",
                       entry.name, entry.header_offset)
    if parent.entries.get(name) is not target:
        tree.replace(parent, name, target)


def _in_tar_refs(opts: TarTreeOptions) -> type[OffsetRef] | None:
    """The DataRef class of the files whose bytes are one range of the tar, referenced there
    (--tar=i: the stream's, b"" for one that is not a file; else a tar file read in place),
    or None if they are copied (or absent: a headerball)."""
    if opts.headerball:
        return None
    if opts.index:
        return offset_refs(opts.tar_path or b"", indexed=True)
    return offset_refs(opts.tar_path) if opts.tar_path is not None else None


def _file_data(reader: TarReader, entry: TarEntry, opts: TarTreeOptions,
               spool: Spool | ImageSpool) -> DataRef | OffsetRef:
    if opts.headerball or not entry.size:
        return _NO_DATA
    if entry.sparse is not None:
        # (--tar=i too: the file's bytes are not one range of the tar, so the image holds them)
        return spool.store(reader, entry)
    in_tar = _in_tar_refs(opts)
    if in_tar is not None:
        return in_tar(entry.data_offset)
    return spool.store(reader, entry)
