"""Walk the source directory into an in-memory tree of inodes (no file data is read here)."""
from __future__ import annotations

import errno
import marshal
import os
import re
import signal
import stat
from collections import deque
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import TYPE_CHECKING, Callable

from ..errors import BuildError
from ..ondisk import format as fmt
from ..util import (NAME_MAX, PATH_MAX, can_fork, listdir_path, open_path, posix_ere_to_python,
                    read_xattrs)
from .dirs import DirShape
from .options import BuildOptions, TimeInherit

if TYPE_CHECKING:       # (loaded only for --file-contexts)
    from .selinux import FileContexts


class DataRef:
    """Where a regular file's bytes are when they are not in the file at TreeInode.path (tar
    input): `size` bytes from `offset` of `path`, the tar itself or a spool file; holes in that
    range read as zeros.  path None: no bytes anywhere (--tar=headerball), the file is all zeros.
    in_image: the bytes are in the image being built already, `offset` bytes into it (a block
    boundary; --sort=none from a stream): nothing copies them again.
    indexed (--tar=i): the bytes stay in the tar, `offset` bytes into the decompressed stream;
    the image only points there (path is the tar's, or b"" for a stream: never read).
    layer (rebuild mode): a chunks.LayerChunks, the file's chunks in a source EROFS image,
    which the image points at through its device table (path None: nothing is copied); for
    one chunk, a shared one, `offset` then its byte address on that device.

    Immutable by convention (never changed once made; nothing hashes or compares them): a plain
    slotted class, as a frozen dataclass costs ~1 us more to make, and a tar makes one a file."""
    __slots__ = ("path", "offset", "in_image", "indexed", "layer")

    def __init__(self, path: bytes | None, offset: int = 0, in_image: bool = False,
                 indexed: bool = False, layer: object | None = None):
        self.path = path
        self.offset = offset
        self.in_image = in_image
        self.indexed = indexed
        self.layer = layer

    def __repr__(self) -> str:
        return (f"DataRef({self.path!r}, {self.offset}, in_image={self.in_image}, "
                f"indexed={self.indexed}, layer={self.layer!r})")


class _SlimRef:
    """A DataRef of a kind with two fields of its own (a subclass's __slots__), the others
    class attributes: 48 bytes instead of 72, for kinds made one a file (a tar's, a merged
    tree's)."""
    __slots__ = ()
    path: bytes | None = None
    offset = 0
    in_image = False
    indexed = False
    layer: object | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}{tuple(getattr(self, n) for n in self.__slots__)!r}"


class LayerRef(_SlimRef):
    """Rebuild mode's commonest DataRef: a file of one chunk in a source image (`layer`, the
    shared LayerChunks of one_chunk_on), `offset` its byte address on that device."""
    __slots__ = ("offset", "layer")

    def __init__(self, offset: int, layer: object):
        self.offset, self.layer = offset, layer


class OffsetRef(int):
    """A DataRef that is its own `offset`: an int, its other fields class attributes, one
    subclass per source (offset_refs).  48 bytes a file where a slotted ref and its offset
    are 80 (a tar's files, --sort=none's, --tar=i's).  Never false, even at offset 0: a ref
    stands for "bytes elsewhere"; nothing compares or hashes refs."""
    __slots__ = ()
    path: bytes | None = None
    in_image = False
    indexed = False
    layer: object | None = None

    @property
    def offset(self) -> int:
        return int(self)        # (a plain int: it may be pickled for the compression workers)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {int(self)})"


_OFFSET_REFS: dict[tuple[bytes, bool], type[OffsetRef]] = {}
_OFFSET_REFS_KEPT = 64          # (a process may make many builds, each its own spool file)


def offset_refs(path: bytes, indexed: bool = False) -> type[OffsetRef]:
    """The OffsetRef class of runs of `path` (FileRef's; IndexedRef's with `indexed`): its
    instances are made from the offset alone, `cls(offset)`.  One class per path, kept."""
    key = (path, indexed)
    cls = _OFFSET_REFS.get(key)
    if cls is None:
        if len(_OFFSET_REFS) >= _OFFSET_REFS_KEPT:
            _OFFSET_REFS.clear()        # (refs made keep their class)
        name = "IndexedOffsetRef" if indexed else "FileOffsetRef"
        cls = _OFFSET_REFS[key] = type(name, (OffsetRef,),
                                       {"__slots__": (), "path": path, "indexed": indexed})
    return cls


class FileRef(_SlimRef):
    """The commonest DataRef: a file whose bytes are one run of another file (`path`, shared
    by many), read in place from `offset`: the tar itself, a spool file, or, rebuild
    --clean=data, a source image or its device."""
    __slots__ = ("path", "offset")

    def __init__(self, path: bytes, offset: int):
        self.path, self.offset = path, offset


class IndexedRef(_SlimRef):
    """--tar=i's DataRef: the bytes stay in the tar (`path`, or b"" for a stream), `offset`
    bytes into it; the image only points there."""
    __slots__ = ("path", "offset")
    indexed = True

    def __init__(self, path: bytes, offset: int):
        self.path, self.offset = path, offset


class InImageRef(OffsetRef):
    """--sort=none from a stream's DataRef: the bytes are in the image already, `offset`
    bytes into it (48 bytes a file with its offset, a DataRef's 72 and the offset's 32)."""
    __slots__ = ()
    in_image = True


@dataclass(frozen=True, slots=True)
class FlatData:
    """How the content of a flat inode goes into the place reserved for it, copied later:
    the body to the blocks from the inode's i_u (its raw_blkaddr), the tail inline.
    Immutable and without the place itself, so that few of them serve every inode
    (DataArea.reserve_flat: one each would be 64 bytes a file)."""
    tail: int                       # bytes kept inline, after inode + xattrs
    rewritten: bool = False         # the blocks hold a compressed attempt: a copy writes holes
    written: bool = False           # the body is in the image already (walk.DataRef.in_image)


_S_IFMT = fmt.S_IFMT
_S_IFDIR, _S_IFCHR, _S_IFBLK = stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK
_FLAT_PLAIN = fmt.EROFS_INODE_FLAT_PLAIN
_COMPACT_SIZE, _EXTENDED_SIZE = fmt.EROFS_INODE_COMPACT_SIZE, fmt.EROFS_INODE_EXTENDED_SIZE
_COMPRESSED_LAYOUTS = frozenset({fmt.EROFS_INODE_COMPRESSED_FULL,
                                 fmt.EROFS_INODE_COMPRESSED_COMPACT})


@dataclass(eq=False, slots=True, init=False)
class TreeInode:
    """One inode: made by the source side (the walk, a tar, layers, an increment) with the
    stat fields an image needs, then planned in place by plan.plan_inodes, which gives it its
    on-disk attributes (one object an inode, not a source and a planned one: ~90 bytes an
    inode less).  Several names share it when hard-linked.

    Planning replaces mode (16 bits), uid/gid (after --force-uid, --uid-offset...), size (a
    directory's from its shape, a symlink's target's, 0 for other non-files) and mtime_ns
    (after -T, clamping, --ignore-mtime), and sets ftype (0 until planned); what reads the
    source's values after planning (--verify's TarSource) takes them before.

    `path` is the first path it was found under (for reads and messages); a file walked or
    read from a tar keeps only its name and the directory it was found in (`found_in`), whose
    entries hold that name already, and makes the path when asked (a whole path a file is
    ~140 bytes).

    Fields of one kind of inode share a slot with another kind's (8 bytes an inode each, for
    60,000 inodes 0.5 MiB): a non-directory's `found_in` is its `parent` slot, a directory's
    `dir_shape` and a compressed file's `inline_tail` its `target` slot, a device's `rdev`
    (before planning) its `i_u`, which planning turns into the on-disk device number; and the
    xattrs, once encoded, their `xattr_ibody` (set_xattr_ibody).  `inline` is in the `entries`
    slot (a directory's entries are gone once it is planned, before anything has inline
    bytes), and `extended` is what `meta_size_before_inline` holds besides the xattr ibody
    (an inode's size, 32 or 64, until the xattrs are planned).  With these two, 176 bytes an
    inode, not 192 (a pymalloc size class less).  The constructor takes them by their names
    (`dataclasses.replace` copies them too)."""
    where: bytes                              # its path, or with found_in its name there
    mode: int                                 # st_mode: file type and permissions
    uid: int
    gid: int
    size: int                                 # st_size: a regular file's bytes, a symlink's target's
    mtime_ns: int                             # may be negative: divmod by 10**9 gives (s, ns)
    nlink: int                                # links found inside the tree
    entries: "list[tuple[bytes, TreeInode]] | SortedEntries | bytes | None"
                                              # directories: (name, child); once planned,
                                              # any inode's `inline`
    parent: "TreeInode | None"                # directories: the parent directory; other
                                              # inodes: found_in (see `path`)
    target: "bytes | DirShape | None"         # symlinks; directories: dir_shape
    # (a tuple, shared, when the inode has none: a list an inode would be 56 bytes; nothing
    # changes an inode's xattrs in place, they are replaced); bytes: the xattr ibody they
    # became (set_xattr_ibody), which nothing reads as xattrs
    xattrs: list[tuple[bytes, bytes]] | tuple | bytes
    data: DataRef | LayerRef | FileRef | IndexedRef | OffsetRef | None  # regular files
                                              # not read from `path`
    # -- set by plan_inodes
    ftype: int                      # EROFS_FT_*; 0: not planned yet
    meta_size_before_inline: int    # inode + xattr ibody: where inline data starts (`extended`:
                                    # the inode's part is 64 bytes)
    # -- filled while laying out data and metadata
    datalayout: int
    i_u: int                        # as the inode's union: the device number of a device
                                    # file (before planning its st_rdev: `rdev`)
    flat: FlatData | None           # a flat layout's place, once reserved
    nid: int

    def __init__(self, where: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
                 rdev: int = 0, nlink: int = 0,
                 entries: list[tuple[bytes, "TreeInode"]] | None = None,
                 parent: "TreeInode | None" = None, target: bytes | None = None,
                 xattrs: list[tuple[bytes, bytes]] | tuple = (),
                 data: DataRef | LayerRef | FileRef | IndexedRef | OffsetRef | None = None,
                 found_in: "TreeInode | None" = None, ftype: int = 0,
                 extended: bool = False, meta_size_before_inline: int = _COMPACT_SIZE,
                 datalayout: int = _FLAT_PLAIN, i_u: int = 0,
                 inline: bytes = b"", inline_tail: int = 0, flat: FlatData | None = None,
                 nid: int = -1):
        # (the planned fields after the source's, as dataclasses.replace gives them by name;
        # not keyword-only, whose defaults cost a dict lookup each, every inode)
        # (in threes: what CPython assigns without making a tuple)
        self.where, self.mode, self.uid = where, mode, uid
        self.gid, self.size, self.mtime_ns = gid, size, mtime_ns
        self.nlink, self.entries, self.target = nlink, entries, target
        self.parent = parent if found_in is None else found_in
        self.xattrs, self.data, self.ftype = xattrs, data, ftype
        self.datalayout, self.nid, self.flat = datalayout, nid, flat
        self.meta_size_before_inline = meta_size_before_inline
        self.i_u = rdev or i_u
        # (the fields in others' slots, seldom given)
        if extended:
            self.extended = True
        if inline:
            self.entries = inline
        if inline_tail:
            self.target = inline_tail

    @property
    def path(self) -> bytes:
        found_in = self.parent
        if found_in is None or self.mode & 0o170000 == 0o040000:   # (S_IFMT, S_IFDIR)
            return self.where
        # (found_in is a directory whose path does not end with "/": never found_in one)
        return found_in.path + b"/" + self.where

    @property
    def found_in(self) -> "TreeInode | None":
        """A non-directory named `where` in this directory (`path`), if so."""
        return None if self.mode & _S_IFMT == _S_IFDIR else self.parent

    @property
    def rdev(self) -> int:
        """A device file's st_rdev (until planning encodes it), 0 for other inodes."""
        kind = self.mode & _S_IFMT
        return self.i_u if kind == _S_IFCHR or kind == _S_IFBLK else 0

    @property
    def dir_shape(self) -> DirShape | None:
        """A directory's entries as planned (plan.plan_inodes), until they are written."""
        return self.target

    @dir_shape.setter
    def dir_shape(self, shape: DirShape | None) -> None:
        self.target = shape

    @property
    def inline(self) -> bytes:
        """The bytes after inode + xattrs, when built in memory (a regular file's tail is read
        straight into the metadata image instead); b"" until then."""
        inline = self.entries
        return inline if type(inline) is bytes else b""

    @inline.setter
    def inline(self, inline: bytes) -> None:
        # (only once planned: a directory's entries are None then)
        self.entries = inline if inline else None

    @property
    def extended(self) -> bool:
        """An extended inode (64 bytes), not a compact one (32)."""
        body = self.xattrs
        size = self.meta_size_before_inline
        return (size - len(body) if type(body) is bytes else size) == _EXTENDED_SIZE

    @extended.setter
    def extended(self, extended: bool) -> None:
        self.meta_size_before_inline += (_EXTENDED_SIZE if extended else _COMPACT_SIZE) - \
            self.isize

    @property
    def inline_len(self) -> int:
        """Bytes reserved after inode + xattrs: a flat layout's tail (once reserved), or
        `inline` (indexes).  (Not a field of its own: with inline_tail's, 16 bytes an inode,
        a smaller pymalloc size class.)"""
        flat = self.flat
        if flat is not None:
            return flat.tail
        inline = self.entries           # (`inline`, without a second property's call)
        return len(inline) if type(inline) is bytes else 0

    @property
    def inline_tail(self) -> int:
        """Bytes at the end of `inline` that must stay within one block: an inline
        compressed pcluster (a regular file's: in the `target` slot)."""
        tail = self.target
        return tail if type(tail) is int else 0

    @inline_tail.setter
    def inline_tail(self, tail: int) -> None:
        self.target = tail if tail else None

    @classmethod
    def of_stat(cls, path: bytes, st: os.stat_result, **fields) -> "TreeInode":
        return cls(path, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                   st.st_rdev, **fields)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def isize(self) -> int:
        """The inode's own size: meta_size_before_inline without the xattr ibody."""
        body = self.xattrs
        size = self.meta_size_before_inline
        return size - len(body) if type(body) is bytes else size

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000

    @property
    def mtime_nsec(self) -> int:
        return self.mtime_ns % 1_000_000_000

    @property
    def compressed(self) -> bool:
        return self.datalayout in _COMPRESSED_LAYOUTS

    @property
    def chunk_based(self) -> bool:
        return self.datalayout == fmt.EROFS_INODE_CHUNK_BASED

    @property
    def xattr_ibody(self) -> bytes:
        """The inode's xattrs as its ibody holds them (b"": none), once planned."""
        body = self.xattrs
        return body if type(body) is bytes else b""

    def set_xattr_ibody(self, ibody: bytes) -> None:
        """Put the encoded xattrs in place of the xattrs (b"" if there are none)."""
        isize = self.isize
        self.xattrs = ibody if ibody else ()
        self.meta_size_before_inline = isize + len(ibody)

    def display_path(self) -> str:
        return os.fsdecode(self.path)


class NamedDirInode(TreeInode):
    """A tar's directory once its tree is whole (tarsource, for a build): `where` is only
    its name, its parent's path gives the rest (a whole path a directory is ~90 bytes)."""
    __slots__ = ()

    @property
    def path(self) -> bytes:
        parent = self.parent
        if parent.parent is parent:             # (the root's, whose path is ".")
            return self.where
        return parent.path + b"/" + self.where


_CHILD = itemgetter(1)
_DOTS = (b".", b"..")


class SortedEntries(DirShape):
    """A directory's entries as its shape takes them (a DirShape whose ends and size
    plan_inodes fills in): its names in byte order, b"." and b".." among them, and each
    name's inode, the directory and its parent for those two; a tar's directories
    (tarsource), 16 bytes an entry where a list of (name, child) tuples is 80, and no other
    object a directory once planned.  Read as that list is (the two dots left out); what
    merges trees, changing entries in place, gets such a list instead."""
    __slots__ = ()

    def __init__(self, names: tuple[bytes, ...], targets: tuple[TreeInode, ...]):
        DirShape.__init__(self, names, targets, (), 0)

    def __iter__(self):
        # (no entry of a tar is named "." or "..": they are resolved in its paths)
        return ((name, child) for name, child in zip(self.names, self.targets)
                if name not in _DOTS)

    def __len__(self) -> int:
        return len(self.names) - 2


def link_children(directory: TreeInode, entries: list[tuple[bytes, TreeInode]],
                  pending: deque) -> int:
    """Give `directory` of a tree built elsewhere than by walk_source (a tar, merged layers)
    its `entries`: each subdirectory its parent and 2 links (and a place in `pending`, to be
    done next), the directory a link per subdirectory, any other inode a link per name.
    Returns how many inodes were met for the first time."""
    directory.entries = entries
    return count_links(directory, map(_CHILD, entries), pending)


def count_links(directory: TreeInode, children, pending: deque) -> int:
    """link_children's work on the inodes named in `directory` (each once a name, in any
    order), its entries set apart."""
    new = 0
    for child in children:
        if child.entries is not None:
            child.parent = directory
            child.nlink = 2
            directory.nlink += 1
            pending.append(child)
            new += 1
        else:
            if not child.nlink:
                new += 1
            child.nlink += 1
    return new


def _oserror(path: bytes, err: OSError) -> BuildError:
    return BuildError(f"{os.fsdecode(path)}: {err.strerror or err}")


class Excluder:
    """--exclude-path (exact, relative to SOURCE) and --exclude-regex (searched in that path)."""

    def __init__(self, options: BuildOptions):
        self.exact = {os.fsencode(p) for p in options.exclude_paths}
        self.regexes = [re.compile(os.fsencode(posix_ere_to_python(r)), re.DOTALL)
                        for r in options.exclude_regexes]

    def __bool__(self) -> bool:
        return bool(self.exact or self.regexes)

    def excluded(self, relpath: bytes) -> bool:
        return relpath in self.exact or any(r.search(relpath) for r in self.regexes)


class XattrReader:
    """Reads each inode's xattrs (unless -x < 0) and applies --file-contexts labels."""

    def __init__(self, options: BuildOptions):
        self.enabled = options.xattr_tolerance >= 0
        self.mount_point = options.mount_point
        self.contexts: FileContexts | None = None
        if self.enabled and options.file_contexts is not None:
            from . import selinux           # (loaded only here: a few ms of every build)
            self._selinux = selinux
            try:
                self.contexts = selinux.FileContexts.load(options.file_contexts)
            except ValueError as err:
                raise BuildError(f"file contexts: {err}") from None
            except OSError as err:
                raise BuildError(f"{options.file_contexts}: {err.strerror or err}") from None

    def read(self, node: TreeInode, relpath: bytes, name: bytes | None = None,
             dir_fd: int | None = None, path: bytes | None = None) -> None:
        """Read the xattrs of `node`, found as `name` in the directory dir_fd if given, else
        at node.path (`path`, if the caller has it at hand: node.path may have to be made)."""
        if not self.enabled:
            return
        try:
            xattrs = read_xattrs(path or node.path) if dir_fd is None else \
                read_xattrs(name, dir_fd)
        except OSError as err:
            raise _oserror(node.path, err) from None
        if self.contexts is not None:
            xattrs = self.labelled(xattrs, relpath, node.mode)
        node.xattrs = xattrs or ()      # (shared: not an empty list a file, 56 bytes)

    def labelled(self, xattrs: list[tuple[bytes, bytes]], relpath: bytes, mode: int
                 ) -> list[tuple[bytes, bytes]]:
        """`xattrs` with the label --file-contexts gives `relpath` (self.contexts is set):
        mkfs.erofs drops the source's label and stores the looked-up one (or none)."""
        selinux = self._selinux
        label = self.contexts.lookup(selinux.fs_path(relpath, self.mount_point), mode)
        return selinux.with_label(xattrs, label)


_S_IFREG = stat.S_IFREG
_NO_XATTR_ERRNOS = (errno.ENOTSUP, errno.ENODATA)   # as util.read_xattrs: no xattrs

_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _list_directory(path: bytes) -> tuple[int | None, list[tuple[bytes, bytes]]]:
    """The entries of the directory at `path` as (name, where), sorted by name, and the
    descriptor `where` is relative to (the caller closes it).  None when the entries' paths are
    short enough for the kernel: `where` is then the whole path (scandir's cheapest form, few
    system calls a directory).  A longer path is opened in steps (util.open_parent) and its
    entries are looked up relative to it: `where` is the name."""
    try:
        if len(path) + 1 + NAME_MAX < PATH_MAX:
            with os.scandir(path) as it:
                listing = [(e.name, e.path) for e in it]
            fd = None
        else:
            listing = [(n, n) for n in listdir_path(path)]
            fd = open_path(path, _O_DIR)
    except OSError as err:
        raise _oserror(path, err) from None
    listing.sort()
    return fd, listing


def walk_source(source: bytes, options: BuildOptions,
                skip: set[tuple[int, int]] = frozenset(),
                on_file: Callable[[TreeInode, bytes, os.stat_result], None] | None = None,
                progress=None) -> tuple[TreeInode, int]:
    """Return the root inode and the number of distinct inodes below it.

    `skip` holds (st_dev, st_ino) pairs never to include: the image being written, when it lies
    inside the source.  The walk goes breadth first with each directory's names sorted, which
    is the order plan_inodes gives the inodes; `on_file(inode, relative path, lstat result)` is
    called for each regular file as it is found (once per inode), in that order, until it
    returns False.  `progress.entries` (a report.BuildProgress) follows the count, once per
    directory.  Paths may be of any length: where they get too long for the kernel, a
    directory's entries are looked at relative to it (see _list_directory), and what reads a
    file later opens it through util.open_path.
    """
    try:
        root_st = os.stat(source)
    except OSError as err:
        raise _oserror(source, err) from None
    if not stat.S_ISDIR(root_st.st_mode):
        raise BuildError(f"{os.fsdecode(source)}: source is not a directory")
    root = TreeInode.of_stat(source, root_st, nlink=2, entries=[])
    root.parent = root
    walk = _Walk(options, skip, on_file)
    walk.xattrs.read(root, b"")
    pending = deque([(root, b"")])
    # (with --exclude-*, the scout would list what the walk leaves out)
    scouting = on_file is None and walk.excluded is None
    scout = None
    listed = 0
    try:
        while pending:
            listed += 1
            if listed == _SCOUT_AFTER and scouting and can_fork():
                try:
                    scout = _Scout([(d.path, d_rel) for d, d_rel in pending],
                                   walk.xattrs.enabled and walk.xattrs.contexts is None)
                except OSError:         # (no process or pipe to be had: EAGAIN, EMFILE)
                    scout = None        # the walk lists every directory itself
            directory, rel = pending.popleft()
            scouted = scout.names(rel) if scout is not None else None
            if scouted is None:
                fd, listing = _list_directory(directory.path)
                with_xattrs = None
            else:
                names, with_xattrs = scouted
                prefix = os.path.join(directory.path, b"")
                fd, listing = None, [(name, prefix + name) for name in names]
            try:
                walk.add_entries(directory, rel, fd, listing, pending, with_xattrs)
            finally:
                if fd is not None:
                    os.close(fd)
            if progress is not None:
                progress.entries = walk.count
    finally:
        if scout is not None:
            scout.close()
    return root, walk.count


_MISSING = object()
_NONE: frozenset = frozenset()
# directories a record of the scout at most (a marshal.load each costs ~2 us), and names (the
# walk holds a record's listings till it gets to them: bounded for large directories)
_SCOUT_BATCH = 32
_SCOUT_NAMES = 4096
# directories the walk lists itself before it starts the scout, on what is left: a small
# tree is listed before a fork would pay (~2.5 ms a build of 50 files)
_SCOUT_AFTER = 32


class _Scout:
    """A forked process that lists SOURCE's directories ahead of the walk, in its order
    (breadth first, names sorted), and hands it each one's names through a pipe: listing a
    directory (opendir, getdents, closedir: ~12 us, a third of the system time of the
    bench increment's walk) is then done on the other core, while the walk looks at the
    entries of the directories before (lstat); and, when asked to (`xattrs`), which of
    its entries have xattrs (listxattr, ~2 us an entry: most have none, and the walk then
    reads the xattrs of the others only).  Only short paths (the walk lists
    a longer one itself, see _list_directory); a directory the scout could not list, or
    does not hand over (made meanwhile), the walk lists itself.  A pipe's worth of listings
    at most are ahead of the walk."""

    STASH_MAX = 4096        # listings read past the one wanted, before giving up on it

    def __init__(self, frontier: list[tuple[bytes, bytes]], xattrs: bool):
        take, put = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(take)
            os.close(put)
            raise
        if pid == 0:
            code = 1
            try:
                os.close(take)
                signal.signal(signal.SIGINT, signal.SIG_IGN)      # (the walk stops it)
                _scout(frontier, put, xattrs)
                code = 0
            finally:
                os._exit(code)
        os.close(put)
        self.pid = pid
        self.pipe = os.fdopen(take, "rb")
        self.stash: dict[bytes, tuple | None] = {}
        self.batch: list = []       # the records read and not taken yet, the next last

    def names(self, rel: bytes) -> tuple[list[bytes], set[bytes] | None] | None:
        """The sorted names in the directory `rel` (relative to SOURCE, b"" or ending in
        "/") and those of them with xattrs (None: not looked at), or None: the walk lists it
        itself."""
        if self.pipe is None:
            return None
        names = self.stash.pop(rel, _MISSING)
        if names is not _MISSING:
            return names
        batch = self.batch
        while True:
            if not batch:
                try:
                    batch = self.batch = marshal.load(self.pipe)
                except (EOFError, ValueError, TypeError, OSError):
                    self.close()            # (it is done, or failed)
                    return None
                batch.reverse()
            key, names, with_xattrs = batch.pop()
            found = None if names is None else \
                (names, set(with_xattrs) if with_xattrs else _NONE if with_xattrs is not None
                 else None)
            if key == rel:
                return found
            if len(self.stash) >= self.STASH_MAX:
                self.close()
                return None
            self.stash[key] = found

    def close(self) -> None:
        """Stop the scout (done or not) and reap it."""
        if self.pipe is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        self.pipe.close()
        self.pipe = None
        self.stash, self.batch = {}, []


def _scout(frontier: list[tuple[bytes, bytes]], put: int, xattrs: bool) -> None:
    """_Scout's process: (relative path, sorted names or None, the names with xattrs or
    None) of the directories of `frontier` ((path, relative path) each: the walk's queue)
    and every one below them, breadth first, written to `put` in lists (marshal records).  A name whose listxattr fails (but for no xattr support) counts as
    one with xattrs: the walk reads them, and says what fails."""
    with os.fdopen(put, "wb") as pipe:
        pending = deque(frontier)
        batch, held = [], 0
        while pending:
            path, rel = pending.popleft()
            names = with_xattrs = None
            if len(path) + 1 + NAME_MAX < PATH_MAX:
                try:
                    with os.scandir(path) as it:
                        found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
                except OSError:
                    found = None
                if found is not None:
                    names = [name for name, _is_dir in found]
                    prefix = os.path.join(path, b"")
                    pending.extend((prefix + name, rel + name + b"/")
                                   for name, is_dir in found if is_dir)
                    if xattrs:
                        with_xattrs = [name for name in names if _has_xattrs(prefix + name)]
            batch.append((rel, names, with_xattrs))
            held += len(names) if names is not None else 0
            if len(batch) == _SCOUT_BATCH or held >= _SCOUT_NAMES or not pending:
                marshal.dump(batch, pipe)
                batch, held = [], 0


def _has_xattrs(path: bytes) -> bool:
    try:
        return bool(os.listxattr(path, follow_symlinks=False))
    except OSError as err:
        return err.errno not in _NO_XATTR_ERRNOS


class _Walk:
    """What walk_source keeps from one directory to the next."""

    def __init__(self, options: BuildOptions, skip: set[tuple[int, int]], on_file):
        self.split_links = options.hard_dereference
        excluder = Excluder(options)
        self.excluded = excluder.excluded if excluder else None
        self.xattrs = XattrReader(options)
        self.skip = skip
        self.on_file = on_file
        # st_dev -> st_ino -> the inode of a file with more links: a table per device, so
        # that a file takes only its st_ino as key (not a (dev, ino) tuple and two ints, ~90
        # bytes a file: 4 MiB at the peak of the bench tree, whose 49,000 files are linked
        # from outside it too, all kept to the end of the walk)
        self.hardlinks: dict[int, dict[int, TreeInode]] = {}
        self.count = 1
        # A file's mode and mtime as its lstat gave them are ints of their own (~60 bytes a
        # file), which planning would replace by shared ones after the whole walk: their room
        # would stay in the heap, unused.  So the common file takes a shared mode now, and no
        # mtime of its own where the build gives every inode the build time (-T).
        self.modes: dict[int, int] = {}
        self.keep_mtime = options.effective_time_inherit is not TimeInherit.FIXED

    def add_entries(self, directory: TreeInode, rel: bytes, fd: int | None,
                    listing: list[tuple[bytes, bytes]], pending: deque,
                    with_xattrs: set[bytes] | None = None) -> None:
        """Add the entries of `directory` (from _list_directory) to the tree, subdirectories
        also to `pending`; `with_xattrs`, if given (the scout's), names the entries whose
        xattrs are to be read, the others have none.  (One loop, calling nothing per entry
        but what it must: this is the walk's cost per file.  The common entry, a regular
        file with one link and no xattrs, takes two system calls, one with `with_xattrs`,
        and no call into this module.)"""
        excluded, xattrs, skip = self.excluded, self.xattrs, self.skip
        hardlinks = None if self.split_links else self.hardlinks
        # where listxattr can be called here: a path the kernel takes, no label to look up
        quick_xattrs = fd is None and xattrs.enabled and xattrs.contexts is None
        on_file = self.on_file
        shared_mode, keep_mtime = self.modes.setdefault, self.keep_mtime
        prefix = os.path.join(directory.path, b"")
        # (SOURCE given with a "/" after it: its entries keep their whole paths, see `path`)
        found_in = None if directory.path.endswith(b"/") else directory
        entries = directory.entries
        append = entries.append
        lstat, listxattr = os.lstat, os.listxattr
        quick = 0                       # the inodes that took the quick way
        for name, where in listing:
            # (the path relative to SOURCE is made only where it is needed)
            if excluded is not None and excluded(rel + name):
                continue
            try:
                st = lstat(where, dir_fd=fd)
            except FileNotFoundError:
                continue                  # vanished between listing and stat: as if never there
            except OSError as err:
                raise _oserror(where if fd is None else prefix + name, err) from None
            if skip and (st.st_dev, st.st_ino) in skip:
                continue
            mode = st.st_mode
            if mode & _S_IFMT == _S_IFREG and st.st_nlink == 1 and quick_xattrs:
                child = TreeInode(name if found_in is not None else where,
                                    shared_mode(mode, mode), st.st_uid, st.st_gid, st.st_size,
                                    st.st_mtime_ns if keep_mtime else 0, st.st_rdev, 1, None,
                                    None, None, (), None, found_in)
                if with_xattrs is not None:
                    if name in with_xattrs:
                        xattrs.read(child, rel + name, path=where)
                else:
                    try:
                        if listxattr(where, follow_symlinks=False):
                            xattrs.read(child, rel + name, path=where)
                    except OSError as err:
                        if err.errno not in _NO_XATTR_ERRNOS:
                            raise _oserror(where, err) from None
                quick += 1
                append((name, child))
                if on_file is not None and on_file(child, rel + name, st) is False:
                    on_file = self.on_file = None       # it wants no more
                continue
            relpath = rel + name
            if stat.S_ISDIR(mode):
                path = where if fd is None else prefix + name
                child = TreeInode.of_stat(path, st, nlink=2, entries=[],
                                            parent=directory)
                if with_xattrs is None or name in with_xattrs:
                    xattrs.read(child, relpath, name, fd)
                directory.nlink += 1
                pending.append((child, relpath + b"/"))
                self.count += 1
                append((name, child))
                continue
            child = None
            kept = name if found_in is not None else where if fd is None else prefix + name
            if st.st_nlink > 1 and hardlinks is not None:
                on_dev = hardlinks.get(st.st_dev)
                if on_dev is None:
                    on_dev = hardlinks[st.st_dev] = {}
                ino = st.st_ino
                child = on_dev.get(ino)
                if child is None:
                    child = on_dev[ino] = TreeInode.of_stat(kept, st, found_in=found_in)
                    self._new_inode(child, name, relpath, fd, st, with_xattrs)
            else:
                child = TreeInode.of_stat(kept, st, found_in=found_in)
                self._new_inode(child, name, relpath, fd, st, with_xattrs)
            on_file = self.on_file
            child.nlink += 1
            append((name, child))
        self.count += quick

    def _new_inode(self, child: TreeInode, name: bytes, relpath: bytes, fd: int | None,
                   st: os.stat_result, with_xattrs: set[bytes] | None = None) -> None:
        """Read what a non-directory met for the first time needs besides its stat (its
        xattrs: if `with_xattrs` names it, when given)."""
        self.count += 1
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            try:
                child.target = os.readlink(name if fd is not None else child.path, dir_fd=fd)
            except OSError as err:
                raise _oserror(child.path, err) from None
        elif not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                  or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise BuildError(f"{os.fsdecode(child.path)}: unsupported file type")
        if with_xattrs is None or name in with_xattrs:
            self.xattrs.read(child, relpath, name, fd)
        if self.on_file is not None and stat.S_ISREG(mode):
            if self.on_file(child, relpath, st) is False:
                self.on_file = None         # it wants no more


def apply_walk_options(root: TreeInode, options: BuildOptions,
                       on_split: Callable[[TreeInode, TreeInode], None] | None = None
                       ) -> None:
    """Give a tree read from elsewhere than a directory (a tar stream) what walk_source does
    while walking: --exclude-path/--exclude-regex on the paths relative to the root (an
    excluded directory takes its subtree with it), -x < 0 (no xattrs), --file-contexts labels
    by path (an inode's first path, breadth first) and --hard-dereference (each name of a
    non-directory its own inode).  mkfs.erofs ignores all of these in tar mode.
    `on_split(copy, original)` hears of each inode --hard-dereference makes for a second name
    (rebuild mode finds a file's bytes by its node: the copy needs them too)."""
    excluder = Excluder(options)
    xattrs = XattrReader(options)
    split = options.hard_dereference
    if not (excluder or xattrs.contexts is not None or not xattrs.enabled or split):
        return
    seen: set[int] = set()

    def label(node: TreeInode, relpath: bytes) -> None:
        if not xattrs.enabled:
            node.xattrs = ()
        elif xattrs.contexts is not None:
            node.xattrs = xattrs.labelled(node.xattrs, relpath, node.mode)

    label(root, b"")
    pending = deque([(root, b"")])
    while pending:
        directory, rel = pending.popleft()
        kept = []
        for name, child in directory.entries:
            relpath = rel + name
            if excluder and excluder.excluded(relpath):
                _unlink_subtree(directory, child)
                continue
            if child.is_dir:
                pending.append((child, relpath + b"/"))
            elif id(child) in seen:
                if split:
                    child.nlink -= 1
                    original = child
                    child = replace(child, nlink=1, xattrs=list(child.xattrs))
                    if on_split is not None:
                        on_split(child, original)
                    label(child, relpath)
                kept.append((name, child))
                continue
            seen.add(id(child))
            label(child, relpath)
            kept.append((name, child))
        directory.entries = kept


def _unlink_subtree(directory: TreeInode, child: TreeInode) -> None:
    """Take the names of an excluded entry (and everything below it) out of the link counts."""
    if not child.is_dir:
        child.nlink -= 1
        return
    directory.nlink -= 1
    for _name, below in child.entries:
        _unlink_subtree(child, below)
