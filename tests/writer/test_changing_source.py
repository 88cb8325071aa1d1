"""Files that change between the walk and the copy of their data: the build must fail with the
path named and leave nothing behind, never write an inode whose size disagrees with its data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import mkerofs.writer.data
from mkerofs import BuildError, BuildOptions, build


def _tree(src: Path) -> Path:
    src.mkdir()
    (src / "stable").write_bytes(b"s" * 10000)
    (src / "victim").write_bytes(b"v" * 9000)
    return src / "victim"


def _before_copy(monkeypatch, victim: Path, action) -> None:
    """Run `action` on the victim file right before its data is copied into the image."""
    original = mkerofs.writer.data.DataArea.copy_regular

    def copy_regular(self, node, *args, **kw):
        if node.src.path == os.fsencode(victim):
            action(victim)
        return original(self, node, *args, **kw)

    monkeypatch.setattr(mkerofs.writer.data.DataArea, "copy_regular", copy_regular)


@pytest.mark.parametrize("action,words", [
    (lambda p: p.write_bytes(b"v" * 12345), ["victim", "changed"]),          # grew
    (lambda p: p.write_bytes(b"v" * 10), ["victim", "changed"]),             # shrank
    (lambda p: p.unlink(), ["victim"]),                                      # vanished
])
@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("nworkers", [1, 2])   # 2: copied in forked processes
def test_file_changing_during_build(action, words, existing, nworkers, tmp_path, monkeypatch):
    victim = _tree(tmp_path / "src")
    image = tmp_path / "out.erofs"
    if existing:
        image.write_bytes(b"previous image")
    _before_copy(monkeypatch, victim, action)
    with pytest.raises(BuildError) as err:
        build(image, tmp_path / "src", BuildOptions(workers=nworkers))
    message = str(err.value)
    for word in words:
        assert word in message
    assert "\n" not in message
    if existing:
        assert image.read_bytes() == b"previous image"
    else:
        assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("nworkers", [1, 2])   # 2: the file is read in a worker process
def test_file_changing_during_compressed_build(tmp_path, monkeypatch, nworkers):
    import mkerofs.writer.workers as workers

    victim = _tree(tmp_path / "src")
    image = tmp_path / "out.erofs"
    real_read = workers.FileRange.__call__

    def read(self, offset, length, last):
        if self.path == os.fsencode(victim):
            victim.write_bytes(b"v" * (self.size + 100))      # grows before its data is read
        return real_read(self, offset, length, last)

    monkeypatch.setattr(workers.FileRange, "__call__", read)
    with pytest.raises(BuildError) as err:
        build(image, tmp_path / "src", BuildOptions(workers=nworkers, compressor="lz4"))
    assert "victim" in str(err.value) and "changed" in str(err.value)
    assert not image.exists()


def test_compression_worker_dying_is_a_clean_error(tmp_path, monkeypatch):
    import mkerofs.writer.workers as workers

    victim = _tree(tmp_path / "src")
    image = tmp_path / "out.erofs"
    real_read = workers.FileRange.__call__

    def read(self, offset, length, last):
        if self.path == os.fsencode(victim):
            os._exit(9)                 # as if killed (only ever runs in a worker process)
        return real_read(self, offset, length, last)

    monkeypatch.setattr(workers.FileRange, "__call__", read)
    with pytest.raises(BuildError) as err:
        build(image, tmp_path / "src", BuildOptions(workers=2, compressor="lz4"))
    assert "worker process died" in str(err.value)
    assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_copying_process_dying_is_a_clean_error(tmp_path, monkeypatch):
    victim = _tree(tmp_path / "src")
    image = tmp_path / "out.erofs"
    _before_copy(monkeypatch, victim, lambda p: os._exit(9))    # runs in a forked copier
    with pytest.raises(BuildError) as err:
        build(image, tmp_path / "src", BuildOptions(workers=2))
    assert "copying file data died (exit code 9)" in str(err.value)
    assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
