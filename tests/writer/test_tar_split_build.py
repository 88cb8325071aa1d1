"""A build whose tar headers are read on two cores (writer/tarsplit.py, forced here on a small
tar) writes the same image bytes as one that reads them in one process: --tar=i from a tar
file given by path or as an open file (stdin), with aufs whiteouts, hard links, symlinks, a
sparse file and a global PAX header in the forked process's part.  --tar=f reads them in one
process."""
from __future__ import annotations

import io
import tarfile

import pytest

from mkerofs import BuildOptions, build
from mkerofs.writer import tarsplit
from mkerofs.writer.options import TarOptions
from mkerofs.writer.tarstream import TarReader
from support.tarfiles import END, header, member, pax
from support.tarsplit import landed_parts
from support.threads import settled

UUID = bytes(range(16))


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(1500):
            folder = f"d{i // 100}"
            if i % 100 == 0:
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            info = tarfile.TarInfo(f"{folder}/f{i}" + "n" * (i % 4 * 40))
            info.size, info.mtime, info.uid = i % 900, 1_700_000_000 + i % 13, i % 3
            tar.addfile(info, io.BytesIO(bytes([i % 200 + 1]) * info.size))
            if i % 97 == 5:
                info = tarfile.TarInfo(f"{folder}/.wh.gone{i}")
                tar.addfile(info)
            if i % 89 == 7:
                info = tarfile.TarInfo(f"{folder}/link{i}")
                info.type, info.linkname = tarfile.LNKTYPE, f"{folder}/f{i}" + "n" * (i % 4 * 40)
                tar.addfile(info)
                info = tarfile.TarInfo(f"{folder}/sym{i}")
                info.type, info.linkname = tarfile.SYMTYPE, "../elsewhere"
                tar.addfile(info)
    body = buf.getvalue()
    # near the end, in the forked process's part: a global header and a sparse file
    records = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
               (b"GNU.sparse.name", b"late/sparse"), (b"GNU.sparse.realsize", b"50000")]
    payload = b"1\n40000\n6\n".ljust(512, b"\0") + b"sparse"
    late = (member(header(b"late", b"5", mode=0o700)) + pax([(b"uid", b"4321")], typeflag=b"g")
            + pax(records) + member(header(b"GNUSparseFile.0/sparse", b"0", len(payload)),
                                    payload)
            + member(header(b"late/after", b"0", 5), b"after"))
    return body[:_end_of_entries(body)] + late + END


def _end_of_entries(data: bytes) -> int:
    reader = TarReader(io.BytesIO(data))
    for _entry in reader:
        pass
    return reader.end_offset


def _image(tmp_path, name: str, source, mode: str, split: bool, monkeypatch) -> bytes:
    monkeypatch.setattr(tarsplit, "_SPLIT_MIN", 0 if split else 1 << 62)
    monkeypatch.setattr(tarsplit, "_MIN_GAP", 0)
    monkeypatch.setattr(tarsplit, "_POLL_FIRST", 4 << 10)
    monkeypatch.setattr(tarsplit, "_POLL_BYTES", (4 << 10, 4 << 10))
    image = tmp_path / name
    options = BuildOptions(tar=TarOptions(mode=mode, aufs=True), timestamp=1_000_000,
                           uuid=UUID, workers=1)
    if source == "path":
        build(image, tmp_path / "in.tar", options)
    else:
        with open(tmp_path / "in.tar", "rb") as stdin:
            build(image, stdin, options)
    return image.read_bytes()


@pytest.fixture
def landed(monkeypatch) -> list[int]:
    """The parts whose entries were taken from the forked process."""
    return landed_parts(monkeypatch)


@pytest.mark.parametrize("source", ["path", "file"])
def test_same_image(tmp_path, monkeypatch, landed, source):
    if not settled():
        pytest.skip("another thread runs: the reader would not fork")
    (tmp_path / "in.tar").write_bytes(_tar())
    one = _image(tmp_path, "one.erofs", source, "i", False, monkeypatch)
    assert not landed
    two = _image(tmp_path, "two.erofs", source, "i", True, monkeypatch)
    assert landed                       # (the forked process's entries were used)
    assert one == two


def test_tar_f_reads_in_one_process(tmp_path, monkeypatch, landed):
    (tmp_path / "in.tar").write_bytes(_tar())
    one = _image(tmp_path, "one.erofs", "path", "f", False, monkeypatch)
    two = _image(tmp_path, "two.erofs", "path", "f", True, monkeypatch)
    assert not landed
    assert one == two
