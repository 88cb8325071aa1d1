"""Files that change between the walk and the copy of their data: the build must fail with the
path named and leave nothing behind, never write an inode whose size disagrees with its data."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import mkerofs.writer.data
from mkerofs import BuildError, BuildOptions, build
from support.threads import settled


def _tree(src: Path) -> Path:
    src.mkdir()
    (src / "stable").write_bytes(b"s" * 10000)
    (src / "victim").write_bytes(b"v" * 9000)
    return src / "victim"


def _before_copy(monkeypatch, victim: Path, action) -> None:
    """Run `action` on the victim file right before its data is copied into the image."""
    original = mkerofs.writer.data.DataArea.copy_regular

    def copy_regular(self, node, *args, **kw):
        if node.path == os.fsencode(victim):
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


def _exit_in_a_child(test_pid: int) -> None:
    """End this process as if killed, unless it is the test's own process (a build that fell
    back to threads): that must never end the test run."""
    if os.getpid() == test_pid:
        raise AssertionError("meant for a forked process, called in the test process")
    os._exit(9)


def _skip_unless_builds_fork(what: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    if not settled():
        pytest.skip(f"other threads run in the test process: {what} in threads, "
                    f"not forked processes")


def _spy_forks(monkeypatch) -> list:
    """The number of nodes given to each FlatCopier that copies in forked processes."""
    forked = []
    real_fork = mkerofs.writer.data.FlatCopier._fork

    def fork(self, nodes):
        forked.append(len(nodes))
        return real_fork(self, nodes)

    monkeypatch.setattr(mkerofs.writer.data.FlatCopier, "_fork", fork)
    return forked


def _kill_compression_workers(tmp_path, monkeypatch, more: int = 0) -> None:
    """A compressed build whose worker process compressing the victim dies; with `more`
    files, every worker dies (all of them are victims), leaving batches unread in the pipe."""
    import mkerofs.writer.workers as workers

    _skip_unless_builds_fork("files would be compressed")
    tmp_path.mkdir(exist_ok=True)
    victims = {os.fsencode(_tree(tmp_path / "src"))}
    for i in range(more):
        path = tmp_path / "src" / f"more-{i:05}"
        path.write_bytes(b"m" * 5000)
        victims.add(os.fsencode(path))
    image = tmp_path / "out.erofs"
    real_read = workers.FileRange.__call__
    test_pid = os.getpid()
    pools = []

    def read(self, offset, length, last):
        if self.path in victims:
            _exit_in_a_child(test_pid)
        return real_read(self, offset, length, last)

    class SpiedPool(workers._ProcessPool):
        def __init__(self, *args, **kw):
            pools.append(self)
            super().__init__(*args, **kw)

    monkeypatch.setattr(workers.FileRange, "__call__", read)
    monkeypatch.setattr(workers, "_ProcessPool", SpiedPool)
    with pytest.raises(Exception) as err:
        build(image, tmp_path / "src", BuildOptions(workers=2, compressor="lz4"))
    monkeypatch.undo()
    assert len(pools) == 1, "the build did not use worker processes"
    assert err.type is BuildError and "worker process died" in str(err.value)
    assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_compression_worker_dying_is_a_clean_error(tmp_path, monkeypatch):
    _kill_compression_workers(tmp_path, monkeypatch)


def test_build_after_a_worker_died_forks_its_copiers(tmp_path, monkeypatch):
    """A failed build leaves no thread running (none of the pool's), so the next build in the
    process copies files in forked processes again, not in threads.  Every worker dies, with
    more batches waiting for them than the pipe to them holds."""
    _kill_compression_workers(tmp_path / "failed", monkeypatch, more=2000)
    assert settled(), f"threads left running: {threading.enumerate()}"
    forked = _spy_forks(monkeypatch)
    image = tmp_path / "next.erofs"
    build(image, tmp_path / "failed" / "src", BuildOptions(workers=2))
    assert forked, "the next build copied files in threads"
    assert image.stat().st_size > 0


def test_copying_process_dying_is_a_clean_error(tmp_path, monkeypatch):
    _skip_unless_builds_fork("files would be copied")
    victim = _tree(tmp_path / "src")
    image = tmp_path / "out.erofs"
    test_pid = os.getpid()
    forked = _spy_forks(monkeypatch)
    _before_copy(monkeypatch, victim, lambda p: _exit_in_a_child(test_pid))
    with pytest.raises(Exception) as err:
        build(image, tmp_path / "src", BuildOptions(workers=2))
    assert forked, "the build did not copy files in forked processes"
    assert err.type is BuildError and "copying file data died (exit code 9)" in str(err.value)
    assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
