"""SplitTarReader: a tar file's headers read on two cores give exactly the entries, end facts
and errors one TarReader gives, whatever stands at the points where the forked process starts
(a tar inside the tar, global PAX headers, sparse files, a cut or damaged tar), and the forked
process never outlives the reader, nor a failure of its own."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import astuple

import pytest

from mkerofs.writer import tarsplit
from mkerofs.writer.decompress import open_input
from mkerofs.writer.tarsplit import SplitTarReader
from mkerofs.writer.tarstream import TarError, TarReader
from support.tarfiles import END, header, member, pax
from support.tarsplit import landed, no_children, parts  # noqa: F401 (fixtures)




def _files(count: int, prefix: str = "d", fmt=tarfile.PAX_FORMAT, size=lambda i: i % 700,
           extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i in range(count):
            if i % 50 == 0:
                info = tarfile.TarInfo(f"{prefix}{i // 50}")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            if extra is not None:
                extra(tar, i)
            info = tarfile.TarInfo(f"{prefix}{i // 50}/file-{i}" + "x" * (i % 3 * 60))
            info.size = size(i)
            info.mtime = 1_700_000_000 + i % 17
            info.uid, info.gid = i % 5, 1000 + i % 3
            tar.addfile(info, io.BytesIO(bytes([i % 251]) * info.size))
    return buf.getvalue()


def _body(data: bytes) -> bytes:
    """A tar's entries without its end marker (and the zeros after it)."""
    reader = TarReader(io.BytesIO(data))
    for _entry in reader:
        pass
    return data[:reader.end_offset]


def _boundary(body: bytes, where: float) -> int:
    """The first boundary between entries at or after `where` of `body`."""
    return next(e.header_offset for e in TarReader(io.BytesIO(body + END))
                if e.header_offset >= len(body) * where)


def _read(path, cls, take_sparse: bool = True):
    """(every entry's fields, the end facts), or the TarError's message; and the reader."""
    with open(path, "rb") as f, open_input(f) as inp:
        reader = cls(inp)
        got = []
        try:
            for e in reader:
                data = reader.read(e) if e.sparse is not None and take_sparse else None
                got.append((astuple(e), data))
        except TarError as err:
            return f"{err} | {err.path!r} {err.offset}", reader
        finally:
            reader.close()
        return (got, (reader.end_offset, reader.archive_end, reader.trailing_bytes,
                      reader.trailing_data, reader.volume_label)), reader


def _same(path) -> object:
    """Read `path` both ways: the result, which must be the same."""
    want, _ = _read(path, TarReader)
    got, reader = _read(path, SplitTarReader)
    assert got == want
    assert reader._pid < 0              # (stopped and reaped)
    return want


def test_same_entries_and_end(tmp_path, landed):
    path = tmp_path / "t.tar"
    path.write_bytes(_files(3000) + bytes(5000))
    entries, _end = _same(path)
    assert len(entries) == 3000 + 60
    assert landed                       # (the forked process's entries were taken)
    assert no_children()


def test_gnu_long_names_and_links(tmp_path, landed):
    def links(tar, i):
        if i % 7 == 3:
            info = tarfile.TarInfo(f"l{i // 50}/" + "s" * 150 + str(i))
            info.type, info.linkname = tarfile.SYMTYPE, "t" * 120
            tar.addfile(info)

    path = tmp_path / "t.tar"
    path.write_bytes(_files(2000, fmt=tarfile.GNU_FORMAT, extra=links))
    _same(path)
    assert landed


def test_a_tar_inside_the_tar(tmp_path, landed):
    """Valid headers inside a file's data, where the forked process looks for one: its
    chain ends there, this process never lands on it, and reads on."""
    inner = _files(400, prefix="inner")
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(300):
            info = tarfile.TarInfo(f"a/{i}")
            info.size = 100
            tar.addfile(info, io.BytesIO(b"a" * 100))
        info = tarfile.TarInfo("inner.tar")
        info.size = len(inner)
        tar.addfile(info, io.BytesIO(inner))
        for i in range(300):
            info = tarfile.TarInfo(f"b/{i}")
            info.size = 10
            tar.addfile(info, io.BytesIO(b"b" * 10))
    data = outer.getvalue()
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    # (the inner tar spans the first point, and the points after it while this process is
    # still before it)
    start = data.index(inner[:512])
    assert start < len(data) * tarsplit._SHARE < start + len(inner)
    entries, _end = _same(path)
    assert [e[0][0] for e in entries].count(b"inner.tar") == 1
    assert not any(e[0][0].startswith(b"inner") and e[0][0] != b"inner.tar" for e in entries)


def test_global_pax_headers(tmp_path, landed):
    """A global header before the forked process's parts (they start without it: this
    process does not land on them) and one inside them (which they read themselves)."""
    head = _body(_files(50, prefix="head"))
    middle = pax([(b"uid", b"777"), (b"mtime", b"1600000000.5")], typeflag=b"g")
    late = pax([(b"gid", b"4242")], typeflag=b"g")
    body = _body(_files(1500))
    boundary = _boundary(body, 3 / 4)       # (for the second global header)
    path = tmp_path / "t.tar"
    path.write_bytes(head + middle + body[:boundary] + late + body[boundary:] + END)
    entries, _end = _same(path)
    fields = [e[0] for e in entries]
    assert {f[4] for f in fields[60:]} == {777}             # uid from the first global
    assert fields[-1][5] == 4242                            # gid from the second

    # ... and a global header only in the forked process's part: its entries are taken
    landed.clear()
    path.write_bytes(body[:boundary] + late + body[boundary:] + END)
    entries, _end = _same(path)
    assert landed
    assert entries[-1][0][5] == 4242


def test_sparse_files_in_the_forked_part(tmp_path, landed):
    """A sparse file's map is in its data: the forked process stops before it, this process
    reads it (and can read its data) and goes on."""
    body = _body(_files(2000))
    boundary = _boundary(body, 2 / 3)
    records = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
               (b"GNU.sparse.name", b"sparse-file"), (b"GNU.sparse.realsize", b"20000")]
    sparse_map = b"2\n0\n5\n10000\n3\n".ljust(512, b"\0")
    payload = sparse_map + b"hello" + b"abc"
    sparse_entry = pax(records) + member(header(b"GNUSparseFile.0/sparse-file", b"0",
                                                len(payload)), payload)
    path = tmp_path / "t.tar"
    path.write_bytes(body[:boundary] + sparse_entry + body[boundary:] + END)
    entries, _end = _same(path)
    (found,) = [(e, d) for e, d in entries if e[0] == b"sparse-file"]
    assert found[1][:5] == b"hello" and found[1][10000:10003] == b"abc"
    assert landed


def test_volume_label_in_the_forked_part(tmp_path, landed):
    body = _body(_files(1500))
    boundary = _boundary(body, 3 / 4)
    path = tmp_path / "t.tar"
    path.write_bytes(body[:boundary] + member(header(b"LABEL-2", b"V")) + body[boundary:] + END)
    _entries, end = _same(path)
    assert end[-1] == b"LABEL-2"
    assert landed


@pytest.mark.parametrize("where", [0.2, 0.5, 0.9, 0.999])
def test_cut_tar_same_error(tmp_path, where):
    data = _body(_files(2000))
    path = tmp_path / "t.tar"
    path.write_bytes(data[:int(len(data) * where)])
    message = _same(path)
    assert isinstance(message, str) and "at byte" in message


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_damaged_header_same_error(tmp_path, where):
    data = bytearray(_files(2000))
    at = _boundary(_body(bytes(data)), where)
    data[at + 10] ^= 0x01               # (the name: the checksum no longer matches)
    path = tmp_path / "t.tar"
    path.write_bytes(bytes(data))
    message = _same(path)
    assert isinstance(message, str) and "bad header checksum" in message and str(at) in message


@pytest.mark.parametrize("after_batches", [0, 1, 3])
def test_a_forked_process_that_dies(tmp_path, monkeypatch, landed, after_batches):
    """It dies (as if killed) after some batches: this process reads on from the last entry
    it got, and the result is the same."""
    send = tarsplit._Child.send
    sent = []

    def dying(self, kind, number, payload):
        if kind == tarsplit._BATCH_OF:
            sent.append(number)
            if len(sent) > after_batches:
                os._exit(3)
        send(self, kind, number, payload)

    monkeypatch.setattr(tarsplit._Child, "send", dying)
    path = tmp_path / "t.tar"
    path.write_bytes(_files(3000))
    _same(path)
    assert no_children()


def test_a_forked_process_that_fails(tmp_path, monkeypatch):
    def failing(self, target):
        raise RuntimeError("broken")

    monkeypatch.setattr(tarsplit._Child, "run", failing)
    path = tmp_path / "t.tar"
    path.write_bytes(_files(2000))
    _same(path)
    assert no_children()


def test_stopped_early_leaves_no_process(tmp_path):
    path = tmp_path / "t.tar"
    path.write_bytes(_files(3000))
    with open(path, "rb") as f, open_input(f) as inp:
        reader = SplitTarReader(inp)
        entries = iter(reader)
        next(entries)
        assert reader._pid > 0
        reader.close()
        assert reader._pid < 0
        reader.close()                  # (a second call does nothing)
    assert no_children()


def test_no_fork_for_a_pipe_or_a_small_tar(tmp_path, monkeypatch):
    data = _files(500)
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as proc, \
            open_input(proc.stdout) as inp:
        reader = SplitTarReader(inp)
        assert len(list(reader)) == 510
        assert reader._pid < 0
        reader.close()
    monkeypatch.setattr(tarsplit, "_SPLIT_MIN", len(data) + 1)
    with open(path, "rb") as f, open_input(f) as inp:
        reader = SplitTarReader(inp)
        next(iter(reader))
        assert reader._pid < 0
        reader.close()
