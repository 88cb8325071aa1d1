"""Builds with the tar's headers read on two cores (writer/tarsplit.py, forced on a small tar)
against the same builds read in one process: --tar=i with a MAPFILE, the tar as stdin left
partway into the file, a fork that fails, and two builds in one process (no descriptor or
child left)."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from mkerofs import BuildOptions, build
from mkerofs.writer import tarsplit
from mkerofs.writer.options import TarOptions
from support.tarsplit import landed_parts, no_children, small_parts

UUID = bytes(range(16))


@pytest.fixture(autouse=True)
def parts(monkeypatch):
    small_parts(monkeypatch)


@pytest.fixture
def landed(monkeypatch) -> list[int]:
    return landed_parts(monkeypatch)


def _name(i: int) -> str:
    return f"d{i // 100}/f{i}" + "n" * (i % 5 * 40)


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(1500):
            info = tarfile.TarInfo(_name(i))
            info.size, info.mtime = i % 900, 1_700_000_000 + i % 13
            tar.addfile(info, io.BytesIO(bytes([i % 200 + 1]) * info.size))
            if i % 300 == 299:          # (later parts link to and replace earlier entries)
                info = tarfile.TarInfo(_name(i - 290))
                info.size = 3
                tar.addfile(info, io.BytesIO(b"new"))
                info = tarfile.TarInfo(f"d{i // 100}/link{i}")
                info.type, info.linkname = tarfile.LNKTYPE, _name(1)
                tar.addfile(info)
    return buf.getvalue()


def _build(tmp_path, name: str, split: bool, monkeypatch, *, skip: int = 0,
           mapfile: bool = False) -> tuple[bytes, bytes | None]:
    """(the image, the MAPFILE's blob) built from in.tar, given as a file left at `skip`."""
    monkeypatch.setattr(tarsplit, "_SPLIT_MIN", 0 if split else 1 << 62)
    image, blob = tmp_path / name, tmp_path / (name + ".blob")
    options = BuildOptions(tar=TarOptions(mode="i", mapfile=str(blob) if mapfile else None),
                           timestamp=1_000_000, uuid=UUID, workers=1)
    with open(tmp_path / "in.tar", "rb") as stdin:
        stdin.seek(skip)
        build(image, stdin if skip else tmp_path / "in.tar", options)
    return image.read_bytes(), blob.read_bytes() if mapfile else None


def test_mapfile(tmp_path, monkeypatch, landed):
    (tmp_path / "in.tar").write_bytes(_tar())
    one = _build(tmp_path, "one.erofs", False, monkeypatch, mapfile=True)
    assert not landed
    two = _build(tmp_path, "two.erofs", True, monkeypatch, mapfile=True)
    assert landed
    assert one == two


@pytest.mark.parametrize("skip", [300, 8192])
def test_stdin_partway_into_the_file(tmp_path, monkeypatch, landed, skip):
    (tmp_path / "in.tar").write_bytes(os.urandom(skip) + _tar())
    one = _build(tmp_path, "one.erofs", False, monkeypatch, skip=skip)
    two = _build(tmp_path, "two.erofs", True, monkeypatch, skip=skip)
    assert landed
    assert one == two


def test_fork_that_fails(tmp_path, monkeypatch):
    (tmp_path / "in.tar").write_bytes(_tar())
    one = _build(tmp_path, "one.erofs", False, monkeypatch)

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    assert _build(tmp_path, "two.erofs", True, monkeypatch) == one


def test_twice_in_one_process_leaves_nothing_open(tmp_path, monkeypatch, landed):
    (tmp_path / "in.tar").write_bytes(_tar())
    before = set(os.listdir("/proc/self/fd"))
    one = _build(tmp_path, "one.erofs", True, monkeypatch)
    two = _build(tmp_path, "two.erofs", True, monkeypatch)
    assert len(landed) >= 2 and one == two
    assert set(os.listdir("/proc/self/fd")) == before
    assert no_children()
