"""The spool: one temporary file that holds the data of tar entries until the image is written.

A tar stream is read once, front to back, but the image lays files out breadth first by
directory and name (as mkfs.erofs does), so file data read from a pipe or a compressed layer has
to wait somewhere: like mkfs.erofs, in a file under ``$TMPDIR`` (else /tmp). Every file's bytes
go into the one spool file, one after the other; a `DataRef` (path, offset) says where. Sparse
files start on a block boundary of the spool and their holes are left unwritten, so they stay
holes (and cost no space); the file after one starts on a boundary too, or its first bytes would
share a block with a hole at the sparse file's end, which SEEK_DATA then reports as data (a
chunk-based build would store that chunk, when read in place it is a hole).

The build's worker processes open the spool by name, so it keeps a real path until `close()`,
which unlinks it (also on errors: use it as a context manager). Writes are gathered in a bounded
buffer; `flush()` makes everything stored so far readable through the path.

`--sort=none` (without compression, with -Enoinline_data, as mkfs.erofs honours it) needs no
spool: the files keep the tar's order in the image, so `ImageSpool` writes each one straight to
its blocks in the image's data area as the stream passes, and nothing lands in ``$TMPDIR``.
"""
from __future__ import annotations

import os
from typing import Iterable

from ..errors import BuildError
from ..ondisk import format as fmt
from ..util import pwrite_all
from .data import DataArea
from .tarstream import TarEntry, TarReader
from .walk import DataRef, FileRef, InImageRef

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
        self._gather = _Gather(self._pwrite)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def store(self, reader: TarReader, entry: TarEntry) -> DataRef:
        """Copy the data of `entry` (the entry `reader` yielded last) into the spool."""
        if self._fd < 0:
            self._open()
        start = self._end
        self._end = start + entry.size
        data = reader.small_data(entry)
        if data is not None:
            self._gather.write(start, data)
        else:
            if entry.sparse is not None:
                start += -start % _SPARSE_ALIGN
                # the next file too: not in a block of this one's last hole (module docstring)
                self._end = start + fmt.round_up(entry.size, _SPARSE_ALIGN)
            for offset, piece in reader.chunks(entry):
                self._gather.write(start + offset, piece)
        return FileRef(self.path, start)

    def store_pieces(self, pieces: Iterable[bytes]) -> DataRef:
        """Copy a file given as consecutive pieces (a file of a source image, decoded as
        read) into the spool."""
        if self._fd < 0:
            self._open()
        start = pos = self._end
        for piece in pieces:
            self._gather.write(pos, piece)
            pos += len(piece)
        self._end = pos
        return FileRef(self.path, start)

    def flush(self) -> None:
        """Make every byte stored so far readable through `path` (by other processes too)."""
        if self._fd < 0:
            return
        self._gather.flush()
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
        self._gather.drop()
        if fd >= 0:
            os.close(fd)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- inside ---------------------------------------------------------------------------

    def _open(self) -> None:
        import tempfile     # (with shutil, bz2, lzma ...: only a build that spools loads it)
        directory = self._directory
        if directory is None:
            directory = os.environ.get("TMPDIR") or tempfile.gettempdir()
        try:
            fd, path = tempfile.mkstemp(prefix=b"mkerofs-spool-", dir=os.fsencode(directory))
        except OSError as err:
            raise BuildError(f"cannot create the spool file for the tar's data in "
                             f"{os.fsdecode(directory)} (TMPDIR): {err.strerror or err}") from None
        self._fd, self.path = fd, path

    def _pwrite(self, data: bytes, offset: int) -> None:
        try:
            end = pwrite_all(self._fd, data, offset)
        except OSError as err:
            raise self._error(err) from None
        self._size = max(self._size, end)

    def _error(self, err: OSError) -> BuildError:
        where = os.fsdecode(self.path)
        return BuildError(f"spool file {where} (TMPDIR {os.path.dirname(where)}): "
                          f"{err.strerror or err}; set TMPDIR to a file system with room for "
                          "the tar's file data")


class ImageSpool:
    """--sort=none from a stream: each file's data goes to the next free blocks of `data` (the
    image's data area, which begins right after the superblock's block) as the tar is read,
    block-aligned and in tar order; the DataRef says where (in_image).  Holes of sparse entries
    stay holes in a new image file and are written as zeros on a block device (old bytes), as
    is the rest of a file's last block.  The blocks of an entry that a later one replaces stay
    in the image, unreferenced, as with mkfs.erofs."""

    def __init__(self, data: DataArea):
        self.data = data
        self._gather = _Gather(data.out.pwrite)
        self._zero_block = memoryview(bytes(data.block_size))   # (its slices copy nothing)

    def store(self, reader: TarReader, entry: TarEntry) -> DataRef:
        """Write the data of `entry` (the entry `reader` yielded last) into the image."""
        bs = self.data.block_size
        size = entry.size
        start = self.data.allocate_file(-(-size // bs)) * bs
        data = reader.small_data(entry)
        if data is not None:
            # (most files: one piece, all of the file, then the rest of its last block)
            gather = self._gather
            gather.write(start, data)
            pad = -size % bs
            if pad:
                gather.write(start + size, self._zero_block[:pad])
            return InImageRef(start)
        zero_holes = self.data.out.is_device
        done = 0                    # bytes of the file written (or skipped as a hole) so far
        for offset, piece in reader.chunks(entry):
            if offset > done and zero_holes:
                self._zeros(start + done, offset - done)
            self._gather.write(start + offset, piece)
            done = offset + len(piece)
        end = fmt.round_up(size, bs)
        if zero_holes or end - done < bs:
            # the rest of the last block (a hole of more on a block device)
            self._zeros(start + done, end - done)
        return InImageRef(start)

    def flush(self) -> None:
        """Write out what is still gathered."""
        self._gather.flush()

    def _zeros(self, pos: int, length: int) -> None:
        while length > 0:
            n = min(length, _BUFFER)
            self._gather.write(pos, bytes(n))
            pos += n
            length -= n


class _Gather:
    """Writes at given offsets, gathered while they follow each other into pieces of up to
    _BUFFER bytes for `pwrite(data, offset)`: one system call for many small files.  The
    pieces are gathered in one buffer of _BUFFER bytes, made once and reused (`pwrite` is
    done with a piece when it returns): a buffer grown by appending moves as it grows, and
    the blocks it leaves behind were up to 5 MiB of a --sort=none build's peak RSS."""

    def __init__(self, pwrite):
        self._pwrite = pwrite
        self._buf: bytearray | None = None      # (made at the first write)
        self._len = 0               # bytes gathered in _buf
        self._at = 0                # offset of _buf[0]

    def write(self, offset: int, piece) -> None:
        n = self._len
        if n and self._at + n != offset:
            self.flush()
            n = 0
        size = len(piece)
        if not n:
            if size >= _BUFFER:
                self._pwrite(piece, offset)
                return
            self._at = offset
        end = n + size
        if end > _BUFFER:
            self.flush()
            self.write(offset, piece)
            return
        buf = self._buf
        if buf is None:
            buf = self._buf = bytearray(_BUFFER)
        buf[n:end] = piece
        self._len = end
        if end == _BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._len:
            n, self._len = self._len, 0
            self._pwrite(memoryview(self._buf)[:n], self._at)

    def drop(self) -> None:
        self._buf, self._len = None, 0
