"""writer/walk.py: the scout lists SOURCE's directories in a forked process ahead of the walk;
the tree walked is the one the walk makes listing every directory itself, whatever the scout
hands over: everything, nothing, or all but some directories (made meanwhile, say)."""
from __future__ import annotations

import marshal
import os
import stat

import pytest

from mkerofs.util import can_fork
from mkerofs.writer import walk
from mkerofs.writer.options import BuildOptions
from mkerofs.writer.walk import walk_source


def _source(tmp_path):
    src = tmp_path / "src"
    for d in range(40):                 # more directories than a record of the scout
        sub = src / f"d{d:02}" / "sub"
        sub.mkdir(parents=True)
        (sub / "f").write_bytes(b"x" * d)
        (src / f"d{d:02}" / "g").write_bytes(b"y" * (d + 5000))
    (src / "empty").mkdir()
    (src / "link").symlink_to("d00")
    (src / "-first").write_bytes(b"sorts before the dots")
    os.link(src / "d01" / "g", src / "d02" / "g2")
    try:
        os.setxattr(src / "d03", "user.mark", b"1")
        os.setxattr(src / "d04" / "g", "user.file", b"2")
    except OSError:
        pass                            # (no user xattrs here: see _xattrs_work)
    return os.fsencode(src)


def _shape(root) -> list:
    """Every node by path: what the walk read of it."""
    out, pending = [], [(b"", root)]
    while pending:
        rel, node = pending.pop()
        out.append((rel, node.mode, node.size, node.nlink, tuple(node.xattrs),
                    getattr(node, "target", None), node.path))
        for name, child in node.entries or ():
            if child.entries is not None:
                pending.append((rel + b"/" + name, child))
            else:
                out.append((rel + b"/" + name, child.mode, child.size, child.nlink,
                            tuple(child.xattrs), child.target, child.path))
    return sorted(out, key=lambda item: item[0])


def _walked(src, monkeypatch, scouting: bool):
    with monkeypatch.context() as mp:
        mp.setattr(walk, "can_fork", lambda: scouting)
        root, count = walk_source(src, BuildOptions())
    return _shape(root), count


@pytest.fixture
def forks():
    if not can_fork():
        pytest.skip("other threads run in the test process: no scout")


def _xattrs_work(tmp_path) -> bool:
    try:
        os.setxattr(tmp_path, "user.probe", b"1")
    except OSError:
        return False
    return True


def _noting_handed(monkeypatch) -> list[bool]:
    """Whether the scout handed over each directory the walk asked it for, in order."""
    handed = []
    real_names = walk._Scout.names

    def names(self, rel):
        got = real_names(self, rel)
        handed.append(got is not None)
        return got
    monkeypatch.setattr(walk._Scout, "names", names)
    return handed


@pytest.mark.parametrize("after", [1, walk._SCOUT_AFTER])
def test_scouted_walk_is_the_walk(tmp_path, monkeypatch, forks, after):
    """The scout started on the root (after 1 directory), or once the walk has listed
    _SCOUT_AFTER - 1 directories itself, on the rest of its queue."""
    if not _xattrs_work(tmp_path):
        pytest.skip("no user xattrs here")
    monkeypatch.setattr(walk, "_SCOUT_AFTER", after)
    src = _source(tmp_path)
    handed = _noting_handed(monkeypatch)
    scouted, count = _walked(src, monkeypatch, True)
    assert (scouted, count) == _walked(src, monkeypatch, False)
    directories = [item for item in scouted if stat.S_ISDIR(item[1])]
    assert len(directories) == 82                   # root, d*, sub, empty
    assert len(handed) == 82 - (after - 1) and all(handed)
    assert [item[4] for item in scouted if item[0] == b"/d03"] == [((b"user.mark", b"1"),)]
    assert [item[4] for item in scouted if item[0] == b"/d04/g"] == [((b"user.file", b"2"),)]
    assert sum(bool(item[4]) for item in scouted) == 2


@pytest.mark.parametrize("hands", ["nothing", "all but some", "out of order"])
def test_the_walk_lists_what_the_scout_does_not_hand(tmp_path, monkeypatch, forks, hands):
    monkeypatch.setattr(walk, "_SCOUT_AFTER", 1)
    src = _source(tmp_path)
    real_scout = walk._scout

    def scout(frontier, put, xattrs):
        read, write = os.pipe()
        if hands == "nothing":
            os.close(read)
            os.close(write)
            os.close(put)
            return
        real_scout(frontier, write, xattrs)     # (into a pipe of its own, then changed)
        with os.fdopen(read, "rb") as pipe:
            records = []
            while True:
                try:
                    records.extend(marshal.load(pipe))
                except EOFError:
                    break
        if hands == "all but some":
            records = [r for r in records if not r[0].endswith(b"sub/")]
        else:
            records.reverse()
        with os.fdopen(put, "wb") as out:
            marshal.dump(records, out)
    monkeypatch.setattr(walk, "_scout", scout)
    assert _walked(src, monkeypatch, True) == _walked(src, monkeypatch, False)


def test_paths_too_long_for_the_scout(tmp_path, monkeypatch, forks):
    """Directories whose paths the kernel refuses the scout leaves to the walk (which lists
    them relative to a descriptor): the same tree."""
    from tests.unit.test_deep_paths import _deep
    if not _xattrs_work(tmp_path):
        pytest.skip("no user xattrs here")
    src = tmp_path / "src"
    src.mkdir()
    _deep(src, levels=20)
    (src / "side").mkdir()
    handed = _noting_handed(monkeypatch)
    monkeypatch.setattr(walk, "_SCOUT_AFTER", 1)
    scouted = _walked(os.fsencode(src), monkeypatch, True)
    assert scouted == _walked(os.fsencode(src), monkeypatch, False)
    assert True in handed and False in handed      # (short paths handed, long ones not)
