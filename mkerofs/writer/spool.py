"""The spool: one temporary file that holds the data of tar entries until the image is written.

A tar stream is read once, front to back, but the image lays files out breadth first by
directory and name (as mkfs.erofs does), so file data read from a pipe or a compressed layer has
to wait somewhere: like mkfs.erofs, in a file under ``$TMPDIR`` (else /tmp). Every file's bytes
go into the one spool file, one after the other; a `DataRef` (path, offset) says where. Sparse
files start on a block boundary of the spool and their holes are left unwritten, so they stay
holes (and cost no space).

The build's worker processes open the spool by name, so it keeps a real path until `close()`,
which unlinks it (also on errors: use it as a context manager). Writes are gathered in a bounded
buffer; `flush()` makes everything stored so far readable through the path.
"""
from __future__ import annotations

import os
import tempfile

from ..errors import BuildError
from .tarstream import TarEntry, TarReader
from .walk import DataRef

_BUFFER = 1 << 20
_SPARSE_ALIGN = 1 << 16         # a multiple of any file system's block size a spool lives on


class Spool:
    """See the module docstring. `directory` None: ``$TMPDIR`` as set when the spool file is
    created, else Python's default temporary directory."""

    def __init__(self, directory: str | bytes | None = None):
        self._directory = directory
        self.path: bytes | None = None
        self._fd = -1
        self._end = 0               # where the next file's data goes
        self._size = 0              # bytes of the file as far as written (holes after it excluded)
        self._buf = bytearray()
        self._buf_at = 0            # spool offset of _buf[0]

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def store(self, reader: TarReader, entry: TarEntry) -> DataRef:
        """Copy the data of `entry` (the entry `reader` yielded last) into the spool."""
        if self._fd < 0:
            self._open()
        start = self._end
        if entry.sparse is not None:
            start += -start % _SPARSE_ALIGN
        for offset, piece in reader.chunks(entry):
            self._write(start + offset, piece)
        self._end = start + entry.size
        return DataRef(self.path, start)

    def flush(self) -> None:
        """Make every byte stored so far readable through `path` (by other processes too)."""
        if self._fd < 0:
            return
        if self._buf:
            self._pwrite(bytes(self._buf), self._buf_at)
            self._buf.clear()
        if self._size < self._end:
            # a sparse file ending in a hole: the spool must reach its end
            try:
                os.ftruncate(self._fd, self._end)
            except OSError as err:
                raise self._error(err) from None
            self._size = self._end

    def close(self) -> None:
        """Close and remove the spool file (a second call does nothing)."""
        fd, path = self._fd, self.path
        self._fd, self.path = -1, None
        self._buf.clear()
        if fd >= 0:
            os.close(fd)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- inside ---------------------------------------------------------------------------

    def _open(self) -> None:
        directory = self._directory
        if directory is None:
            directory = os.environ.get("TMPDIR") or tempfile.gettempdir()
        try:
            fd, path = tempfile.mkstemp(prefix=b"mkerofs-spool-", dir=os.fsencode(directory))
        except OSError as err:
            raise BuildError(f"cannot create the spool file for the tar's data in "
                             f"{os.fsdecode(directory)} (TMPDIR): {err.strerror or err}") from None
        self._fd, self.path = fd, path

    def _write(self, offset: int, piece: bytes) -> None:
        buf = self._buf
        if buf and self._buf_at + len(buf) != offset:
            self.flush()
        if not buf:
            if len(piece) >= _BUFFER:
                self._pwrite(piece, offset)
                return
            self._buf_at = offset
        buf += piece
        if len(buf) >= _BUFFER:
            self._pwrite(bytes(buf), self._buf_at)
            buf.clear()

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                done = os.pwrite(self._fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as err:
            raise self._error(err) from None
        self._size = max(self._size, offset)

    def _error(self, err: OSError) -> BuildError:
        where = os.fsdecode(self.path)
        return BuildError(f"spool file {where} (TMPDIR {os.path.dirname(where)}): "
                          f"{err.strerror or err}; set TMPDIR to a file system with room for "
                          "the tar's file data")
