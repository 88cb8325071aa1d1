"""TarReader(read_ahead=True): the input read by a thread gives the same entries, data,
offsets and errors as read in the caller's thread, and the thread never outlives close()."""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
import threading

import pytest

from mkerofs.writer.decompress import open_input
from mkerofs.writer.tarstream import TarError, TarReader

COMPRESSORS = {"tar": None, "gzip": ["gzip", "-c"], "xz": ["xz", "-c"],
               "zstd": ["zstd", "-q", "-c"], "bzip2": ["bzip2", "-c"]}


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mkerofs-tar-read"]


def _tar_bytes() -> bytes:
    """Files of many sizes (some over the read-ahead pieces of 1 MiB, so that one ends inside
    a piece), a sparse-free POSIX tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, size in enumerate([0, 1, 511, 512, 513, 70_000, (1 << 20) - 5, (1 << 20) + 7,
                                  3_000_000, 100, 65_536, 2_500_001, 12]):
            info = tarfile.TarInfo(f"d{i % 3}/f{i}")
            info.size = size
            info.mtime = 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


@pytest.fixture(scope="module")
def plain() -> bytes:
    return _tar_bytes()


def _read(source, read_ahead: bool, take_data: bool = True):
    """(entries with a digest of their data, the end facts), or the TarError's message."""
    with open_input(source) as inp:
        reader = TarReader(inp, read_ahead=read_ahead)
        got = []
        try:
            for e in reader:
                data = reader.read(e) if take_data else b""
                got.append((e.path, e.size, e.header_offset, e.data_offset,
                            hashlib.sha256(data).hexdigest()))
        except TarError as err:
            return str(err)
        finally:
            reader.close()
        return got, (reader.end_offset, reader.archive_end, reader.trailing_bytes,
                     reader.trailing_data)


def _packed(plain: bytes, kind: str) -> bytes:
    if COMPRESSORS[kind] is None:
        return plain
    return subprocess.run(COMPRESSORS[kind], input=plain, stdout=subprocess.PIPE,
                          check=True).stdout


@pytest.mark.parametrize("take_data", [True, False])
@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_same_entries_and_data_through_a_pipe(plain, tmp_path, kind, take_data):
    path = tmp_path / "t"
    # (a plain tar with zeros after its end: they are read to the end and counted)
    path.write_bytes(_packed(plain, kind) if kind != "tar" else plain + bytes(3000))
    want = _read(str(path), False, take_data)
    assert isinstance(want, tuple) and len(want[0]) == 13
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as proc:
        got = _read(proc.stdout, True, take_data)
        assert proc.wait() == 0         # read to its end: no SIGPIPE for the writer
    assert got == want
    assert not _reader_threads()


def _same_error(got, want) -> bool:
    """The same result; a decoder's failure (which loses what the failing read decoded) may
    be reported up to a read-ahead piece (1 MiB) earlier in the stream."""
    if not isinstance(want, str) or "cannot read the input" not in want:
        return got == want
    (at_got, rest_got), (at_want, rest_want) = (re.fullmatch(r"at byte (\d+): (.*)", m).groups()
                                                for m in (got, want))
    return rest_got == rest_want and 0 <= int(at_want) - int(at_got) <= 1 << 20


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_same_errors_on_cut_input(plain, kind):
    packed = _packed(plain, kind)
    errors = 0
    # (a plain tar cut by less than tarfile's padding after the end marker is still whole)
    for cut in (1, 9, 700, 9000, len(packed) // 3, len(packed) - 5000):
        data = packed[:-cut]
        want = _read(io.BytesIO(data), False)
        errors += isinstance(want, str)
        assert _same_error(_read(io.BytesIO(data), True), want)
    assert errors >= 3
    assert not _reader_threads()


def test_an_error_of_the_input_surfaces_in_order(plain):
    class Failing(io.RawIOBase):
        """Gives the tar's first 2.5 MiB, then fails."""
        def __init__(self):
            self._data = io.BytesIO(plain[:5 << 19])

        def readable(self):
            return True

        def readinto(self, b):
            n = self._data.readinto(b)
            if not n:
                raise OSError(5, "Input/output error")
            return n

    want = _read(Failing(), False)
    assert "cannot read the input" in want and "Input/output error" in want
    assert _read(Failing(), True) == want
    assert not _reader_threads()


def test_close_when_the_reader_stops_early(plain):
    big = plain * 8                     # far more than the pieces read ahead
    reader = TarReader(io.BytesIO(big), read_ahead=True)
    first = next(iter(reader))
    assert first.path == b"d0/f0"
    assert _reader_threads()
    reader.close()
    assert not _reader_threads()
    reader.close()                      # a second call does nothing
