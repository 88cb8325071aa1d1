"""Compressing many files: batches of segments go to worker processes (or threads), results are
taken in file order, and each file's pclusters land in consecutive blocks.

    for job, layout in compress_files(jobs, cfg, data_area, workers, processes=True):
        ...   # layout None: store the file flat; else layout.datalayout/.blocks/.inline

Worker processes are forked (they start in milliseconds and inherit the codecs) and write the
pclusters of the files they finished themselves, at the positions this process hands out in
file order: compressed data crosses no pipe, and the per-cluster Python work runs on every
core (threads would contend for the GIL: with LZ4, two threads were slower than one).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .compress import CompressConfig, CompressedLayout, FileCompression, FileProfile, Pcluster
from .compress import move_indexes
from ..errors import BuildError


@dataclass
class FileJob:
    key: object                     # the caller's handle (a PlannedInode)
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
    """A FileJob reader for a file on disk that must keep its size during the build."""
    path: bytes
    size: int

    def error(self, message: str) -> BuildError:
        return BuildError(f"{os.fsdecode(self.path)}: {message}")

    def __call__(self, offset: int, length: int, last: bool) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise self.error(err.strerror or str(err)) from None
        try:
            chunks = []
            pos, end = offset, offset + length
            # the last read asks for one byte more: getting it means the file grew
            stop = end + 1 if last else end
            while pos < stop:
                want = min(stop - pos, 1 << 24)
                chunk = os.pread(fd, want, pos)
                chunks.append(chunk)
                pos += len(chunk)
                if len(chunk) < want:       # end of file
                    break
            if pos < end:
                raise self.error(f"file changed during the build (ended at byte {pos} of "
                                 f"{self.size})")
            if pos > end:
                raise self.error(f"file changed during the build (size is no longer {self.size})")
        except OSError as err:
            raise self.error(err.strerror or str(err)) from None
        finally:
            os.close(fd)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass
class CompressedFile:
    """A file compressed whole by a worker, apart from the others: its layout as if its
    pclusters began at block 0 (None: not worth compressing), and their blocks in order."""
    layout: CompressedLayout | None
    parts: list


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
    # deduplication): the worker finishes it, indexes included
    alone: bool


def _compress_work(cfg: CompressConfig, work: _Work) -> CompressedFile | list[Pcluster] | None:
    """The pclusters of one segment (None: the file is not worth reading), or for a file
    `alone` the finished CompressedFile."""
    fc = FileCompression(work.size, work.meta_size, cfg, cfg.profile(*work.profile_key))
    if fc.hopeless:
        return None
    data = work.read(work.offset, work.length, work.last)
    if len(data) != work.length:
        raise AssertionError("short read")
    pcl = fc.compress(data, work.last)
    if not work.alone:
        return pcl
    parts = []
    for p in pcl:
        fc.add(p)
        if not p.inline:
            parts.append(p.payload)
    layout = fc.finish(0)
    return CompressedFile(layout, parts if layout is not None else [])


def _run_batch(cfg: CompressConfig, works: list[_Work]) -> list:
    return [_compress_work(cfg, w) for w in works]


def _held_apart(results: list) -> dict[int, list]:
    """Take the bytes of finished files out of a batch's results (they stay in the worker until
    their place is known); what remains pickles cheaply."""
    held = {}
    for i, res in enumerate(results):
        if type(res) is CompressedFile:
            if res.layout is not None and res.layout.blocks:
                held[i] = res.parts
            res.parts = None
        elif type(res) is list:
            for p in res:
                if type(p.payload) is not bytes:
                    p.payload = bytes(p.payload)    # a fragment's view of the segment
    return held


def _worker_main(cfg: CompressConfig, out, tasks, results) -> None:
    """A worker process: ("compress", batch id, works) -> ("done", id, results);
    ("write", id, [(index, position)]) writes the held files of that batch; ("stop", ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # ^C is the parent's to handle
    os.nice(5)
    held: dict[int, dict[int, list]] = {}
    writer = _BlockWriter(out)
    while True:
        kind, bid, arg = tasks.get()
        try:
            if kind == "compress":
                res = _run_batch(cfg, arg)
                keep = _held_apart(res)
                if keep:
                    held[bid] = keep
                results.put(("done", bid, res))
            elif kind == "write":
                keep = held.pop(bid)
                for i, pos in arg:
                    parts = keep[i]
                    writer.write(pos, parts, sum(map(len, parts)))
                writer.flush()
            else:
                results.put(("stopped", bid, None))
                return
        except BaseException as err:
            if not isinstance(err, BuildError):
                err = RuntimeError(f"compression worker: {type(err).__name__}: {err}")
            results.put(("error", bid, err))
            return


class _ProcessPool:
    """Forked workers; each batch goes to the least busy one, which keeps the bytes of the files
    it finished until write() says where they go."""

    def __init__(self, cfg: CompressConfig, workers: int, out):
        ctx = multiprocessing.get_context("fork")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.procs = [ctx.Process(target=_worker_main, args=(cfg, out, q, self.results),
                                  daemon=True, name=f"mkerofs-worker-{i}")
                      for i, q in enumerate(self.tasks)]
        for proc in self.procs:
            proc.start()
        self.load = [0] * workers       # batches given to each worker and not taken back
        self.owner: dict[int, int] = {}
        self.arrived: dict[int, list] = {}
        self.next_id = 0
        self.holds_bytes = True
        self.finished = False

    def submit(self, works: list) -> int:
        w = min(range(len(self.load)), key=self.load.__getitem__)
        bid = self.next_id
        self.next_id += 1
        self.tasks[w].put(("compress", bid, works))
        self.load[w] += 1
        self.owner[bid] = w
        return bid

    def result(self, bid: int) -> list:
        while bid not in self.arrived:
            self._receive()
        self.load[self.owner[bid]] -= 1
        return self.arrived.pop(bid)

    def write(self, bid: int, placements: list[tuple[int, int]]) -> None:
        w = self.owner.pop(bid)
        if placements:
            self.tasks[w].put(("write", bid, placements))

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
            kind, bid, payload = msg
            if kind == "error":
                raise payload
            if kind == "done":
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
        for q in self.tasks:
            q.join_thread()         # its feeder thread: none may be left when forking again

    def abort(self) -> None:
        if self.finished:
            return
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join()
        for q in self.tasks:
            q.cancel_join_thread()
        self._close_queues()

    def _close_queues(self) -> None:
        self.finished = True
        for q in self.tasks + [self.results]:
            q.close()


class _LocalPool:
    """Batches on threads (or, with one worker, in this thread when their results are asked
    for); results carry their bytes."""

    holds_bytes = False

    def __init__(self, cfg: CompressConfig, workers: int):
        self.cfg = cfg
        self.executor = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def submit(self, works: list):
        if self.executor is None:
            return works
        return self.executor.submit(_run_batch, self.cfg, works)

    def result(self, handle) -> list:
        if self.executor is None:
            return _run_batch(self.cfg, handle)
        return handle.result()

    def write(self, handle, placements) -> None:
        assert not placements

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def abort(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def can_fork() -> bool:
    # forking a process that runs other threads may copy a lock some thread holds
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


class _Batch:
    """Works handed to the workers together, and what became of them."""
    __slots__ = ("handle", "left", "nbytes", "results", "placements")

    def __init__(self, handle, count: int, nbytes: int):
        self.handle = handle
        self.left = count               # results not taken yet
        self.nbytes = nbytes
        self.results: list | None = None
        self.placements: list[tuple[int, int]] = []    # (index, position) of held files


class _Task:
    __slots__ = ("job", "fc", "work", "batch", "index")

    def __init__(self, job: FileJob, fc: FileCompression | None, work: _Work,
                 batch: _Batch | None = None, index: int = 0):
        self.job, self.fc, self.work, self.batch, self.index = job, fc, work, batch, index


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

    @staticmethod
    def key(p: Pcluster, algorithm: int) -> tuple:
        return (-1 if p.raw else algorithm, p.digest)

    def find(self, key: tuple) -> tuple[int, int, bool] | None:
        return self.table.get(key) or self.pending.get(key)

    def commit(self, keep: bool) -> None:
        if keep:
            for key, where in self.pending.items():
                self.table.setdefault(key, where)
        self.pending = {}


class CompressionPool:
    """The workers of a build, and the files handed to them early: while the source is still
    being walked (offer), before compress_files gets them as jobs and takes their results in
    job order."""

    # input compressed ahead of the jobs; what it compresses to waits in the workers
    EARLY_BYTES = 256 << 20

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

    def takes_early(self) -> bool:
        """Whether offer() takes files now: only with worker processes (they keep what they
        compress until it is placed), without deduplication (files are compressed alone), and
        only so much ahead."""
        cfg = self.cfg
        return (self.impl.holds_bytes and self._early_bytes < self.EARLY_BYTES
                and not (cfg.dedupe_extents or cfg.fragments))

    def suits_early(self, size: int) -> bool:
        """Whether a file of `size` bytes may be offered: one segment, worth compressing."""
        return 0 < size <= self.cfg.segment_size and self.cfg.worth_trying(size)

    def offer(self, key, read: Callable, size: int, meta_size: int,
              profile: FileProfile | None) -> None:
        """Start compressing a file that will come as FileJob(origin=key) with this size,
        meta_size and profile."""
        work = _Work(read, size, meta_size, profile.key if profile is not None else (),
                     0, size, True, True)
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
            self.impl.write(batch.handle, batch.placements)
            batch.results = None

    def close(self) -> None:
        if self.early or self._open:
            raise AssertionError("files offered early never came as jobs")
        self.impl.close()

    def abort(self) -> None:
        self.impl.abort()


def compress_files(jobs: Iterable[FileJob], cfg: CompressConfig, area, workers: int = 1,
                   max_pending_bytes: int = 256 << 20, packed=None, processes: bool = False,
                   pool: CompressionPool | None = None
                   ) -> Iterator[tuple[FileJob, CompressedLayout | None]]:
    """Compress files and write their pclusters; yield (job, layout) in job order.

    `area` hands out data blocks: `area.allocate(n) -> first block`, `area.next_block`
    (rewound when a file is not worth compressing), `area.out.pwrite(bytes, position)`.
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
    depends on no other comes back finished, indexes and all, for pclusters at block 0; only
    its block addresses are moved here (compress.move_indexes).
    """
    bs = cfg.block_size
    if cfg.fragments and packed is None:
        raise ValueError("fragments need a packed file")
    if pool is None:
        pool = CompressionPool(cfg, workers, area.out, processes)
    pool.hand_over_offers()
    dedupe = _Dedupe() if cfg.dedupe_extents else None
    independent = not (cfg.dedupe_extents or cfg.fragments)
    seg = cfg.segment_size
    order: deque[_Task] = deque()       # every task, in job order
    window: deque[_Batch] = deque()     # batches handed over here, not all taken yet
    max_batches = 3 * pool.workers if pool.workers > 1 else 1

    def tasks() -> Iterator[_Task]:
        for job in jobs:
            size = job.size
            if size <= 0:
                raise ValueError("empty files are not compressed")
            early = pool.early.pop(job.origin, None) if job.origin is not None else None
            if early is not None:
                batch, index, work = early
                if (work.size, work.meta_size) != (size, job.meta_size):
                    raise AssertionError("a file offered early came with another size")
                yield _Task(job, None, work, batch, index)
                continue
            key = job.profile.key if job.profile is not None else ()
            alone = independent and size <= seg
            fc = None if alone else FileCompression(size, job.meta_size, cfg, job.profile)
            for off in range(0, size, seg):
                yield _Task(job, fc, _Work(job.read, size, job.meta_size, key, off,
                                           min(seg, size - off), off + seg >= size, alone))

    # per-file write state of the file being taken
    current = {"job": None, "start": 0, "buffer": [], "flushed": False, "fragment": False}

    writer = _BlockWriter(area.out)

    def flush() -> None:
        buf = current["buffer"]
        if not buf:
            return
        parts = [p.payload for p in buf]
        nbytes = sum(map(len, parts))
        blk = area.allocate(nbytes // bs)
        writer.write(blk * bs, parts, nbytes)
        current["buffer"] = []
        current["flushed"] = True

    def place(task: _Task, res: CompressedFile) -> CompressedLayout | None:
        layout = res.layout
        if layout is None:
            return None
        job = task.job
        start = area.allocate(layout.blocks)
        if layout.blocks:
            if res.parts is None:           # the worker holds them
                task.batch.placements.append((task.index, start * bs))
            else:
                writer.write(start * bs, res.parts, layout.blocks * bs)
        layout.inline = move_indexes(layout.inline, layout.datalayout, job.size, job.meta_size,
                                     bs, start)
        return layout

    def take(fc: FileCompression, p: Pcluster) -> None:
        if p.fragment:
            if not current["fragment"]:
                packed.begin()
                current["fragment"] = True
            packed.write(p.payload)
            fc.add(p)
            return
        if dedupe is not None and p.digest:
            key = dedupe.key(p, fc.profile.algorithm_id)
            found = dedupe.find(key)
            if found is not None:
                addr, nblocks, raw = found
                fc.add(Pcluster(p.llen, raw, b""), addr, nblocks)
                return
            nblocks = len(p.payload) // bs
            dedupe.pending[key] = (current["start"] + fc.blocks, nblocks, p.raw)
        fc.add(p)
        if not p.inline:
            current["buffer"].append(p)

    def consume(task: _Task, res) -> Iterator[tuple[FileJob, CompressedLayout | None]]:
        if res is None:                 # not worth trying
            yield task.job, None
            return
        if type(res) is CompressedFile:
            yield task.job, place(task, res)
            return
        fc = task.fc
        if current["job"] is not task.job:
            current.update(job=task.job, start=area.next_block, buffer=[], flushed=False,
                           fragment=False)
        for p in res:
            take(fc, p)
        if not task.work.last:
            # keep small files in memory until we know compression pays; flush big ones
            if sum(len(p.payload) for p in current["buffer"]) >= cfg.segment_size:
                flush()
            return
        fragment_off = None
        if current["fragment"]:
            fragment_off = packed.end(whole_file=fc.fragment_len == fc.size)
        layout = fc.finish(current["start"], fragment_off)
        if dedupe is not None:
            dedupe.commit(keep=layout is not None)
        if layout is None:
            current["buffer"] = []
            area.next_block = current["start"]
            task.job.wrote_blocks = current["flushed"]
            # what it wrote goes out now, before anything else is written to those blocks
            writer.flush()
        else:
            flush()
            assert area.next_block == current["start"] + layout.blocks
        current["job"] = None
        yield task.job, layout

    def take_first() -> Iterator[tuple[FileJob, CompressedLayout | None]]:
        task = order.popleft()
        yield from consume(task, pool.result(task))
        batch = task.batch
        pool.taken(batch)
        if not batch.left and window and window[0] is batch:
            window.popleft()

    try:
        batch_tasks: list[_Task] = []
        nbytes = pending_bytes = 0
        for task in tasks():
            order.append(task)
            if task.batch is not None:      # handed over early
                continue
            batch_tasks.append(task)
            nbytes += task.work.length
            if nbytes < BATCH_BYTES and len(batch_tasks) < BATCH_TASKS:
                continue
            window.append(pool.hand_over(batch_tasks, nbytes))
            pending_bytes += nbytes
            batch_tasks, nbytes = [], 0
            while window and (len(window) >= max_batches or pending_bytes > max_pending_bytes):
                oldest = window[0]
                while window and window[0] is oldest:
                    yield from take_first()
                pending_bytes -= oldest.nbytes
        if batch_tasks:
            pool.hand_over(batch_tasks, nbytes)
        while order:
            yield from take_first()
        writer.flush()
        pool.close()
    except BaseException:
        pool.abort()
        raise
