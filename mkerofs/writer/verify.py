"""--verify: read a finished image back (no mount) and compare it with its source as the build
options say it should be.

The source is the directory the build walked, or, for tar input, the tree the tar stream gave
(`TarSource`): taken after exclusions, --aufs whiteouts, --ovlfs-strip, -x < 0 and
--file-contexts labels were applied (what the build planned) and before planning consumed it,
with regular files read back through their DataRef (the tar itself, the spool, or zeros), so
the stream is never read twice and stdin works as well as a file."""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import BuildError, ImageError
from ..reader.compare import DirectoryTree, SourceTree, compare_image
from ..reader.image import Image
from ..util import read_xattrs
from .options import BuildOptions, TimeInherit
from .selinux import FileContexts, fs_path, with_label
from .walk import DataRef, Excluder, TreeInode


@dataclass(frozen=True, slots=True)
class SourceStat:
    """A TreeInode's stat fields under os.stat_result's names, as reader.compare reads a
    source's (made only while verifying, before planning puts the planned values there)."""
    st_mode: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_rdev: int

    @classmethod
    def of(cls, node: TreeInode) -> "SourceStat":
        return cls(node.mode, node.uid, node.gid, node.size, node.mtime_ns, node.rdev)


def verify_build(image: str, source: bytes | SourceTree, options: BuildOptions,
                 limit: int = 20) -> None:
    """--verify: read the finished image back without the kernel (every inode, every extent,
    the checksum) and compare it with the source (a directory, or a TarSource) as the options
    say it should be.  The image stays where it is; BuildError lists what is wrong."""
    try:
        # (a blob, or the tar of --tar=i, is read as the device it is; None: no extra device)
        devices = [options.blobdev] if options.blobdev else getattr(source, "devices", None)
        with Image.open(image, offset=options.offset, devices=devices) as img:
            problems = img.verify()
            problems += compare_build(img, source, options, limit=limit)
    except (ImageError, OSError) as err:
        problems = [str(err)]
    if problems:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise BuildError(f"{image}: verification failed (the image was kept):\n  {shown}{more}")


def verify_increment(view, image: str, expected, options: BuildOptions,
                     build_time: int) -> None:
    """--incremental --verify: read the image as the increment makes it (`view`: its bytes,
    an mmap, before IMAGE is changed) and compare it with `expected` (incremental.Expected:
    the base and the source merged).  BuildError (one line: the first difference) if they
    differ."""
    try:
        with Image(view) as img:
            problems = img.verify(own_links=expected.base_nids)
            problems += compare_build(img, expected.source, options, limit=20,
                                      build_time=build_time, compact_time=img.epoch,
                                      as_is=expected.as_is)
    except ImageError as err:
        problems = [str(err)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BuildError(f"{image}: verification failed, the increment was not applied "
                         f"(IMAGE is as it was): {problems[0]}{more}")


def compare_build(img: Image, source, options, *, limit: int = 0,
                  build_time: int | None = None, compact_time: int | None = None,
                  as_is=None) -> list[str]:
    """compare_image with the expectations a build with `options` (BuildOptions) sets: forced
    and shifted owners, the time policy (-T, SOURCE_DATE_EPOCH, --ignore-mtime,
    -Eforce-inode-compact; the build time is read from the image's superblock), excluded
    paths, --hard-dereference, -x < 0 (no xattrs at all) and --file-contexts labels.
    `source` is a directory, or a SourceTree that has exclusions and xattrs applied already
    (a TarSource).  An increment gives its own `build_time` (the image keeps the base's),
    `compact_time` (the base's epoch: what compact inodes show) and `as_is` (compare_image)."""
    if build_time is None:
        build_time = getattr(img, "build_time", img.superblock.epoch)
    inherit = options.effective_time_inherit
    mtime = clamp = compact = None
    if inherit is TimeInherit.FIXED:
        mtime = build_time
    elif inherit is TimeInherit.CLAMP:
        clamp = build_time
    if mtime is None and (options.ignore_mtime or options.force_inode == "compact"):
        compact = build_time if compact_time is None else compact_time
    exclude = None
    if isinstance(source, (str, bytes, os.PathLike)):
        excluder = Excluder(options)
        exclude = excluder.excluded if excluder else None
        source = DirectoryTree(source, _xattr_policy(options))
    return compare_image(img, source, uid=options.force_uid, gid=options.force_gid,
                         uid_offset=options.uid_offset, gid_offset=options.gid_offset,
                         mtime=mtime, clamp_mtime=clamp, compact_mtime=compact,
                         hard_dereference=options.hard_dereference, exclude=exclude,
                         as_is=as_is, limit=limit)


def _xattr_policy(options: BuildOptions):
    """How a directory build changes the xattrs it reads (None: it stores them as they are)."""
    if options.xattr_tolerance < 0:
        return lambda path, rel, mode: []
    if options.file_contexts is None:
        return None
    contexts = FileContexts.load(options.file_contexts)

    def labelled(path, rel, mode):
        label = contexts.lookup(fs_path(rel, options.mount_point), mode)
        return with_label(read_xattrs(path), label)

    return labelled


class TarSource:
    """The tree read from a tar stream, as a reader.compare.SourceTree.

    `capture(root)` must run before planning: plan_inodes takes the directory entries away,
    puts the planned owner, mode, size and mtime in the inode's stat fields, and the xattr
    layout takes the xattr lists.  It keeps what the comparison needs: each path's
    TreeInode (identity: hard links share one; its target and data are read later), its
    stat fields and its xattrs as the build got them."""

    def __init__(self, nodes: dict[bytes, TreeInode], names: dict[bytes, list[bytes]],
                 xattrs: dict[bytes, list[tuple[bytes, bytes]]],
                 stats: dict[int, SourceStat], tar_device: bytes | None = None,
                 contents: Callable[[TreeInode], Iterable[bytes] | None] | None = None,
                 devices: list[str] | None = None, release: Callable[[], None] | None = None):
        self._nodes = nodes
        self._names = names
        self._xattrs = xattrs
        self._stats = stats             # by id(node)
        # --tar=i: the image's extra device is the tar itself
        # (a str: the reader takes bytes as a device's contents, not its name)
        self.devices = [os.fsdecode(tar_device)] if tar_device is not None else devices
        self._contents = contents
        self._release = release

    @classmethod
    def capture(cls, root: TreeInode, tar_device: bytes | None = None, *,
                contents: Callable[[TreeInode], Iterable[bytes] | None] | None = None,
                devices: list[str] | None = None,
                release: Callable[[], None] | None = None) -> "TarSource":
        """`contents` (rebuild mode): a file's bytes as its source image reads them (None:
        read its DataRef); `devices`: the image's extra devices, one per slot; `release`:
        gives back the pages `contents` read through mappings (drop_pages)."""
        nodes: dict[bytes, TreeInode] = {b"": root}
        names: dict[bytes, list[bytes]] = {}
        xattrs: dict[bytes, list[tuple[bytes, bytes]]] = {b"": root.xattrs}
        stats = {id(root): SourceStat.of(root)}
        pending = deque([(b"", root)])
        while pending:
            rel, directory = pending.popleft()
            names[rel] = [name for name, _child in directory.entries]
            for name, child in directory.entries:
                r = rel + b"/" + name if rel else name
                nodes[r] = child
                xattrs[r] = child.xattrs
                if id(child) not in stats:
                    stats[id(child)] = SourceStat.of(child)
                if child.entries is not None:
                    pending.append((r, child))
        return cls(nodes, names, xattrs, stats, tar_device, contents, devices, release)

    def node(self, rel: bytes) -> TreeInode | None:
        """The TreeInode at `rel` (None: not in the tree)."""
        return self._nodes.get(rel)

    def _node(self, rel: bytes) -> TreeInode:
        node = self._nodes.get(rel)
        if node is None:
            raise FileNotFoundError(2, "not in the tar", os.fsdecode(rel))
        return node

    def describe(self) -> str:
        return "the tar's tree"

    def lstat(self, rel: bytes) -> SourceStat:
        return self._stats[id(self._node(rel))]

    def listdir(self, rel: bytes) -> list[bytes]:
        return list(self._names[rel])

    def inode_key(self, rel: bytes, st: SourceStat) -> int:
        return id(self._node(rel))

    def readlink(self, rel: bytes) -> bytes:
        return self._node(rel).target

    def open(self, rel: bytes) -> "_DataRange | _Pieces":
        node = self._node(rel)
        pieces = self._contents(node) if self._contents is not None else None
        if pieces is not None:
            return _Pieces(pieces)
        return _DataRange(node.data or DataRef(None), self._stats[id(node)].st_size)

    def xattrs(self, rel: bytes, st: SourceStat) -> list[tuple[bytes, bytes]]:
        return list(self._xattrs[rel])     # (a tree shares one empty tuple)

    def drop_pages(self) -> None:
        """(reader.compare calls it as it goes: the source images' pages read so far)"""
        if self._release is not None:
            self._release()


class _DataRange:
    """A tar entry's bytes as a file to read in order: `size` bytes from `ref.offset` of
    `ref.path` (the tar or the spool, holes reading as zeros), or zeros (path None)."""

    def __init__(self, ref: DataRef, size: int):
        self._fd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC) if ref.path is not None else -1
        self._pos = ref.offset
        self._left = size

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        data = os.pread(self._fd, n, self._pos) if self._fd >= 0 else bytes(n)
        self._pos += len(data)
        self._left -= len(data)
        return data

    def __enter__(self) -> "_DataRange":
        return self

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Pieces:
    """Consecutive pieces of bytes (a file decoded as read) as a file to read in order."""

    def __init__(self, pieces: Iterable[bytes]):
        self._pieces = iter(pieces)
        self._buf = b""

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buf += piece
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def __enter__(self) -> "_Pieces":
        return self

    def __exit__(self, *exc) -> None:
        self._pieces = iter(())
