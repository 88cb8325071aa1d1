"""Opening a tar input: a plain tar, or one compressed with gzip, xz, lzma-alone, zstd or bzip2.

mkfs.erofs 1.9.3 decodes only when told to (``--ungzip``, ``--unxz``/``--unlzma``) and cannot read
zstd at all, so an OCI ``tar+zstd`` layer fails there with a checksum error. Here the first bytes
decide: a block that looks like a tar header is read as it is; otherwise the magic of each format
picks the decoder, and a flag only matters for lzma-alone, whose header has no real magic (with
``--unxz``/``--unlzma`` an unrecognised stream is handed to the lzma decoder, which then says
whether it is one). ``--ungzip`` on a plain tar reads it unchanged, as zlib's gzread does for
mkfs.erofs.

Everything streams: the decoders read the source in 1 MiB pieces and never hold the layer, and
nothing seeks, so stdin and pipes work. Only an uncompressed regular file is marked seekable, so
that skipping the data of entries nobody reads can seek instead of reading. Concatenated gzip
members and xz/zstd frames are read through (as ``gzip -dc`` does).
"""
from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

_SNIFF = 512
_READ_SIZE = 1 << 20

HINTS = (None, "gzip", "xz", "lzma", "zstd")


@dataclass
class TarInput:
    """A readable, decompressed tar stream and what it was."""
    stream: BinaryIO            # read(n) gives decompressed bytes; b"" only at the end
    kind: str                   # "tar", "gzip", "xz", "lzma", "zstd" or "bzip2"
    seekable: bool              # a plain tar in a regular file: skipping may seek(n, SEEK_CUR)
    owned: list                 # files opened here, closed by close()

    def close(self) -> None:
        for f in reversed(self.owned):
            f.close()
        self.owned.clear()

    def __enter__(self) -> "TarInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Prefixed(io.RawIOBase):
    """`head` (the bytes read to sniff the format) followed by the rest of `source`."""

    def __init__(self, head: bytes, source: BinaryIO):
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                n = len(self._head)
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._source.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Tee(io.RawIOBase):
    """Reads `stream`, copying what it gives to `dump`."""

    def __init__(self, stream: BinaryIO, dump: BinaryIO):
        self._stream, self._dump = stream, dump

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._dump.write(data)
        return data


def sniff(head: bytes) -> str | None:
    """The compression of a stream starting with `head`; "tar" for a tar header; None if unknown."""
    if len(head) >= 263 and head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    if _looks_like_lzma_alone(head):
        return "lzma"
    return None


def _looks_like_lzma_alone(head: bytes) -> bool:
    # lzma-alone: a properties byte (lc + lp*9 + pb*45 < 225), a dictionary size that xz and
    # lzma_utils always write as 2^n or 2^n + 2^(n-1), and a size that is unknown (all ones) or
    # below 2^48.
    if len(head) < 13 or head[0] >= 225:
        return False
    dict_size = int.from_bytes(head[1:5], "little")
    low = dict_size & -dict_size
    if dict_size < 4096 or dict_size not in (low, low * 3):
        return False
    return head[5:13] == b"\xff" * 8 or head[11:13] == b"\0\0"


def _read_head(source: BinaryIO) -> bytes:
    parts, got = [], 0
    while got < _SNIFF:
        data = source.read(_SNIFF - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _is_regular_file(source) -> bool:
    try:
        return stat.S_ISREG(os.fstat(source.fileno()).st_mode) and source.seekable()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def file_path(source: BinaryIO) -> bytes | None:
    """A path naming the regular file `source` is open on (stdin redirected from a tar file),
    if it is read from its start and the path still names that very file; else None.  The
    tar is then read in place, as one given by path: the build's worker processes open it by
    this name."""
    try:
        fd = source.fileno()
        if source.tell() != 0:
            return None
        path = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
        opened, named = os.fstat(fd), os.stat(path)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(opened.st_mode) or \
            (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        return None         # (deleted, renamed, or not a file at all)
    return path


def open_input(source: str | bytes | os.PathLike | BinaryIO, hint: str | None = None,
               dump: BinaryIO | None = None) -> TarInput:
    """Open `source` (a path, or a binary file object such as ``sys.stdin.buffer``) for reading
    tar blocks, decompressing it if its first bytes say it is compressed.

    `hint` is the decoder mkfs.erofs was asked for (one of HINTS); see the module docstring for
    the one case where it matters. `dump` receives a copy of the decompressed stream as it is
    read (``--ungzip=FILE``, ``--unxz=FILE``); the stream is then never seeked, so the copy is
    whole. A file object is not closed by TarInput.close()."""
    if hint not in HINTS:
        raise ValueError(f"unknown decompression hint {hint!r}")
    owned = []
    if isinstance(source, (str, bytes, os.PathLike)):
        source = open(source, "rb")
        owned.append(source)
    regular = _is_regular_file(source)
    if regular:
        start = source.tell()
        head = _read_head(source)
        source.seek(start)
        raw = source
    else:
        head = _read_head(source)
        raw = _Prefixed(head, source)
    kind = sniff(head)
    if kind is None:
        kind = "lzma" if hint in ("xz", "lzma") else "tar"
    stream = raw if kind == "tar" else _decoder(kind, raw)
    if dump is not None:
        return TarInput(_Tee(stream, dump), kind, False, owned)
    return TarInput(stream, kind, regular and kind == "tar", owned)


# The decoders are imported by the input that needs one: a plain tar loads none of them
# (zstandard alone is ~2 MiB resident and ~10 ms of start-up).
def _decoder(kind: str, raw: BinaryIO) -> BinaryIO:
    if kind == "gzip":
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind in ("xz", "lzma"):
        import lzma
        return _Decoding(lzma.LZMAFile(raw, "rb", format=lzma.FORMAT_AUTO), lzma.LZMAError)
    if kind == "bzip2":
        import bz2
        return bz2.BZ2File(raw, "rb")
    import zstandard
    return _Decoding(zstandard.ZstdDecompressor().stream_reader(
        _ZstdFrames(raw), read_size=_READ_SIZE, read_across_frames=True), zstandard.ZstdError)


class DecodeError(ValueError):
    """A damaged or truncated stream, as the decoder described it."""


class _Decoding(io.RawIOBase):
    """A decoder's stream whose own error type (known only once its module is loaded) is
    raised as DecodeError, which DECODE_ERRORS names; gzip's and bzip2's are OSError/EOFError
    already."""

    def __init__(self, stream: BinaryIO, errors: type[Exception]):
        self._stream = stream
        self._errors = errors

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return self._stream.read(n)
        except self._errors as err:
            raise DecodeError(str(err)) from err

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50        # the low 4 bits are free
_ZSTD_DID_SIZE = (0, 1, 2, 4)
_ZSTD_FCS_SIZE = (0, 2, 4, 8)       # flag 0 with Single_Segment set means 1 byte


class _ZstdFrames(io.RawIOBase):
    """Passes the compressed bytes through while following zstd's frame and block headers
    (RFC 8878 §3.1), so that an input cut inside a frame is an error: python-zstandard's
    stream_reader just returns a short stream then, even without the frame's checksum."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._want = 4              # header bytes the current step needs
        self._step = self._frame_magic
        self._partial = b""         # header bytes collected so far
        self._skip = 0              # payload bytes to pass over before the next header
        self._checksum = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._follow(data)
        elif self._skip or self._partial or self._step != self._frame_magic:
            raise EOFError("the zstd input ends inside a frame")
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = self._want - len(self._partial)
            self._partial += data[pos:pos + take]
            pos += take
            if len(self._partial) == self._want:
                header, self._partial = self._partial, b""
                self._step(header)

    def _frame_magic(self, header: bytes) -> None:
        magic = int.from_bytes(header, "little")
        if magic == _ZSTD_MAGIC:
            self._want, self._step = 1, self._frame_header
        elif magic & ~0xF == _ZSTD_SKIPPABLE:
            self._want, self._step = 4, self._skippable_size
        else:
            raise ValueError("the zstd input holds something that is not a zstd frame")

    def _skippable_size(self, header: bytes) -> None:
        self._skip = int.from_bytes(header, "little")
        self._want, self._step = 4, self._frame_magic

    def _frame_header(self, header: bytes) -> None:
        fhd = header[0]
        single_segment = fhd >> 5 & 1
        fcs = _ZSTD_FCS_SIZE[fhd >> 6] or single_segment
        self._checksum = bool(fhd & 4)
        self._skip = (not single_segment) + _ZSTD_DID_SIZE[fhd & 3] + fcs
        self._want, self._step = 3, self._block_header

    def _block_header(self, header: bytes) -> None:
        bh = int.from_bytes(header, "little")
        block_type, size = bh >> 1 & 3, bh >> 3
        self._skip = 1 if block_type == 1 else size      # an RLE block stores one byte
        if bh & 1:      # the last block
            self._skip += 4 * self._checksum
            self._want, self._step = 4, self._frame_magic


# what a decoder raises on a damaged or truncated stream
DECODE_ERRORS = (OSError, EOFError, ValueError)       # DecodeError is a ValueError
