"""A tar's empty files have no bytes to copy: the file copier is not given them, so a --tar=i
build (whose other files stay in the tar) starts no copier at all, and a full build copies
only the files with data."""
from __future__ import annotations

from mkerofs import BuildOptions, build
from mkerofs.writer import data
from mkerofs.writer.options import TarOptions
from support.oracle import ErofsImage
from support.tars import END, entry

ARCHIVE = entry(b"d/", typeflag=b"5", mode=0o755) + entry(b"d/empty") + entry(b"e2") + \
    entry(b"d/a", b"A" * 5000) + entry(b"b", b"B" * 100) + END


def _copied(tmp_path, monkeypatch, mode: str) -> tuple[list[list[bytes]], dict, bytes]:
    given = []
    start = data.FlatCopier.start

    def noting(self, nodes, wanted):
        given.append(sorted(n.path for n in nodes if wanted(n)))
        return start(self, nodes, wanted)

    monkeypatch.setattr(data.FlatCopier, "start", noting)
    tar = tmp_path / "in.tar"
    tar.write_bytes(ARCHIVE)
    image = tmp_path / f"{mode}.erofs"
    build(image, tar, BuildOptions(tar=TarOptions(mode=mode), uuid=bytes(16), timestamp=0))
    with ErofsImage(image) as img:
        files = img.walk()
    return given, files, image.read_bytes()


def test_index_mode_hands_the_copier_nothing(tmp_path, monkeypatch):
    given, files, _raw = _copied(tmp_path, monkeypatch, "i")
    assert given == [[]]
    assert files[b"/d/empty"].size == files[b"/e2"].size == 0 and files[b"/d/a"].size == 5000


def test_full_mode_copies_only_files_with_data(tmp_path, monkeypatch):
    given, files, raw = _copied(tmp_path, monkeypatch, "f")
    assert given == [[b"b", b"d/a"]]
    assert files[b"/d/empty"].size == files[b"/e2"].size == 0 and files[b"/d/a"].size == 5000
    assert b"A" * 4096 in raw and b"B" * 100 in raw     # (the rest of d/a is inline)
