"""Stream file data into the image's data area: block-aligned, holes kept sparse, never whole in memory."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
from itertools import islice
from typing import Callable

from ..ondisk import format as fmt
from ..errors import BuildError
from ..util import PATH_MAX, can_fork, open_path
from .output import Output
from .plan import TreeInode
from .walk import FlatData, InImageRef

_ZERO_CHUNK = bytes(1 << 20)
# FlatData kept for sharing (DataArea._flat): every tail of a 4 KiB block, with and without
# `rewritten`/`written` (a smaller bound made files with tails above it, most of them, one
# FlatData each again: ~56 bytes a file); the cache itself is ~100 bytes an entry at most.
_FLATS_KEPT = 1 << 14
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITTEN = InImageRef(0)        # what take_written leaves a file for its data (in the image)
_RUN_BYTES = 4                  # FlatCopier's queue: the first file of a run, as 4 bytes
_QUEUE_RUNS = 1024              # runs at most: their starts fit in a pipe's PIPE_BUF bytes


def _where(node: TreeInode, path: bytes) -> str:
    return f"{node.display_path()}: {os.fsdecode(path)}"


def _changed(node: TreeInode, detail: str) -> BuildError:
    return BuildError(f"{node.display_path()}: file changed during the build ({detail})")


class DataArea:
    """Hands out consecutive blocks of the data area and copies file contents into them.

    --dsunit=N (mkfs.erofs's data stripe unit, `dsunit`): the blocks of each file's data (of
    regular files, flat or compressed, and of symlinks) begin at a multiple of N, as
    mkfs.erofs maps every DATA buffer; directories, shared xattrs and inline tails are
    metadata there and stay where they fall.  The blocks skipped stay holes, which no inode
    references.  Only a file's first block is aligned: the rest follow it."""

    def __init__(self, out: Output, block_size: int, start_block: int, dsunit: int = 1):
        self.out = out
        self.block_size = block_size
        self.start_block = start_block
        self.next_block = start_block
        self.dsunit = max(dsunit, 1)
        self._copy_file_range = hasattr(os, "copy_file_range")
        self._flats: dict[tuple[int, bool, bool], FlatData] = {}   # (see FlatData)
        self._sources: dict[bytes, int] | None = None       # (see sources_kept_open)

    def allocate(self, nblocks: int) -> int:
        """nblocks more blocks, right after the last ones (the rest of a file, metadata)."""
        start = self.next_block
        if nblocks:             # (+= 0 would still make a new int, kept by every empty file)
            self.next_block += nblocks
        return start

    def allocate_file(self, nblocks: int) -> int:
        """The first nblocks of a file's data: aligned to dsunit when it takes any."""
        if nblocks and self.dsunit > 1:
            self.next_block = fmt.round_up(self.next_block, self.dsunit)
        return self.allocate(nblocks)

    def file_start(self) -> int:
        """Where a file whose size in blocks is not known yet begins (a compressed file, whose
        pclusters come one after another): the next block, aligned to dsunit.  Give the
        skipped blocks back with `rewind` if it ends up taking none."""
        if self.dsunit > 1:
            self.next_block = fmt.round_up(self.next_block, self.dsunit)
        return self.next_block

    def rewind(self, block: int) -> None:
        """Give back every block from `block` on (a file that took none, or is stored flat)."""
        self.next_block = block

    def aligns_chunks(self, chunk_blocks: int) -> bool:
        """Whether chunk-based files (--chunksize) keep the dsunit alignment: only when a chunk
        is at least dsunit blocks, as with mkfs.erofs (smaller chunks, deduplicated, would
        shift every later one; mkfs.erofs warns and ignores dsunit for them).  When it does,
        a chunk-based file's first chunk goes at allocate_file(); the rest at allocate()."""
        return 1 < self.dsunit <= chunk_blocks

    # -- low-level copying ---------------------------------------------------

    def _copy(self, node: TreeInode, src: int, src_pos: int, dst_pos: int, length: int) -> None:
        out = self.out
        end = src_pos + length
        while src_pos < end:
            done = 0
            if self._copy_file_range:
                try:
                    done = os.copy_file_range(src, out.fd, end - src_pos, src_pos,
                                              dst_pos + out.offset)
                except OSError as err:
                    if err.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        self._copy_file_range = False
                        continue
                    if err.errno == errno.ENOSPC:
                        raise BuildError(f"{out.path}: no space left on device") from None
                    raise BuildError(f"{node.display_path()}: {err.strerror}") from None
            else:
                try:
                    chunk = os.pread(src, min(end - src_pos, 1 << 20), src_pos)
                except OSError as err:
                    raise BuildError(f"{node.display_path()}: {err.strerror}") from None
                out.pwrite(chunk, dst_pos)
                done = len(chunk)
            if done == 0:
                raise _changed(node, f"ended at byte {src_pos} of {node.size}")
            src_pos += done
            dst_pos += done

    def _zero(self, dst_pos: int, length: int) -> None:
        while length > 0:
            n = min(length, len(_ZERO_CHUNK))
            self.out.pwrite(memoryview(_ZERO_CHUNK)[:n], dst_pos)
            dst_pos += n
            length -= n

    def _copy_sparse(self, node: TreeInode, src: int, dst_pos: int, length: int,
                     zero_holes: bool = False, base: int = 0) -> None:
        """Copy [base, base + length) of src; holes are skipped on a fresh file, zero-filled on
        a device or when asked to (blocks written before)."""
        zero_holes = zero_holes or self.out.is_device
        end = base + length
        pos = base
        while pos < end:
            try:
                data = os.lseek(src, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno != errno.ENXIO:          # ENXIO: only a hole remains
                    self._copy(node, src, pos, dst_pos + pos - base, end - pos)
                    return
                data = end
            data = min(data, end)
            if data > pos and zero_holes:
                self._zero(dst_pos + pos - base, data - pos)
            if data >= end:
                return
            hole = min(os.lseek(src, data, os.SEEK_HOLE), end)
            self._copy(node, src, data, dst_pos + data - base, hole - data)
            pos = hole

    # -- per-inode -------------------------------------------------------------

    def reserve_flat(self, node: TreeInode, inline_ok: bool,
                     rewritten: bool = False) -> FlatData:
        """Choose a flat layout and reserve its blocks (node.flat); `rewritten`: the blocks
        hold a compressed attempt (FlatData.rewritten).

        node.inline_len reserves the tail's room, so metadata can be placed before the data is
        copied.
        """
        size = node.size
        tail = size % self.block_size if inline_ok else 0
        if size == tail:                # no blocks (most small files): the shared place
            node.datalayout = fmt.EROFS_INODE_FLAT_INLINE if tail else fmt.EROFS_INODE_FLAT_PLAIN
            node.i_u = fmt.EROFS_NULL_ADDR_32
            return self._set_flat(node, tail, rewritten)
        nblocks = fmt.round_up(size - tail, self.block_size) // self.block_size
        # (directories are metadata to mkfs.erofs: never aligned to dsunit)
        start = self.allocate(nblocks) if node.ftype == fmt.EROFS_FT_DIR else \
            self.allocate_file(nblocks)
        node.datalayout = fmt.EROFS_INODE_FLAT_INLINE if tail else fmt.EROFS_INODE_FLAT_PLAIN
        node.i_u = start
        return self._set_flat(node, tail, rewritten)

    def _set_flat(self, node: TreeInode, tail: int, rewritten: bool) -> FlatData:
        # (its inline_len is the shared FlatData's tail: no int object a file)
        flat = node.flat = self._flat(tail, rewritten)
        return flat

    def _flat(self, tail: int, rewritten: bool = False, written: bool = False) -> FlatData:
        """The FlatData of these fields, shared with the other inodes that have them."""
        key = (tail, rewritten, written)
        flat = self._flats.get(key)
        if flat is None:
            if len(self._flats) > _FLATS_KEPT:
                self._flats.clear()
            flat = self._flats[key] = FlatData(tail, rewritten, written)
        return flat

    def take_written(self, node: TreeInode) -> None:
        """The flat layout of a regular file whose body is in the image already (its DataRef
        is in_image: --sort=none from a stream), at the block where it was written."""
        start = node.data.offset // self.block_size
        # (its place is the node's now: the ref and its offset, 72 bytes a file, let go)
        node.data = _WRITTEN
        node.datalayout = fmt.EROFS_INODE_FLAT_PLAIN
        node.i_u = start
        node.flat = self._flat(0, written=True)

    def copy_regular(self, node: TreeInode, tail_view: memoryview) -> None:
        """Copy a regular file to its reserved place (node.flat): the body to its blocks, the
        tail into `tail_view` (its place in the metadata image).

        Safe to run in several threads at once: it touches only this file's blocks and node.
        Holes are written when the blocks may hold old bytes (a compressed attempt).
        (Most files are small, so the system calls a file are its cost: a tail-only file
        takes three, open, preadv and close; a file with a body adds fstat and the copy, and
        looks for holes only when it has fewer blocks on disk than bytes.)
        """
        ref = node.data
        if ref is not None:
            self._copy_range(node, ref.path, ref.offset, tail_view)
            return
        size = node.size
        path = node.path
        try:
            src = os.open(path, _O_READ) if len(path) < PATH_MAX else open_path(path, _O_READ)
        except OSError as err:
            raise BuildError(f"{node.display_path()}: {err.strerror}") from None
        try:
            tail = node.flat.tail
            if size != tail:
                st = os.fstat(src)
                if st.st_size != size:
                    raise _changed(node, f"size was {size}, now {st.st_size}")
                # (a file with as many bytes on disk as it is long has no holes to keep)
                self._copy_body(node, src, 0, dense=st.st_blocks * 512 >= size)
            # one byte more than the tail: there is none unless the file grew
            got = os.preadv(src, [tail_view, bytearray(1)], size - tail)
            if got != tail:
                raise _changed(node, f"size is no longer {size}")
        except OSError as err:
            raise BuildError(f"{node.display_path()}: {err.strerror}") from None
        finally:
            os.close(src)

    def _copy_body(self, node: TreeInode, src: int, base: int, dense: bool = False) -> None:
        """The blocks of node.flat from `base` of src, the last one padded with zeros; `dense`:
        src has no holes there (copied without looking for them)."""
        bs = self.block_size
        start = node.i_u * bs
        body = node.size - node.flat.tail
        if body:
            if dense:
                self._copy(node, src, base, start, body)
            else:
                self._copy_sparse(node, src, start, body, node.flat.rewritten, base)
            if body % bs:
                self._zero(start + body, bs - body % bs)

    def _copy_range(self, node: TreeInode, path: bytes | None, base: int,
                    tail_view: memoryview) -> None:
        """Copy a file whose bytes are a range of another file (walk.DataRef: tar input).  The
        range is read exactly (the bytes after it are another entry's); path None: an empty
        file (other files of zeros are chunk-based holes, see chunks.make_hole_files)."""
        tail = node.flat.tail
        if path is None:
            assert not node.size, "a file of zeros left flat"
            return
        try:
            src = self._open_source(path)
            try:
                self._copy_body(node, src, base)
                got = os.preadv(src, [tail_view], base + node.size - tail) if tail else 0
            finally:
                if self._sources is None:
                    os.close(src)
        except OSError as err:
            raise BuildError(f"{_where(node, path)}: {err.strerror}") from None
        if got != tail:
            raise BuildError(f"{_where(node, path)}: ends inside this file's data (changed "
                             "during the build?)")

    def _open_source(self, path: bytes) -> int:
        """A descriptor of `path`, a file other files' bytes are ranges of: opened once while
        sources_kept_open, else for this file only."""
        sources = self._sources
        if sources is None:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        src = sources.get(path)
        if src is None:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            kept = sources.setdefault(path, src)     # (another thread may have opened it)
            if kept != src:
                os.close(src)
                src = kept
        return src

    @contextlib.contextmanager
    def sources_kept_open(self):
        """Within: each file that regular files' bytes are ranges of (a tar or its spool, a
        layer image) is opened once, not once a file (tens of thousands of opens and closes),
        and closed on leaving.  A forked copier's own descriptors go when it exits."""
        self._sources = {}
        try:
            yield
        finally:
            sources, self._sources = self._sources, None
            for src in sources.values():
                os.close(src)

    def write_flat_body(self, node: TreeInode, data: bytes) -> bytes:
        """Store in-memory content (a symlink target, a directory) in its reserved blocks;
        the tail, to go inline, is returned."""
        assert len(data) == node.size
        body = len(data) - node.flat.tail
        if body:
            self.out.pwrite(data[:body].ljust(fmt.round_up(body, self.block_size), b"\0"),
                            node.i_u * self.block_size)
        return data[body:]


def inline_fits(node: TreeInode, size: int, block_size: int) -> bool:
    """Whether the tail can sit after inode + xattrs without crossing a block boundary."""
    tail = size % block_size
    return tail > 0 and node.meta_size_before_inline + tail <= block_size


def fork_copier(work: Callable[[], object], report: int, *inherited: int,
                doing: str = "copying file data") -> int:
    """Fork a process that closes the `inherited` descriptors, runs `work` (SIGINT ignored:
    the parent stops it) and exits, with 0, or with 1 once it has written what failed as a
    line to `report` (`doing`: what it was doing); its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in inherited:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        work()
        code = 0
    except BaseException as err:
        message = str(err) if isinstance(err, BuildError) else (
            f"{doing}: {type(err).__name__}: {err}")
        os.write(report, message.encode(errors="replace")[:4000] + b"\n")
    finally:
        os._exit(code)


def reap_copiers(pids: list[int], errors: int, *, kill: bool, doing: str) -> None:
    """Wait for processes of fork_copier (SIGKILLed first with `kill`) and close `errors`, the
    read end of their report pipe; unless they were killed, BuildError with the first failure
    reported, or naming the exit code of one that died (`doing`: what they were doing)."""
    if kill:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    left = list(pids)
    failed = []
    try:
        with os.fdopen(errors, "rb") as pipe:
            reports = pipe.read().decode(errors="replace").splitlines()
        while left:
            _pid, status = os.waitpid(left[0], 0)
            del left[0]
            if status:
                failed.append(os.waitstatus_to_exitcode(status))
    except BaseException:
        # (Ctrl-C while waiting: those still running would go on writing, then stay zombies)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        for pid in left:
            os.waitpid(pid, 0)
        raise
    if kill:
        return
    if reports:
        raise BuildError(reports[0])
    if failed:
        raise BuildError(f"a process {doing} died (exit code {failed[0]})")


class FlatCopier:
    """Copies regular files (the nodes `wanted` picks, for DataArea.copy_regular, each with the
    tail view `view_of(node)` gives, made only when its turn comes: a memoryview is ~200 bytes,
    too many to hold one per file) while the calling thread goes on: in forked processes, which
    take runs of files from one queue as they go (see _queue), write the blocks themselves and
    read the tails straight into the metadata image (shared memory, see meta.MetaImage); in
    threads where forking is not safe; here with one worker.  Leaving the `with` block waits
    and raises the first failure.

    Processes, not threads: most files are small, so the copy is mostly Python work per file,
    and threads would contend with the calling thread for the GIL (slower than one thread)."""

    BATCH = 128
    RUN = 512               # consecutive nodes a forked child takes at least, in a run

    def __init__(self, data: DataArea, workers: int, view_of):
        self.data = data
        self.view_of = view_of
        self.workers = workers
        self.pids: list[int] = []
        self.errors = -1                # read end of the children's error pipe
        self.pool = None
        self.futures: list = []
        self.run = self.RUN             # nodes a run of the queue (see _queue)
        self.wanted: Callable[[TreeInode], bool] = bool     # (see start)

    def start(self, nodes: list, wanted: Callable[[TreeInode], bool]) -> None:
        """Copy the nodes of `nodes` that `wanted` picks: picked where they are copied (a
        list of them, 8 bytes a file, would be held by this process and every child at the
        peak of a build).  Runs and batches are of `nodes`."""
        self.wanted = wanted
        if self.workers <= 1 or len(list(islice(filter(wanted, nodes), 2))) < 2:
            self._run(nodes)
        elif can_fork():
            self._fork(nodes)
        else:
            # (loaded only here: a build that can fork never needs it)
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(max_workers=self.workers)
            for i in range(0, len(nodes), self.BATCH):
                self.futures.append(self.pool.submit(self._run, nodes[i:i + self.BATCH]))

    def _run(self, nodes) -> None:
        copy, view_of = self.data.copy_regular, self.view_of
        for node in filter(self.wanted, nodes):
            copy(node, view_of(node))

    def _fork(self, nodes: list) -> None:
        queue = self._queue(nodes)
        try:
            self.errors, report = os.pipe()
            try:
                for _k in range(self.workers):
                    # (the child copies the files of runs of nodes, then exits)
                    self.pids.append(fork_copier(lambda: self._take_runs(nodes, queue),
                                                 report, self.errors))
            finally:
                os.close(report)
        finally:
            os.close(queue)

    def _queue(self, nodes: list) -> int:
        """The read end of a pipe holding the start of every run of consecutive nodes (its
        write end closed: a read at the end finds nothing).  The children take runs from it
        as they go, so that one that is given the larger files, or less of the CPU, does not
        finish long after the others (with every workers-th run each, one child was seen
        copying alone for a quarter of the copy).  Runs, not single files, so that each child
        touches the memory of its own files only (the nodes of consecutive files sit
        together, and so do their inodes in the metadata image): after fork, every page of
        objects or metadata that two processes write is copied or faulted in by both."""
        self.run = max(self.RUN, -(-len(nodes) // _QUEUE_RUNS))
        starts = b"".join(at.to_bytes(_RUN_BYTES, "little")
                          for at in range(0, len(nodes), self.run))
        take, put = os.pipe()
        try:
            os.write(put, starts)       # (fits: a pipe holds at least PIPE_BUF bytes)
        except BaseException:
            os.close(take)
            raise
        finally:
            os.close(put)
        return take

    def _take_runs(self, nodes: list, queue: int) -> None:
        """Copy the runs read from `queue` until it is empty (a read of a pipe's few bytes
        is atomic: each run goes to one child)."""
        run = self.run
        while start := os.read(queue, _RUN_BYTES):
            at = int.from_bytes(start, "little")
            self._run(nodes[at:at + run])

    def __enter__(self) -> "FlatCopier":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pids:
            self._wait_children(kill=exc_type is not None)
        if self.pool is not None:
            try:
                for future in self.futures:
                    if exc_type is not None:
                        future.cancel()
                    else:
                        future.result()
            finally:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def _wait_children(self, kill: bool) -> None:
        pids, self.pids = self.pids, []
        reap_copiers(pids, self.errors, kill=kill, doing="copying file data")
