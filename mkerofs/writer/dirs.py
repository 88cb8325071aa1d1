"""Directory data: sorted erofs_dirent blocks, as the kernel's binary search expects them."""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

from ..ondisk import format as fmt


@dataclass(slots=True)
class DirShape:
    """Entries split into blocks; the size depends only on the names, not on the nids.

    Kept until the nids are known, for every directory at once: so two flat lists (16 bytes an
    entry), not a tuple per entry (64)."""
    names: list[bytes] | tuple[bytes, ...]     # in byte order
    targets: list[object] | tuple[object, ...]  # each name's inode
    ends: tuple[int, ...]                      # where each block's entries end in names
    size: int                                  # i_size: full blocks + the used part of the last


def shape_sorted(names: list[bytes], targets: list[object], dot: object, dotdot: object,
                 block_size: int) -> DirShape:
    """A directory's shape from its entries' names in plain byte order (with `targets`, each
    name's inode), but for b'.' and b'..' (`dot`, `dotdot`), put in their places here: the
    lists are taken, not copied.  (A name such as b"-" or b".-" sorts before them, so they do
    not simply go first.)"""
    at = bisect_left(names, b".")
    names.insert(at, b".")
    targets.insert(at, dot)
    at = bisect_left(names, b"..", at + 1)
    names.insert(at, b"..")
    targets.insert(at, dotdot)
    return DirShape(names, targets, *block_ends(names, block_size))


# DirShape.ends of one block, by its entry count (no more than a block's dirents: a
# few thousand at most)
_ONE_BLOCK: dict[int, tuple[int]] = {}


def block_ends(names: "list[bytes] | tuple[bytes, ...]", block_size: int
               ) -> tuple[tuple[int, ...], int]:
    """(DirShape.ends, DirShape.size) of a directory's names, all of them in byte order."""
    count = len(names)
    used = fmt.EROFS_DIRENT_SIZE * count + sum(map(len, names))
    if used <= block_size:              # most directories: one block
        # (the ends of a block of `count` entries, shared: a tuple a directory is 48 bytes)
        ends = _ONE_BLOCK.get(count)
        if ends is None:
            ends = _ONE_BLOCK[count] = (count,)
        return ends, used
    ends: list[int] = []
    used = 0
    for i, name in enumerate(names):
        need = fmt.EROFS_DIRENT_SIZE + len(name)
        if used + need > block_size:
            ends.append(i)
            used = 0
        used += need
    ends.append(len(names))
    return tuple(ends), (len(ends) - 1) * block_size + used


def render_directory(shape: DirShape, block_size: int, nid_of, ftype_of) -> bytes:
    """The directory's bytes (i_size of them): full blocks zero-padded, the last one not.
    (Each block's heads are packed at once: per-entry Python work is what a directory costs.)"""
    names, targets = shape.names, shape.targets
    if len(shape.ends) == 1:            # (most directories: one block, no copies of slices)
        return fmt.pack_dirents(list(map(nid_of, targets)),
                                accumulate(map(len, names[:-1]),
                                           initial=fmt.EROFS_DIRENT_SIZE * len(names)),
                                map(ftype_of, targets)) + b"".join(names)
    out = bytearray()
    start = 0
    last = len(shape.ends) - 1
    for index, end in enumerate(shape.ends):
        block_names = names[start:end]
        block_targets = targets[start:end]
        # each name follows the previous one, the first right after the heads
        nameoffs = accumulate(map(len, block_names[:-1]),
                              initial=fmt.EROFS_DIRENT_SIZE * (end - start))
        out += fmt.pack_dirents(list(map(nid_of, block_targets)), nameoffs,
                                map(ftype_of, block_targets))
        out += b"".join(block_names)
        if index < last:
            out += bytes(block_size * (index + 1) - len(out))
        start = end
    assert len(out) == shape.size
    return bytes(out)
