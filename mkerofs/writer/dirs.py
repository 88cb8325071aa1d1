"""Directory data: sorted erofs_dirent blocks, as the kernel's binary search expects them."""
from __future__ import annotations

from dataclasses import dataclass

from ..ondisk import format as fmt


@dataclass
class DirShape:
    """Entries split into blocks; the size depends only on the names, not on the nids."""
    blocks: list[list[tuple[bytes, object]]]   # per block: (name, target inode) in byte order
    size: int                                  # i_size: full blocks + the used part of the last


def shape_directory(entries: list[tuple[bytes, object]], block_size: int) -> DirShape:
    """`entries` must include b'.' and b'..'; every entry is sorted by plain byte comparison."""
    entries = sorted(entries, key=lambda e: e[0])
    blocks: list[list[tuple[bytes, object]]] = []
    current: list[tuple[bytes, object]] = []
    used = 0
    for entry in entries:
        need = fmt.EROFS_DIRENT_SIZE + len(entry[0])
        if used + need > block_size:
            blocks.append(current)
            current, used = [], 0
        current.append(entry)
        used += need
    blocks.append(current)
    return DirShape(blocks, (len(blocks) - 1) * block_size + used)


def render_directory(shape: DirShape, block_size: int, nid_of, ftype_of) -> bytes:
    """The directory's bytes (i_size of them): full blocks zero-padded, the last one not."""
    out = bytearray()
    pack = fmt.EROFS_DIRENT.pack
    for index, block in enumerate(shape.blocks):
        nameoff = fmt.EROFS_DIRENT_SIZE * len(block)
        heads, names = [], []
        for name, inode in block:
            heads.append(pack(nid_of(inode), nameoff, ftype_of(inode), 0))
            names.append(name)
            nameoff += len(name)
        chunk = b"".join(heads) + b"".join(names)
        if index < len(shape.blocks) - 1:
            chunk = chunk.ljust(block_size, b"\0")
        out += chunk
    assert len(out) == shape.size
    return bytes(out)
