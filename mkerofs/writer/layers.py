"""Layered images: EROFS images as source trees, and the overlayfs merge of several.

Rebuild mode (``mkerofs OUT L1.erofs L2.erofs ...``) and, later, --incremental share this
module: `read_layer` turns an image (read with mkerofs.reader) into the TreeInode tree the
planner takes, each regular file remembered with its inode in that image (`LayerTree.files`),
and `merge_layers` stacks such trees (or trees from a directory or a tar) as overlayfs does.
Rebuild mode (`LayerStack.merged_tree`) reads only its top image whole and folds each image
below into the merged tree as it reads it (`_ImageBelow`), never reading what the images
above hide: its peak memory is the merged tree's, not all the layers' trees'.  What
happens to the files' bytes is the caller's choice (`resolve_layer_data` for rebuild: point
at them through the device table, or copy them); a file that is one run of blocks in its
image (nearly every one) gets that answer as it is read (`_placing`), so no note of it is
kept.  A source image may have one extra device of its own (a tar index's tar, a --blobdev
blob): see `Layer`.

The rules of overlayfs (Documentation/filesystems/overlayfs.rst), applied from the top layer
down, that the merge follows:

* A whiteout hides the same name in every layer below it and is itself hidden.  It is a
  character device 0:0, or a zero-size regular file with the xattr trusted.overlay.whiteout in
  a directory whose trusted.overlay.opaque is "x" (an "xwhiteout"; "x" only says the directory
  holds such files, it does not make it opaque).
* A directory with trusted.overlay.opaque "y" hides everything below it; so does a directory
  above a non-directory or a whiteout of the same name: lookups stop there.
* A non-directory hides whatever is below it (a directory with its subtree too).
* Two directories of the same name merge: their names are joined, the upper one winning, and
  the merged directory's attributes and xattrs are the topmost one's.  The root merges too.
* A non-directory keeps its own attributes; its link count here is the names it has in the
  merged tree (overlayfs shows the lower inode's).

The merged tree still holds the whiteouts (each as a character device 0:0: xwhiteouts are
turned into that form), and a directory that hides what is below it carries
trusted.overlay.opaque=y; a directory holding whiteouts gets an empty trusted.overlay.origin,
as mkfs.erofs writes it (overlayfs then filters whiteouts there even where it does not merge).
So the image, used as an overlayfs lower layer, shows what the stack showed.  With
--ovlfs-strip the whiteouts are dropped and the opaque and empty origin xattrs removed: the
image alone shows the stack.  (mkfs.erofs 1.9.3 treats opaque "x" as opaque, keeps xwhiteouts
as plain files, and gives the rebuilt root mode 0777 and the caller's owner; mkerofs follows
overlayfs in all three.)
"""
from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

from ..errors import BuildError, ImageError
from ..ondisk import format as fmt
from ..reader.image import Image, Inode
from ..util import PageBudget
from .chunks import LayerChunks, covering_chunkbits, one_chunk_on
from .devices import ExtraDevice
from .walk import DataRef, LayerRef, OffsetRef, TreeInode, link_children, offset_refs

if TYPE_CHECKING:       # (the caller's spool: its module and the tar reader load only for it)
    from .spool import Spool

OPAQUE = b"trusted.overlay.opaque"
ORIGIN = b"trusted.overlay.origin"
XWHITEOUT = b"trusted.overlay.whiteout"
OPAQUE_YES = b"y"
OPAQUE_XWHITEOUTS = b"x"
_NO_DATA = DataRef(None)
_NO_XATTRS: tuple = ()      # shared: not a list a node (56 bytes); never changed in place
_DEVICES = (stat.S_IFCHR, stat.S_IFBLK)
_S_IFMT, _S_IFREG = fmt.S_IFMT, stat.S_IFREG
_S_IFDIR, _S_IFCHR = stat.S_IFDIR, stat.S_IFCHR
_FLAT_PLAIN, _NULL_ADDR = fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_NULL_ADDR
# what _layer_node makes without the reader's Inode: nothing to read beyond the inode itself
_PLAIN_KINDS = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFIFO, stat.S_IFSOCK))
# the layers' mtimes in ns, one int object per value: a layer's inodes nearly all have one
# mtime (compact inodes: the image's build time), and an int past 2^30 is 32 bytes a node
# (the bound: a layer of many distinct mtimes shares none, nor grows this without end)
_MTIMES_NS: dict[int, int] = {}
_MTIMES_MAX = 4096
# One int a file size, shared by the files of that size (an int above 256 is 32 bytes a
# file; the bench's four layers, ~40,000 of them): only while the layers are read, the dict
# (~0.6 MiB) let go before the build's peak (LayerStack.merged_tree, read_image_tree)
_SIZES: dict[int, int] = {}
_same_size = _SIZES.setdefault
# an image's pages given back every this many directories listed: the metadata pages read
# while a layer is read (~3 MiB of the largest) would otherwise all add to the peak
_DROP_EVERY = 64


# what is done with a regular file with bytes as a layer is read:
# (node, nid, size, datalayout, startblk) -> None (_noting, _placing)
NoteFile = Callable[[TreeInode, int, int, int, int], None]


class LayerFile(NamedTuple):
    """A regular file's bytes: inode `nid` of source image number `layer` (0-based), with the
    few fields of it that say where a flat file's bytes are.  (A tuple, not the reader's
    Inode: one is kept per file of the merged tree, and the Inode is read again only for the
    few files whose bytes are decoded or chunk-mapped.)"""
    layer: int
    nid: int
    size: int
    datalayout: int
    startblk: int

    def inode(self, img: Image) -> Inode:
        """The file's inode in its image, read again."""
        return img.inode(self.nid)


@dataclass
class LayerTree:
    """A source tree read from an image, with where each regular file's bytes are."""
    root: TreeInode
    files: dict[TreeInode, LayerFile] = field(default_factory=dict)
    nids: dict[TreeInode, int] = field(default_factory=dict)       # each inode's nid there


class Layer:
    """A source image opened for reading; `index` is its place on the command line (0-based),
    so it is extra device index + 1 in blob-index mode.

    An image may have one extra device of its own (a tar index: the tar; a --blobdev image:
    the blob), as mkfs.erofs 1.9.3 accepts.  Either it is appended to the image (the tar
    follows the metadata at the slot's uniaddr, as containerd does it): then the image file
    alone holds everything and is the merged image's device, addressed through its unified
    addresses; or it is a file of its own (`attach_device`): then that file is the merged
    image's device, in its own blocks, as mkfs.erofs has it."""

    def __init__(self, path: str, index: int):
        self.path = path
        self._path_b = os.fsencode(path)    # (one bytes object every DataRef into it shares)
        self.index = index
        try:
            self.image = Image.open(path)
        except ImageError as err:
            # (a SOURCE that is a file means rebuild mode, as in mkfs.erofs)
            raise BuildError(f"{path}: neither a directory nor an EROFS image ({err})") \
                from None
        table = self.image.device_table
        if len(table) > 1:
            self.image.close()
            raise BuildError(f"{path}: {len(table)} extra devices: a source image may have "
                             "one at most (a tar index, a --blobdev image)")
        self.slot: fmt.DeviceSlot | None = table[0] if table else None
        # its device inside the file: read flat, the whole file is the device
        self.appended = self.slot is not None and bool(self.slot.uniaddr) and \
            not self.image.device_problems()
        self.device: str | None = None      # its device as a file of its own
        self._device_b = b""
        self.block_size = self.image.block_size
        self.block_size_bits = fmt.blksz_bits(self.block_size)

    @property
    def needs_device(self) -> bool:
        """True if its extra device is a file of its own (given with --device)."""
        return self.slot is not None and not self.appended

    def attach_device(self, device: str) -> None:
        """Read the image's extra device from `device`."""
        try:
            image = Image.open(self.path, devices=[device])
            problems = image.device_problems()
        except ImageError as err:
            raise BuildError(f"{self.path}: {err}") from None
        if problems:
            image.close()
            raise BuildError(f"{self.path}: {problems[0]}")
        self.image.close()
        self.image, self.device, self._device_b = image, device, os.fsencode(device)

    def missing_device(self, why: str) -> BuildError:
        return BuildError(f"{self.path}: its extra device ({self.slot.blocks} blocks of "
                          f"{self.block_size}: the tar of a tar index, or a blob) is not "
                          f"appended to it, and {why}: give it with --device=FILE (one per "
                          "such source, in command-line order)")

    @property
    def tag(self) -> bytes:
        """The image's UUID as 32 hex digits: mkfs.erofs's tag for a device without one."""
        return self.image.superblock.uuid.hex().encode()

    def device_slot(self) -> ExtraDevice:
        """What the merged image's slot for this source says (blob-index mode): the image file,
        its own blocks and then its appended device's; or (mkfs.erofs 1.9.3) the separate
        device, its blocks and its tag (else the image's UUID)."""
        if self.slot is None:
            return ExtraDevice(self.path, self.image.blocks, self.tag, src_path=self.path)
        if self.appended:
            return ExtraDevice(self.path, self.slot.uniaddr + self.slot.blocks, self.tag,
                               src_path=self.path)
        return ExtraDevice(self.device or f"the extra device of {self.path}", self.slot.blocks,
                           self.slot.tag or self.tag, src_path=self.device)

    def on_slot(self, device: int, block: int) -> int | None:
        """Block `block` of the image's device `device` (0: the image itself) as a block of
        what device_slot() names; None if it is not there (data in the image itself when the
        slot names a separate device: such a file is copied)."""
        slot = self.slot
        if slot is None:
            return block if device == 0 else None
        if self.appended:
            return block if device == 0 else slot.uniaddr + block if device == 1 else None
        if device == 1:
            return block
        if device == 0 and slot.uniaddr and slot.uniaddr <= block < slot.uniaddr + slot.blocks:
            return block - slot.uniaddr
        return None

    def plain_data(self, block: int) -> OffsetRef | None:
        """Where the bytes from block `block` of the image (as a flat file's block address,
        unified addressing applied) are to be read in place; None if that is on a device
        not given.  (An OffsetRef: 48 bytes a file, --clean=data makes one for nearly each.)"""
        slot = self.slot
        if slot is None or self.appended or not slot.uniaddr or \
                not slot.uniaddr <= block < slot.uniaddr + slot.blocks:
            return offset_refs(self._path_b)(block * self.block_size)
        if self.device is None:
            return None
        return offset_refs(self._device_b)((block - slot.uniaddr) * self.block_size)

    def close(self) -> None:
        self.image.close()


def _rdev(inode: Inode) -> int:
    return os.makedev(*fmt.new_decode_dev(inode.rdev)) if stat.S_IFMT(inode.mode) in _DEVICES \
        else 0


def read_layer(layer: Layer, note: NoteFile | None = None) -> LayerTree:
    """The tree of a source image: TreeInodes named by their paths in the image, the
    directories' entries in on-disk (sorted) order; hard links (one nid under several names)
    stay one TreeInode.  Link counts are left to merge_layers / finish_tree.  (The tree's
    `nids` stay empty: rebuild mode does not need them.)  `note`: what is done with each
    regular file with bytes (default: noted in the tree's `files`)."""
    img = layer.image
    try:
        return _read_tree(img, layer.index, nids=False, note=note)
    except ImageError as err:
        raise BuildError(f"{layer.path}: {err}") from None


def _noting(files: dict[TreeInode, LayerFile], index: int) -> NoteFile:
    """A NoteFile noting each file in `files` as from source `index`."""
    def note(node: TreeInode, nid: int, size: int, layout: int, startblk: int) -> None:
        files[node] = LayerFile(index, nid, size, layout, startblk)
    return note


def _read_tree(img: Image, index: int, nids: bool = True,
               note: NoteFile | None = None) -> LayerTree:
    """The tree of `img` (read_layer), its files as from source `index`; `nids`: note each
    inode's nid in the tree (--incremental's base needs them)."""
    root_nid = img.root_nid
    root_fields = img.inode_fields(root_nid)
    root_inode = Inode(root_nid, *root_fields)
    root = TreeInode(b"/", root_inode.mode, root_inode.uid, root_inode.gid, root_inode.size,
                       root_inode.mtime * 10**9 + root_inode.mtime_nsec, entries=[],
                       xattrs=img.xattrs(root_inode))
    root.parent = root
    tree = LayerTree(root)
    if nids:
        tree.nids[root] = root_nid
    _read_dirs(img, deque([(root, root_nid, root_fields, b"/")]), {root_nid: root},
               note or _noting(tree.files, index), tree.nids if nids else None,
               PageBudget(_DROP_EVERY, img.drop_pages))
    return tree


def _read_dirs(img: Image, pending: deque, seen: dict[int, TreeInode], note: NoteFile,
               nids: dict[TreeInode, int] | None, budget: PageBudget) -> None:
    """Read the directories `pending` ((node, nid, its inode_fields, path + b"/")) of `img`
    and everything below them, breadth first; `seen`: the nodes made already, by nid, of
    those that may have another name (directories, for the error; files of more than one
    link: hard links stay one node); each regular file with bytes given to `note`, each
    node's nid noted in `nids`; `budget` spent a directory listed."""
    fields_of = img.inode_fields
    while pending:
        directory, dir_nid, dir_fields, base = pending.popleft()
        entries = directory.entries
        found_in = _found_in(directory, base)
        budget.spend()
        for name, nid, _ftype in _listing(img, dir_nid, dir_fields, base):
            node = seen.get(nid)
            if node is not None:
                if node.entries is not None:
                    raise _second_name(base + name, nid)
                entries.append((name, node))
                continue
            fields = fields_of(nid)
            node = _layer_node(img, nid, fields, base, name, found_in, note)
            if node.entries is not None:
                node.parent = directory
                pending.append((node, nid, fields, node.where + b"/"))
                seen[nid] = node
            elif fields[3] != 1:        # (its nlink: one name, never met again)
                seen[nid] = node
            if nids is not None:
                nids[node] = nid
            entries.append((name, node))


def _found_in(directory: TreeInode, base: bytes) -> TreeInode | None:
    """What a non-directory read in `directory` (its path + b"/": `base`) keeps as the
    directory it was found in (TreeInode.path): the root's entries keep their whole paths
    ("/" + name: the root's path ends with "/")."""
    return None if base == b"/" else directory


def _listing(img: Image, nid: int, fields: tuple, base: bytes) -> list[tuple[bytes, int, int]]:
    """img.listdir of directory `nid` (its inode_fields), a failure naming the directory
    (`base`: its path + b"/")."""
    try:
        return img.listdir_fields(nid, fields)
    except ImageError as err:
        raise ImageError(f"{os.fsdecode(base)}: {err}") from None


def _layer_node(img: Image, nid: int, fields: tuple, base: bytes, name: bytes,
                found_in: TreeInode | None, note: NoteFile) -> TreeInode:
    """image_node of inode `nid` (its Image.inode_fields), named `name` in the directory
    whose path + b"/" is `base` (`found_in`: _found_in of that directory), a regular file
    with bytes given to `note`.  A directory keeps its whole path (its entries' paths are
    made from it), any other node only its name when it has a `found_in` (a whole path a
    file is ~100 bytes).  (Made for every entry of every layer that shows: plain files and
    directories without xattrs, nearly all of them, straight from the fields.)"""
    (mode, uid, gid, _nlink, size, mtime, nsec, _rdev, _ino, layout, _extended, icount,
     _pos, startblk, _dots) = fields
    mtime_ns = mtime * 1_000_000_000 + nsec
    shared = _MTIMES_NS.get(mtime_ns)
    mtime_ns = _new_mtime(mtime_ns) if shared is None else shared
    kind = mode & _S_IFMT
    if kind == _S_IFREG and not icount:        # (no xattrs: nearly every file)
        size = _same_size(size, size)
        node = TreeInode(base + name if found_in is None else name, mode, uid, gid, size,
                         mtime_ns, 0, 0, None, None, None, _NO_XATTRS, _NO_DATA, found_in)
        if size:
            note(node, nid, size, layout, startblk)
        return node
    if kind == _S_IFDIR:
        where, found_in = base + name, None
    else:
        where = base + name if found_in is None else name
    if icount or kind not in _PLAIN_KINDS:
        node = image_node(img, Inode(nid, *fields), where, found_in)
    elif kind == _S_IFDIR:
        node = TreeInode(where, mode, uid, gid, size, mtime_ns, entries=[], xattrs=_NO_XATTRS)
    else:
        node = TreeInode(where, mode, uid, gid, size, mtime_ns, 0, 0, None, None, None,
                         _NO_XATTRS, _NO_DATA if kind == _S_IFREG else None, found_in)
    if size and kind == _S_IFREG:
        note(node, nid, size, layout, startblk)
    return node


def _mtime_ns(mtime: int, nsec: int) -> int:
    """An inode's mtime in ns, shared (_MTIMES_NS)."""
    mtime_ns = mtime * 1_000_000_000 + nsec
    shared = _MTIMES_NS.get(mtime_ns)
    return _new_mtime(mtime_ns) if shared is None else shared


def _new_mtime(mtime_ns: int) -> int:
    """_mtime_ns of an mtime not in _MTIMES_NS, now in it."""
    if len(_MTIMES_NS) >= _MTIMES_MAX:
        _MTIMES_NS.clear()
    _MTIMES_NS[mtime_ns] = mtime_ns
    return mtime_ns


def image_node(img: Image, inode: Inode, path: bytes,
               found_in: TreeInode | None = None) -> TreeInode:
    """The TreeInode of one inode of `img` (a directory's entries left empty; a regular
    file without data: where its bytes are is the caller's business); `path` and `found_in`
    as TreeInode.where and .found_in.  (Made for every entry of every layer: its xattrs are
    read only when it has some.)"""
    node = TreeInode(path, inode.mode, inode.uid, inode.gid, inode.size,
                       _mtime_ns(inode.mtime, inode.mtime_nsec), _rdev(inode),
                       xattrs=img.xattrs(inode) if inode.xattr_icount else _NO_XATTRS,
                       found_in=found_in)
    kind = stat.S_IFMT(inode.mode)
    if kind == stat.S_IFDIR:
        node.entries = []
    elif kind == stat.S_IFLNK:
        node.target = img.readlink(inode)
    elif kind == stat.S_IFREG:
        node.data = _NO_DATA
    return node


def read_image_tree(img: Image, path: str) -> LayerTree:
    """read_layer for an image opened already (--incremental's base), as layer 0."""
    try:
        return _read_tree(img, 0)
    except ImageError as err:
        raise BuildError(f"{path}: {err}") from None
    finally:
        _SIZES.clear()


# -- the merge -------------------------------------------------------------------------------

def _is_whiteout(node: TreeInode, xwhiteouts: bool) -> bool:
    """`xwhiteouts`: its directory's trusted.overlay.opaque is "x"."""
    kind = node.mode & _S_IFMT
    if kind == stat.S_IFCHR:
        return node.rdev == 0
    return xwhiteouts and kind == stat.S_IFREG and node.size == 0 and \
        any(name == XWHITEOUT for name, _ in node.xattrs)


def _opaque(xattrs: list[tuple[bytes, bytes]]) -> bytes | None:
    """A directory's trusted.overlay.opaque (the last one, if it has several)."""
    return dict(xattrs).get(OPAQUE) if xattrs else None


def _whiteout(node: TreeInode) -> TreeInode:
    """The character device 0:0 form of a whiteout (owner and mtime kept)."""
    if stat.S_ISCHR(node.mode):
        return node
    return TreeInode(node.path, stat.S_IFCHR, node.uid, node.gid, 0, node.mtime_ns)


class _Merged:
    """The merged tree while layers are added below it: each merged directory's entries
    (its `entries`, unsorted: a name taken from a layer below is appended), and the
    directories that hide everything below them (sealed).  (Not a dict of names a
    directory, held to the end: one is made while a directory is merged with the layer
    below, from its entries, and let go: ~100 bytes an entry less at the peak.)"""

    def __init__(self, top: TreeInode):
        self.root = top
        self.sealed: set[TreeInode] = set()
        self.whiteouts: set[TreeInode] = set()
        # the directories a whiteout was put in (a name met twice may drop it again): only
        # these are looked through for whiteouts at the end
        self.holding: set[TreeInode] = set()
        self._adopt(top)

    def _adopt(self, directory: TreeInode) -> None:
        """Take a directory (with its subtree) of the layer being added as it is."""
        pending = [directory]
        while pending:
            d = pending.pop()
            opaque = _opaque(d.xattrs)
            xwhiteouts = opaque == OPAQUE_XWHITEOUTS
            entries = d.entries
            for i, (name, child) in enumerate(entries):
                if child.entries is not None:
                    pending.append(child)
                elif (xwhiteouts or child.mode & _S_IFMT == _S_IFCHR) and \
                        _is_whiteout(child, xwhiteouts):
                    white = _whiteout(child)
                    self.whiteouts.add(white)
                    self.holding.add(d)
                    entries[i] = name, white
            if len(entries) > 1 and len(kids := dict(entries)) != len(entries):
                # (a name twice: the last one counts, in the place of the first, as a
                # dict of them has it)
                d.entries = list(kids.items())
            if opaque == OPAQUE_YES:
                self.sealed.add(d)

    def add_below(self, upper: TreeInode, lower, below=None) -> None:
        """Merge the directory `lower` of the next layer down into the merged `upper`: the
        overlay rule, once for every kind of lower layer (`below`: how to read `lower`, see
        _TreeBelow; a whole TreeInode tree when None)."""
        if below is None:
            below = _TREE
        sealed, take, node = self.sealed, self.take, below.node
        pending = [(upper, lower)]
        while pending:
            up, low = pending.pop()
            if up in sealed:
                continue
            mine_all = up.entries
            kids = dict(mine_all)
            opaque = below.opaque(low)
            xwhiteouts = opaque == OPAQUE_XWHITEOUTS
            for entry in below.entries(low):
                name = entry[0]
                mine = kids.get(name)
                if mine is None:
                    child = node(low, entry, xwhiteouts)
                    if child.entries is None and not xwhiteouts and \
                            child.mode & _S_IFMT != _S_IFCHR:
                        kids[name] = child      # (take's answer for a plain non-directory)
                        mine_all.append((name, child))
                    else:
                        take(up, kids, name, child, xwhiteouts)
                elif mine.entries is not None:
                    deeper = below.directory(low, entry, mine)
                    if deeper is not None:
                        pending.append((mine, deeper))
                    else:               # a file or whiteout below: nothing further down shows
                        sealed.add(mine)
                # (else hidden by a non-directory above)
            if opaque == OPAQUE_YES:
                sealed.add(up)

    def take(self, up: TreeInode, kids: dict[bytes, TreeInode], name: bytes,
             child: TreeInode, xwhiteouts: bool) -> None:
        """Put `child` of a lower layer (a directory: with its subtree) under the merged
        directory `up` (its children by name so far: `kids`), where nothing of that name
        is yet."""
        if child.entries is not None:
            self._adopt(child)
            child.parent = up
        elif _is_whiteout(child, xwhiteouts):
            child = _whiteout(child)
            self.whiteouts.add(child)
            self.holding.add(up)
        kids[name] = child
        up.entries.append((name, child))


class _TreeBelow:
    """A lower layer given whole, as a TreeInode tree (tar layers): a directory is its
    TreeInode, an entry (name, child).  The other readers of a lower layer (_ImageBelow,
    incremental's base) answer the same four questions of theirs."""

    @staticmethod
    def opaque(low: TreeInode) -> bytes | None:
        """The directory's trusted.overlay.opaque."""
        return _opaque(low.xattrs)

    @staticmethod
    def entries(low: TreeInode) -> list[tuple[bytes, TreeInode]]:
        """The directory's entries, each a tuple starting with the name."""
        return low.entries

    @staticmethod
    def node(_low: TreeInode, entry: tuple[bytes, TreeInode],
             _xwhiteouts: bool) -> TreeInode:
        """The node of an entry the merge takes (a directory: with its subtree)."""
        return entry[1]

    @staticmethod
    def directory(_low: TreeInode, entry: tuple[bytes, TreeInode],
                  _mine: TreeInode) -> TreeInode | None:
        """The entry as a directory to merge below the merged `mine`; None if it is none."""
        child = entry[1]
        return child if child.entries is not None else None


_TREE = _TreeBelow()


class _ImageBelow:
    """A lower layer read from its image as the merge reaches it (rebuild mode): a directory
    is (its nid, its inode_fields, its path + b"/", the merged directory it merges with: its
    non-directories' `found_in`), an entry (name, nid, file type).  A name an upper layer
    hides, or anything in a directory that hides what is below it, is never read: the layers
    are not held as whole trees.  (A hard-linked file's `path`, which messages and
    --compress-hints see, is thus its first name that shows, not its first name in the
    image.)"""

    def __init__(self, img: Image, note: NoteFile, root: TreeInode):
        """`root`: the merged root, which the image's root merges with; `note`: what is done
        with each regular file with bytes read."""
        self.img, self.note = img, note
        self.fields_of = img.inode_fields
        self.root = root
        # (a merged directory stands for the nid it was merged with: a second name is an
        # error)
        self.seen: dict[int, TreeInode] = {img.root_nid: root}
        self.budget = PageBudget(_DROP_EVERY, img.drop_pages)

    def top(self) -> tuple[int, tuple, bytes, TreeInode]:
        nid = self.img.root_nid
        return nid, self.fields_of(nid), b"/", self.root

    def opaque(self, low: tuple[int, tuple, bytes, TreeInode]) -> bytes | None:
        nid, fields = low[0], low[1]
        if not fields[11]:          # (its xattr_icount)
            return None
        return _opaque(self.img.xattrs(Inode(nid, *fields)))

    def entries(self, low: tuple[int, tuple, bytes, TreeInode]
                ) -> list[tuple[bytes, int, int]]:
        self.budget.spend()
        return _listing(self.img, low[0], low[1], low[2])

    def node(self, low: tuple[int, tuple, bytes, TreeInode], entry: tuple[bytes, int, int],
             _xwhiteouts: bool) -> TreeInode:
        """The node of the entry's nid (a directory: with everything below it), read if not
        yet."""
        name, nid = entry[0], entry[1]
        node = self.seen.get(nid)
        base = low[2]
        if node is not None:
            if node.entries is not None:
                raise _second_name(base + name, nid)
            return node
        fields = self.fields_of(nid)
        # (_found_in, inline: a call fewer for every entry taken)
        node = _layer_node(self.img, nid, fields, base, name, None if base == b"/" else low[3],
                           self.note)
        if node.entries is not None:
            self.seen[nid] = node
            _read_dirs(self.img, deque([(node, nid, fields, node.where + b"/")]), self.seen,
                       self.note, None, self.budget)
        elif fields[3] != 1:            # (as _read_dirs)
            self.seen[nid] = node
        return node

    def directory(self, low: tuple[int, tuple, bytes, TreeInode],
                  entry: tuple[bytes, int, int], mine: TreeInode
                  ) -> tuple[int, tuple, bytes, TreeInode] | None:
        """The entry's directory to merge below the merged `mine`; None if it is none."""
        name, nid = entry[0], entry[1]
        node = self.seen.get(nid)
        if node is not None:
            if node.entries is not None:
                raise _second_name(low[2] + name, nid)
            return None                 # (a file met under another name)
        fields = self.fields_of(nid)
        if fields[0] & _S_IFMT != _S_IFDIR:        # (its mode)
            return None
        self.seen[nid] = mine
        return nid, fields, low[2] + name + b"/", mine


def _merge_image(merged: _Merged, layer: Layer, note: NoteFile) -> None:
    """Merge `layer`'s image below `merged` (rebuild mode), its files given to `note`.
    (What it read by nid is let go on return, before the next layer is read.)"""
    below = _ImageBelow(layer.image, note, merged.root)
    try:
        merged.add_below(merged.root, below.top(), below)
    except ImageError as err:
        raise BuildError(f"{layer.path}: {err}") from None


def _second_name(path: bytes, nid: int) -> ImageError:
    return ImageError(f"{os.fsdecode(path)}: directory nid {nid} has a second name")


def merge_layers(roots: list[TreeInode], strip: bool) -> tuple[TreeInode, int]:
    """Stack the trees `roots` (the first at the bottom, the last on top) as overlayfs does
    (module docstring); return the merged root and its number of distinct inodes.  The trees
    are taken apart: use each once.  `strip` (--ovlfs-strip): drop whiteouts and the overlay
    marks instead of keeping them."""
    for root in roots:
        _forget_links(root)
    merged = _Merged(roots[-1])
    for lower in reversed(roots[:-1]):
        merged.add_below(merged.root, lower)
    return _finish(merged, strip)


def merge_onto(top: TreeInode, below, strip: bool) -> tuple[TreeInode, int]:
    """merge_layers of `top` over one layer below it, read by `below` (a reader like
    _TreeBelow with a top(): --incremental's base, read only where it shows)."""
    _forget_links(top)
    merged = _Merged(top)
    merged.add_below(merged.root, below.top(), below)
    return _finish(merged, strip)


def _forget_links(root: TreeInode) -> None:
    """Zero the link counts a tree came with (a tar's trees count their names): _finish
    counts the names each inode has in the merged tree."""
    pending = [root]
    while pending:
        for _name, child in pending.pop().entries:
            if child.entries is not None:
                pending.append(child)
            else:
                child.nlink = 0


class _NamedDir(TreeInode):
    """A merged tree's directory below the root, once the tree is whole (_finish): `where`
    is only its name, its parent's path gives the rest (the root's is b"/"; a whole path a
    directory is ~100 bytes, ~0.8 MiB on the bench's layers)."""
    __slots__ = ()

    @property
    def path(self) -> bytes:
        base = self.parent.path
        return base + self.where if base == b"/" else base + b"/" + self.where


def _finish(merged: _Merged, strip: bool) -> tuple[TreeInode, int]:
    """Sorted entries, parents, link counts, and the overlay marks (module docstring)."""
    root = merged.root
    root.parent = root
    root.nlink = 2
    count = 1
    whiteouts, holding = merged.whiteouts, merged.holding
    pending = deque([root])
    while pending:
        directory = pending.popleft()
        entries = directory.entries
        entries.sort()              # (by name: each name is there once)
        has_whiteouts = directory in holding and \
            not whiteouts.isdisjoint([child for _name, child in entries])
        kept = entries
        if strip and has_whiteouts:
            kept = [(name, child) for name, child in entries if child not in whiteouts]
        count += link_children(directory, kept, pending)
        for name, child in kept:
            # (a subdirectory read from a layer, not --incremental's KeptDir: its name, not
            # its whole path)
            if child.entries is not None and type(child) is TreeInode:
                child.where = name
                child.__class__ = _NamedDir
        sealed = directory in merged.sealed
        if directory.xattrs or sealed or has_whiteouts:
            directory.xattrs = _overlay_marks(directory.xattrs, strip, has_whiteouts, sealed)
    return root, count


def _overlay_marks(xattrs: list[tuple[bytes, bytes]], strip: bool, has_whiteouts: bool,
                   sealed: bool) -> list[tuple[bytes, bytes]]:
    """A merged directory's xattrs: without the overlay marks of its layer, with the marks
    the merged tree needs (none with --ovlfs-strip)."""
    kept = {name: value for name, value in xattrs
            if name != OPAQUE and not (name == ORIGIN and not value)}
    if not strip:
        if sealed:
            kept[OPAQUE] = OPAQUE_YES
        if has_whiteouts:
            kept[ORIGIN] = b""
    return sorted(kept.items())


# -- rebuild: where the merged tree's file data comes from ---------------------------------

def resolve_layer_data(root: TreeInode, files: dict[TreeInode, LayerFile],
                       layers: list[Layer], mode: str | None, block_size: int,
                       spool: Spool) -> bool:
    """Give every regular file of the merged tree read from `layers` its DataRef:

    * mode None (blob index): a file that is one run of blocks in its image (FLAT_PLAIN) or
      chunk-based there, in an image of the target's block size, keeps its bytes there: a
      LayerChunks on device layer + 1.  Others (inline tails, compressed files: mkfs.erofs
      refuses these) are copied, as with "data".
    * "data": every file's bytes are copied into the image: read in place when they are one
      run of blocks in the source image, else decoded into `spool` (streamed).
    * "rvsp": no bytes at all: every file reads as zeros (mkfs.erofs reserves its blocks).

    True if some file is indexed."""
    indexed = False
    seen: set[TreeInode] = set()
    pending = [root] if files else []
    while pending:
        directory = pending.pop()
        for _name, child in directory.entries:
            if child.entries is not None:
                pending.append(child)
                continue
            found = files.get(child)
            if found is None or child in seen:
                continue
            seen.add(child)
            if mode == "rvsp":
                continue                # DataRef(None): zeros
            layer = layers[found.layer]
            ref = _indexed_ref(layer, found, block_size) if mode is None else None
            if ref is not None:
                child.data = ref
                indexed = True
            else:
                child.data = _copied(layer, found, spool, child.path)
    spool.flush()
    return indexed


def _indexed_ref(layer: Layer, file: LayerFile, block_size: int) -> DataRef | LayerRef | None:
    """The DataRef pointing at the file's blocks (its LayerChunks) where the merged image's
    slot for `layer` has them; None if there is nothing to point at (an inline tail,
    compressed data, data the slot does not hold) or another block size."""
    if layer.block_size != block_size:
        return None
    if file.datalayout == _FLAT_PLAIN:
        return _flat_ref(layer, file.size, file.startblk)
    if file.datalayout != fmt.EROFS_INODE_CHUNK_BASED:
        return None
    device = layer.index + 1
    try:
        chunkbits, chunks = layer.image.chunk_map(file.inode(layer.image))
    except ImageError as err:
        raise BuildError(f"{layer.path}: {err}") from None
    addrs: list[int | None] = []
    for chunk in chunks:
        addr = None if chunk is None else layer.on_slot(*chunk)
        if addr is None and chunk is not None:
            return None
        addrs.append(addr)
    if len(addrs) == 1 and addrs[0] is not None:
        return LayerRef(addrs[0] << layer.block_size_bits, one_chunk_on(device, chunkbits))
    return DataRef(None, layer=LayerChunks(device, chunkbits, tuple(addrs)))


def _flat_ref(layer: Layer, size: int, startblk: int) -> DataRef | LayerRef | None:
    """_indexed_ref of a FLAT_PLAIN file of `size` bytes from block `startblk`."""
    bits = layer.block_size_bits
    device = layer.index + 1
    chunkbits = covering_chunkbits(size, bits)
    count = -(-size >> chunkbits)
    if startblk == _NULL_ADDR:
        return DataRef(None, layer=LayerChunks(device, chunkbits, (None,) * count))
    start = startblk if layer.slot is None else layer.on_slot(0, startblk)
    if start is None:
        return None
    if count == 1:              # (nearly always: a chunk covers up to 2^31 blocks)
        return LayerRef(start << bits, one_chunk_on(device, chunkbits))
    step = 1 << (chunkbits - bits)
    return DataRef(None, layer=LayerChunks(device, chunkbits,
                                           range(start, start + count * step, step)))


def _flat_copy(layer: Layer, startblk: int) -> DataRef | OffsetRef | None:
    """_copied of a FLAT_PLAIN file from block `startblk`: read in place; None if that is
    on a device not given."""
    return _NO_DATA if startblk == _NULL_ADDR else layer.plain_data(startblk)


def _placing(layer: Layer, files: dict[TreeInode, LayerFile], mode: str | None,
             block_size: int) -> NoteFile:
    """A NoteFile for rebuild mode (without --verify, which reads every file through
    `files`): a file whose bytes are one run of blocks in `layer` (FLAT_PLAIN: nearly every
    one) gets at once the DataRef resolve_layer_data would give it, and is neither noted nor
    looked at again; any other is noted in `files` for resolve_layer_data.  ("rvsp": no
    file is noted: each reads as zeros.)"""
    if mode == "rvsp":
        return _ignore
    index = layer.index
    chunked = mode is None and layer.block_size == block_size
    bits = layer.block_size_bits
    # an image without an extra device (nearly every one) addresses its blocks directly: a
    # flat file with blocks is then one chunk (by (size - 1).bit_length(): its LayerChunks)
    # or read in place from the image, with no lookup a file
    direct = layer.slot is None
    one_chunk = _one_chunk_table(layer.index + 1, bits) if chunked and direct else ()
    widest = len(one_chunk)
    copy_from = offset_refs(layer._path_b) if not chunked and direct else None

    def place(node: TreeInode, nid: int, size: int, layout: int, startblk: int) -> None:
        if layout == _FLAT_PLAIN:
            if startblk != _NULL_ADDR:
                if one_chunk:
                    width = (size - 1).bit_length()
                    if width < widest:
                        node.data = LayerRef(startblk << bits, one_chunk[width])
                        return
                elif copy_from is not None:
                    node.data = copy_from(startblk << bits)
                    return
            data = (chunked and _flat_ref(layer, size, startblk)) or _flat_copy(layer, startblk)
            if data is not None:
                node.data = data
                return
        files[node] = LayerFile(index, nid, size, layout, startblk)
    return place


def _one_chunk_table(device: int, bits: int) -> list:
    """The shared LayerChunks (one_chunk_on) of a file of one chunk on `device`, by its
    size's (size - 1).bit_length(), for every size one chunk covers (covering_chunkbits)."""
    most = bits + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK
    return [one_chunk_on(device, max(width, bits)) for width in range(most + 1)]


def _ignore(*_file) -> None:
    pass


def _copied(layer: Layer, file: LayerFile, spool: Spool, path: bytes) -> DataRef | OffsetRef:
    """Where the writer reads a file to copy (`path` in the layer): in place if its bytes are
    one run of blocks in the image (or its device), else decoded into the spool."""
    if file.datalayout == _FLAT_PLAIN:
        ref = _flat_copy(layer, file.startblk)
        if ref is None:
            raise layer.missing_device("a file's data is there")
        return ref
    try:
        return spool.store_pieces(layer.image.iter_data(file.inode(layer.image)))
    except ImageError as err:
        raise BuildError(f"{layer.path}: {os.fsdecode(path)}: {err}") from None


# -- rebuild mode: the source images together ------------------------------------------------

class LayerStack:
    """The source images of rebuild mode, in command-line order (the last on top); each is
    also an extra device when the image points into them (blob index: device n = source n)."""

    def __init__(self, paths: list[str], avoid: set[tuple[int, int]] = frozenset(),
                 devices: tuple[str, ...] = ()):
        """`devices` (--device): the extra device of each image that has one not appended to
        it, in order; none, or one for each."""
        self.layers: list[Layer] = []
        try:
            for index, path in enumerate(paths):
                try:
                    st = os.stat(path)
                except OSError as err:
                    raise BuildError(f"{path}: {err.strerror or err}") from None
                if (st.st_dev, st.st_ino) in avoid:
                    raise BuildError(f"{path}: is the image being written")
                self.layers.append(Layer(path, index))
            self._attach(devices)
        except BaseException:
            self.close()
            raise

    def _attach(self, devices: tuple[str, ...]) -> None:
        wanting = [layer for layer in self.layers if layer.needs_device]
        if devices and len(devices) != len(wanting):
            which = ", ".join(layer.path for layer in wanting) or "none"
            raise BuildError(f"{len(devices)} --device given, but the source images whose "
                             f"extra device is a file of its own are {len(wanting)} "
                             f"({which}): give one per such image, in order")
        for layer, device in zip(wanting, devices):
            layer.attach_device(device)

    def require_devices(self, why: str) -> None:
        """Every image's extra device must be readable (copying data, --verify)."""
        for layer in self.layers:
            if layer.needs_device and layer.device is None:
                raise layer.missing_device(why)

    def __enter__(self) -> "LayerStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def block_size(self) -> int:
        """The image's block size: the top layer's, as mkfs.erofs has it."""
        return self.layers[-1].block_size

    def check_block_sizes(self) -> None:
        """Blob index: every image is addressed in the image's blocks (mkfs.erofs 1.9.3
        addresses a smaller-block image wrongly, silently)."""
        for layer in self.layers:
            if layer.block_size != self.block_size:
                raise BuildError(f"{layer.path}: blocks of {layer.block_size} bytes, but the "
                                 f"image's (the last source's) are {self.block_size}: files "
                                 "can only point into sources of the same block size (copy "
                                 "the data with --clean=data)")

    def merged_tree(self, strip: bool, early: tuple[str | None, int] | None = None
                    ) -> tuple[TreeInode, dict[TreeInode, LayerFile]]:
        """The overlayfs view of the images (merge_layers) and where its files' bytes are.
        `early` (resolve_data's mode and block size): the files whose bytes are one run of
        blocks get their DataRef as they are read (_placing), only the others are returned
        for resolve_data."""
        files: dict[TreeInode, LayerFile] = {}

        def note(layer: Layer) -> NoteFile:
            return _noting(files, layer.index) if early is None else \
                _placing(layer, files, *early)
        try:
            top = read_layer(self.layers[-1], note(self.layers[-1]))
            merged = _Merged(top.root)
            # each lower layer folded in as it is read: what the layers above hide is never
            # read (the four trees are not held whole: the peak of rebuild mode); the pages
            # of an image read are given back at once (not all the images' metadata at the end)
            self.layers[-1].image.drop_pages()
            for layer in reversed(self.layers[:-1]):
                _merge_image(merged, layer, note(layer))
                layer.image.drop_pages()
        finally:
            _SIZES.clear()
        root, _count = _finish(merged, strip)
        # only the files the merged tree shows (their names counted: nlink)
        return root, {node: found for node, found in files.items() if node.nlink}

    def resolve_data(self, root: TreeInode, files: dict[TreeInode, LayerFile],
                     mode: str | None, block_size: int, spool: Spool) -> None:
        """resolve_layer_data for this stack's images; then the metadata pages read from
        them are given back (the rest of the build reads the images by path, if at all)."""
        resolve_layer_data(root, files, self.layers, mode, block_size, spool)
        self.drop_pages()

    def drop_pages(self) -> None:
        """Give back the pages of the source images read so far (Image.drop_pages)."""
        for layer in self.layers:
            layer.image.drop_pages()

    def contents(self, files: dict[TreeInode, LayerFile]
                 ) -> Callable[[TreeInode], Iterable[bytes] | None]:
        """A file's bytes as its source image reads them (None: not from an image)."""
        def read(node: TreeInode) -> Iterable[bytes] | None:
            found = files.get(node)
            if found is None:
                return None
            img = self.layers[found.layer].image
            return img.iter_data(found.inode(img))
        return read

    def devices(self) -> list[ExtraDevice]:
        """One device slot per image (Layer.device_slot), in command-line order."""
        return [layer.device_slot() for layer in self.layers]

    def device_files(self) -> list[str]:
        """The file each slot of devices() is (for reading the merged image back)."""
        return [layer.device or layer.path for layer in self.layers]

    def close(self) -> None:
        for layer in self.layers:
            layer.close()
