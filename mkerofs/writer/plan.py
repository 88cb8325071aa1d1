"""Plan inodes: their on-disk attributes, inode form, directory shapes and the order they go in."""
from __future__ import annotations

import os
import stat
from collections import deque
from operator import itemgetter
from dataclasses import dataclass

from ..ondisk import format as fmt
from .dirs import block_ends, shape_sorted
from ..errors import BuildError
from .options import BuildOptions, TimeInherit
from .walk import SortedEntries, TreeInode

_FILE_TYPES = fmt.EROFS_FT_OF_MODE


@dataclass(slots=True)
class WrittenInode:
    """An inode the image holds already (--incremental: the base's, kept as it is): directory
    entries name it by its nid; nothing else of it is planned or written."""
    nid: int
    ftype: int


@dataclass
class Plan:
    root: TreeInode
    inodes: list[TreeInode]               # in the order their metadata is laid out; an inode's
                                          # number is its place here, from 1
    epoch: int                            # superblock build time; compact inodes count from it
    data_order: list[TreeInode] | None = None       # where flat data goes, if not in that order
    first_ino: int = 1                    # the first inode's number (--incremental: after the base's)


def _ids(src: TreeInode, options: BuildOptions) -> tuple[int, int]:
    uid = src.uid if options.force_uid is None else options.force_uid
    gid = src.gid if options.force_gid is None else options.force_gid
    uid, gid = uid + options.uid_offset, gid + options.gid_offset
    if uid >= 2**32 or gid >= 2**32:
        raise BuildError(f"{os.fsdecode(src.path)}: uid/gid overflow after --uid-offset/--gid-offset")
    return uid, gid


def _mtime(src: TreeInode, inherit: TimeInherit, build_time: int) -> tuple[int, int]:
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


def planned_isize(src: TreeInode, options: BuildOptions, build_time: int) -> int | None:
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


_BY_NAME, _CHILD = itemgetter(0), itemgetter(1)
_S_IFMT = fmt.S_IFMT
_INTERNED_MAX = 4096
_COMPACT_MAX_SIZE = fmt.EROFS_COMPACT_INODE_MAX_SIZE
_COMPACT_MAX_ID = fmt.EROFS_COMPACT_INODE_MAX_ID
_COMPACT_MAX_NLINK = fmt.EROFS_COMPACT_INODE_MAX_NLINK


def plan_inodes(root: TreeInode, options: BuildOptions, build_time: int,
                written: bool = False) -> Plan:
    """Plan the source tree's inodes in place, breadth first so a directory's children sit
    together; with `written`, the tree's WrittenInodes are not planned: directory entries
    name those."""
    inherit = options.effective_time_inherit
    block_size = options.block_size
    order: list[TreeInode] = []
    # One int object per distinct mode, shared: most files have a common one, and a distinct
    # large int costs 32 bytes (bounded, in case every mode differs).
    interned: dict[int, int] = {}
    intern = interned.setdefault
    # (per-inode work: _ids only when the options change ids)
    plain_ids = options.force_uid is None and options.force_gid is None and \
        not options.uid_offset and not options.gid_offset
    # A planned mtime is the source's or the build time: the one int of the latter is shared
    # (a walked file's own is 32 bytes)
    build_ns = build_time * 1_000_000_000
    # (inode_form's and _mtime's answers inline for the usual options: a call each costs more
    # than the test, every inode)
    fixed_time = inherit is TimeInherit.FIXED
    clamp = inherit is TimeInherit.CLAMP
    quick_form = options.force_inode is None
    ignore_mtime = options.ignore_mtime
    file_types = _FILE_TYPES
    append = order.append
    s_ifreg, s_iflnk, s_ifmt = stat.S_IFREG, stat.S_IFLNK, _S_IFMT
    max_size, max_id, max_nlink = _COMPACT_MAX_SIZE, _COMPACT_MAX_ID, _COMPACT_MAX_NLINK
    extended_size = fmt.EROFS_INODE_EXTENDED_SIZE

    def plan_one(node: TreeInode) -> None:
        uid, gid = node.uid, node.gid
        if not plain_ids or uid >= 2**32 or gid >= 2**32:
            uid, gid = node.uid, node.gid = _ids(node, options)
        if fixed_time:
            mtime, nsec = build_time, 0
        else:
            mtime, nsec = divmod(node.mtime_ns, 1_000_000_000)
            if clamp and mtime >= build_time:
                mtime, nsec = build_time, 0
        mode = node.mode
        kind = mode & s_ifmt
        # (the planned values are stored where they differ from the source's)
        if kind == s_ifreg:
            size = node.size
        elif kind == s_iflnk:
            size = node.size = len(node.target)
        else:
            size = node.size = 0                # (a directory's: its shape's, below)
        nlink = node.nlink
        if not quick_form:
            form = inode_form(size, uid, gid, nlink, mtime, nsec, options, build_time)
            if form is None:
                raise BuildError(f"{os.fsdecode(node.path)}: cannot be stored in a compact "
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
        node.ftype = file_types[kind]
        node.mode = intern(mode, mode)
        if mtime == build_time and not nsec:
            node.mtime_ns = build_ns
        if extended:
            # (its `extended`, written straight: no xattr ibody yet, the size is the inode's)
            node.meta_size_before_inline = extended_size
        if kind == stat.S_IFCHR or kind == stat.S_IFBLK:
            node.i_u = fmt.new_encode_dev(os.major(node.rdev), os.minor(node.rdev))
        if not node.xattrs:
            node.xattrs = ()            # (shared, not an empty list an inode)
        append(node)

    plan_one(root)
    queue = deque(order)
    popleft, push = queue.popleft, queue.append
    ft_dir = fmt.EROFS_FT_DIR
    while queue:
        directory = popleft()
        entries = directory.entries
        if type(entries) is SortedEntries:
            names, targets = entries.names, entries.targets
        else:
            entries = sorted(entries, key=_BY_NAME)
            names, targets = list(map(_BY_NAME, entries)), list(map(_CHILD, entries))
        for child in targets:
            if written and isinstance(child, WrittenInode):
                continue
            # (an inode met again, under another name: ftype is set once it is planned;
            # the directory and its parent, a SortedEntries' dots, are planned already)
            if child.nlink == 1 or not child.ftype:
                plan_one(child)
                if child.ftype == ft_dir:
                    push(child)
        if type(entries) is SortedEntries:      # (the shape itself, but for its blocks)
            shape = entries
            shape.ends, shape.size = block_ends(names, block_size)
        else:
            shape = shape_sorted(names, targets, directory, directory.parent, block_size)
        directory.dir_shape = shape
        directory.size = shape.size
        if shape.size > fmt.EROFS_COMPACT_INODE_MAX_SIZE:
            directory.meta_size_before_inline = extended_size      # (`extended`, as above)
        directory.entries = None    # the shape holds the children now
    return Plan(root=order[0], inodes=order, epoch=build_time)
