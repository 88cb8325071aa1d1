"""Place inodes (with their xattrs and inline data) in the metadata area and serialize them."""
from __future__ import annotations

import bisect
import errno
import functools
import mmap
import os
from typing import Callable

from ..ondisk import format as fmt
from ..errors import BuildError
from ..util import PageBudget
from .chunks import PendingIndexes
from .output import Output
from .plan import TreeInode


class MetaAllocator:
    """Hands out 32-byte-aligned slots; an item no larger than a block never crosses a block boundary.

    Space skipped at the end of a block is remembered and reused by later items that fit (best fit),
    so moving an inode with an inline tail to the next block wastes little.
    """

    def __init__(self, block_size: int, frontier: int):
        self.block_size = block_size
        self.frontier = frontier
        self._gaps: dict[int, list[int]] = {}     # free slots -> positions
        self._gap_sizes: list[int] = []           # sorted keys of _gaps

    def _add_gap(self, pos: int, nbytes: int) -> None:
        slots = nbytes // fmt.EROFS_ISLOT_SIZE
        if slots <= 0:
            return
        if slots not in self._gaps:
            self._gaps[slots] = []
            bisect.insort(self._gap_sizes, slots)
        self._gaps[slots].append(pos)

    def _take_gap(self, slots: int) -> int | None:
        i = bisect.bisect_left(self._gap_sizes, slots)
        if i == len(self._gap_sizes):
            return None
        have = self._gap_sizes[i]
        positions = self._gaps[have]
        pos = positions.pop()
        if not positions:
            del self._gaps[have]
            self._gap_sizes.pop(i)
        self._add_gap(pos + slots * fmt.EROFS_ISLOT_SIZE, (have - slots) * fmt.EROFS_ISLOT_SIZE)
        return pos

    def place(self, nbytes: int, tail: int = 0) -> int:
        """Position for an item of `nbytes`; its last `tail` bytes (an inline compressed
        pcluster) never cross a block boundary, even when the item is larger than a block."""
        bs = self.block_size
        slots = -(-nbytes // fmt.EROFS_ISLOT_SIZE)
        if nbytes <= bs:
            if self._gap_sizes and self._gap_sizes[-1] >= slots:
                return self._take_gap(slots)
            room = bs - self.frontier % bs
            if nbytes > room:
                self._add_gap(self.frontier, room)
                self.frontier += room
        pos = self.frontier
        if tail and nbytes > bs:
            # The tail must neither cross a block boundary nor begin on one (the kernel fails
            # to find a compressed stream that starts a block smaller than a page).
            head = nbytes - tail
            off = (pos + head) % bs
            if off == 0 or off + tail > bs:
                # move on until the tail begins just after a block boundary (not on it)
                boundary = pos + head - off + (bs if off else 0)
                moved = fmt.round_up(boundary - head, fmt.EROFS_ISLOT_SIZE)
                if moved + head == boundary:
                    moved += fmt.EROFS_ISLOT_SIZE
                while pos < moved:
                    piece = min(moved, pos - pos % bs + bs) - pos
                    self._add_gap(pos, piece)
                    pos += piece
            off = (pos + head) % bs
            assert 0 < off and off + tail <= bs, "inline tail too large for a block"
        self.frontier = pos + slots * fmt.EROFS_ISLOT_SIZE
        return pos

    def jump_to(self, pos: int) -> None:
        """Continue at `pos` (a block boundary), keeping the rest of the current block as a gap."""
        room = (-self.frontier) % self.block_size
        self._add_gap(self.frontier, room)
        self.frontier = pos


def item_size(node: TreeInode) -> int:
    return node.meta_size_before_inline + node.inline_len


def place_inode(alloc: MetaAllocator, node: TreeInode, meta_base: int = 0) -> int:
    """Place `node`, keeping its inline pcluster (node.inline_tail) within one block."""
    flat = node.flat
    if flat is not None:        # (most inodes: a flat layout, no inline pcluster)
        pos = alloc.place(node.meta_size_before_inline + flat.tail)
    else:
        pos = alloc.place(node.meta_size_before_inline + node.inline_len, node.inline_tail)
    node.nid = (pos - meta_base) >> fmt.EROFS_ISLOTBITS
    return pos


def place_inodes(alloc: MetaAllocator, nodes: list[TreeInode], meta_base: int = 0,
                 skip: TreeInode | None = None) -> None:
    """place_inode of every node but `skip`, in order.  (An item that fits in what is left
    of the current block, when no gap would take it, goes at the frontier: the answer
    MetaAllocator.place gives, without its call nor place_inode's, for nearly every inode.)"""
    bs = alloc.block_size
    slot_bits = fmt.EROFS_ISLOTBITS
    frontier = alloc.frontier
    gaps = alloc._gap_sizes
    widest = gaps[-1] if gaps else 0        # (slots of the largest gap)
    for node in nodes:
        if node is skip:
            continue
        flat = node.flat
        if flat is not None:
            nbytes = node.meta_size_before_inline + flat.tail
        else:
            inline = node.entries           # (node.inline_len, without the property's call)
            nbytes = node.meta_size_before_inline + (len(inline) if type(inline) is bytes
                                                     else 0)
        slots = -(-nbytes >> slot_bits)
        if slots > widest and nbytes <= bs - frontier % bs:
            pos = frontier
            frontier += slots << slot_bits
        else:
            alloc.frontier = frontier
            pos = alloc.place(nbytes, 0 if flat is not None else node.inline_tail)
            frontier = alloc.frontier
            widest = gaps[-1] if gaps else 0
        node.nid = (pos - meta_base) >> slot_bits
    alloc.frontier = frontier


def node_pos(node: TreeInode, meta_base: int = 0) -> int:
    """Byte offset of an inode in the image (nids count 32-byte slots from meta_blkaddr)."""
    return meta_base + (node.nid << fmt.EROFS_ISLOTBITS)


def serialize_inode(node: TreeInode, ino: int, epoch: int) -> bytes:
    """The inode, its xattr ibody and inline bytes; `ino` is its number (Plan.inodes)."""
    ibody = node.xattr_ibody
    return fmt.pack_inode(node.extended, node.datalayout,
                          fmt.xattr_icount(len(ibody)) if ibody else 0, node.mode, node.nlink,
                          node.size, node.i_u, ino, node.uid, node.gid, node.mtime_ns,
                          epoch) + ibody + node.inline


# Pages of inodes written between two counts towards letting go of the metadata pages (a
# count is a call)
_COUNT_EVERY = 16
_PAGE_BITS = (mmap.PAGESIZE - 1).bit_length()


def put_inodes(meta: "MetaImage", nodes: list[TreeInode], first_ino: int, epoch: int,
               meta_base: int = 0, skip: TreeInode | None = None,
               render: Callable[[TreeInode], bytes] | None = None,
               pending: PendingIndexes | None = None) -> None:
    """Write every node but `skip` (its inode, xattr ibody and inline bytes: what
    serialize_inode gives) into its place in `meta`, node i numbered first_ino + i.
    Each is packed straight into the metadata area: no bytes object an inode.  Only the
    node's own bytes are written: a copier may be filling its tail meanwhile.
    `render(node)`, when given, writes a directory's or a symlink's blocks and gives its
    inline bytes there and then (no directory's tail is kept until its inode is written,
    and no other pass over the nodes finds the symlinks).  `pending`: the chunk indexes
    index_tar_files left to pack here (chunks.PendingIndexes)."""
    pack_into = fmt.pack_inode_into
    # (most inodes are compact: packed here, not through pack_inode_into, a call less each)
    compact = fmt.EROFS_INODE_COMPACT.pack_into
    compact_size, layout_bit = fmt.EROFS_INODE_COMPACT_SIZE, fmt.EROFS_I_DATALAYOUT_BIT
    icount = fmt.xattr_icount
    head, head_end = meta.head, len(meta.head)
    tail, tail_start = meta.tail_view, meta.tail_start
    written = meta.pages_written
    bits = fmt.EROFS_ISLOTBITS
    page_bits = _PAGE_BITS
    directory, symlink = fmt.EROFS_FT_DIR, fmt.EROFS_FT_SYMLINK
    extended_size = fmt.EROFS_INODE_EXTENDED_SIZE
    counted = 0
    page = -1
    unpadded = padded = None
    if pending is not None:
        (unpadded, padded), index_bits, device_id = pending
        index_into = fmt.EROFS_INODE_CHUNK_INDEX.pack_into
    for ino, node in enumerate(nodes, first_ino):
        if node is skip:
            continue
        pos = meta_base + (node.nid << bits)
        if pos < head_end:
            buf = head
        else:
            assert pos >= tail_start, "metadata item straddles the data area"
            buf = tail
            pos -= tail_start
            # (counted by the pages written, not the inodes: an inode with a tail of up to a
            # block takes a page of its own, most inodes without one share it with 63 others)
            if pos >> page_bits != page:
                page = pos >> page_bits
                counted += 1
                if counted == _COUNT_EVERY:
                    written(counted)
                    counted = 0
        ibody = node.xattrs         # (node.xattr_ibody, without a property's call)
        if type(ibody) is not bytes:
            ibody = b""
        # (node.extended and node.inline, every inode, without their properties' calls: the
        # inode's own part of meta_size_before_inline; the entries slot, None or the bytes)
        if node.meta_size_before_inline - len(ibody) == extended_size:
            end = pack_into(buf, pos, True, node.datalayout,
                            icount(len(ibody)) if ibody else 0, node.mode, node.nlink,
                            node.size, node.i_u, ino, node.uid, node.gid, node.mtime_ns, epoch)
        else:
            compact(buf, pos, node.datalayout << layout_bit, icount(len(ibody)) if ibody else 0,
                    node.mode, node.nlink, node.size, node.mtime_ns // 1_000_000_000 - epoch,
                    node.i_u, ino, node.uid, node.gid, 0)
            end = pos + compact_size
        if ibody:           # (most inodes have neither)
            buf[end:end + len(ibody)] = ibody
            end += len(ibody)
        ftype = node.ftype
        inline = render(node) if render is not None and (ftype == directory or
                                                          ftype == symlink) else node.entries
        if inline:
            # (a pending chunk index: below 2^32, startblk_hi 0; its padding zeros as found)
            if inline is unpadded:
                index_into(buf, end, 0, device_id, node.data >> index_bits)
            elif inline is padded:
                index_into(buf, end + 4, 0, device_id, node.data >> index_bits)
            else:
                buf[end:end + len(inline)] = inline
    if counted:
        written(counted)


# Items written (a copier's tails, each within a block), or pages of inodes (put_inodes),
# between two releases of the metadata pages a process holds (file-backed only): about this
# many pages at most (1 MiB, 64 KiB) stay mapped per process, whatever the image's size.
# (Each release costs a madvise call, ~15 us, and a fault on the next page written; the
# copiers are what a build waits for, put_inodes runs while they copy.  With 1024 items and
# inodes counted as items, the bench's rebuild --clean=data held ~2 MiB more at its peak in
# each process; with 64 pages of inodes, ~0.15 MiB more at the tar rows' and rebuild's
# peak, which is put_inodes', for ~45 madvise calls less on 60,000 inodes.)
_RELEASE_EVERY = 256
_RELEASE_PAGES = 16
_HASH_CHUNK = 32 << 20


def _shared_zeros(n: int):
    # an anonymous shared mapping: forked copiers read file tails straight into it
    return mmap.mmap(-1, n) if n > 0 else bytearray()


def _map_image(out: Output, pos: int, length: int) -> tuple[mmap.mmap, int] | None:
    """A shared mapping of the image file over [pos, pos + length) (and the bytes before pos
    on its first page: their count is returned), its blocks allocated; None where the file
    cannot be mapped."""
    at = out.offset + pos
    skip = at % mmap.ALLOCATIONGRANULARITY
    try:
        # (allocated now: a full disk is an error here, not a SIGBUS on a write to the mapping)
        os.posix_fallocate(out.fd, at, length)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise BuildError(f"{out.path}: no space left on device") from None
        return None
    try:
        mapped = mmap.mmap(out.fd, skip + length, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE, offset=at - skip)
    except (OSError, ValueError):
        return None
    # No read-ahead: a fault then maps one page, not a large folio of the page cache (up to
    # 2 MiB), which would keep far more than _RELEASE_EVERY items' pages mapped.
    mapped.madvise(mmap.MADV_RANDOM)
    return mapped, skip


class MetaImage:
    """The metadata bytes, kept as two regions: the head (superblock block) and the tail area,
    both in memory shared with processes forked later (copiers read file tails into them).

    Given the image's Output (a fresh file, not a device: the tail area must read as zeros),
    the tail area is a shared mapping of the image file itself: each process lets go of the
    pages it wrote every _RELEASE_EVERY items (they stay in the page cache, written back by
    the kernel), so a million-inode image does not hold its whole metadata area (~150 bytes
    an inode) in any process.  Otherwise it is anonymous memory, written out by write_out."""

    def __init__(self, head_end: int, tail_start: int, tail_end: int,
                 out: Output | None = None):
        self.head = _shared_zeros(head_end)
        self.tail_start = tail_start
        length = max(0, tail_end - tail_start)
        mapped = _map_image(out, tail_start, length) if out is not None and length \
            and not out.is_device else None
        self.in_file = mapped is not None
        if mapped is not None:
            self._map, skip = mapped
        else:
            self._map, skip = _shared_zeros(length), 0
        self._head_view = memoryview(self.head)
        self.tail_view = memoryview(self._map)[skip:skip + length]
        # (a shared file mapping: the bytes let go of are in the page cache, nothing is lost)
        drops = (functools.partial(self._map.madvise, mmap.MADV_DONTNEED),) if self.in_file else ()
        # written(n): n more items written in the tail area (its pages are let go of every
        # _RELEASE_EVERY items); pages_written(n): n more pages of inodes (every
        # _RELEASE_PAGES)
        self.written = PageBudget(_RELEASE_EVERY, *drops).spend
        self.pages_written = PageBudget(_RELEASE_PAGES, *drops).spend

    def view(self, pos: int, length: int) -> memoryview:
        """A writable window on [pos, pos + length) of the image's metadata."""
        if pos + length <= len(self.head):
            return self._head_view[pos:pos + length]
        assert pos >= self.tail_start, "metadata item straddles the data area"
        self.written()
        rel = pos - self.tail_start
        return self.tail_view[rel:rel + length]

    def put(self, pos: int, data: bytes) -> None:
        """Put `data` (an item, counted towards letting go of pages) at `pos`."""
        if pos + len(data) <= len(self.head):
            self.head[pos:pos + len(data)] = data
            return
        assert pos >= self.tail_start, "metadata item straddles the data area"
        self.written()
        rel = pos - self.tail_start
        self.tail_view[rel:rel + len(data)] = data

    def hash_into(self, digest) -> None:
        """Feed the head, then the tail area, to `digest` (a hashlib object), a chunk at a
        time (a file-backed tail is let go of as it is read)."""
        digest.update(self.head)
        tail = self.tail_view
        for at in range(0, len(tail), _HASH_CHUNK):
            digest.update(tail[at:at + _HASH_CHUNK])
            if self.in_file:
                self._map.madvise(mmap.MADV_DONTNEED)

    def write_out(self, out: Output) -> None:
        """Put the metadata in the image: the head, and the tail area unless it is the image
        file already; the tail area is then closed."""
        if self.head:
            out.pwrite(self.head, 0)
        if not self.in_file and len(self.tail_view):
            out.pwrite(self.tail_view, self.tail_start)
        self.tail_view.release()
        if isinstance(self._map, mmap.mmap):
            self._map.close()
