"""Plan inodes: their on-disk attributes, inode form, directory shapes and the order they go in."""
from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field

from ..ondisk import format as fmt
from .dirs import DirShape, shape_directory
from ..errors import BuildError
from .options import BuildOptions, TimeInherit
from .walk import SourceInode, SourceStat

_FILE_TYPES = fmt.EROFS_FT_OF_MODE

_COMPRESSED_LAYOUTS = {fmt.EROFS_INODE_COMPRESSED_FULL, fmt.EROFS_INODE_COMPRESSED_COMPACT}


@dataclass(slots=True)
class FlatData:
    """Where the content of a flat inode goes: reserved in the data area, copied later."""
    start: int                      # first block of the body
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
    rdev: int = 0
    xattr_ibody: bytes = b""
    meta_size_before_inline: int = 0    # inode + xattr ibody: where inline data starts
    dir_shape: DirShape | None = None
    ino: int = 0
    # filled while laying out data and metadata
    datalayout: int = fmt.EROFS_INODE_FLAT_PLAIN
    i_u: int = 0
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


@dataclass
class Plan:
    root: PlannedInode
    inodes: list[PlannedInode]            # in the order their metadata is laid out
    epoch: int                            # superblock build time; compact inodes count from it
    data_order: list[PlannedInode] | None = None    # where flat data goes, if not in that order
    by_source: dict[int, PlannedInode] = field(default_factory=dict)


def _ids(st: SourceStat, options: BuildOptions, path: bytes) -> tuple[int, int]:
    uid = st.st_uid if options.force_uid is None else options.force_uid
    gid = st.st_gid if options.force_gid is None else options.force_gid
    uid, gid = uid + options.uid_offset, gid + options.gid_offset
    if uid >= 2**32 or gid >= 2**32:
        raise BuildError(f"{os.fsdecode(path)}: uid/gid overflow after --uid-offset/--gid-offset")
    return uid, gid


def _mtime(st: SourceStat, inherit: TimeInherit, build_time: int) -> tuple[int, int]:
    sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
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


def planned_isize(st: SourceStat, options: BuildOptions, build_time: int) -> int | None:
    """The inode size plan_inodes will give a regular file with one link, known while walking
    (None: it cannot be planned, plan_inodes will say why)."""
    try:
        uid, gid = _ids(st, options, b"")
    except BuildError:
        return None
    mtime, nsec = _mtime(st, options.effective_time_inherit, build_time)
    form = inode_form(st.st_size, uid, gid, 1, mtime, nsec, options, build_time)
    if form is None:
        return None
    return fmt.EROFS_INODE_EXTENDED_SIZE if form[0] else fmt.EROFS_INODE_COMPACT_SIZE


def plan_inodes(root: SourceInode, options: BuildOptions, build_time: int) -> Plan:
    """Turn the source tree into planned inodes, breadth first so a directory's children sit together."""
    inherit = options.effective_time_inherit
    block_size = options.block_size
    planned: dict[int, PlannedInode] = {}
    order: list[PlannedInode] = []

    def plan_one(src: SourceInode) -> PlannedInode:
        st = src.st
        uid, gid = _ids(st, options, src.path)
        mtime, nsec = _mtime(st, inherit, build_time)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG:
            size = st.st_size
        elif kind == stat.S_IFLNK:
            size = len(src.target)
        else:
            size = 0
        node = PlannedInode(src=src, ftype=_FILE_TYPES[kind], mode=st.st_mode & 0xFFFF, uid=uid,
                            gid=gid, mtime=mtime, mtime_nsec=nsec, nlink=src.nlink, size=size)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = fmt.new_encode_dev(os.major(st.st_rdev), os.minor(st.st_rdev))
        form = inode_form(size, uid, gid, src.nlink, mtime, nsec, options, build_time)
        if form is None:
            raise BuildError(f"{node.display_path()}: cannot be stored in a compact inode "
                             "(size, uid, gid or nlink too large)")
        node.extended, node.mtime, node.mtime_nsec = form
        node.ino = len(order) + 1
        planned[id(src)] = node
        order.append(node)
        return node

    queue = deque([plan_one(root)])
    while queue:
        directory = queue.popleft()
        src = directory.src
        children = []
        for name, child in sorted(src.entries, key=lambda e: e[0]):
            node = planned.get(id(child))
            if node is None:
                node = plan_one(child)
                if child.is_dir:
                    queue.append(node)
            children.append((name, node))
        parent = planned[id(src.parent)]
        directory.dir_shape = shape_directory(
            [(b".", directory), (b"..", parent)] + children, block_size)
        directory.size = directory.dir_shape.size
        if directory.size > fmt.EROFS_COMPACT_INODE_MAX_SIZE and not directory.extended:
            directory.extended = True
        src.entries = None          # the shape holds the children now; let the source tree go
    return Plan(root=order[0], inodes=order, epoch=build_time, by_source=planned)
