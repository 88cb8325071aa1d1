"""Compressing many files: batches of segments go to worker processes (or threads), results are
taken in file order, and each file's pclusters land in consecutive blocks.

    for job, layout in compress_files(jobs, cfg, data_area, workers, processes=True):
        ...   # layout None: store the file flat; else layout.datalayout/.blocks/.inline

Worker processes are forked (they start in milliseconds and inherit the codecs) and write the
pclusters of the files they finished themselves, at the positions this process hands out in
file order: compressed data crosses no pipe, and the per-cluster Python work runs on every
core (threads would contend for the GIL: with LZ4, two threads were slower than one).  What
comes back of such a file is its layout with the indexes encoded for pclusters from block 0
(compress.UnplacedLayout), moved here to the blocks it gets: this process, which also has
every file's metadata to do, has the least work per file (full indexes cannot be moved: the
file's extents come back, compress.FileExtents, and are encoded here).
"""
from __future__ import annotations

import errno
import mmap
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from .compress import (CompressConfig, CompressedLayout, FileCompression, FileExtents,
                       FileProfile, Pcluster, UnplacedLayout)
from ..errors import BuildError
from ..util import can_fork, open_path
from .walk import TreeInode


@dataclass
class FileJob:
    key: object                     # the caller's handle (a TreeInode)
    size: int
    meta_size: int                  # inode + inline xattrs, in bytes
    # read(offset, length, last) -> exactly length bytes; picklable (a FileRange) to let
    # worker processes read the file themselves
    read: Callable[[int, int, bool], bytes]
    profile: FileProfile | None = None     # algorithm and pcluster size (default: -z, -C)
    origin: object = None           # the key it was offered under (CompressionPool.offer)
    # set when the file turned out not worth compressing after some of its pclusters were
    # already written: the blocks handed back hold old bytes (a flat copy must write holes)
    wrote_blocks: bool = False


@dataclass(frozen=True)
class FileRange:
    """A FileJob reader: `size` bytes of a file on disk.

    A file of its own (`offset` None) must keep its size during the build: the last read asks
    for one byte more to notice growth.  A range of a bigger file (tar input: a walk.DataRef,
    the tar itself or a spool file) is read exactly, as the bytes after it are another entry's;
    `path` None reads as zeros (--tar=headerball).  Messages name `name` (the in-archive path)."""
    path: bytes | None
    size: int
    offset: int | None = None
    name: bytes | None = None

    @classmethod
    def of(cls, src: TreeInode, size: int) -> "FileRange":
        """The bytes of a regular file of the source tree, wherever they are."""
        if src.data is None:
            return cls(src.path, size)
        return cls(src.data.path, size, src.data.offset, src.path)

    def error(self, message: str) -> BuildError:
        return BuildError(f"{os.fsdecode(self.name or self.path)}: {message}")

    def __call__(self, offset: int, length: int, last: bool) -> bytes:
        if self.offset is not None:
            return self._read_range(offset, length)
        return self._read_own(offset, length, last, False)[0]

    def read_sparse(self, offset: int, length: int, last: bool) -> tuple[object, list]:
        """As a call (a bytes-like object), and the (start, end) ranges of it that are holes
        of the file (SEEK_HOLE): those are not read, and take no memory."""
        if self.offset is not None or length < SPARSE_MIN:
            return self(offset, length, last), []
        return self._read_own(offset, length, last, True)

    def _read_own(self, offset: int, length: int, last: bool, sparse: bool
                  ) -> tuple[object, list]:
        try:
            fd = open_path(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise self.error(err.strerror or str(err)) from None
        try:
            holes = _holes(fd, offset, length) if sparse else []
            # the last read asks for one byte more: getting it means the file grew
            want = length + 1 if last else length
            if holes:
                data = _read_around(fd, offset, length, holes)
                pos = min(os.fstat(fd).st_size, offset + want)
            else:
                data, pos = _read_upto(fd, offset, want)
        except OSError as err:
            raise self.error(err.strerror or str(err)) from None
        finally:
            os.close(fd)
        if pos < offset + length:
            raise self.error(f"file changed during the build (ended at byte {pos} of "
                             f"{self.size})")
        if pos > offset + length:
            raise self.error(f"file changed during the build (size is no longer {self.size})")
        return data, holes

    def _read_range(self, offset: int, length: int) -> bytes:
        if self.path is None:
            return bytes(length)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise self.error(f"{os.fsdecode(self.path)}: {err.strerror or err}") from None
        try:
            data, pos = _read_upto(fd, self.offset + offset, length)
        except OSError as err:
            raise self.error(f"{os.fsdecode(self.path)}: {err.strerror or err}") from None
        finally:
            os.close(fd)
        if pos < self.offset + offset + length:
            raise self.error(f"{os.fsdecode(self.path)} ends at byte {pos}, inside this "
                             f"file's data (changed during the build?)")
        return data


# segments shorter than this are read whole, holes or not: looking for holes costs system calls
SPARSE_MIN = 1 << 20
# a segment's holes looked for at most: the rest reads as data (zeros, compressed as data)
MAX_HOLES = 256


def _holes(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """The holes of fd in [offset, offset + length), relative to offset (SEEK_DATA/SEEK_HOLE;
    none where the file system cannot tell)."""
    end = offset + length
    pos = offset
    out = []
    while pos < end and len(out) < MAX_HOLES:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), end)
        except OSError as err:
            if err.errno != errno.ENXIO:        # ENXIO: a hole up to the end of the file
                return []
            data = end
        if data > pos:
            out.append((pos - offset, data - offset))
        if data >= end:
            break
        pos = os.lseek(fd, data, os.SEEK_HOLE)
    return out


def _read_around(fd: int, offset: int, length: int, holes: list[tuple[int, int]]) -> mmap.mmap:
    """[offset, offset + length) of fd with only what is not in `holes` read: into anonymous
    memory, whose untouched pages cost nothing (a heap buffer would be cleared page by page)."""
    buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE)     # (shared would count as read)
    with memoryview(buf) as view:
        pos = 0
        for start, end in holes + [(length, length)]:
            while pos < start:
                got = os.preadv(fd, [view[pos:start]], offset + pos)
                if not got:                 # the file shrank: the caller's size check says so
                    break
                pos += got
            pos = end
    return buf


def _read_upto(fd: int, pos: int, length: int) -> tuple[bytes, int]:
    """Up to `length` bytes at `pos` of fd (fewer at its end), and the position after them."""
    chunks = []
    stop = pos + length
    while pos < stop:
        want = min(stop - pos, 1 << 24)
        chunk = os.pread(fd, want, pos)
        chunks.append(chunk)
        pos += len(chunk)
        if len(chunk) < want:       # end of file
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks), pos


@dataclass
class CompressedFile:
    """A file a worker compressed whole, apart from the others: its extents, or its layout for
    block 0 (None: not worth compressing; either way .layout(cfg, first block) places it),
    and their blocks in order (None once the worker keeps them until it is told where they
    go)."""
    extents: FileExtents | UnplacedLayout | None
    parts: list | None


@dataclass(slots=True)
class _Work:
    """One segment of a file to compress: what a worker needs, nothing of the caller's."""
    read: Callable[[int, int, bool], bytes]
    size: int
    meta_size: int
    profile_key: tuple
    offset: int
    length: int
    last: bool
    # the whole file, and nothing about it depends on other files (no extent or fragment
    # deduplication): the worker takes all its pclusters itself
    alone: bool


def _compress_work(cfg: CompressConfig, work: _Work) -> CompressedFile | list[Pcluster] | None:
    """The pclusters of one segment (None: the file is not worth reading), or for a file
    `alone` the finished CompressedFile."""
    fc = FileCompression(work.size, work.meta_size, cfg, cfg.profile(*work.profile_key))
    if fc.hopeless:
        return None
    if type(work.read) is FileRange:
        data, zeros = work.read.read_sparse(work.offset, work.length, work.last)
    else:
        data, zeros = work.read(work.offset, work.length, work.last), ()
    if len(data) != work.length:
        raise AssertionError("short read")
    pcl = fc.compress(data, work.last, zeros)
    if not work.alone:
        return pcl
    parts = fc.add_new(pcl)
    extents = fc.extents()
    if extents is None:
        return CompressedFile(None, [])
    return CompressedFile(extents.unplaced(fc.cfg), parts)


def _run_batch(cfg: CompressConfig, works: list[_Work]) -> list:
    return [_compress_work(cfg, w) for w in works]


class HeldSegment(NamedTuple):
    """What comes back of one segment of a big file whose pclusters depend on no other file
    (no extent or fragment deduplication), when a worker process keeps their bytes until it is
    told where they go: (llen, raw, blocks) of each pcluster in data blocks, then the inline
    tail pcluster (ztailpacking) if any.  Megabytes of compressed data do not cross the pipe
    to be written by the process that has every file's metadata to do as well."""
    blocks: list[tuple[int, bool, int]]
    inline: Pcluster | None


# a worker keeps the segments of a file's first this many bytes: the rest come back (a file
# is placed only once its last segment is taken, and what a worker keeps takes memory: with
# 128 MiB a 600 MB file took a build from 92 to 172 MiB peak RSS, with 32 MiB to 123)
HOLD_SEGMENTS_MAX = 32 << 20


def _held_apart(cfg: CompressConfig, works: list[_Work], results: list) -> dict[int, list]:
    """Take the bytes of finished files, and of the segments a worker may keep, out of a
    batch's results (they stay in the worker until their place is known); what remains
    pickles cheaply."""
    held = {}
    hold_segments = not (cfg.dedupe_extents or cfg.fragments)
    bs = cfg.block_size
    for i, res in enumerate(results):
        if type(res) is CompressedFile:
            ext = res.extents
            if ext is not None and ext.blocks:
                held[i] = res.parts
            res.parts = None
            if type(ext) is UnplacedLayout:
                results[i] = tuple(ext)     # pickles with no Python call, unlike its wrapper
        elif type(res) is list:
            if hold_segments and works[i].offset + works[i].length <= HOLD_SEGMENTS_MAX:
                inline = res.pop() if res and res[-1].inline else None
                held[i] = [p.payload for p in res]
                results[i] = HeldSegment([(p.llen, p.raw, len(p.payload) // bs) for p in res],
                                         inline)
                continue
            for p in res:
                if type(p.payload) is not bytes:
                    p.payload = bytes(p.payload)    # a fragment's view of the segment
    return held


def _worker_main(cfg: CompressConfig, out, index: int, own, shared, results,
                 parent: int) -> None:
    """A worker process: ("compress", batch id, works) from the shared queue -> ("done", id,
    this worker's index, results); from its own queue, ("write", id, [(index, position)])
    writes the held files of that batch, ("stop", ...) ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # ^C is the parent's to handle
    os.nice(5)
    # (`parent` is the pid the build had before the fork: it may be gone already)
    threading.Thread(target=_end_with, args=(parent,), daemon=True,
                     name="mkerofs-worker-watch").start()
    held: dict[int, dict[int, list]] = {}
    writer = _BlockWriter(out)
    while True:
        kind, bid, arg = _next_task(own, shared)
        try:
            if kind == "compress":
                res = _run_batch(cfg, arg)
                keep = _held_apart(cfg, arg, res)
                if keep:
                    held[bid] = keep
                results.put(("done", bid, index, res))
            elif kind == "write":
                keep = held.pop(bid, {})
                for i, pos in arg:
                    parts = keep[i]
                    writer.write(pos, parts, sum(map(len, parts)))
                writer.flush()
            else:
                results.put(("stopped", bid, index, None))
                return
        except BaseException as err:
            if not isinstance(err, BuildError):
                err = RuntimeError(f"compression worker: {type(err).__name__}: {err}")
            results.put(("error", bid, index, err))
            return


# how long an idle worker waits for a batch before looking at its own queue again
_IDLE_POLL = 0.02


def _next_task(own: _TaskQueue, shared: _TaskQueue) -> tuple:
    """The next message of a worker: its own queue first (writes free memory, and the held
    bytes are only its own to write), else a batch from the queue all workers take from, so
    that none idles while another has batches waiting."""
    while True:
        msg = own.get(0)
        if msg is None:
            msg = shared.get(_IDLE_POLL)
        if msg is not None:
            return msg


# how often a worker looks whether its build's process is still there
_WATCH_PERIOD = 0.25


def _end_with(parent: int) -> None:
    """A worker's thread: end the worker when the build's process is gone (killed outright:
    SIGKILL).  Nothing else would: every worker holds both ends of the queues' pipes, so none
    sees them close, and one may be blocked for ever reading a message its build died while
    sending, all of them holding the build's stdout and stderr (a caller reading those waits
    for ever)."""
    while True:
        time.sleep(_WATCH_PERIOD)
        if os.getppid() != parent:
            os._exit(1)


class _TaskQueue:
    """Messages from this process to its worker processes.  put() never waits: a thread of
    this process writes them into the pipe as the workers read it (as multiprocessing.Queue
    does), and end() always ends that thread: a build that failed must leave no thread
    running, or every later one in the process would copy files in threads instead of forked
    processes (util.can_fork).  multiprocessing.Queue cannot promise that: its thread, blocked
    writing into a full pipe that no worker reads any more, waits for ever."""

    def __init__(self, ctx):
        self.reader, self.writer = ctx.Pipe(duplex=False)
        self.reading = ctx.Lock()           # workers sharing the queue each take whole messages
        self.pending: deque = deque()
        self.ready = threading.Condition(threading.Lock())
        self.feeder: threading.Thread | None = None

    def put(self, msg) -> None:
        data = pickle.dumps(msg)
        with self.ready:
            self.pending.append(data)
            self.ready.notify()
        if self.feeder is None:
            self.feeder = threading.Thread(target=self._feed, name="mkerofs-task-feeder",
                                           daemon=True)
            self.feeder.start()

    def _feed(self) -> None:
        pending, ready, send = self.pending, self.ready, self.writer.send_bytes
        while True:
            with ready:
                while not pending:
                    ready.wait()
                data = pending.popleft()
            if data is None:
                return
            try:
                send(data)
            except OSError:         # nothing reads the pipe any more
                return

    def get(self, timeout: float):
        """In a worker: the next message, None if none came within `timeout` seconds."""
        if not self.reading.acquire(timeout=timeout):
            return None
        try:
            if not self.reader.poll(timeout):
                return None
            return pickle.loads(self.reader.recv_bytes())
        finally:
            self.reading.release()

    def end(self, timeout: float = 5.0) -> bool:
        """Drop what is not written yet (the workers stopped or are gone), end the thread and
        close the pipe; whether the thread ended.  A write blocked on a full pipe is let
        through by reading the pipe here: its readers may be dead, or stopped, or may have
        died holding `reading` (never taken here for that reason: the bytes are thrown away)."""
        with self.ready:
            self.pending.clear()
            self.pending.append(None)
            self.ready.notify()
        feeder, fd = self.feeder, self.reader.fileno()
        if feeder is not None:
            deadline = time.monotonic() + timeout
            while True:
                feeder.join(0.01)
                if not feeder.is_alive():
                    break
                if time.monotonic() > deadline:
                    return False        # (its pipe stays open: the thread may still use it)
                while self.reader.poll(0):
                    os.read(fd, 1 << 16)
        self.writer.close()
        self.reader.close()
        return True


def _stop_processes(procs: list, wait: float = 1.0) -> None:
    """End worker processes, whatever their state: SIGTERM waits while a process is
    stopped, SIGKILL does not.  Bounded: one that cannot be ended (stuck in the kernel) is
    left behind (it is a daemon process) rather than waited for."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(wait)
        if proc.is_alive():
            proc.kill()
            proc.join(wait)


class _ProcessPool:
    """Forked workers; each batch goes to the first worker free to take it (one queue for all:
    a batch assigned ahead could wait behind slow ones while another worker idles), which keeps
    the bytes of the files it finished until write() says where they go."""

    def __init__(self, cfg: CompressConfig, workers: int, out):
        import multiprocessing      # loaded only when files are compressed in processes
        ctx = multiprocessing.get_context("fork")
        self.results = ctx.Queue()
        self.shared = _TaskQueue(ctx)
        self.tasks = [_TaskQueue(ctx) for _ in range(workers)]
        self.procs = [ctx.Process(target=_worker_main,
                                  args=(cfg, out, i, q, self.shared, self.results,
                                        os.getpid()),
                                  daemon=True, name=f"mkerofs-worker-{i}")
                      for i, q in enumerate(self.tasks)]
        for proc in self.procs:
            proc.start()
        self.owner: dict[int, int] = {}     # batch id -> the worker that did it
        self.arrived: dict[int, list] = {}
        self.next_id = 0
        self.holds_bytes = True
        self.finished = False

    def submit(self, works: list) -> int:
        bid = self.next_id
        self.next_id += 1
        self.shared.put(("compress", bid, works))
        return bid

    def result(self, bid: int) -> list:
        while bid not in self.arrived:
            self._receive()
        return self.arrived.pop(bid)

    def write(self, bid: int, placements: list[tuple[int, int]], held: bool = False) -> None:
        """Write the held files of batch `bid` at their places; `held`: it has held segments
        (to let go of, if none is placed) even without placements."""
        w = self.owner.pop(bid)
        if placements or held:
            self.tasks[w].put(("write", bid, placements))

    def forget(self, bid: int) -> None:
        """A batch none of whose files will be placed: its worker lets go of what it holds."""
        self.result(bid)
        self.tasks[self.owner.pop(bid)].put(("write", bid, []))

    def _receive(self) -> tuple:
        while True:
            try:
                msg = self.results.get(timeout=1.0)
            except queue.Empty:
                for proc in self.procs:
                    if not proc.is_alive():
                        raise BuildError(f"a compression worker process died "
                                         f"(exit code {proc.exitcode})") from None
                continue
            kind, bid, worker, payload = msg
            if kind == "error":
                raise payload
            if kind == "done":
                self.owner[bid] = worker
                self.arrived[bid] = payload
            return msg

    def close(self) -> None:
        """Wait for every write, and stop the workers."""
        if self.finished:
            return
        for q in self.tasks:
            q.put(("stop", None, None))
        stopped = 0
        while stopped < len(self.procs):
            if self._receive()[0] == "stopped":
                stopped += 1
        for proc in self.procs:
            proc.join()
        self._close_queues()

    def abort(self) -> None:
        if self.finished:
            return
        _stop_processes(self.procs)
        self._close_queues()

    def _close_queues(self) -> None:
        self.finished = True
        for q in self.tasks + [self.shared]:
            q.end()
        self.results.close()        # (read only here: this process has no thread of it)


class _LocalPool:
    """Batches on threads (or, with one worker, in this thread when their results are asked
    for); results carry their bytes."""

    holds_bytes = False

    def __init__(self, cfg: CompressConfig, workers: int):
        self.cfg = cfg
        self.executor = None
        if workers > 1:
            # (concurrent.futures brings logging: ~0.6 MiB that forked workers never need)
            from concurrent.futures import ThreadPoolExecutor
            self.executor = ThreadPoolExecutor(max_workers=workers)

    def submit(self, works: list):
        if self.executor is None:
            return works
        return self.executor.submit(_run_batch, self.cfg, works)

    def result(self, handle) -> list:
        if self.executor is None:
            return _run_batch(self.cfg, handle)
        return handle.result()

    def write(self, handle, placements, held: bool = False) -> None:
        assert not placements and not held

    def forget(self, handle) -> None:
        pass                        # nothing is held: results carry their bytes

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def abort(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


@dataclass(slots=True)
class _Batch:
    """Works handed to the workers together, and what became of them."""
    handle: object                  # the pool's handle for the batch
    left: int                       # results not taken yet
    nbytes: int                     # input bytes
    results: list | None = None     # once asked for, until the last one is taken
    placements: list[tuple[int, int]] = field(default_factory=list)
                                    # (index, position) of the files a worker holds
    # HeldSegments whose file is not finished: the worker writes the batch once they are
    # placed (or let go of, when their file is stored flat: nothing of it is written then)
    segments_open: int = 0
    segments: bool = False          # it has HeldSegments at all


@dataclass(slots=True)
class _Task:
    """One segment of a job handed to the workers; its result is the `index`th of `batch`."""
    job: FileJob
    fc: FileCompression | None      # the file's bookkeeping here (None: compressed alone)
    work: _Work
    batch: _Batch | None = None
    index: int = 0


# small files go to the workers in batches: one job per file would spend more time handing
# work over than compressing
BATCH_BYTES = 1 << 20
BATCH_TASKS = 256


class _BlockWriter:
    """Gathers the pclusters of consecutive files into a few large writes: one system call
    per small file would cost more than compressing it."""

    LIMIT = 4 << 20

    def __init__(self, out):
        self.out = out
        self.parts: list = []
        self.start = 0
        self.nbytes = 0

    def write(self, pos: int, parts: list, nbytes: int) -> None:
        if self.parts and pos != self.start + self.nbytes:
            self.flush()            # not contiguous (blocks were handed back or reserved)
        if not self.parts:
            self.start = pos
        self.parts.extend(parts)
        self.nbytes += nbytes
        if self.nbytes >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.out.pwrite(b"".join(self.parts), self.start)
            self.parts, self.nbytes = [], 0


class _Dedupe:
    """Where each distinct pcluster was stored, by (algorithm or -1 for raw data, digest of its
    stored bytes): the same stored bytes decompress to the same data, so an extent may point
    at them wherever they are.  A file's own entries become visible to later files only once
    the file is known to stay compressed (if it is stored flat instead, its blocks are
    reused)."""

    def __init__(self):
        self.table: dict[tuple, tuple[int, int, bool]] = {}
        self.pending: dict[tuple, tuple[int, int, bool]] = {}
        # (source bytes, blocks) of the clusters found stored already: the file's own, then
        # the files' that stayed compressed (the build report's dedupe savings)
        self.hits = [0, 0]
        self.saved = [0, 0]

    def commit(self, keep: bool) -> None:
        if keep:
            for key, where in self.pending.items():
                self.table.setdefault(key, where)
            self.saved[0] += self.hits[0]
            self.saved[1] += self.hits[1]
        self.pending = {}
        self.hits = [0, 0]


class CompressionPool:
    """The workers of a build, and the files handed to them early: while the source is still
    being walked (offer), before compress_files gets them as jobs and takes their results in
    job order."""

    # input compressed ahead of the jobs; what it compresses to waits in the workers, or
    # (files that depend on others) comes back whole, to wait in this process
    EARLY_BYTES = 256 << 20
    EARLY_BYTES_RETURNED = 64 << 20

    def __init__(self, cfg: CompressConfig, workers: int, out=None, processes: bool = False):
        self.cfg = cfg
        self.workers = workers
        if processes and workers > 1 and can_fork():
            self.impl = _ProcessPool(cfg, workers, out)
        else:
            self.impl = _LocalPool(cfg, workers)
        self.early: dict[object, tuple[_Batch, int, _Work]] = {}
        self._open: list[tuple[object, _Work]] = []    # offered, not handed over yet
        self._open_bytes = 0
        self._early_bytes = 0
        # for the build report and a progress display: input bytes of the batches taken, and
        # what deduplication saved (source bytes, blocks)
        self.done_bytes = 0
        self.deduped = [0, 0]

    def takes_early(self) -> bool:
        """Whether offer() takes files now: only with worker processes (they keep what they
        compress until it is taken), and only so much ahead.  With deduplication or fragments
        a file's extents depend on the files before it: the workers only cut it into
        pclusters, which come back to be taken in order (as for any file then)."""
        cfg = self.cfg
        limit = self.EARLY_BYTES_RETURNED if cfg.dedupe_extents or cfg.fragments else \
            self.EARLY_BYTES
        return self.impl.holds_bytes and self._early_bytes < limit

    def suits_early(self, size: int) -> bool:
        """Whether a file of `size` bytes may be offered: one segment, worth compressing."""
        return 0 < size <= self.cfg.segment_size and self.cfg.worth_trying(size)

    def offer(self, key, read: Callable, size: int, meta_size: int,
              profile: FileProfile | None) -> None:
        """Start compressing a file that will come as FileJob(origin=key) with this size,
        meta_size and profile."""
        cfg = self.cfg
        work = _Work(read, size, meta_size, profile.key if profile is not None else (),
                     0, size, True, not (cfg.dedupe_extents or cfg.fragments))
        self._open.append((key, work))
        self._open_bytes += size
        self._early_bytes += size
        if self._open_bytes >= BATCH_BYTES or len(self._open) >= BATCH_TASKS:
            self.hand_over_offers()

    def hand_over_offers(self) -> None:
        if self._open:
            batch = self.submit([work for _key, work in self._open], self._open_bytes)
            for index, (key, work) in enumerate(self._open):
                self.early[key] = (batch, index, work)
            self._open, self._open_bytes = [], 0

    def discard_offers(self, jobs: Iterable[FileJob]) -> None:
        """Forget the files offered early that do not come as one of `jobs` with the size and
        meta_size they were offered with: a tar entry replaced by a later one of the same path,
        a file excluded or relabelled after it was read.  Their results are dropped."""
        self.hand_over_offers()
        wanted = {job.origin: (job.size, job.meta_size) for job in jobs
                  if job.origin is not None}
        for key, (batch, _index, work) in list(self.early.items()):
            if wanted.get(key) != (work.size, work.meta_size):
                del self.early[key]
                batch.left -= 1
                if not batch.left:
                    self.impl.forget(batch.handle)

    def submit(self, works: list[_Work], nbytes: int) -> _Batch:
        return _Batch(self.impl.submit(works), len(works), nbytes)

    def hand_over(self, tasks: list[_Task], nbytes: int) -> _Batch:
        """Submit the tasks' works as one batch and tell each task where its result will be."""
        batch = self.submit([t.work for t in tasks], nbytes)
        for index, task in enumerate(tasks):
            task.batch, task.index = batch, index
        return batch

    def result(self, task: _Task):
        batch = task.batch
        if batch.results is None:
            batch.results = self.impl.result(batch.handle)
        return batch.results[task.index]

    def taken(self, batch: _Batch) -> None:
        """One result of `batch` was taken; after the last, its held files are written."""
        batch.left -= 1
        if not batch.left:
            self.done_bytes += batch.nbytes
            batch.results = None
            if not batch.segments_open:
                self.impl.write(batch.handle, batch.placements, batch.segments)

    def segment_decided(self, batch: _Batch) -> None:
        """A HeldSegment of `batch` was placed or let go of (its file finished)."""
        batch.segments_open -= 1
        if not batch.segments_open and not batch.left:
            self.impl.write(batch.handle, batch.placements, batch.segments)

    def close(self) -> None:
        if self.early or self._open:
            raise AssertionError("files offered early never came as jobs")
        self.impl.close()

    def abort(self) -> None:
        self.impl.abort()


@dataclass
class _FileInProgress:
    """The file whose segments are being taken, when the workers gave back its pclusters
    (a file of several segments, or one whose extents depend on other files)."""
    job: FileJob
    fc: FileCompression
    start: int                      # its first block
    before: int                     # the data area's next block before start was aligned
    unwritten: list[Pcluster] = field(default_factory=list)
    unwritten_bytes: int = 0        # their payloads' bytes
    # (batch, index, position) of its HeldSegments: written once the file is known to stay
    # compressed
    held: list[tuple[_Batch, int, int]] = field(default_factory=list)
    wrote: bool = False             # some of its pclusters were written already
    fragment: bool = False          # its fragment is being written to the packed file


@dataclass
class _Handed:
    """What the workers were given and was not taken back yet."""
    tasks: deque[_Task] = field(default_factory=deque)      # in job order: the order of taking
    batches: deque[_Batch] = field(default_factory=deque)   # this run's batches, oldest first
                                                            # (not those handed over early)
    nbytes: int = 0                 # input bytes of `batches`


class _CompressionRun:
    """One compress_files call: cuts the jobs into tasks, hands them to the pool in batches,
    takes the results in job order and decides where each file's pclusters go."""

    def __init__(self, cfg: CompressConfig, area, pool: CompressionPool, packed,
                 max_pending_bytes: int):
        self.cfg = cfg
        self.area = area
        self.pool = pool
        self.packed = packed
        self.max_pending_bytes = max_pending_bytes
        self.max_batches = 3 * pool.workers if pool.workers > 1 else 1
        self.dedupe = _Dedupe() if cfg.dedupe_extents else None
        self.independent = not (cfg.dedupe_extents or cfg.fragments)
        self.writer = _BlockWriter(area.out)
        self.handed = _Handed()
        self.file: _FileInProgress | None = None

    def results(self, jobs: Iterable[FileJob]
                ) -> Iterator[tuple[FileJob, CompressedLayout | None]]:
        """(job, layout) for each job, in job order.  Before handing over another batch, the
        oldest are taken while too many (or too many bytes) are in flight."""
        handed = self.handed
        try:
            gathered: list[_Task] = []
            nbytes = 0
            for task in self.tasks(jobs):
                handed.tasks.append(task)
                if task.batch is not None:      # handed over early
                    continue
                gathered.append(task)
                nbytes += task.work.length
                if nbytes < BATCH_BYTES and len(gathered) < BATCH_TASKS:
                    continue
                handed.batches.append(self.pool.hand_over(gathered, nbytes))
                handed.nbytes += nbytes
                gathered, nbytes = [], 0
                while handed.batches and (len(handed.batches) >= self.max_batches
                                          or handed.nbytes > self.max_pending_bytes):
                    oldest = handed.batches.popleft()
                    while oldest.left:
                        done = self.take_next()
                        if done is not None:
                            yield done
                    handed.nbytes -= oldest.nbytes
            if gathered:
                self.pool.hand_over(gathered, nbytes)
            while handed.tasks:
                done = self.take_next()
                if done is not None:
                    yield done
            self.writer.flush()
            if self.dedupe is not None:
                self.pool.deduped[0] += self.dedupe.saved[0]
                self.pool.deduped[1] += self.dedupe.saved[1]
            self.pool.close()
        except BaseException:
            self.pool.abort()
            raise

    def tasks(self, jobs: Iterable[FileJob]) -> Iterator[_Task]:
        """The jobs' segments in order; those of files offered early are handed over already."""
        seg = self.cfg.segment_size
        early = self.pool.early
        for job in jobs:
            size = job.size
            if size <= 0:
                raise ValueError("empty files are not compressed")
            offered = early.pop(job.origin, None) if job.origin is not None else None
            if offered is not None:
                batch, index, work = offered
                if (work.size, work.meta_size) != (size, job.meta_size):
                    raise AssertionError("a file offered early came with another size")
                fc = None if work.alone else FileCompression(size, job.meta_size, self.cfg,
                                                             job.profile)
                yield _Task(job, fc, work, batch, index)
                continue
            key = job.profile.key if job.profile is not None else ()
            alone = self.independent and size <= seg
            fc = None if alone else FileCompression(size, job.meta_size, self.cfg, job.profile)
            for off in range(0, size, seg):
                yield _Task(job, fc, _Work(job.read, size, job.meta_size, key, off,
                                           min(seg, size - off), off + seg >= size, alone))

    def take_next(self) -> tuple[FileJob, CompressedLayout | None] | None:
        """Take the result of the oldest task: (job, layout) when it finishes a file."""
        task = self.handed.tasks.popleft()
        res = self.pool.result(task)
        if res is None:                 # not worth trying
            done = task.job, None
        elif type(res) is CompressedFile:
            done = task.job, self.place(task, res.extents, res.parts)
        elif type(res) is tuple:        # an UnplacedLayout a worker process holds the blocks of
            done = task.job, self.place(task, UnplacedLayout._make(res), None)
        elif type(res) is HeldSegment:
            done = self.take_segment(task, res.blocks, res)
        else:
            done = self.take_segment(task, res)
        self.pool.taken(task.batch)
        return done

    def place(self, task: _Task, ext: FileExtents | UnplacedLayout | None, parts: list | None
              ) -> CompressedLayout | None:
        """Give a file compressed alone its blocks, and its indexes for them; `parts` None:
        the worker holds its blocks."""
        if ext is None:
            return None
        bs = self.cfg.block_size
        start = self.area.allocate_file(ext.blocks)
        if ext.blocks:
            if parts is None:
                task.batch.placements.append((task.index, start * bs))
            else:
                self.writer.write(start * bs, parts, ext.blocks * bs)
        return ext.layout(self.cfg, start)

    def take_segment(self, task: _Task, pclusters: list, held: HeldSegment | None = None
                     ) -> tuple[FileJob, CompressedLayout | None] | None:
        """Take one segment's pclusters (`held`: their (llen, raw, blocks), a worker holds
        their bytes); (job, layout) after the last segment of the file."""
        file = self.file
        if file is None or file.job is not task.job:
            before = self.area.next_block
            file = self.file = _FileInProgress(task.job, task.fc, self.area.file_start(), before)
        if held is None:
            for p in pclusters:
                self.take_pcluster(file, p)
        else:
            self.take_held(file, task, held)
        if not task.work.last:
            # keep small files in memory until we know compression pays; write big ones (as
            # soon as their pclusters make one write: holding more only takes memory)
            if file.unwritten_bytes >= min(self.cfg.segment_size, _BlockWriter.LIMIT):
                self.write_unwritten(file)
            return None
        self.file = None
        return task.job, self.finish(file)

    def take_pcluster(self, file: _FileInProgress, p: Pcluster) -> None:
        fc = file.fc
        if p.fragment:
            if not file.fragment:
                self.packed.begin()
                file.fragment = True
            self.packed.write(p.payload)
            fc.add(p)
            return
        dedupe = self.dedupe
        if dedupe is not None and p.digest:
            # (the key as _Dedupe says; the lookup spelled out: this runs for every pcluster)
            key = (-1 if p.raw else fc.profile.compressor.algorithm_id, p.digest)
            found = dedupe.table.get(key) or dedupe.pending.get(key)
            if found is not None:
                addr, nblocks, raw = found
                fc.add(Pcluster(p.llen, raw, b""), addr, nblocks)
                dedupe.hits[0] += p.llen
                dedupe.hits[1] += nblocks
                return
            nblocks = len(p.payload) // self.cfg.block_size
            dedupe.pending[key] = (file.start + fc.blocks, nblocks, p.raw)
        fc.add(p)
        if not p.inline:
            file.unwritten.append(p)
            file.unwritten_bytes += len(p.payload)

    def take_held(self, file: _FileInProgress, task: _Task, held: HeldSegment) -> None:
        """The blocks of a HeldSegment follow the file's pclusters so far: they are given now,
        and written once the file is known to stay compressed."""
        self.write_unwritten(file)
        fc = file.fc
        nblocks = 0
        for llen, raw, blocks in held.blocks:
            fc.add_written(llen, raw, blocks)
            nblocks += blocks
        if held.inline is not None:
            fc.add(held.inline)
        blk = self.area.allocate(nblocks)
        file.held.append((task.batch, task.index, blk * self.cfg.block_size))
        task.batch.segments_open += 1
        task.batch.segments = True

    def write_unwritten(self, file: _FileInProgress) -> None:
        if not file.unwritten:
            return
        bs = self.cfg.block_size
        parts = [p.payload for p in file.unwritten]
        nbytes = file.unwritten_bytes
        blk = self.area.allocate(nbytes // bs)
        self.writer.write(blk * bs, parts, nbytes)
        file.unwritten, file.unwritten_bytes = [], 0
        file.wrote = True

    def finish(self, file: _FileInProgress) -> CompressedLayout | None:
        """The layout of a file whose last segment was taken; None: it is stored flat, and the
        blocks it took are given back."""
        fc = file.fc
        fragment_off = None
        if file.fragment:
            fragment_off = self.packed.end(whole_file=fc.fragment_len == fc.size)
        layout = fc.finish(file.start, fragment_off)
        if self.dedupe is not None:
            self.dedupe.commit(keep=layout is not None)
        for batch, index, pos in file.held:
            if layout is not None:
                batch.placements.append((index, pos))
            self.pool.segment_decided(batch)
        if layout is None:
            file.unwritten, file.unwritten_bytes = [], 0
            self.area.rewind(file.before)
            file.job.wrote_blocks = file.wrote
            # what it wrote goes out now, before anything else is written to those blocks
            self.writer.flush()
        else:
            self.write_unwritten(file)
            assert self.area.next_block == file.start + layout.blocks
            if not layout.blocks:           # (inline or a fragment): no block to align
                self.area.rewind(file.before)
        return layout


def compress_files(jobs: Iterable[FileJob], cfg: CompressConfig, area, workers: int = 1,
                   max_pending_bytes: int = 256 << 20, packed=None, processes: bool = False,
                   pool: CompressionPool | None = None
                   ) -> Iterator[tuple[FileJob, CompressedLayout | None]]:
    """Compress files and write their pclusters; yield (job, layout) in job order.

    `area` hands out data blocks as data.DataArea does: `area.file_start()` and
    `area.allocate_file(n)` for a file's first block (aligned to --dsunit), `area.allocate(n)`
    for the blocks after it, `area.rewind(block)` (when a file is not worth compressing, or
    takes no block), `area.next_block`, `area.out.pwrite(bytes, position)`.
    A file whose layout is None gets no blocks (they are given back, and job.wrote_blocks
    says whether they were written to: then a flat copy there must overwrite holes too).
    `packed` (a packed.PackedFile) receives the fragments when cfg.fragments is set.

    Segments (small files batched together) are compressed by `workers` forked processes
    (`processes`: every job's reader must pickle) or threads, at most `max_pending_bytes` of
    input (and three batches per worker) in flight; or by `pool`, which may have started on
    some of the files already (CompressionPool.offer) and is closed here.  Results are taken
    in order, so each file's pclusters land in consecutive blocks, and what depends on earlier
    files (fragment and extent deduplication) is decided in that same order: the image does
    not depend on the number of workers, nor on their kind.  A file of one segment that
    depends on no other comes back as its layout for block 0 (compress.UnplacedLayout) or its
    extents; its blocks are assigned here, and its indexes moved or encoded for them.
    """
    if cfg.fragments and packed is None:
        raise ValueError("fragments need a packed file")
    if pool is None:
        pool = CompressionPool(cfg, workers, area.out, processes)
    pool.hand_over_offers()
    yield from _CompressionRun(cfg, area, pool, packed, max_pending_bytes).results(jobs)
