"""The packed inode's data (-Efragments): file tails appended to a temporary file as the files
are compressed, then compressed itself as one more (nameless) regular file.

Fragments are looked up by content before they are appended (-Efragdedupe), so identical
tails - typically identical small files - are stored once.  Only the hash of each fragment
stays in memory; the bytes go to the temporary file.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

from ..errors import BuildError

FRAGDEDUPE_FULL = "full"        # any identical fragment is shared
FRAGDEDUPE_INODE = "inode"      # only fragments that are whole files
FRAGDEDUPE_OFF = "off"


class PackedFile:
    def __init__(self, fragdedupe: str = FRAGDEDUPE_FULL):
        self.fragdedupe = fragdedupe
        import hashlib      # (OpenSSL: 3.5 MB of memory, loaded only where a build hashes)
        self._sha256 = hashlib.sha256
        # a named file: stored flat, it is copied like any other file, by path
        try:
            self._fd, path = tempfile.mkstemp(prefix="mkerofs-packed-")
        except OSError as err:
            raise BuildError(f"cannot create the temporary file for fragments in "
                             f"{tempfile.gettempdir()} (set TMPDIR): {err.strerror}") from None
        self.path = os.fsencode(path)
        self.size = 0
        # fragments are mostly small (48k of them on a Python tree): gathered and written in
        # large pieces, one pwrite each; _buf holds the bytes from _flushed to size
        self._buf = bytearray()
        self._flushed = 0
        self._seen: dict[tuple[int, bytes], int] = {}
        self._start: int | None = None
        self._hash = None
        self.shared_bytes = 0       # fragment bytes stored once for several files (-Efragdedupe)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "PackedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    _FLUSH_BYTES = 1 << 20

    def _write(self, data) -> None:
        self.size += len(data)
        if len(data) >= self._FLUSH_BYTES:
            # a big piece (-Eall-fragments) goes out as it is: no copy into the buffer
            self.flush()
            self._pwrite(data)
            return
        self._buf += data
        if len(self._buf) >= self._FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the gathered bytes to the temporary file."""
        self._pwrite(self._buf)
        del self._buf[:]

    def _pwrite(self, data) -> None:
        try:
            with memoryview(data) as whole:
                view = whole
                while view:
                    done = os.pwrite(self._fd, view, self._flushed)
                    self._flushed += done
                    view = view[done:]
                view.release()
        except OSError as err:
            raise BuildError(f"{os.fsdecode(self.path)} (fragments, temporary; set TMPDIR for "
                             f"another place): {err.strerror}") from None

    def _truncate(self, pos: int) -> None:
        """Drop the bytes from `pos` on."""
        if pos >= self._flushed:
            del self._buf[pos - self._flushed:]
        else:
            del self._buf[:]
            os.ftruncate(self._fd, pos)
            self._flushed = pos
        self.size = pos

    def append(self, data: bytes) -> int:
        """Store bytes that are never shared (the long xattr prefix table); their offset."""
        if self._start is not None:
            raise RuntimeError("append() inside a fragment")
        pos = self.size
        self._write(data)
        return pos

    def begin(self) -> None:
        """Start the fragment of one file (its bytes may come in several pieces)."""
        if self._start is not None:
            raise RuntimeError("begin() inside a fragment")
        self._start = self.size
        self._hash = self._sha256()

    def write(self, data) -> None:
        self._write(data)
        self._hash.update(data)

    def end(self, whole_file: bool) -> int:
        """Finish the fragment; its offset in the packed inode.  An identical earlier fragment
        is used instead (and these bytes dropped) when fragdedupe allows it."""
        start, self._start = self._start, None
        if start is None:
            raise RuntimeError("end() without begin()")
        if self.fragdedupe == FRAGDEDUPE_OFF or (self.fragdedupe == FRAGDEDUPE_INODE
                                                  and not whole_file):
            return start
        key = (self.size - start, self._hash.digest())
        earlier = self._seen.get(key)
        if earlier is None:
            self._seen[key] = start
            return start
        self.shared_bytes += self.size - start
        self._truncate(start)
        return earlier

    def reader(self) -> Callable[[int, int, bool], bytes]:
        """A FileJob reader over the finished packed data."""
        self.flush()
        def read(offset: int, length: int, last: bool) -> bytes:
            if offset + length > self.size:
                raise ValueError("read past the end of the packed data")
            return os.pread(self._fd, length, offset)
        return read
