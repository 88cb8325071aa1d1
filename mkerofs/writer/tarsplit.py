"""Reading a large tar file's headers on two cores: this process reads the tar from its start,
a forked one reads parts further on, and the entries come out as one TarReader gives them.

Tar has no index, so a part's start is found by looking: from a point in the tar, block by
block, the first 512-byte block (counted from the stream's start) with a ustar magic and a
right checksum.  That block may be the middle of an entry (the header after a PAX header, say)
or not a header at all (a block of a file's data that looks like one: a tar inside the tar),
so it is read as an entry and thrown away; the boundary after it, S, starts the part, with
the global PAX records that reading gave (it started with none).  The forked process reads
the part from S until its chain of headers lands on the start of a part it read before, with
the same global PAX records (the only state a reader carries from one entry to the next; the
volume label is reported apart), or until the end of the archive, an error (given as it is:
the same TarError one reader would raise there) or an entry whose data must be read (a
sparse file: its map is in the data).

The first part starts `_SHARE` of the tar in; when it is done, the next one a little less than
halfway (`_NEXT_SHARE`) between where this process has got to and the last part's start, and
so on while this process would take `_MIN_GAP` seconds or more to reach that start (at the
speed it goes): it does not matter how the entries are spread over the tar's bytes.

This process reads from the start, and at each part's start it passes checks that its own
chain lands exactly there with the same global PAX records.  From the first part where it
does, what the forked process found is exactly what reading on would find: its entries are
used, part after part as each landed on the next, and this process reads on itself only where
the last one stopped (a sparse file's data) or where the forked process died.  A part whose
start this process passes without landing there is thrown away.  Either way the entries, the
end of the archive and any error are those of one reader reading the whole stream.

The forked process writes its messages into a memory file (never blocking on this process,
which reads them later) and announces each on a pipe; this process looks at the pipe about
every `_POLL` seconds (so many bytes of tar), and tells the forked process how far it has got,
and when, through shared memory.

Only for what reads no file data but a sparse file's (the build uses it for --tar=i) and a
tar of `_SPLIT_MIN` bytes or more in a regular file: a small tar does not pay for the fork.
"""
from __future__ import annotations

import bisect
import marshal
import mmap
import os
import select
import signal
import time
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Iterator

from ..util import can_fork
from .data import fork_copier, reap_copiers
from .decompress import TarInput
from .tarstream import _MTIMES, BLOCK, TarEntry, TarError, TarReader, _header_ok

_SPLIT_MIN = 64 << 20       # bytes of tar: below, one process reads it all
_SHARE = 0.5                # of the tar before the first part (too far in costs less than too
                            # near: the forked process then reads more parts)
_NEXT_SHARE = 0.45          # of the gap before the next part (this process also builds the tree)
_MIN_GAP = 0.005            # seconds this process would take to reach the last part: no more
                            # parts below
_POLL = 0.001               # seconds between looks at the pipe (about)
_POLL_FIRST = 256 << 10     # bytes of tar between looks, at first (then made to take _POLL)
_POLL_BYTES = (64 << 10, 64 << 20)     # ... at least and at most
_BATCH = 64                 # entries a message (few: their objects are made at once)
_MAGIC_AT = 257             # ustar magic's place in a header
_RECORD = 16                # bytes of a message's announcement: kind, part, length
_FREE = 256 << 10           # bytes of the log used before their pages are given back

_FIELDS = attrgetter(*(f.name for f in fields(TarEntry)))
_FIELD_COUNT = len(fields(TarEntry))
# message kinds and their payloads: a part's start (S, global PAX records); a batch
# ([the entries' fields, one after the other], boundary after them, global records or None,
# label or None); the part reached part j's start (j); the archive's end (end_offset,
# archive_end, label: what follows is read here); an error (message, path, offset); a sparse
# entry: read on here from (boundary, global records or None, label or None)
_START, _BATCH_OF, _LANDED, _END, _ERROR, _HANDOFF = range(6)


class _PositionalFile:
    """A file read through os.pread from its own position: the forked process must not move
    the file offset it shares with this one."""

    def __init__(self, fd: int, position: int):
        self._fd, self._pos = fd, position

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = offset + (self._pos if whence == os.SEEK_CUR else 0)
        return self._pos

    def read(self, n: int) -> bytes:
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data


@dataclass
class _Part:
    """What this process knows of a part the forked process reads."""
    start: int
    global_records: dict
    batches: list[tuple[int, int]] = field(default_factory=list)    # (where, length) in the log
    last: tuple | None = None           # (kind, payload) of its last message


class SplitTarReader(TarReader):
    """A TarReader whose caller reads no entry's data but a sparse file's (chunks() of the
    others raises ValueError): see the module docstring.  `close()` also stops the forked
    process (on every way out: a second call does nothing)."""

    def __init__(self, source: TarInput, **kwargs):
        super().__init__(source, **kwargs)
        self._input = source
        self._kwargs = kwargs
        self._pid = self._pipe = self._log = self._errors = -1
        self._progress: mmap.mmap | None = None     # how far this process has read
        self._parts: dict[int, _Part] = {}
        self._starts: list[int] = []                # the parts' starts, sorted
        self._part_at: dict[int, int] = {}          # part by start
        self._log_pos = 0
        self._unread = b""               # (a piece of an announcement)

    def close(self) -> None:
        self._stop_child()
        super().close()

    def __iter__(self) -> Iterator[TarEntry]:
        src = self._src
        if src.offset != 0 or self._current is not None or self._input.kind != "tar" \
                or not src._seekable or src._size < _SPLIT_MIN \
                or not hasattr(os, "memfd_create") or not can_fork():
            return self._entries()
        return self._split_entries(int(src._size * _SHARE) // BLOCK * BLOCK)

    # -- this process ---------------------------------------------------------------------

    def _split_entries(self, target: int) -> Iterator[TarEntry]:
        try:
            try:
                self._start_child(target)
            except OSError:     # (EAGAIN, ENOMEM, EMFILE: this process reads it all)
                yield from self._entries()
                return
            poll, last = _POLL_FIRST, time.monotonic_ns()
            while True:
                here = self.offset
                ahead = bisect.bisect_right(self._starts, here)     # (past `here`)
                stop = here + poll
                if ahead < len(self._starts):
                    stop = min(stop, self._starts[ahead])
                yield from self._entries(stop=stop)
                if self.archive_end is not None:
                    return
                here, now = self.offset, time.monotonic_ns()
                self._progress[:] = _progress(here, now)
                poll = _next_poll(poll, now - last)
                last = now
                self._take_records(wait=False)
                part = self._part_at.get(here)
                if part is not None and self._parts[part].global_records == self._global:
                    yield from self._child_entries(part)
                    return
        finally:
            self._stop_child()

    def _child_entries(self, number: int) -> Iterator[TarEntry]:
        """The entries of part `number` and of those it led to, then what the last ended with
        (the end, an error or a sparse entry); if the forked process died, read on here."""
        modes, mtimes = self._modes, self._mtimes
        while True:
            part = self._parts[number]
            state = (part.start, part.global_records)
            done = 0
            freed = -1          # the log's pages before this are given back (of this part)
            used = 0            # the end of its last batch used
            while True:
                if done == len(part.batches):
                    if part.last is not None:
                        if freed >= 0:
                            self._free_log(freed, used)
                        break
                    if self._take_records(wait=True):
                        continue
                    self._stop_child()          # (it died)
                    self._restart(*state, self.volume_label)
                    yield from self._entries()
                    return
                where, length = part.batches[done]
                done += 1
                values, boundary, global_records, label = marshal.loads(
                    os.pread(self._log, length, where))
                used = where + length
                if freed < 0:
                    # (a part's batches follow one another in the log: the page before its
                    # first may hold the end of another part's, still to be used)
                    freed = -(-where // mmap.PAGESIZE) * mmap.PAGESIZE
                elif used - freed >= _FREE:
                    freed = self._free_log(freed, used)
                # (the fields of all its entries in one list: no tuple an entry, which a
                # batch would leave on the tuples' free list)
                for at in range(0, len(values), _FIELD_COUNT):
                    entry = TarEntry(*values[at:at + _FIELD_COUNT])
                    # (one int object a value, as the reader shares them)
                    mode = entry.mode
                    entry.mode = modes.setdefault(mode, mode)
                    if len(mtimes) >= _MTIMES:
                        mtimes.clear()
                    mtime = entry.mtime_ns
                    entry.mtime_ns = mtimes.setdefault(mtime, mtime)
                    yield entry
                state = (boundary, global_records or {})
                if label is not None:
                    self.volume_label = label
            kind, payload = part.last
            if kind == _LANDED:
                number = payload
                continue
            self._stop_child()
            if kind == _END:
                end_offset, archive_end, label = payload
                self._restart(archive_end, {}, label if label is not None else self.volume_label)
                self._end(end_offset)
            elif kind == _ERROR:
                error = TarError(payload[0])
                error.path, error.offset = payload[1], payload[2]
                raise error
            else:
                boundary, global_records, label = payload
                self._restart(boundary, global_records or {},
                              label if label is not None else self.volume_label)
                yield from self._entries()
            return

    def _free_log(self, start: int, end: int) -> int:
        """Give back the log's pages from `start` (a page's start) to the last page's start
        before `end` (a batch's end: the next batch, of the same part, follows it) and
        return that: the log holds only what is still to be used (~130 bytes an entry, a
        million-entry tar's batches would stay in memory)."""
        end -= end % mmap.PAGESIZE
        if end > start:
            with mmap.mmap(self._log, end - start, offset=start) as pages:
                pages.madvise(mmap.MADV_REMOVE)
        return max(start, end)

    def _take_records(self, wait: bool) -> bool:
        """Take the forked process's announcements (with `wait`, at least one); False if it
        has ended and there are none."""
        if self._pipe < 0:
            return False
        if wait:
            # (poll, not select: a caller with over 1023 descriptors open gets higher ones)
            waiting = select.poll()
            waiting.register(self._pipe, select.POLLIN)
            waiting.poll()
        try:
            data = os.read(self._pipe, _RECORD * 256)
        except BlockingIOError:
            return True
        if not data:
            return False
        data = self._unread + data
        cut = len(data) - len(data) % _RECORD
        self._unread = data[cut:]
        for at in range(0, cut, _RECORD):
            self._take(int.from_bytes(data[at:at + _RECORD], "little"))
        return True

    def _take(self, record: int) -> None:
        kind, number, length = record & 0xFF, record >> 8 & 0xFFFFFF, record >> 32
        where = self._log_pos
        self._log_pos += length
        if kind == _BATCH_OF:
            self._parts[number].batches.append((where, length))
            return
        payload = marshal.loads(os.pread(self._log, length, where))
        if kind == _START:
            start, global_records = payload
            self._parts[number] = _Part(start, global_records)
            bisect.insort(self._starts, start)
            self._part_at[start] = number
        else:
            self._parts[number].last = (kind, payload)

    def _start_child(self, target: int) -> None:
        # (no KeyboardInterrupt between the fork and the last attribute set: a child this
        # process does not know of, or its descriptors, would stay; ^C waits till then)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._fork_child(target)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _fork_child(self, target: int) -> None:
        opened: list[int] = []
        try:
            opened.append(os.memfd_create("mkerofs-tar-entries", os.MFD_CLOEXEC))
            opened += os.pipe()
            opened += os.pipe()
            log, take, put, errors, report = opened
            self._progress = mmap.mmap(-1, len(_progress(0, 0)))     # (shared with the child)
            self._progress[:] = _progress(0, time.monotonic_ns())
            self._pid = fork_copier(
                lambda: _Child(self._input, self._src._origin, self._kwargs, log, put,
                               self._progress).run(target),
                report, take, errors)
        except BaseException:
            for fd in opened:
                os.close(fd)
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            raise
        os.close(put)
        os.close(report)
        self._pipe, self._log, self._errors = take, log, errors
        os.set_blocking(take, False)

    def _stop_child(self) -> None:
        if self._pid < 0:
            return
        pid, self._pid = self._pid, -1
        for fd in (self._pipe, self._log):
            os.close(fd)
        self._pipe = self._log = -1
        self._progress.close()
        errors, self._errors = self._errors, -1
        # (what it reported does not matter: where it stopped, this process reads on)
        reap_copiers([pid], errors, kill=True, doing="reading the tar")


# -- the forked process ---------------------------------------------------------------------

class _UndrainedReader(TarReader):
    """A TarReader that leaves what follows the end of the archive unread: the end a part
    finds may be that of a tar inside the tar (this process reads past the real one)."""

    def _end(self, offset: int) -> None:
        self.end_offset, self.archive_end = offset, self._src.offset


class _Child:
    def __init__(self, source: TarInput, origin: int, kwargs: dict, log: int, pipe: int,
                 progress: mmap.mmap):
        # (`origin` from the parent: the file offset the stream's tell() reads is shared)
        self.raw = _PositionalFile(source.stream.fileno(), origin)
        self.reader = _UndrainedReader(TarInput(self.raw, "tar", True, []), **kwargs)
        self.log, self.pipe, self.progress = log, pipe, progress
        self.done: list[tuple[int, dict, int]] = []     # (start, global records, part), sorted

    def run(self, target: int) -> None:
        reader = self.reader
        low = reader._src._size         # the lowest part's start
        number = 0
        seen, speed = self.parent_progress(), None
        while True:
            start = self._resync(target, low)
            if start is None:
                return
            global_records = dict(reader._global)
            self.send(_START, number, (start, global_records))
            reader.volume_label = None  # (only labels after `start` are news)
            self._read_part(number, start, global_records)
            self.done.insert(0, (start, global_records, number))
            low = start
            here, at = self.parent_progress()
            if at > seen[1]:
                speed = (here - seen[0]) / (at - seen[1])       # (bytes a ns)
                seen = here, at
            if low - here < _POLL_BYTES[0] or \
                    speed is not None and low - here < speed * _MIN_GAP * 1e9:
                return
            target = int(here + (low - here) * _NEXT_SHARE) // BLOCK * BLOCK
            number += 1

    def parent_progress(self) -> tuple[int, int]:
        """(how far the parent has read, when, in ns): the same twice, so not half written."""
        while True:
            first, second = self.progress[:], self.progress[:]
            if first == second:
                return int.from_bytes(first[:8], "little"), int.from_bytes(first[8:], "little")

    def send(self, kind: int, number: int, payload) -> None:
        data = memoryview(marshal.dumps(payload))
        length = len(data)
        while data:
            data = data[os.write(self.log, data):]
        os.write(self.pipe, (length << 32 | number << 8 | kind).to_bytes(_RECORD, "little"))

    def _resync(self, target: int, low: int) -> int | None:
        """The first boundary between entries after the header-looking block found from
        `target` (module docstring), the reader then there; None if there is none before
        `low`."""
        reader = self.reader
        src = reader._src
        found = _find_header(self.raw, src._origin, target, low)
        if found is None:
            return None
        reader._restart(found, {}, None)
        try:
            for _entry in reader._entries(stop=found + 1):
                pass
        except TarError:
            return None
        start = reader.offset
        return start if reader.archive_end is None and start < low else None

    def _read_part(self, number: int, start: int, global_records: dict) -> None:
        reader, done = self.reader, self.done
        batch, state = [], (start, global_records or None, None)
        ahead = 0               # the next earlier part's start may be landed on
        try:
            while True:
                stop = done[ahead][0] if ahead < len(done) else None
                for entry in reader._entries(stop=stop):
                    if entry.sparse is not None:        # (its data is read by the parent)
                        self.send(_BATCH_OF, number, (batch, *state))
                        self.send(_HANDOFF, number, state)
                        return
                    batch += _FIELDS(entry)
                    payload = entry.payload
                    state = (entry.data_offset + payload + -payload % BLOCK,
                             dict(reader._global) if reader._global else None,
                             reader.volume_label)
                    if len(batch) == _BATCH * _FIELD_COUNT:
                        self.send(_BATCH_OF, number, (batch, *state))
                        batch = []
                if reader.archive_end is not None:
                    self.send(_BATCH_OF, number, (batch, *state))
                    self.send(_END, number, (reader.end_offset, reader.archive_end,
                                             reader.volume_label))
                    return
                here = reader.offset
                while ahead < len(done) and done[ahead][0] < here:
                    ahead += 1
                if ahead < len(done) and done[ahead][0] == here:
                    if done[ahead][1] == reader._global:
                        self.send(_BATCH_OF, number, (batch, *state))
                        self.send(_LANDED, number, done[ahead][2])
                        return
                    ahead += 1
        except TarError as err:
            self.send(_BATCH_OF, number, (batch, *state))
            self.send(_ERROR, number, (err.args[0], err.path, err.offset))


def _progress(offset: int, when_ns: int) -> bytes:
    return offset.to_bytes(8, "little") + when_ns.to_bytes(8, "little")


def _next_poll(poll: int, took_ns: int) -> int:
    """The bytes to read before the next look at the pipe: about _POLL seconds' worth."""
    if took_ns < _POLL * 0.5e9:
        poll *= 2
    elif took_ns > _POLL * 2e9:
        poll //= 2
    return min(max(poll, _POLL_BYTES[0]), _POLL_BYTES[1])


def _find_header(raw: _PositionalFile, origin: int, target: int, end: int) -> int | None:
    """The offset of the first block from `target` (a multiple of BLOCK) to `end` that has a
    ustar magic and a right checksum."""
    at = target
    while at < end:
        raw.seek(origin + at)
        chunk = raw.read(min(1 << 20, end - at) + BLOCK)
        pos = chunk.find(b"ustar", _MAGIC_AT)
        while 0 <= pos:
            start = pos - _MAGIC_AT
            if start % BLOCK == 0 and start + BLOCK <= len(chunk) and at + start < end \
                    and _header_ok(chunk[start:start + BLOCK]):
                return at + start
            pos = chunk.find(b"ustar", pos + 1)
        at += 1 << 20
    return None
