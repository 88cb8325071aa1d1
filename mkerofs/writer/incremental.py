"""--incremental: a directory or a tar put on top of an existing EROFS image, appended to it.

IMAGE (the base) is the overlayfs lower layer, SOURCE the upper one; the result is their merge
(writer/layers.py: whiteouts, opaque directories; with --ovlfs-strip applied, otherwise kept as
overlay metadata).  The base's bytes are kept and the new part appended, so an increment costs
time in proportion to what it adds, not to the base:

* Only the base directories the increment reaches are read: those at a path where SOURCE has
  a directory that does not hide what is below it (and the path to them).  They are merged
  as they are read (layers.merge_onto): an entry SOURCE hides is not looked at; of the
  others, the merge has the nid and type the dirent gives, and an entry's inode is read
  only where the rules look at it (a character device, or a regular file in an opaque "x"
  directory: either may be a whiteout; a subdirectory: to patch its "..").  Everything else
  in the base is left as it is, unread: so with --ovlfs-strip, whiteouts (and overlay
  marks) of the base in directories the increment does not reach stay, as with mkfs.erofs
  1.9.3 (a base built with --ovlfs-strip has none).
* Base inodes that the merge keeps keep their nid and are not rewritten: every
  non-directory, and every directory the increment does not reach (nothing under it
  changes); planning knows them by nid and type only (plan.WrittenInode).  Every directory
  the increment reaches is written anew (SOURCE's, the base's entries merged in), and so
  are its ancestors up to the root (their entries name a new nid), each with its link count
  from its subdirectories in the merge.
* A kept directory's parent is thus always new: its ".." entry is rewritten in place.  Its
  data must be plain blocks or an inline tail; a directory with another layout is read
  whole and rewritten (with the base's attributes), down to the subdirectories that can be
  patched.
* New data goes from block ceil(file size / block size) on, new metadata after it; nids still
  count from the base's meta_blkaddr, inode numbers from the base's inode count; the base's
  epoch stays (a compact inode's mtime is relative to it: a new file with another mtime gets
  an extended inode).  New inodes keep all their xattrs inline (no new shared xattrs, no long
  prefixes): valid whatever the base has.
* The superblock's root nid has 16 bits: the new root directory is FLAT_PLAIN (its entries
  in data blocks), and if its nid does not fit it goes over the old root's slot (old inode,
  xattrs and inline tail, all dead then) or the build fails.
* Compressed files may only use algorithms the base announces, with the same configuration
  records (lz4: no larger distance or pclusters); an uncompressed base may get the records
  right after its superblock when there is room before the first byte it uses.  Fragments
  need a base without a packed inode.
* How IMAGE is written.  IMAGE is opened for writing and locked (flock, exclusive: a second
  increment is refused while one runs).  Where the filesystem has reflinks (FICLONE: btrfs,
  XFS) the build goes to a clone beside IMAGE, which replaces it (rename) once complete and
  synced: IMAGE is never written, any failure removes the clone.  Elsewhere the increment is
  appended to IMAGE itself, which must not be mounted (refused when /proc/self/mountinfo
  shows it mounted as EROFS, through a loop device or directly):
  1. everything new (data, inodes, directories) goes after IMAGE's last byte (size S);
  2. the file is extended to the new image's size;
  3. then the few writes over the base's bytes: the '..' entries of kept directories, the
     new root over the old root's slot, compression records after the superblock, and the
     superblock last, held back (InPlaceOutput.pending) until the build is complete;
     the bytes of each region are saved first.
  Any error or interruption (a bad tar, Ctrl-C, no space, an I/O error) before the end of
  step 3 writes the saved bytes back, cuts IMAGE to S and syncs: IMAGE is byte-identical to
  what it was.  Only a kill -9 during step 3 (a few small writes) can leave it
  inconsistent; before it, the old superblock still describes the old image, and the bytes
  past S are ignored (a later increment starts at ceil(file size / block size), as
  mkfs.erofs does).  A block device is refused.  A build that succeeds syncs nothing
  (neither does a full build, nor mkfs.erofs): after a system crash IMAGE is whatever the
  kernel had written back.  A sync after step 2 would wait for every unwritten page of
  IMAGE, a base just copied included (0.2-0.4 s of the bench's increment).
* --verify runs before step 3 (or before the clone replaces IMAGE): it reads the image as
  it will be, the held-back writes applied in a private mapping of IMAGE (copy on write:
  IMAGE is not written), and compares it with the base as it is and the source merged
  (expected_tree); a difference fails the build, which rolls back as any failure does.

Where mkfs.erofs 1.9.3 differs: a failed build leaves IMAGE grown (even to 2
TiB); it ignores a directory source's trusted.overlay.opaque; it honours rvsp only
for tar sources; over an uncompressed base, -zlzma gives an unmountable image (no records);
a compressed base without -z crashes; it loses a multi-device base's device table offset.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import stat
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from ..errors import BuildError, ImageError
from ..ondisk import format as fmt
from ..reader.image import INODE_FIELDS, Image, Inode
from ..util import PageBudget, pwrite_all
from .layers import (OPAQUE, OPAQUE_XWHITEOUTS, OPAQUE_YES, LayerTree, image_node, merge_onto,
                     read_image_tree)
from .options import BuildOptions
from .output import Output
from .plan import Plan, WrittenInode
from .walk import DataRef, TreeInode

if TYPE_CHECKING:       # (loaded with --verify only: expected_tree)
    from .verify import TarSource

_FICLONE = 0x40049409           # ioctl(dst, FICLONE, src): share the source's extents
_KEPT_DIR_LAYOUTS = {fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_INODE_FLAT_INLINE}
_ALL_INLINE = 1 << 30           # an -x tolerance no xattr reaches: none is shared
_ROOT_NID_MAX = 0xFFFF
# a base directory as _BaseFold hands it to the merge: its nid and its path + "/"
_Low = tuple[int, bytes]
_ICOUNT = INODE_FIELDS.index("xattr_icount")
_DATALAYOUT = INODE_FIELDS.index("datalayout")
# the base entries the merge keeps unread, outside an opaque "x" directory (_BaseFold._node)
_UNREAD_TYPES = frozenset(fmt.EROFS_FT_OF_MODE.values()) - {fmt.EROFS_FT_DIR,
                                                             fmt.EROFS_FT_CHRDEV}
# Directories read between two releases of the base's mapped pages: reading the inodes of
# every subdirectory reached (and the ".." entries of those kept) maps much of the base's
# metadata (a fault maps up to 16 pages around it, whatever madvise says), and little of it
# is read again.  (Every 256: the peak of the bench row's increment was 8 MB higher.)
_DROP_EVERY = 32


class Base:
    """The image an increment goes on top of (read, never written)."""

    def __init__(self, path: str):
        self.path = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise BuildError(f"{path}: does not exist: --incremental adds to an existing EROFS "
                             "image") from None
        except OSError as err:
            raise BuildError(f"{path}: {err.strerror or err}") from None
        if stat.S_ISBLK(st.st_mode):
            raise BuildError(f"{path}: --incremental on a block device is not supported")
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{path}: not a regular file")
        self.fd = _lock(path)
        st = os.fstat(self.fd)
        self.file_size = st.st_size
        self.mode = stat.S_IMODE(st.st_mode)
        try:
            self.img = Image.open(path)
        except ImageError as err:
            os.close(self.fd)
            raise BuildError(f"{path}: not an EROFS image ({err})") from None
        img = self.img
        sb = img.superblock
        if sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_48BIT:
            self.close()
            raise BuildError(f"{path}: a 48-bit image: --incremental is not supported on it")
        self.superblock = sb
        self.block_size = img.block_size
        self.raw_superblock = _read_at(path, fmt.EROFS_SUPER_OFFSET, fmt.EROFS_SB_SIZE)
        self.meta_base = sb.meta_blkaddr * self.block_size
        self.end_block = -(-max(self.file_size, sb.blocks * self.block_size) // self.block_size)
        self._tree: LayerTree | None = None

    @property
    def tree(self) -> LayerTree:
        if self._tree is None:
            self._tree = read_image_tree(self.img, self.path)
        return self._tree

    def amend(self, options: BuildOptions) -> BuildOptions:
        """The options as an increment of this base takes them."""
        if options.block_size != self.block_size and not options.quiet:
            print(f"mkerofs: --incremental: blocks of {self.block_size} bytes, as the base has "
                  f"(-b {options.block_size} ignored)", file=sys.stderr)
        changes: dict = {"block_size": self.block_size, "root_xattr_isize": 0}
        if options.xattr_tolerance >= 0:
            changes["xattr_tolerance"] = _ALL_INLINE
        inc = options.incremental
        if options.tar is not None:
            # (the tar is read with its whiteouts; the merge applies them with --ovlfs-strip)
            changes["incremental"] = replace(inc, ovlfs_strip=inc.ovlfs_strip
                                             or options.tar.ovlfs_strip)
            changes["tar"] = replace(options.tar, ovlfs_strip=False, sort="path")
        if inc.mode == "rvsp" and options.compressor:
            if not options.quiet:
                print("mkerofs: --incremental=rvsp: the new files get room, not data: -z "
                      "is ignored", file=sys.stderr)
            changes["compressor"] = None
        if (options.fragments or options.all_fragments) and self.superblock.packed_nid:
            raise BuildError(f"{self.path}: the base has a packed inode: -Efragments cannot add "
                             "fragments to it")
        return replace(options, **changes)

    def output(self) -> Output:
        """A reflink to append to where the filesystem has them, else IMAGE itself."""
        cloned = ClonedOutput(self)
        if cloned.cloned:
            return cloned
        cloned.abort()
        return InPlaceOutput(self)

    def close(self) -> None:
        self.img.close()
        os.close(self.fd)

    # -- compression -----------------------------------------------------------------------

    def compression(self, incompat: int, u1: int, cfgs: bytes) -> tuple[int, int, bytes]:
        """(incompat bits, u1, records to write after the superblock) for new files compressed
        with the superblock fields `incompat`, `u1`, `cfgs` of their configuration."""
        sb = self.superblock
        zero_padding = fmt.EROFS_FEATURE_INCOMPAT_LZ4_0PADDING
        base_cfgs = bool(sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_COMPR_CFGS)
        base_algs = set(self.img.algorithms())
        new = _records(u1, cfgs) if cfgs else {"lz4": None}
        if not base_algs:
            if cfgs and not self.room_for(len(cfgs)):
                raise BuildError(f"{self.path}: no room after the superblock for the "
                                 "compression configurations of -z (the base is uncompressed "
                                 "and uses the bytes right after its superblock)")
            return incompat, u1, cfgs
        if not base_cfgs:
            if cfgs:
                raise BuildError(f"{self.path}: the base has lz4 without configuration "
                                 "records: new files can only use lz4 with pclusters of one "
                                 f"block (-z lz4 or lz4hc, no -C), not {', '.join(new)}")
            if not sb.feature_incompat & zero_padding:
                raise BuildError(f"{self.path}: the base's lz4 data has no zero padding "
                                 "(an old format): new compressed files cannot be added")
            return incompat, max(sb.u1, u1), b""
        have = self.img.compression_configs()
        for name, record in new.items():
            if name not in base_algs:
                raise BuildError(f"{self.path}: -z {name}: the base does not announce that "
                                 f"algorithm (it has {', '.join(sorted(base_algs))})")
            if record is not None and not _record_fits(name, record, have[name]):
                raise BuildError(f"{self.path}: -z {name}: its configuration differs from the "
                                 "base's (another dictionary, window or pcluster size)")
        return incompat, sb.u1, b""

    def room_for(self, nbytes: int) -> bool:
        """Whether `nbytes` of records fit between the superblock's extension and the first
        byte the base uses."""
        return self.room_start() + nbytes <= self._first_used()

    def room_start(self) -> int:
        sb = self.superblock
        return fmt.round_up(fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE
                            + sb.sb_extslots * fmt.EROFS_SB_EXTSLOT_SIZE, 4)

    def _first_used(self) -> int:
        sb = self.superblock
        used = [self.block_size if self.block_size > fmt.EROFS_SUPER_OFFSET else
                fmt.EROFS_SUPER_OFFSET + self.block_size]
        nids = list(self.tree.nids.values())
        if sb.packed_nid:
            nids.append(sb.packed_nid)
        used.append(self.meta_base + (min(nids) << fmt.EROFS_ISLOTBITS))
        if sb.xattr_blkaddr:
            used.append(sb.xattr_blkaddr * self.block_size)
        if sb.xattr_prefix_count:
            used.append(sb.xattr_prefix_start * 4)
        if sb.extra_devices:
            used.append(sb.devt_slotoff * fmt.EROFS_DEVT_SLOT_SIZE)
        return min(used)

    def root_room(self) -> int:
        """Bytes of the old root's slot: inode, xattrs and inline tail."""
        root = self.img.root
        room = root.isize + root.xattr_isize
        if root.datalayout == fmt.EROFS_INODE_FLAT_INLINE and root.size:
            bs = self.block_size
            room += root.size - (-(-root.size // bs) - 1) * bs
        return room


def _read_at(path: str, pos: int, n: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), n, pos)


def _records(algs: int, cfgs: bytes) -> dict[str, bytes]:
    """The configuration records of `cfgs` by algorithm name (one per bit of `algs`)."""
    out = {}
    pos = 0
    length = fmt.EROFS_METADATA_RECORD_LEN
    for alg, name in enumerate(fmt.Z_EROFS_COMPRESSION_NAMES):
        if algs >> alg & 1:
            pos = fmt.round_up(pos, 4)
            n = length.unpack_from(cfgs, pos)[0]
            out[name] = cfgs[pos + length.size:pos + length.size + n]
            pos += length.size + n
    return out


def _record_fits(name: str, new: bytes, base: bytes) -> bool:
    """Whether data compressed with configuration `new` decodes with the base's `base`."""
    if name == "lz4":
        distance, blocks = fmt.Z_EROFS_LZ4_CFGS.unpack_from(new)
        base_distance, base_blocks = fmt.Z_EROFS_LZ4_CFGS.unpack_from(base)
        return distance <= base_distance and blocks <= base_blocks
    return new == base


class ClonedOutput(Output):
    """A reflink of the base beside it (it shares the base's extents: nothing is copied),
    appended to, then renamed over IMAGE once complete and synced; abort() removes it.  IMAGE
    itself is never written."""

    def __init__(self, base: Base):
        self.base = base
        self.cloned = False
        super().__init__(base.path, 0)

    def _open(self) -> None:
        super()._open()
        try:
            fcntl.ioctl(self.fd, _FICLONE, self.base.fd)
            self.cloned = True
        except OSError:
            pass                # not a reflink filesystem: the caller appends in place
        except BaseException:
            self.abort()
            raise

    def seal(self, image_size: int) -> None:
        """What comes next is written over the base's bytes (here: over its clone's)."""
        try:
            os.ftruncate(self.fd, max(image_size, self.base.file_size))
        except OSError as err:
            raise BuildError(f"{self.path}: {err.strerror or err}") from None

    def view(self) -> mmap.mmap:
        """The clone as it is (for --verify, before it replaces IMAGE)."""
        return _private_view(self.fd, [])

    def finish(self, image_size: int) -> None:
        try:
            os.fchmod(self.fd, self.base.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp_path, self.path)
            self.tmp_path = None
        except OSError as err:
            raise BuildError(f"{self.path}: {err.strerror or err}") from None


class InPlaceOutput(Output):
    """IMAGE itself, appended to (module docstring): everything new goes after its last byte,
    then seal().  What is written over the base's own bytes after it is held back
    (`pending`: --verify reads the image through view() with it applied, IMAGE still
    untouched) until finish() writes it, each region saved first; abort() writes the saved
    bytes back, cuts IMAGE to its old size and syncs."""

    def __init__(self, base: Base):
        self.base = base
        self.start = base.file_size
        self.pending: list[tuple[int, bytes]] = []
        self.saved: list[tuple[int, bytes]] = []
        self.sealed = False
        super().__init__(base.path, 0)

    def _open(self) -> None:
        where = _mount_point(self.base.fd)
        if where is not None:
            raise BuildError(f"{self.path}: is mounted (on {os.fsdecode(where)}): an increment "
                             "cannot be appended to a mounted image (unmount it first)")
        self.fd = os.dup(self.base.fd)

    def seal(self, image_size: int) -> None:
        try:
            os.ftruncate(self.fd, max(image_size, self.start))
        except OSError as err:
            raise BuildError(f"{self.path}: {err.strerror or err}") from None
        self.sealed = True

    def pwrite(self, data, pos: int) -> None:
        if pos < self.start:
            if not self.sealed:
                raise AssertionError(f"the base's bytes at {pos} written before the "
                                     "increment was complete")
            self.pending.append((pos, bytes(data)))
            return
        super().pwrite(data, pos)

    def pread(self, n: int, pos: int) -> bytes:
        return _patched(super().pread(n, pos), pos, self.pending)

    def view(self) -> mmap.mmap:
        return _private_view(self.fd, self.pending)

    def finish(self, image_size: int) -> None:
        try:
            for pos, data in self.pending:
                size = min(len(data), self.start - pos)
                self.saved.append((pos, os.pread(self.fd, size, pos)))
                super().pwrite(data, pos)
        except OSError as err:
            raise BuildError(f"{self.path}: {err.strerror or err}") from None
        os.close(self.fd)
        self.fd = -1
        self.pending = self.saved = []

    def abort(self) -> None:
        if self.fd < 0:
            return
        try:
            for pos, original in reversed(self.saved):
                pwrite_all(self.fd, original, pos)
            os.ftruncate(self.fd, self.start)
            os.fsync(self.fd)
        except OSError as err:
            print(f"mkerofs: {self.path}: could not be put back as it was ({err.strerror or err})"
                  ": it may be damaged", file=sys.stderr)
        os.close(self.fd)
        self.fd = -1


def _patched(data: bytes, pos: int, writes: list[tuple[int, bytes]]) -> bytes:
    """`data` (the bytes at `pos`) with the `writes` over it applied, in order."""
    out = bytearray(data)
    for at, chunk in writes:
        lo, hi = max(at, pos), min(at + len(chunk), pos + len(out))
        if lo < hi:
            out[lo - pos:hi - pos] = chunk[lo - at:hi - at]
    return bytes(out)


def _private_view(fd: int, writes: list[tuple[int, bytes]]) -> mmap.mmap:
    """The file open as `fd` with `writes` applied in a private mapping (copy on write: the
    file is not changed, only the pages written are copied)."""
    view = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_PRIVATE,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
    for pos, data in writes:
        view[pos:pos + len(data)] = data
    return view


def _lock(path: str) -> int:
    """IMAGE opened for writing, with an exclusive lock (two increments would interleave)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise BuildError(f"{path}: {err.strerror or err} (an increment is written into the "
                         "image)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st, now = os.fstat(fd), os.stat(path)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise BuildError(f"{path}: another build is adding to it") from None
        raise BuildError(f"{path}: {err.strerror or err}") from None
    if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
        os.close(fd)
        raise BuildError(f"{path}: replaced while being opened (another build?)")
    return fd


def _mount_point(fd: int) -> bytes | None:
    """Where the file open as `fd` is mounted as EROFS (through a loop device, or directly
    by a kernel that mounts files), if it is."""
    st = os.fstat(fd)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(b" ")
        if b"-" not in fields:
            continue
        tail = fields[fields.index(b"-") + 1:]
        if len(tail) < 2 or tail[0] != b"erofs":
            continue
        backing = _unescape(tail[1])
        if backing.startswith(b"/dev/loop"):
            name = os.path.basename(backing).decode("ascii", "replace")
            try:
                with open(f"/sys/block/{name}/loop/backing_file", "rb") as f:
                    backing = f.read().rstrip(b"\n")
            except OSError:
                continue
        try:
            other = os.stat(backing)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return _unescape(fields[4])
    return None


def _unescape(field: bytes) -> bytes:
    """A mountinfo field (space, tab, newline and backslash are written as \\ooo)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


# -- the merge -------------------------------------------------------------------------------

@dataclass
class Increment:
    """The merged tree.  Each base inode it keeps as it is is a WrittenInode in it (KeptFile,
    KeptDir), which the plan names by nid."""
    base: Base
    root: TreeInode
    reparented: list[KeptDir]       # kept directories whose parent is rewritten


def merge_increment(base: Base, upper: TreeInode, strip: bool) -> Increment:
    """Put `upper` (the increment's tree) on top of the base's (overlayfs rules, layers.py),
    reading only the base directories the increment reaches (_BaseFold)."""
    fold = _BaseFold(base.img)
    try:
        root, _count = merge_onto(upper, fold, strip)
    except ImageError as err:
        raise BuildError(f"{base.path}: {err}") from None
    base.img.drop_pages()
    base.img.forget_listings()
    return Increment(base, root, fold.reparented)


class _BaseFold:
    """The base merged below the increment's tree as it is read (merge_onto), only where the
    increment reaches (module docstring).  What the merge takes of it and keeps are
    KeptFile and KeptDir: the nid and type of the entry, and what the merge looks at."""

    def __init__(self, img: Image):
        self.img = img
        self.reparented: list[KeptDir] = []
        self.unread: list[tuple[TreeInode, _Low]] = []      # rewritten, to read
        self.dirs: set[int] = set()             # the directory nids met
        self._budget = PageBudget(_DROP_EVERY, img.drop_pages)    # per directory listed
        self._last: tuple[int, tuple] = (-1, ())    # the nid and inode_fields last read

    # -- what layers.add_below asks of a lower layer (a directory: _Low, its nid and its path
    # + "/"; its inode is read when the merge looks into it, as Image.inode_fields: no Inode
    # made, and none held while it waits its turn)

    def top(self) -> _Low:
        nid = self.img.root_nid
        self._claim(nid, b"/")
        return nid, b"/"

    def opaque(self, low: _Low) -> bytes | None:
        nid = low[0]
        fields = self._fields(nid)
        if not fields[_ICOUNT]:
            return None
        return dict(self.img.xattrs(Inode(nid, *fields))).get(OPAQUE)

    def entries(self, low: _Low) -> list[tuple[bytes, int, int]]:
        self._budget.spend()
        nid, path = low
        try:
            listing = self.img.listdir_fields(nid, self._fields(nid))
        except ImageError as err:
            raise ImageError(f"{os.fsdecode(path)}: {err}") from None
        # (each is read once: a large one's listing, kept for a second look, would only add
        # to the peak)
        self.img.forget_listings()
        return listing

    def node(self, low: _Low, entry: tuple[bytes, int, int],
             xwhiteouts: bool) -> TreeInode | WrittenInode:
        name, nid, ftype = entry
        if ftype in _UNREAD_TYPES and not xwhiteouts:
            return KeptFile(nid, ftype)         # (most entries: _node's last case)
        node = self._node(name, nid, ftype, low[1], xwhiteouts)
        if self.unread:
            self._read_unread()         # (the merge takes a directory whole)
        return node

    def directory(self, low: _Low, entry: tuple[bytes, int, int],
                  _mine: TreeInode) -> _Low | None:
        name, nid, ftype = entry
        if ftype != fmt.EROFS_FT_DIR:
            return None
        path = low[1] + name
        self._claim(nid, path)
        return nid, path + b"/"

    def _node(self, name: bytes, nid: int, ftype: int, path: bytes,
              xwhiteouts: bool) -> TreeInode | WrittenInode:
        """The node of a base entry the merge takes (`path`: its directory's, with a "/")."""
        img = self.img
        if ftype == fmt.EROFS_FT_DIR:
            self._claim(nid, path + name)
            fields = self._fields(nid)
            if fields[_DATALAYOUT] not in _KEPT_DIR_LAYOUTS:
                node = image_node(img, Inode(nid, *fields), path + name)
                self.unread.append((node, (nid, path + name + b"/")))
                return node                     # rewritten
            kept = KeptDir(nid, ftype)
            self.reparented.append(kept)        # (its parent is always a rewritten one)
            return kept
        if ftype == fmt.EROFS_FT_CHRDEV or (xwhiteouts and ftype == fmt.EROFS_FT_REG_FILE):
            return KeptSeen(nid, ftype, image_node(img, img.inode(nid), path + name))
        return KeptFile(nid, ftype)

    def _read_unread(self) -> None:
        """Read the directories to rewrite whole (their subdirectories to rewrite too)."""
        while self.unread:
            directory, low = self.unread.pop()
            xwhiteouts = dict(directory.xattrs).get(OPAQUE) == OPAQUE_XWHITEOUTS
            entries = directory.entries
            path = low[1]
            for name, nid, ftype in self.entries(low):
                entries.append((name, self._node(name, nid, ftype, path, xwhiteouts)))

    def _claim(self, nid: int, path: bytes) -> None:
        if nid in self.dirs:
            raise ImageError(f"{os.fsdecode(path)}: directory nid {nid} has a second name")
        self.dirs.add(nid)

    def _fields(self, nid: int) -> tuple:
        """Image.inode_fields(nid), read once for opaque() and entries() in turn."""
        last_nid, fields = self._last
        if last_nid != nid:
            fields = self.img.inode_fields(nid)
            self._last = nid, fields
        return fields


_STUB_MODE = {ftype: mode for mode, ftype in fmt.EROFS_FT_OF_MODE.items()}


class KeptFile(WrittenInode):
    """A base inode (not a directory) the merge keeps as it is, in the merged tree: the plan
    names it by nid (plan_inodes' `written`).  It has what the overlay rules look at of an
    entry (layers.py), as a node of its type without attributes, and is not read: ~56 bytes
    a base entry."""
    __slots__ = ("nlink",)
    entries = None
    xattrs = ()
    path = target = b""
    data = DataRef(None)
    uid = gid = size = mtime_ns = rdev = 0
    # (the merge keeps sets and dicts of nodes: by identity, as TreeInode)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, nid: int, ftype: int):
        self.nid, self.ftype, self.nlink = nid, ftype, 0

    @property
    def mode(self) -> int:
        return _STUB_MODE[self.ftype]


class KeptSeen(KeptFile):
    """A kept base inode the overlay rules read (a character device, or a regular file of an
    opaque "x" directory: either may be a whiteout): its mode, owner, size and xattrs."""
    __slots__ = ("mode", "uid", "gid", "size", "mtime_ns", "rdev", "xattrs", "path")

    def __init__(self, nid: int, ftype: int, node: TreeInode):
        super().__init__(nid, ftype)
        self.mode, self.uid, self.gid = node.mode, node.uid, node.gid
        self.size, self.mtime_ns, self.rdev = node.size, node.mtime_ns, node.rdev
        self.xattrs, self.path = node.xattrs, node.path


class KeptDir(WrittenInode):
    """A base directory the merge keeps as it is (only its ".." entry is patched: its parent
    is rewritten): as KeptFile, with no entries to merge."""
    __slots__ = ("nlink", "parent", "entries")
    xattrs = ()
    path = b""
    mode = _STUB_MODE[fmt.EROFS_FT_DIR]
    uid = gid = size = mtime_ns = rdev = 0
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, nid: int, ftype: int):
        self.nid, self.ftype, self.nlink, self.parent, self.entries = nid, ftype, 0, None, []


def renumber(plan: Plan, base: Base, options: BuildOptions) -> None:
    """The new inodes (all `plan` has) get inode numbers after the base's, and the base's
    epoch: a compact inode whose mtime is not that epoch becomes extended (or takes the
    epoch where the options say so)."""
    epoch = base.img.epoch
    epoch_ns = epoch * 1_000_000_000
    for node in plan.inodes:
        if not node.extended and node.mtime_ns != epoch_ns:
            if options.force_inode == "compact" or options.ignore_mtime:
                node.mtime_ns = epoch_ns
            else:
                node.extended = True
    plan.first_ino = base.superblock.inos + 1
    plan.epoch = epoch


def reserve_rvsp(plan: Plan, data) -> None:
    """--incremental=rvsp: every new regular file gets its blocks, nothing is written there
    (they read as zeros until something fills them)."""
    for node in plan.inodes:
        if node.ftype == fmt.EROFS_FT_REG_FILE and node.size:
            flat = data.reserve_flat(node, False)
            node.flat = replace(flat, written=True)


# -- --verify: what the image should hold ------------------------------------------------------

def copy_upper(root: TreeInode, rvsp: bool) -> TreeInode:
    """A copy of the increment's tree for --verify (the merge takes the build's apart): the
    same attributes, xattrs and hard links, each regular file's bytes where --verify reads
    them (a directory's file: its path; rvsp: zeros)."""
    copies: dict[TreeInode, TreeInode] = {}

    def copy(node: TreeInode) -> TreeInode:
        twin = copies.get(node)
        if twin is None:
            data = node.data
            if stat.S_ISREG(node.mode):
                data = DataRef(None) if rvsp else data or DataRef(node.path)
            twin = copies[node] = TreeInode(node.path, node.mode, node.uid, node.gid,
                                              node.size, node.mtime_ns, node.rdev,
                                              target=node.target, xattrs=list(node.xattrs),
                                              data=data)
        return twin

    top = copy(root)
    pending = [(root, top)]
    while pending:
        directory, twin = pending.pop()
        twin.entries = []
        for name, child in directory.entries:
            mine = copy(child)
            twin.entries.append((name, mine))
            if child.entries is not None:
                pending.append((child, mine))
    return top


@dataclass
class Expected:
    """What --verify compares the increment's image with (expected_tree)."""
    source: TarSource                   # the tree the image should hold
    as_is: Callable[[bytes], bool]      # paths that are the base's inodes, kept as they were
    base_nids: set[int]                 # their nids (they keep their own link counts)


def expected_tree(base: Base, upper: TreeInode, strip: bool, xattrs: bool) -> Expected:
    """What the image should hold after the increment of `upper` (a copy_upper): the base
    directories the increment reaches merged with it (layers.py), every other part of the
    base as it is, with its own bytes read from the base (as it was: IMAGE is unchanged
    until the increment is committed); and which paths are the base's inodes, kept as they
    were.  `xattrs` false (-x < 0): the new inodes have none (not even overlay marks).
    The whole base tree is read: only with --verify."""
    from .verify import TarSource         # (the reader's comparison: only with --verify)
    inc = merge_increment(base, upper, strip)
    whole = base.tree
    by_nid = {nid: node for node, nid in whole.nids.items()}
    root = inc.root
    pending = [root]
    while pending:
        directory = pending.pop()
        entries = []
        for name, child in directory.entries:
            if isinstance(child, WrittenInode):
                child = by_nid[child.nid]       # the base's, unread by the increment
            elif child.entries is not None:
                pending.append(child)
            entries.append((name, child))
        directory.entries = entries
        if not xattrs:
            directory.xattrs = []
            for _name, child in entries:
                if child.entries is None and child not in whole.nids:
                    child.xattrs = []
    files, img = whole.files, base.img

    def contents(node: TreeInode):
        found = files.get(node)
        return None if found is None else img.iter_data(found.inode(img))

    source = TarSource.capture(root, contents=contents)
    kept = set(whole.nids)
    return Expected(source, lambda rel: source.node(rel) in kept, set(whole.nids.values()))


# -- what is written over the base ------------------------------------------------------------

def place_root(base: Base, root: TreeInode, size: int) -> int | None:
    """The root's nid fits the superblock: None; else its position over the old root's slot."""
    if root.nid <= _ROOT_NID_MAX:
        return None
    room = base.root_room()
    if size > room:
        raise BuildError(f"no room for the new root inode ({size} bytes with its xattrs) in "
                         f"the base's root slot ({room} bytes at nid {base.img.root_nid}); its "
                         f"nid {root.nid} does not fit the superblock's 16 bits")
    root.nid = base.img.root_nid
    return base.meta_base + (root.nid << fmt.EROFS_ISLOTBITS)


def dotdot_patches(inc: Increment, written: list[TreeInode]) -> list[tuple[int, bytes]]:
    """(position, bytes) of the ".." entries of the kept directories whose parent is new
    (one of the `written` inodes)."""
    img = inc.base.img
    new_nids = {id(node): node.nid for node in written if node.ftype == fmt.EROFS_FT_DIR}
    patches = []
    budget = PageBudget(_DROP_EVERY, img.drop_pages)
    for directory in inc.reparented:
        budget.spend()
        parent_nid = new_nids[id(directory.parent)]
        inode = img.inode(directory.nid)
        try:
            pos, entry = _dotdot(img, inode, inc.base.fd)
        except ImageError as err:
            raise BuildError(f"{inc.base.path}: {err}") from None
        _nid, nameoff, ftype, reserved = entry
        patches.append((pos, fmt.EROFS_DIRENT.pack(parent_nid, nameoff, ftype, reserved)))
    img.drop_pages()
    return patches


def _dotdot(img: Image, inode: Inode, fd: int) -> tuple[int, tuple]:
    """Where the ".." entry of a flat directory is in the image (open as `fd`), and the entry.
    (Nearly always in its first block, read at once: the extents and a read through them
    cost more than the rest.)"""
    first = _first_dir_block(img, inode)
    if first is not None:
        pos, n = first
        blk = os.pread(fd, n, pos)
        i = _dotdot_index(blk) if len(blk) == n else None
        if i is not None:
            return pos + i * fmt.EROFS_DIRENT_SIZE, \
                fmt.EROFS_DIRENT.unpack_from(blk, i * fmt.EROFS_DIRENT_SIZE)
    bs = img.block_size
    extents = img.extents(inode)
    for at in range(0, inode.size, bs):
        blk = img.read(inode, at, min(bs, inode.size - at))
        i = _dotdot_index(blk)
        if i is None:
            continue
        logical = at + i * fmt.EROFS_DIRENT_SIZE
        for ext in extents:
            if ext.kind in ("plain", "inline") and \
                    ext.logical <= logical < ext.logical + ext.length:
                return ext.physical + logical - ext.logical, \
                    fmt.EROFS_DIRENT.unpack_from(blk, i * fmt.EROFS_DIRENT_SIZE)
        break
    raise ImageError(f"nid {inode.nid}: no '..' entry in flat directory data")


def _first_dir_block(img: Image, inode: Inode) -> tuple[int, int] | None:
    """(position, length) of a flat directory's first block: its inline tail when that is
    all of it, else its first data block; None where it has none to read this way."""
    bs = img.block_size
    if inode.datalayout == fmt.EROFS_INODE_FLAT_INLINE and inode.size <= bs:
        pos = inode.data_pos
        return (pos, inode.size) if pos % bs + inode.size <= bs else None
    if inode.startblk == fmt.EROFS_NULL_ADDR:
        return None
    return inode.startblk * bs, min(bs, inode.size)


def _dotdot_index(blk: bytes) -> int | None:
    """Which entry of a directory block is "..", if one is."""
    if len(blk) < fmt.EROFS_DIRENT_SIZE:
        return None
    # (a kept directory is not read otherwise: a bad first nameoff must not read past blk)
    count = min(fmt.EROFS_DIRENT.unpack_from(blk)[1], len(blk)) // fmt.EROFS_DIRENT_SIZE
    for i in range(count):
        start = fmt.EROFS_DIRENT.unpack_from(blk, i * fmt.EROFS_DIRENT_SIZE)[1]
        if i + 1 < count:
            name = blk[start:fmt.EROFS_DIRENT.unpack_from(blk, (i + 1) * fmt.EROFS_DIRENT_SIZE)[1]]
        else:
            name = blk[start:].split(b"\0", 1)[0]
        if name == b"..":
            return i
    return None


def superblock(base: Base, out: Output, root_nid: int, blocks: int, new_inodes: int,
               compat: int, incompat: int, u1: int | None, packed_nid: int,
               options: BuildOptions) -> None:
    """Write the superblock last: the base's, with what the increment changed (its reserved
    bytes kept as they were), and its checksum over block 0 as it is now."""
    raw = base.raw_superblock
    sb = fmt.SuperBlock.unpack(raw)
    sb.root_nid = root_nid
    sb.inos += new_inodes
    sb.blocks = blocks
    sb.feature_compat |= compat
    sb.feature_incompat |= incompat
    if u1 is not None:
        sb.u1 = u1
    if packed_nid:
        sb.packed_nid = packed_nid
    if options.uuid is not None:
        sb.uuid = options.uuid
    if options.label:
        sb.volume_name = options.label
    if options.sb_checksum:
        sb.feature_compat |= fmt.EROFS_FEATURE_COMPAT_SB_CHKSUM
    sb.checksum = 0
    kept_tail = len(raw) - _SB_RESERVED
    packed = sb.pack()[:kept_tail] + raw[kept_tail:]
    out.pwrite(packed, fmt.EROFS_SUPER_OFFSET)
    if sb.feature_compat & fmt.EROFS_FEATURE_COMPAT_SB_CHKSUM:
        span = fmt.sb_checksum_span(base.block_size)
        region = out.pread(span, fmt.EROFS_SUPER_OFFSET).ljust(span, b"\0")
        sb.checksum = fmt.erofs_crc32c(region)
        out.pwrite(sb.pack()[:kept_tail] + raw[kept_tail:], fmt.EROFS_SUPER_OFFSET)


_SB_RESERVED = 23       # the superblock's trailing bytes SuperBlock.pack() writes as zeros
