"""Directory data: sorted erofs_dirent blocks, as the kernel's binary search expects them."""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from ..ondisk import format as fmt

_BY_NAME = itemgetter(0)


@dataclass(slots=True)
class DirShape:
    """Entries split into blocks; the size depends only on the names, not on the nids.

    Kept until the nids are known, for every directory at once: so two flat lists (16 bytes an
    entry), not a tuple per entry (64)."""
    names: list[bytes]                         # in byte order
    targets: list[object]                      # each name's inode
    ends: list[int]                            # where each block's entries end in names
    size: int                                  # i_size: full blocks + the used part of the last


def shape_directory(entries: list[tuple[bytes, object]], block_size: int) -> DirShape:
    """`entries` must include b'.' and b'..'; every entry is sorted by plain byte comparison."""
    entries = sorted(entries, key=_BY_NAME)
    names = [name for name, _ in entries]
    ends: list[int] = []
    used = 0
    for i, name in enumerate(names):
        need = fmt.EROFS_DIRENT_SIZE + len(name)
        if used + need > block_size:
            ends.append(i)
            used = 0
        used += need
    ends.append(len(names))
    return DirShape(names, [target for _, target in entries], ends,
                    (len(ends) - 1) * block_size + used)


def render_directory(shape: DirShape, block_size: int, nid_of, ftype_of) -> bytes:
    """The directory's bytes (i_size of them): full blocks zero-padded, the last one not."""
    out = bytearray()
    pack = fmt.EROFS_DIRENT.pack
    names, targets = shape.names, shape.targets
    start = 0
    last = len(shape.ends) - 1
    for index, end in enumerate(shape.ends):
        nameoff = fmt.EROFS_DIRENT_SIZE * (end - start)
        heads = []
        for i in range(start, end):
            inode = targets[i]
            heads.append(pack(nid_of(inode), nameoff, ftype_of(inode), 0))
            nameoff += len(names[i])
        chunk = b"".join(heads) + b"".join(names[start:end])
        if index < last:
            chunk = chunk.ljust(block_size, b"\0")
        out += chunk
        start = end
    assert len(out) == shape.size
    return bytes(out)
