"""With no copier forked (--tar=i, rebuild mode, --sort=none from a stream, chunk-based files,
a tree without regular files to copy) and a second core free, a forked child writes the second
part of the inodes, directories and symlinks while the build's process writes the first
(build._write_contents): the image is the one a single process writes, and a child that fails
or dies is a clean error that leaves no process behind."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import tarfile

import pytest

from mkerofs import BuildOptions, build
from mkerofs.errors import BuildError
from mkerofs.ondisk import format as fmt
from mkerofs.writer import build as build_module
from mkerofs.writer import meta
from mkerofs.writer.options import TarOptions
from mkerofs.writer.walk import TreeInode
from tests.support.metasplit import split_tree, spy_metadata_forks
from tests.support.threads import settled


def _skip_unless_forks():
    if not settled():
        pytest.skip("other threads run in the test process: the build writes alone")


def _tar(path):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(30):
            for i in range(d * 4):
                data = bytes([i % 251 + 1]) * ((i * 1531) % 9000)
                info = tarfile.TarInfo(f"d{d:02}/f{i:03}")
                info.size = len(data)
                info.mtime = 1_700_000_000 + i
                tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo(f"d{d:02}/link")
            link.type, link.linkname = tarfile.SYMTYPE, "x" * (d * 50 + 1)
            tar.addfile(link)
    return path


def _builds(tmp_path, monkeypatch, source, **options) -> tuple[bytes, bytes, list[int]]:
    """The image written by one process, then with a part forked (any size of tree)."""
    images = []
    pids = spy_metadata_forks(monkeypatch)
    for split_min in (10**9, 1):
        monkeypatch.setattr(build_module, "_SPLIT_MIN_INODES", split_min)
        image = tmp_path / f"split-{split_min}.erofs"
        build(image, source, BuildOptions(uuid=bytes(16), timestamp=0, workers=2, **options))
        images.append(image.read_bytes())
    return images[0], images[1], pids


@pytest.mark.parametrize("in_file", [True, False])
def test_split_tree_is_the_one_process_image(tmp_path, monkeypatch, in_file):
    """Whether the metadata area is a mapping of the image file or anonymous shared memory
    (a block device, a file that cannot be mapped), both processes write into it."""
    _skip_unless_forks()
    if not in_file:
        monkeypatch.setattr(meta, "_map_image", lambda *args: None)
    split_tree(tmp_path / "src")
    alone, split, pids = _builds(tmp_path, monkeypatch, tmp_path / "src")
    assert len(pids) == 1, "the build did not fork a part"
    assert split == alone


def test_split_tar_index_is_the_one_process_image(tmp_path, monkeypatch):
    _skip_unless_forks()
    tar = _tar(tmp_path / "in.tar")
    alone, split, pids = _builds(tmp_path, monkeypatch, tar, tar=TarOptions(mode="i"))
    assert len(pids) == 1, "the build did not fork a part"
    assert split == alone


def test_one_file_copied_here_splits_too(tmp_path, monkeypatch):
    """A single file is copied by this process (no copier forked): the part is forked."""
    _skip_unless_forks()
    split_tree(tmp_path / "src")
    (tmp_path / "src" / "d07" / "file").write_bytes(b"f" * 9999)
    alone, split, pids = _builds(tmp_path, monkeypatch, tmp_path / "src")
    assert len(pids) == 1, "the build did not fork a part"
    assert split == alone


def test_no_process_to_fork_writes_it_all_here(tmp_path, monkeypatch):
    """fork failing (EAGAIN: too many processes): this process writes both parts."""
    split_tree(tmp_path / "src")
    alone = tmp_path / "alone.erofs"
    build(alone, tmp_path / "src", BuildOptions(uuid=bytes(16), timestamp=0, workers=1))
    tried = []

    def no_fork(*args, **kwargs):
        tried.append(kwargs.get("doing"))
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    spy_metadata_forks(monkeypatch)
    monkeypatch.setattr(build_module, "fork_copier", no_fork)
    image = tmp_path / "split.erofs"
    build(image, tmp_path / "src", BuildOptions(uuid=bytes(16), timestamp=0, workers=2))
    assert tried == ["writing metadata"]
    assert image.read_bytes() == alone.read_bytes()


def test_files_to_copy_fork_no_part(tmp_path, monkeypatch):
    """Forked copiers use the other core then: this process writes the metadata alone."""
    _skip_unless_forks()
    split_tree(tmp_path / "src")
    for i in range(30):
        (tmp_path / "src" / f"d{i:02}" / "file").write_bytes(bytes([i + 1]) * (i * 999 + 1))
    alone, split, pids = _builds(tmp_path, monkeypatch, tmp_path / "src")
    assert pids == []
    assert split == alone


def test_no_part_when_the_other_core_is_busy(tmp_path, monkeypatch):
    split_tree(tmp_path / "src")
    pids = spy_metadata_forks(monkeypatch)
    monkeypatch.setattr(build_module, "_second_core_free", lambda: False)
    build(tmp_path / "out.erofs", tmp_path / "src", BuildOptions(workers=2))
    assert pids == []


def test_no_part_with_one_worker(tmp_path, monkeypatch):
    split_tree(tmp_path / "src")
    pids = spy_metadata_forks(monkeypatch)
    build(tmp_path / "out.erofs", tmp_path / "src", BuildOptions(workers=1))
    assert pids == []


def test_no_part_below_the_threshold(tmp_path, monkeypatch):
    split_tree(tmp_path / "src")
    pids = spy_metadata_forks(monkeypatch, split_min=10**6)
    build(tmp_path / "out.erofs", tmp_path / "src", BuildOptions(workers=2))
    assert pids == []


@pytest.mark.parametrize("running, cores, free", [
    (b"1", {0, 1}, True), (b"2", {0, 1}, False), (b"7", {0, 1}, False), (b"1", {0}, False),
    (b"3", {0, 1, 2, 3}, True)])
def test_second_core_free_counts_the_running(monkeypatch, running, cores, free):
    """/proc/loadavg's runnable count (this process among them) against the cores this
    process may use."""
    loadavg = b"0.52 0.58 0.59 " + running + b"/123 4567\n"
    monkeypatch.setattr(build_module, "open", lambda *args: io.BytesIO(loadavg),
                        raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    assert build_module._second_core_free() is free


def _node(ftype: int, size: int) -> TreeInode:
    node = TreeInode(b"n", 0o40755 if ftype == fmt.EROFS_FT_DIR else 0o100644, 0, 0, size, 0)
    node.ftype = ftype
    return node


def test_split_point_weighs_directories():
    """Large directories first (a breadth-first plan): the first part has fewer inodes."""
    nodes = [_node(fmt.EROFS_FT_DIR, 4000) for _ in range(100)] + \
        [_node(fmt.EROFS_FT_REG_FILE, 10) for _ in range(50000)]
    # (the directories cost 100 * (4 + 4000 // 34) = 12,100 inodes: half of the cost is
    # 31,050, ~19,000 files after them; the split is found from a sample of the nodes)
    share = build_module._PARENT_SHARE
    assert 10000 * share * 2 < build_module._split_point(nodes) < 23000 * share * 2
    files = [_node(fmt.EROFS_FT_REG_FILE, 10) for _ in range(30000)]
    assert abs(build_module._split_point(files) - 30000 * share) <= 30


def _assert_reaped(pids: list[int]) -> None:
    assert len(pids) == 1, "the build did not fork a part"
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)      # (gone, not even a zombie)


def _failing_build(tmp_path, monkeypatch, fail) -> BuildError:
    """A split build whose child calls `fail` instead of writing its part."""
    _skip_unless_forks()
    split_tree(tmp_path / "src")
    parent = os.getpid()
    real = build_module.put_inodes

    def put(*args, **kwargs):
        if os.getpid() != parent:
            fail()
        real(*args, **kwargs)

    monkeypatch.setattr(build_module, "put_inodes", put)
    pids = spy_metadata_forks(monkeypatch)
    image = tmp_path / "out.erofs"
    with pytest.raises(BuildError) as err:
        build(image, tmp_path / "src", BuildOptions(workers=2))
    _assert_reaped(pids)
    assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    return err.value


def test_child_failing_is_a_clean_error(tmp_path, monkeypatch):
    def fail():
        raise BuildError("the part went wrong")

    assert str(_failing_build(tmp_path, monkeypatch, fail)) == "the part went wrong"


def test_child_raising_something_else_is_a_clean_error(tmp_path, monkeypatch):
    def fail():
        raise MemoryError("no room")

    assert str(_failing_build(tmp_path, monkeypatch, fail)) == \
        "writing metadata: MemoryError: no room"


def test_child_dying_is_a_clean_error(tmp_path, monkeypatch):
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    err = _failing_build(tmp_path, monkeypatch, die)
    assert "a process writing metadata died" in str(err)


def _child_waits(monkeypatch, then) -> tuple[int, int]:
    """The forked part waits to be killed (reading a pipe never written); this process
    writes its part, then calls `then`.  Returns the pipe's ends, to close."""
    parent = os.getpid()
    real = build_module.put_inodes
    read_end, write_end = os.pipe()

    def put(*args, **kwargs):
        if os.getpid() != parent:
            os.read(read_end, 1)
        else:
            real(*args, **kwargs)
            then()

    monkeypatch.setattr(build_module, "put_inodes", put)
    return read_end, write_end


def test_parent_failing_kills_the_child(tmp_path, monkeypatch):
    """A failure in this process's part kills and reaps the child, whose part is left
    unwritten."""
    _skip_unless_forks()
    split_tree(tmp_path / "src")

    def fail():
        raise BuildError("this part went wrong")
    read_end, write_end = _child_waits(monkeypatch, fail)
    pids = spy_metadata_forks(monkeypatch)
    try:
        with pytest.raises(BuildError, match="this part went wrong"):
            build(tmp_path / "out.erofs", tmp_path / "src", BuildOptions(workers=2))
    finally:
        os.close(read_end)
        os.close(write_end)
    _assert_reaped(pids)


def test_children_ignored_writes_it_all_here(tmp_path, monkeypatch):
    """A process that ignores SIGCHLD (set so, or inherited through exec: its children are
    reaped at once, and waitpid finds none) forks nothing, neither a part nor copiers: the
    image is the one process's, no error (was: "No child processes")."""
    _skip_unless_forks()
    split_tree(tmp_path / "src")
    for i in range(30):
        (tmp_path / "src" / "d03" / f"file-{i}").write_bytes(bytes([i]) * (i * 3001))
    alone = tmp_path / "alone.erofs"
    build(alone, tmp_path / "src", BuildOptions(uuid=bytes(16), timestamp=0, workers=1))
    pids = spy_metadata_forks(monkeypatch)
    image = tmp_path / "ignored.erofs"
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        build(image, tmp_path / "src", BuildOptions(uuid=bytes(16), timestamp=0, workers=2))
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert pids == []
    assert image.read_bytes() == alone.read_bytes()


def test_interrupt_while_waiting_for_the_child_kills_it(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) once this process's part is written, while it waits for the
    child's: the child is killed and reaped, not left writing (then a zombie), and the image
    is not left behind."""
    _skip_unless_forks()
    split_tree(tmp_path / "src")
    read_end, write_end = _child_waits(monkeypatch,
                                       lambda: signal.setitimer(signal.ITIMER_REAL, 0.2))

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    pids = spy_metadata_forks(monkeypatch)
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            build(tmp_path / "out.erofs", tmp_path / "src", BuildOptions(workers=2))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(read_end)
        os.close(write_end)
    try:
        _assert_reaped(pids)
    finally:
        for pid in pids:                    # (on failure: not left to the other tests)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize("in_file", [True, False])
def test_split_at_an_offset_is_the_one_process_image(tmp_path, monkeypatch, in_file):
    """--offset: both processes write their part that far into the file."""
    _skip_unless_forks()
    if not in_file:
        monkeypatch.setattr(meta, "_map_image", lambda *args: None)
    split_tree(tmp_path / "src")
    alone, split, pids = _builds(tmp_path, monkeypatch, tmp_path / "src", offset=12288)
    assert len(pids) == 1, "the build did not fork a part"
    assert split == alone
    assert split[:12288] == bytes(12288)
    assert int.from_bytes(split[12288 + 1024:12288 + 1028], "little") == fmt.EROFS_SUPER_MAGIC_V1
