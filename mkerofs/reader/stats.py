"""Statistics of an image, as `mkerofs-read stats` shows them (dump.erofs -S gives the like):
inodes by type, a histogram of regular file sizes, and per algorithm the files, their bytes and
the bytes of the data blocks they own.

A compressed file's algorithm is the HEAD1 algorithm of its map header and its stored size is
its i_u (compressed blocks) times the block size, the same fields the writer's build report
counts, so the two agree on every image mkerofs builds.  Files stored as they are count their
size on both sides.  Each inode is counted once, whatever number of names it has; the packed
inode (-Efragments) is no file and is left out.
"""
from __future__ import annotations

import stat as stat_module
from dataclasses import dataclass, field

from ..ondisk import index
from .image import Image

# inode types by the names the build report uses
_TYPE_NAMES = ((stat_module.S_ISREG, "file"), (stat_module.S_ISDIR, "directory"),
               (stat_module.S_ISLNK, "symlink"), (stat_module.S_ISCHR, "char_device"),
               (stat_module.S_ISBLK, "block_device"), (stat_module.S_ISFIFO, "fifo"),
               (stat_module.S_ISSOCK, "socket"))

# file-size histogram buckets: [0, 1 KiB), then powers of two up to 32 MiB, then the rest
HISTOGRAM_EDGES = (0,) + tuple(1024 << i for i in range(16))


@dataclass
class KindTally:
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def ratio(self) -> float | None:
        return round(self.bytes_out / self.bytes_in, 4) if self.bytes_in else None


@dataclass
class ImageStats:
    inodes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        [name for _test, name in _TYPE_NAMES] + ["total"], 0))
    sizes: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_EDGES))
    data: dict[str, KindTally] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "inodes": dict(self.inodes),
            "file_sizes": [{"from": lo, "to": hi, "files": n}
                           for (lo, hi), n in zip(bucket_bounds(), self.sizes)],
            "data": {"bytes_in": sum(t.bytes_in for t in self.data.values()),
                     "bytes_out": sum(t.bytes_out for t in self.data.values()),
                     "algorithms": {k: {"files": t.files, "bytes_in": t.bytes_in,
                                        "bytes_out": t.bytes_out, "ratio": t.ratio()}
                                    for k, t in sorted(self.data.items())}},
        }


def type_key(mode: int) -> str | None:
    """An inode type by the short name reports use ("file", "directory", "symlink", ...)."""
    return next((name for test, name in _TYPE_NAMES if test(mode)), None)


def bucket_bounds() -> list[tuple[int, int | None]]:
    """(from, to) of each histogram bucket in bytes; to is exclusive, None: no upper bound."""
    edges = HISTOGRAM_EDGES
    return [(lo, edges[i + 1] if i + 1 < len(edges) else None) for i, lo in enumerate(edges)]


def _bucket(size: int) -> int:
    if size < HISTOGRAM_EDGES[1]:
        return 0
    return min(size.bit_length() - HISTOGRAM_EDGES[1].bit_length() + 1, len(HISTOGRAM_EDGES) - 1)


def image_stats(img: Image) -> ImageStats:
    """Walk the whole tree once and count."""
    out = ImageStats()
    seen: set[int] = set()
    bs = img.block_size
    for _path, inode in img.walk():
        if inode.nid in seen:
            continue
        seen.add(inode.nid)
        out.inodes["total"] += 1
        name = type_key(inode.mode)
        if name is not None:
            out.inodes[name] += 1
        if name != "file":
            continue
        out.sizes[_bucket(inode.size)] += 1
        header = img.map_header(inode) if inode.compressed else None
        if header is None:
            kind, stored = index.UNCOMPRESSED, inode.size
        else:
            kind, stored = index.data_kind(header), inode.startblk * bs
        tally = out.data.get(kind)
        if tally is None:
            tally = out.data[kind] = KindTally()
        tally.files += 1
        tally.bytes_in += inode.size
        tally.bytes_out += stored
    return out
