"""What a build did, for people and for scripts: BuildReport, which build() fills and returns
in its BuildResult, and BuildProgress, which a progress display polls from another thread.

Nothing here runs per file while the image is being built.  The report's counts are gathered
in one pass over the planned inodes once the layout is done (tally_inodes); the few counters
kept during the build (dedupe and fragment savings, input bytes compressed) are bumped per
batch or per shared cluster, never per file.  A compressed file's algorithm is read back from
its map header (h_algorithmtype, HEAD1), the same field a reader of the image sees, and its
stored size is its i_u (blocks of compressed data), so `mkerofs-read stats` gives the same
numbers from the image.

The report's keys (to_dict) are documented in the README and kept stable: new keys may be
added, none renamed or removed without raising REPORT_VERSION.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import resource
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..ondisk import format as fmt

REPORT_VERSION = 1

# inode types by the names the report uses (EROFS_FT_* as the kernel numbers them)
TYPE_NAMES = {fmt.EROFS_FT_REG_FILE: "file", fmt.EROFS_FT_DIR: "directory",
              fmt.EROFS_FT_SYMLINK: "symlink", fmt.EROFS_FT_CHRDEV: "char_device",
              fmt.EROFS_FT_BLKDEV: "block_device", fmt.EROFS_FT_FIFO: "fifo",
              fmt.EROFS_FT_SOCK: "socket"}



@dataclass
class AlgorithmTally:
    """Regular files stored with one algorithm: how many, their bytes, the bytes of the data
    blocks they own (i_u; data shared through dedupe or kept inline or in fragments is not
    counted again)."""
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def ratio(self) -> float | None:
        return round(self.bytes_out / self.bytes_in, 4) if self.bytes_in else None


@dataclass
class BuildReport:
    """What build() did; `to_dict()` is the JSON of `mkerofs --report`."""
    image: str = ""
    options: dict = field(default_factory=dict)
    block_size: int = 0
    blocks: int = 0
    metadata_blocks: int = 0        # blocks outside the data area: superblock, inodes, inline
                                    # tails, indexes (the data area holds file, directory and
                                    # symlink blocks and the shared xattrs)
    uuid: str = ""
    inodes: dict[str, int] = field(default_factory=dict)      # by TYPE_NAMES, and "total"
    data: dict[str, AlgorithmTally] = field(default_factory=dict)   # by algorithm name
    dedupe_bytes: int = 0           # -Ededupe: source bytes of clusters stored once for
                                    # several extents (mkfs.erofs's "deduplicated bytes");
                                    # with chunks: bytes of chunks stored already or all zeros
    dedupe_blocks: int = 0          # the blocks not written for them
    fragment_bytes: int = 0         # -Efragments: bytes in the packed inode, uncompressed
    fragment_shared_bytes: int = 0  # fragment bytes stored once for several files
    phases: dict[str, float] = field(default_factory=dict)     # seconds, in build order
    peak_rss_bytes: int = 0         # of the main process
    peak_rss_workers_bytes: int = 0  # of the largest worker process that ended
    base_inodes: int | None = None  # --incremental: the base's inode count (`inodes` and
    base_blocks: int = 0            # `metadata_blocks` count what the increment added)

    @contextlib.contextmanager
    def phase(self, name: str, progress: "BuildProgress | None" = None):
        """Time one phase of the build (and tell a progress display it started)."""
        if progress is not None:
            progress.stage(name)
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.monotonic() - started,
                                      6)

    @property
    def image_bytes(self) -> int:
        return self.blocks * self.block_size

    def note_memory(self) -> None:
        # ru_maxrss is in KiB on Linux
        self.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_rss_workers_bytes = \
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    def to_dict(self) -> dict:
        total_in = sum(t.bytes_in for t in self.data.values())
        total_out = sum(t.bytes_out for t in self.data.values())
        return {
            "report_version": REPORT_VERSION,
            "image": self.image,
            "options": self.options,
            "uuid": self.uuid,
            "block_size": self.block_size,
            "blocks": self.blocks,
            "image_bytes": self.image_bytes,
            "metadata_blocks": self.metadata_blocks,
            "inodes": dict(self.inodes),
            "data": {
                "bytes_in": total_in,
                "bytes_out": total_out,
                "algorithms": {name: dict(dataclasses.asdict(t), ratio=t.ratio())
                               for name, t in sorted(self.data.items())},
            },
            "dedupe": {"bytes": self.dedupe_bytes, "blocks": self.dedupe_blocks,
                       "bytes_saved": self.dedupe_blocks * self.block_size},
            "fragments": {"bytes": self.fragment_bytes,
                          "shared_bytes": self.fragment_shared_bytes},
            "phases": dict(self.phases),
            "seconds": round(sum(self.phases.values()), 6),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_rss_workers_bytes": self.peak_rss_workers_bytes,
            "increment": None if self.base_inodes is None else {
                "base_inodes": self.base_inodes,
                "base_blocks": self.base_blocks,
                "new_inodes": self.inodes.get("total", 0),
                "total_inodes": self.base_inodes + self.inodes.get("total", 0),
            },
        }

    def summary_lines(self) -> list[str]:
        """The end-of-build summary, in the terms mkfs.erofs uses for its own."""
        inodes = self.inodes.get("total", 0)
        if self.base_inodes is None:
            return [
                f"Filesystem UUID: {self.uuid}",
                f"Filesystem total blocks: {self.blocks} (of {self.block_size}-byte blocks)",
                f"Filesystem total inodes: {inodes}",
                f"Filesystem total metadata blocks: {self.metadata_blocks}",
                f"Filesystem total deduplicated bytes (of source files): {self.dedupe_bytes}",
            ]
        return [                    # an increment: the image's totals, and what it added
            f"Filesystem UUID: {self.uuid}",
            f"Filesystem total blocks: {self.blocks} (of {self.block_size}-byte blocks)",
            f"Filesystem total inodes: {self.base_inodes + inodes}",
            f"Filesystem new inodes: {inodes}",
            f"Filesystem new metadata blocks: {self.metadata_blocks}",
            f"Filesystem new deduplicated bytes (of source files): {self.dedupe_bytes}",
        ]


def options_dict(options) -> dict:
    """The build options as JSON values (bytes as text, enums by name)."""
    out = {f.name: _jsonable(getattr(options, f.name)) for f in dataclasses.fields(options)}
    if options.uuid is not None:
        out["uuid"] = str(uuidlib.UUID(bytes=options.uuid))
    return out


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def tally_inodes(report: BuildReport, nodes: Iterable, block_size: int) -> None:
    """Count the planned inodes by type and the regular files' bytes by algorithm: one pass,
    after the layout."""
    # (the index code names a compressed file's row from its map header; only a build that
    # tallies loads it: the command line does for --report alone)
    from ..ondisk import index
    types = dict.fromkeys(TYPE_NAMES, 0)
    data: dict[str, AlgorithmTally] = {}
    flat = AlgorithmTally()
    reg = fmt.EROFS_FT_REG_FILE
    bits = fmt.blksz_bits(block_size)
    total = 0
    for node in nodes:
        total += 1
        ftype = node.ftype
        types[ftype] += 1
        if ftype != reg:
            continue
        if not node.compressed:
            flat.files += 1
            flat.bytes_in += node.size
            continue
        at = fmt.z_erofs_map_header_pos(node.meta_size_before_inline) - \
            node.meta_size_before_inline
        header = node.inline[at:at + fmt.Z_EROFS_MAP_HEADER_SIZE]
        kind = index.data_kind(index.unpack_map_header(header, bits, node.datalayout))
        tally = data.get(kind)
        if tally is None:
            tally = data[kind] = AlgorithmTally()
        tally.files += 1
        tally.bytes_in += node.size
        tally.bytes_out += node.i_u * block_size
    if flat.files:
        flat.bytes_out = flat.bytes_in         # stored as they are
        data[index.UNCOMPRESSED] = flat
    report.inodes = {TYPE_NAMES[t]: n for t, n in types.items()}
    report.inodes["total"] = total
    report.data = data


class BuildProgress:
    """What a build is doing now, for a progress display that polls it from another thread:
    the current stage ("walk", "tar", "plan", "write", "finish", "verify"), its total in bytes
    (None: unknown) and a function giving how far it got.  The build only changes stage (a
    handful of times) and the walk updates `entries` once per directory; the display reads,
    so no per-file call is made on its behalf."""

    def __init__(self):
        self.name = ""
        self.total: int | None = None
        self.done: Callable[[], int] | None = None
        self.entries = 0                # entries walked so far (directory input)
        self.serial = 0                 # bumped at each stage change

    def stage(self, name: str, total: int | None = None,
              done: Callable[[], int] | None = None) -> None:
        self.total, self.done = total, done
        self.name = name
        self.serial += 1


def watch_writing(progress: BuildProgress | None, nodes: Iterable, out, pool) -> None:
    """The write stage, measured in the regular files' bytes: with compression, the input the
    workers finished (counted per batch); without, the blocks the image file has (copies run
    in other processes, so the file itself is what tells)."""
    if progress is None:
        return
    reg = fmt.EROFS_FT_REG_FILE
    total = sum(n.size for n in nodes if n.ftype == reg)
    if pool is not None:
        progress.stage("write", total, lambda: pool.done_bytes)
        return
    start = os.fstat(out.fd).st_blocks * 512

    def written() -> int:
        try:
            return os.fstat(out.fd).st_blocks * 512 - start
        except OSError:             # closed: the stage is over
            return total
    progress.stage("write", total, written)
