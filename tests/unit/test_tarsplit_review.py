"""SplitTarReader's ways out (review of the tar reader on two cores): a fork that fails, the
tar as stdin partway into the file, descriptors and memory files left after the reading, the
memory file freed as its batches are used, and the same entries where extension headers,
end markers or repeated entries stand at the parts' starts."""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import astuple

import pytest

from mkerofs.writer.decompress import open_input
from mkerofs.writer.tarsplit import SplitTarReader
from mkerofs.writer.tarstream import TarError, TarReader
from support.tarfiles import END
from support.tarsplit import landed, no_children, parts  # noqa: F401 (fixtures)




def _files(count: int, prefix: str = "d", fmt=tarfile.PAX_FORMAT, long: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"{prefix}/file-{i}" + "x" * (i % 3 * 60 * long))
            info.size = i % 700
            info.mtime = 1_700_000_000 + i % 17
            tar.addfile(info, io.BytesIO(bytes([i % 251]) * info.size))
    return buf.getvalue()


def _read_at(path, cls, skip: int = 0):
    """(entries' fields, end facts) or the error's text, the tar read from byte `skip` of the
    file (as stdin left there by a `head -c` before the build)."""
    with open(path, "rb") as f:
        f.seek(skip)
        with open_input(f) as inp:
            reader = cls(inp)
            try:
                got = [astuple(e) for e in reader]
            except TarError as err:
                return f"{err} | {err.path!r} {err.offset}"
            finally:
                reader.close()
            return got, (reader.end_offset, reader.archive_end, reader.trailing_bytes,
                         reader.trailing_data, reader.volume_label), f.tell()


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_fork_that_fails_reads_in_one_process(tmp_path, monkeypatch):
    """fork() failing (EAGAIN: too many processes) is no error: this process reads it all."""
    path = tmp_path / "t.tar"
    path.write_bytes(_files(2000))
    want = _read_at(path, TarReader)
    before = _fds()

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    assert _read_at(path, SplitTarReader) == want
    assert _fds() == before


@pytest.mark.parametrize("skip", [0, 1000, 4096 + 77])
def test_stdin_partway_into_the_file(tmp_path, landed, skip):
    path = tmp_path / "t.tar"
    path.write_bytes(os.urandom(skip) + _files(2500) + b"trailing")
    want = _read_at(path, TarReader, skip)
    assert _read_at(path, SplitTarReader, skip) == want
    assert landed


def test_no_descriptor_or_process_left(tmp_path, landed):
    """Read whole, stopped early, or ended by an error: the same descriptors after as before,
    no memory file and no child."""
    path = tmp_path / "t.tar"
    data = _files(2500)
    path.write_bytes(data)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:len(data) * 3 // 4])
    before = _fds()
    for _ in range(2):              # (twice in one process, as an API caller would)
        assert isinstance(_read_at(path, SplitTarReader), tuple)
        assert isinstance(_read_at(bad, SplitTarReader), str)
        with open(path, "rb") as f, open_input(f) as inp:
            reader = SplitTarReader(inp)
            next(iter(reader))
            reader.close()
    assert landed
    assert _fds() == before
    assert no_children()


def test_repeated_entries_and_ends_in_the_middle(tmp_path, landed):
    """An entry repeated in both halves, a lone zero block and an end marker past the middle
    with another tar after it (trailing data): the same as one reader."""
    first = _files(1500)
    body = first[:-1024 * 10]       # (tarfile pads to 10 KiB records)
    reader = TarReader(io.BytesIO(first))
    for _e in reader:
        pass
    body = first[:reader.end_offset]
    path = tmp_path / "t.tar"
    path.write_bytes(body + bytes(512) + _files(1500)[:-512 * 4] + END + _files(300, "z"))
    want = _read_at(path, TarReader)
    assert _read_at(path, SplitTarReader) == want
    assert want[1][3]               # (trailing data)


def test_out_of_descriptors_reads_in_one_process(tmp_path, monkeypatch):
    """The second pipe failing (EMFILE): nothing the first calls opened is left open."""
    path = tmp_path / "t.tar"
    path.write_bytes(_files(2000))
    want = _read_at(path, TarReader)
    before = _fds()
    pipe, calls = os.pipe, []

    def second_fails():
        calls.append(1)
        if len(calls) == 2:
            raise OSError(24, "Too many open files")
        return pipe()

    monkeypatch.setattr(os, "pipe", second_fails)
    assert _read_at(path, SplitTarReader) == want
    assert len(calls) == 2
    assert _fds() == before


def test_memory_file_freed_as_batches_are_used(tmp_path, monkeypatch, landed):
    """The memory file's pages are given back as this process uses its batches: it holds
    at most what the forked process has sent and this process not yet taken."""
    path = tmp_path / "t.tar"
    path.write_bytes(_files(6000, fmt=tarfile.USTAR_FORMAT, long=False))
    held = []
    entries = SplitTarReader._child_entries

    def watching(self, number):
        for i, entry in enumerate(entries(self, number)):
            if i % 200 == 199 and self._log >= 0:
                held.append((os.fstat(self._log).st_blocks * 512, self._log_pos))
            yield entry

    monkeypatch.setattr(SplitTarReader, "_child_entries", watching)
    want = _read_at(path, TarReader)
    assert _read_at(path, SplitTarReader) == want
    assert landed and len(held) > 3
    # (by the last look, most of what was sent has been used: a few batches' pages remain)
    blocks, sent = held[-1]
    assert sent > 200 << 10
    assert blocks < sent // 4


def test_descriptors_past_select_range(tmp_path, landed):
    """A caller with over a thousand descriptors open (a server building images): the pipe's
    number is past what select() takes, and waiting on it must still work."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1200:
        pytest.skip("cannot open 1100 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    path = tmp_path / "t.tar"
    path.write_bytes(_files(2500))
    want = _read_at(path, TarReader)
    held = []
    try:
        with open(path, "rb") as f:
            while not held or held[-1] < 1100:
                held.append(os.dup(f.fileno()))
        assert _read_at(path, SplitTarReader) == want
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert landed


def test_interrupted_just_after_the_fork(tmp_path, monkeypatch):
    """Ctrl-C the moment the forked process exists (here: raised by the next call the reader
    makes): the reader's close() kills and reaps it and closes every descriptor."""
    path = tmp_path / "t.tar"
    path.write_bytes(_files(2000))
    before = _fds()
    set_blocking = os.set_blocking

    def interrupted(fd, blocking):
        monkeypatch.setattr(os, "set_blocking", set_blocking)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "set_blocking", interrupted)
    with open(path, "rb") as f, open_input(f) as inp:
        reader = SplitTarReader(inp)
        with pytest.raises(KeyboardInterrupt):
            next(iter(reader))
        reader.close()
    assert _fds() == before
    assert no_children()


@pytest.mark.parametrize("args", [["--format=gnu"], ["--format=gnu", "--sparse", "-V", "LABEL"],
                                  ["--format=pax", "--sparse", "--sparse-version=0.0"],
                                  ["--format=pax", "--sparse", "--sparse-version=0.1"],
                                  ["--format=pax", "--sparse", "--sparse-version=1.0"]],
                         ids=["gnu", "oldgnu-sparse-label", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_gnu_tar_formats(tmp_path, landed, args):
    """Tars GNU tar writes (long names, old GNU and PAX sparse files, a volume label)."""
    import shutil
    import subprocess
    if shutil.which("tar") is None:
        pytest.skip("no tar here")
    src = tmp_path / "src"
    for i in range(1500):
        folder = src / f"d{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / (f"f{i}" + "L" * (i % 4 * 60))).write_bytes(bytes([i % 250]) * (i % 700))
        if i % 250 == 100:
            with open(folder / f"sparse{i}", "wb") as f:
                f.write(b"a" * 10)
                f.seek(300_000)
                f.write(b"b" * 5)
    path = tmp_path / "t.tar"
    subprocess.run(["tar", *args, "-cf", str(path), "-C", str(src), "."], check=True)
    want = _read_at(path, TarReader)
    assert isinstance(want, tuple) and len(want[0]) > 1500
    assert _read_at(path, SplitTarReader) == want
    assert landed
