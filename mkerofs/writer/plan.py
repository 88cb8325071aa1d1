"""Plan inodes: their on-disk attributes, inode form, directory shapes and the order they go in."""
from __future__ import annotations

import os
import stat
from collections import deque
from operator import itemgetter
from dataclasses import dataclass

from ..ondisk import format as fmt
from .dirs import DirShape, shape_sorted
from ..errors import BuildError
from .options import BuildOptions, TimeInherit
from .walk import SourceInode

_FILE_TYPES = fmt.EROFS_FT_OF_MODE

_COMPRESSED_LAYOUTS = {fmt.EROFS_INODE_COMPRESSED_FULL, fmt.EROFS_INODE_COMPRESSED_COMPACT}


@dataclass(frozen=True, slots=True)
class FlatData:
    """How the content of a flat inode goes into the place reserved for it, copied later:
    the body to the blocks from the inode's i_u (its raw_blkaddr), the tail inline.
    Immutable and without the place itself, so that few of them serve every inode
    (DataArea.reserve_flat: one each would be 64 bytes a file)."""
    tail: int                       # bytes kept inline, after inode + xattrs
    rewritten: bool = False         # the blocks hold a compressed attempt: a copy writes holes
    written: bool = False           # the body is in the image already (walk.DataRef.in_image)


@dataclass(eq=False, slots=True)
class PlannedInode:
    src: SourceInode
    ftype: int
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int
    size: int
    extended: bool = False
    xattr_ibody: bytes = b""
    meta_size_before_inline: int = 0    # inode + xattr ibody: where inline data starts
    dir_shape: DirShape | None = None
    # filled while laying out data and metadata
    datalayout: int = fmt.EROFS_INODE_FLAT_PLAIN
    i_u: int = 0                    # as the inode's union: the device number of a device file
    inline_len: int = 0             # bytes reserved after inode + xattrs: a tail, or indexes
    inline: bytes = b""             # those bytes, when built in memory (a regular file's tail is
                                    # read straight into the metadata image instead)
    inline_tail: int = 0            # bytes at the end of `inline` that must stay within one
                                    # block: an inline compressed pcluster
    flat: FlatData | None = None    # a flat layout's place, once reserved
    nid: int = -1

    @property
    def isize(self) -> int:
        return fmt.EROFS_INODE_EXTENDED_SIZE if self.extended else fmt.EROFS_INODE_COMPACT_SIZE

    @property
    def compressed(self) -> bool:
        return self.datalayout in _COMPRESSED_LAYOUTS

    @property
    def chunk_based(self) -> bool:
        return self.datalayout == fmt.EROFS_INODE_CHUNK_BASED

    def set_xattr_ibody(self, ibody: bytes) -> None:
        self.xattr_ibody = ibody
        self.meta_size_before_inline = self.isize + len(ibody)

    def display_path(self) -> str:
        return os.fsdecode(self.src.path)


@dataclass(slots=True)
class WrittenInode:
    """An inode the image holds already (--incremental: the base's, kept as it is): directory
    entries name it by its nid; nothing else of it is planned or written."""
    nid: int
    ftype: int


@dataclass
class Plan:
    root: PlannedInode
    inodes: list[PlannedInode]            # in the order their metadata is laid out; an inode's
                                          # number is its place here, from 1
    epoch: int                            # superblock build time; compact inodes count from it
    data_order: list[PlannedInode] | None = None    # where flat data goes, if not in that order
    first_ino: int = 1                    # the first inode's number (--incremental: after the base's)


def _ids(src: SourceInode, options: BuildOptions) -> tuple[int, int]:
    uid = src.uid if options.force_uid is None else options.force_uid
    gid = src.gid if options.force_gid is None else options.force_gid
    uid, gid = uid + options.uid_offset, gid + options.gid_offset
    if uid >= 2**32 or gid >= 2**32:
        raise BuildError(f"{os.fsdecode(src.path)}: uid/gid overflow after --uid-offset/--gid-offset")
    return uid, gid


def _mtime(src: SourceInode, inherit: TimeInherit, build_time: int) -> tuple[int, int]:
    sec, nsec = divmod(src.mtime_ns, 1_000_000_000)
    if inherit is TimeInherit.FIXED or (inherit is TimeInherit.CLAMP and sec >= build_time):
        return build_time, 0
    return sec, nsec


def inode_form(size: int, uid: int, gid: int, nlink: int, mtime: int, nsec: int,
               options: BuildOptions, build_time: int) -> tuple[bool, int, int] | None:
    """(extended, mtime, mtime_nsec) of an inode; None: it needs an extended inode, which
    --force-inodeversion=compact forbids.  A compact inode has no mtime of its own on older
    kernels (it shows the build time), so a file with another mtime gets an extended inode,
    unless the options say to give it the build time."""
    if options.force_inode == "extended":
        return True, mtime, nsec
    if not fmt.fits_compact_inode(size, uid, gid, nlink):
        if options.force_inode == "compact":
            return None
        return True, mtime, nsec                # and it keeps its own mtime, as in mkfs.erofs
    if (mtime, nsec) == (build_time, 0):
        return False, mtime, nsec
    if options.ignore_mtime or options.force_inode == "compact":
        return False, build_time, 0             # build time, so it stays compact
    return True, mtime, nsec


def planned_isize(src: SourceInode, options: BuildOptions, build_time: int) -> int | None:
    """The inode size plan_inodes will give a regular file with one link, known while walking
    (None: it cannot be planned, plan_inodes will say why)."""
    try:
        uid, gid = _ids(src, options)
    except BuildError:
        return None
    mtime, nsec = _mtime(src, options.effective_time_inherit, build_time)
    form = inode_form(src.size, uid, gid, 1, mtime, nsec, options, build_time)
    if form is None:
        return None
    return fmt.EROFS_INODE_EXTENDED_SIZE if form[0] else fmt.EROFS_INODE_COMPACT_SIZE


_BY_NAME = itemgetter(0)
_S_IFMT = fmt.S_IFMT
_INTERNED_MAX = 4096
_COMPACT_MAX_SIZE = fmt.EROFS_COMPACT_INODE_MAX_SIZE
_COMPACT_MAX_ID = fmt.EROFS_COMPACT_INODE_MAX_ID
_COMPACT_MAX_NLINK = fmt.EROFS_COMPACT_INODE_MAX_NLINK


def plan_inodes(root: SourceInode, options: BuildOptions, build_time: int,
                written: bool = False) -> Plan:
    """Turn the source tree into planned inodes, breadth first so a directory's children sit
    together; with `written`, the tree's WrittenInodes are not planned: directory entries
    name those."""
    inherit = options.effective_time_inherit
    block_size = options.block_size
    # Only inodes met under more than one name (directories by their own name and "..",
    # hard links) are looked up again: a million-file tree must not cost a dict entry a file.
    planned: dict[int, PlannedInode] = {}
    order: list[PlannedInode] = []
    # One int object per distinct mode and mtime, shared: most files have a common one, and a
    # distinct large int costs 32 bytes (bounded, in case every mtime differs).
    interned: dict[int, int] = {}
    intern = interned.setdefault
    # (per-inode work: _ids only when the options change ids, one PlannedInode call)
    plain_ids = options.force_uid is None and options.force_gid is None and \
        not options.uid_offset and not options.gid_offset
    # A walked tree's stat fields are all in the planned inode now: nothing reads them from
    # the source again, so the int objects only the source holds go (~64 bytes an inode: its
    # own mode, its mtime).  A tar's or a layer's tree keeps them: --verify and --tar=i read them.
    drop_stats = options.tar is None and options.rebuild is None
    # (inode_form's and _mtime's answers inline for the usual options: a call each costs more
    # than the test, every inode)
    fixed_time = inherit is TimeInherit.FIXED
    clamp = inherit is TimeInherit.CLAMP
    quick_form = options.force_inode is None
    ignore_mtime = options.ignore_mtime
    file_types = _FILE_TYPES
    planned_inode = PlannedInode
    append = order.append
    s_ifreg, s_iflnk, s_ifmt = stat.S_IFREG, stat.S_IFLNK, _S_IFMT
    max_size, max_id, max_nlink = _COMPACT_MAX_SIZE, _COMPACT_MAX_ID, _COMPACT_MAX_NLINK

    def plan_one(src: SourceInode) -> PlannedInode:
        uid, gid = src.uid, src.gid
        if not plain_ids or uid >= 2**32 or gid >= 2**32:
            uid, gid = _ids(src, options)
        if fixed_time:
            mtime, nsec = build_time, 0
        else:
            mtime, nsec = divmod(src.mtime_ns, 1_000_000_000)
            if clamp and mtime >= build_time:
                mtime, nsec = build_time, 0
        mode = src.mode
        kind = mode & s_ifmt
        if kind == s_ifreg:
            size = src.size
        elif kind == s_iflnk:
            size = len(src.target)
        else:
            size = 0
        nlink = src.nlink
        if not quick_form:
            form = inode_form(size, uid, gid, nlink, mtime, nsec, options, build_time)
            if form is None:
                raise BuildError(f"{os.fsdecode(src.path)}: cannot be stored in a compact "
                                 "inode (size, uid, gid or nlink too large)")
            extended, mtime, nsec = form
        elif size <= max_size and uid <= max_id and gid <= max_id and nlink <= max_nlink:
            # (what inode_form says of a compact-sized inode)
            if mtime == build_time and not nsec:
                extended = False
            elif ignore_mtime:
                extended, mtime, nsec = False, build_time, 0
            else:
                extended = True
        else:
            extended = True                     # keeping its own mtime, as inode_form says
        if len(interned) >= _INTERNED_MAX:
            interned.clear()
        mode &= 0xFFFF
        node = planned_inode(src, file_types[kind], intern(mode, mode), uid, gid,
                             intern(mtime, mtime), nsec, nlink, size, extended)
        if kind == stat.S_IFCHR or kind == stat.S_IFBLK:
            node.i_u = fmt.new_encode_dev(os.major(src.rdev), os.minor(src.rdev))
        if nlink != 1 or src.entries is not None:
            planned[id(src)] = node
        if drop_stats:
            src.mode = node.mode        # (the same value: st_mode fits 16 bits)
            src.mtime_ns = 0
        if not src.xattrs:
            src.xattrs = ()             # (shared, not an empty list an inode)
        append(node)
        return node

    queue = deque([plan_one(root)])
    popleft, push = queue.popleft, queue.append
    planned_get = planned.get
    ft_dir = fmt.EROFS_FT_DIR
    while queue:
        directory = popleft()
        src = directory.src
        entries = sorted(src.entries, key=_BY_NAME)
        targets = []
        add = targets.append
        for _name, child in entries:
            if written and isinstance(child, WrittenInode):
                add(child)
                continue
            node = planned_get(id(child)) if child.nlink != 1 else None
            if node is None:
                node = plan_one(child)
                if node.ftype == ft_dir:
                    push(node)
            add(node)
        shape = directory.dir_shape = shape_sorted(
            list(map(_BY_NAME, entries)), targets, directory, planned[id(src.parent)],
            block_size)
        directory.size = shape.size
        if shape.size > fmt.EROFS_COMPACT_INODE_MAX_SIZE and not directory.extended:
            directory.extended = True
        src.entries = None          # the shape holds the children now; let the source tree go
    return Plan(root=order[0], inodes=order, epoch=build_time)
