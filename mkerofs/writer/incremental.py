"""--incremental: a directory or a tar put on top of an existing EROFS image, appended to it.

IMAGE (the base) is the overlayfs lower layer, SOURCE the upper one; the result is their merge
(writer/layers.py: whiteouts, opaque directories; with --ovlfs-strip applied, otherwise kept as
overlay metadata).  The base's bytes are kept and the new part appended, so an increment costs
time in proportion to what it adds, not to the base:

* Base inodes that the merge keeps as they were keep their nid and are not rewritten: every
  non-directory, and a directory whose entries (the same inodes under the same names), xattrs
  and subdirectories are all unchanged.  Every other directory, and its ancestors up to the
  root (their entries name a new nid), is written anew; the root always is.
* A kept directory whose parent got a new nid has its ".." entry rewritten in place (its
  directory data must be plain blocks or an inline tail: other layouts are not kept).
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
* IMAGE is never written in place: the build goes to a temporary copy beside it (a reflink or
  copy_file_range where the filesystem has them), which replaces IMAGE only once complete and
  synced; any failure removes it and leaves IMAGE as it was.  A block device is refused.

Where mkfs.erofs 1.9.3 differs: it writes into IMAGE directly (a failed build leaves it grown,
even to 2 TiB); it ignores a directory source's trusted.overlay.opaque; it honours rvsp only
for tar sources; over an uncompressed base, -zlzma gives an unmountable image (no records);
a compressed base without -z crashes; it loses a multi-device base's device table offset.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from dataclasses import dataclass, replace

from ..errors import BuildError, ImageError
from ..ondisk import format as fmt
from ..reader.image import Image
from .layers import LayerTree, merge_layers, read_image_tree
from .options import BuildOptions
from .output import Output
from .plan import Plan, PlannedInode
from .walk import SourceInode

_FICLONE = 0x40049409           # ioctl(dst, FICLONE, src): share the source's extents
_KEPT_DIR_LAYOUTS = {fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_INODE_FLAT_INLINE}
_ALL_INLINE = 1 << 30           # an -x tolerance no xattr reaches: none is shared
_ROOT_NID_MAX = 0xFFFF


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
            raise BuildError(f"{path}: --incremental on a block device is not supported (the "
                             "image is replaced by a new file, a device cannot be)")
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{path}: not a regular file")
        self.file_size = st.st_size
        self.mode = stat.S_IMODE(st.st_mode)
        try:
            self.img = Image.open(path)
        except ImageError as err:
            raise BuildError(f"{path}: not an EROFS image ({err})") from None
        img = self.img
        sb = img.superblock
        if sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_48BIT:
            img.close()
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

    def output(self) -> "CopiedOutput":
        return CopiedOutput(self)

    def close(self) -> None:
        self.img.close()

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


class CopiedOutput(Output):
    """A temporary copy of the base beside it, which replaces it once the build is complete
    (and synced); abort() removes it.  IMAGE itself is never written."""

    def __init__(self, base: Base):
        self.base = base
        super().__init__(base.path, 0)

    def _open(self) -> None:
        super()._open()
        try:
            with open(self.base.path, "rb") as src:
                _copy_file(src.fileno(), self.fd, self.base.file_size)
        except OSError as err:
            self.abort()
            raise BuildError(f"{self.path}: copying the base: {err.strerror or err}") from None
        except BaseException:
            self.abort()
            raise

    def finish(self, image_size: int) -> None:
        try:
            os.ftruncate(self.fd, max(image_size, self.base.file_size))
            os.fchmod(self.fd, self.base.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp_path, self.path)
            self.tmp_path = None
        except OSError as err:
            raise BuildError(f"{self.path}: {err.strerror or err}") from None


def _copy_file(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes: a reflink if the filesystem shares extents, else copy_file_range
    (done in the kernel, or server-side), else read and write."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return
    except OSError:
        pass
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, done, done)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = 0
        if n <= 0:
            break
        done += n
    while done < size:
        chunk = os.pread(src, min(1 << 20, size - done), done)
        if not chunk:
            raise OSError(errno.EIO, "the base image got shorter while being copied")
        os.pwrite(dst, chunk, done)
        done += len(chunk)


# -- the merge -------------------------------------------------------------------------------

@dataclass
class Increment:
    """The merged tree, and which of its inodes are the base's, kept as they are."""
    base: Base
    root: SourceInode
    kept: dict[SourceInode, int]            # -> its nid in the base
    reparented: list[SourceInode]           # kept directories whose parent is rewritten


def merge_increment(base: Base, upper: SourceInode, strip: bool) -> Increment:
    """Put `upper` (the increment's tree) on top of the base's (overlayfs rules, layers.py)."""
    tree = base.tree
    before = {node: _dir_state(node.entries, node.xattrs)
              for node in tree.nids if node.entries is not None}
    root, _count = merge_layers([tree.root, upper], strip)
    kept = _kept(root, tree, before, base)
    reparented = [node for node in kept if node.entries is not None
                  and node.parent not in kept]
    for node in kept:
        if node.entries is not None:
            node.entries = []       # (planned without their subtree: nothing there changes)
    return Increment(base, root, kept, reparented)


def _dir_state(entries, xattrs) -> tuple:
    return tuple((name, id(child)) for name, child in sorted(entries, key=lambda e: e[0])), \
        tuple(sorted(xattrs))


def _kept(root: SourceInode, tree: LayerTree, before: dict, base: Base
          ) -> dict[SourceInode, int]:
    """The inodes of the merged tree that are the base's and unchanged (module docstring)."""
    order = []
    pending = [root]
    while pending:
        directory = pending.pop()
        order.append(directory)
        pending.extend(child for _name, child in directory.entries if child.entries is not None)
    kept: dict[SourceInode, int] = {}
    for directory in reversed(order):           # children before their parents
        for _name, child in directory.entries:
            if child.entries is None and child in tree.nids:
                kept[child] = tree.nids[child]
        nid = tree.nids.get(directory)
        if directory is root or nid is None or \
                before.get(directory) != _dir_state(directory.entries, directory.xattrs):
            continue
        if all(child in kept for _name, child in directory.entries if child.entries is not None) \
                and base.img.inode(nid).datalayout in _KEPT_DIR_LAYOUTS:
            kept[directory] = nid
    return kept


def split_plan(plan: Plan, inc: Increment, options: BuildOptions) -> None:
    """Leave in `plan` only the inodes to write: the kept ones get their base nid (directory
    entries name them); the new ones inode numbers after the base's, and the base's epoch."""
    base = inc.base
    epoch = base.img.epoch
    new = []
    for node in plan.inodes:
        nid = inc.kept.get(node.src)
        if nid is not None:
            node.nid = nid
            continue
        new.append(node)
        node.ino = base.superblock.inos + len(new)
        if not node.extended and (node.mtime, node.mtime_nsec) != (epoch, 0):
            if options.force_inode == "compact" or options.ignore_mtime:
                node.mtime, node.mtime_nsec = epoch, 0
            else:
                node.extended = True
    plan.inodes = new
    plan.epoch = epoch


def reserve_rvsp(plan: Plan, data) -> None:
    """--incremental=rvsp: every new regular file gets its blocks, nothing is written there
    (they read as zeros until something fills them)."""
    for node in plan.inodes:
        if node.ftype == fmt.EROFS_FT_REG_FILE and node.size:
            data.reserve_flat(node, False).written = True


# -- what is written over the base ------------------------------------------------------------

def place_root(base: Base, root: PlannedInode, size: int) -> int | None:
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


def dotdot_patches(inc: Increment, parents: dict[int, PlannedInode]) -> list[tuple[int, bytes]]:
    """(position, bytes) of the ".." entries of the kept directories whose parent is new."""
    img = inc.base.img
    patches = []
    for directory in inc.reparented:
        parent_nid = parents[id(directory.parent)].nid
        inode = img.inode(inc.kept[directory])
        try:
            pos, entry = _dotdot(img, inode)
        except ImageError as err:
            raise BuildError(f"{inc.base.path}: {err}") from None
        _nid, nameoff, ftype, reserved = entry
        patches.append((pos, fmt.EROFS_DIRENT.pack(parent_nid, nameoff, ftype, reserved)))
    return patches


def _dotdot(img: Image, inode) -> tuple[int, tuple]:
    """Where the ".." entry of a flat directory is in the image, and the entry."""
    bs = img.block_size
    extents = img.extents(inode)
    for at in range(0, inode.size, bs):
        blk = img.read(inode, at, min(bs, inode.size - at))
        count = fmt.EROFS_DIRENT.unpack_from(blk)[1] // fmt.EROFS_DIRENT_SIZE
        for i in range(count):
            entry = fmt.EROFS_DIRENT.unpack_from(blk, i * fmt.EROFS_DIRENT_SIZE)
            if i + 1 < count:
                name = blk[entry[1]:fmt.EROFS_DIRENT.unpack_from(
                    blk, (i + 1) * fmt.EROFS_DIRENT_SIZE)[1]]
            else:
                name = blk[entry[1]:].split(b"\0", 1)[0]
            if name != b"..":
                continue
            logical = at + i * fmt.EROFS_DIRENT_SIZE
            for ext in extents:
                if ext.kind in ("plain", "inline") and \
                        ext.logical <= logical < ext.logical + ext.length:
                    return ext.physical + logical - ext.logical, entry
            break
    raise ImageError(f"nid {inode.nid}: no '..' entry in flat directory data")


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
        region = os.pread(out.fd, span, fmt.EROFS_SUPER_OFFSET).ljust(span, b"\0")
        sb.checksum = fmt.erofs_crc32c(region)
        out.pwrite(sb.pack()[:kept_tail] + raw[kept_tail:], fmt.EROFS_SUPER_OFFSET)


_SB_RESERVED = 23       # the superblock's trailing bytes SuperBlock.pack() writes as zeros
