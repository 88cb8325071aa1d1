"""mkerofs.util's helpers for paths of any length (the kernel refuses PATH_MAX bytes or more in
one system call), and walk_source on a tree whose paths are longer than that."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from mkerofs import util
from mkerofs.util import (PATH_MAX, listdir_path, lstat_path, open_parent, open_path,
                          read_xattrs, readlink_path)
from mkerofs.writer.options import BuildOptions
from mkerofs.writer.walk import walk_source

NAME = b"n" * 250


def _deep(root, levels: int = 40) -> bytes:
    """`levels` nested 250-byte directories under root (made through dir fds); the deepest's
    path, holding a file `f` (with an xattr) and a symlink `s`."""
    fd = os.open(os.fsencode(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(levels):
            name = b"%02d" % i + NAME
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open(b"f", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(f, b"deep data")
        os.close(f)
        os.setxattr(b"/proc/self/fd/%d/f" % fd, b"user.x", b"1")
        os.symlink(b"f", b"s", dir_fd=fd)
    finally:
        os.close(fd)
    return os.fsencode(root) + b"/" + b"/".join(b"%02d" % i + NAME for i in range(levels))


def test_long_paths_are_refused_by_the_kernel(tmp_path):
    """The premise: a plain call fails, so the helpers are needed."""
    deepest = _deep(tmp_path)
    assert len(deepest) > 2 * PATH_MAX
    with pytest.raises(OSError) as err:
        os.lstat(deepest + b"/f")
    assert err.value.errno == errno.ENAMETOOLONG


def test_helpers_reach_a_deep_file(tmp_path):
    deepest = _deep(tmp_path)
    f = deepest + b"/f"
    fd = open_path(f, os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"deep data"
    finally:
        os.close(fd)
    st = lstat_path(f)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISLNK(lstat_path(deepest + b"/s").st_mode)       # not followed
    assert readlink_path(deepest + b"/s") == b"f"
    assert sorted(listdir_path(deepest)) == [b"f", b"s"]
    assert read_xattrs(f) == [(b"user.x", b"1")]
    assert read_xattrs(deepest + b"/s") == []                       # the link itself


def test_open_parent_steps_and_names(tmp_path):
    deepest = _deep(tmp_path)
    fd, name = open_parent(deepest + b"/f")
    try:
        assert name == b"f"
        assert stat.S_ISLNK(os.lstat(b"s", dir_fd=fd).st_mode)
        assert read_xattrs(b"f", fd) == [(b"user.x", b"1")]
        assert os.stat(b".", dir_fd=fd).st_ino == lstat_path(deepest).st_ino
    finally:
        os.close(fd)


def test_relative_long_path(tmp_path, monkeypatch):
    deepest = _deep(tmp_path)
    monkeypatch.chdir(tmp_path)
    rel = deepest[len(os.fsencode(tmp_path)) + 1:]
    assert len(rel) >= PATH_MAX
    assert readlink_path(rel + b"/s") == b"f"


def test_short_paths_take_one_call(tmp_path, monkeypatch):
    """Below PATH_MAX nothing is opened on the way."""
    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(util, "open_parent", None)
    assert lstat_path(os.fsencode(tmp_path / "f")).st_size == 1
    assert listdir_path(os.fsencode(tmp_path)) == [b"f"]


def test_missing_and_too_long_names(tmp_path):
    deepest = _deep(tmp_path)
    with pytest.raises(FileNotFoundError):
        lstat_path(deepest + b"/missing")
    with pytest.raises(FileNotFoundError):
        lstat_path(deepest + b"/missing/below")
    with pytest.raises(OSError) as err:
        lstat_path(os.fsencode(tmp_path) + b"/" + b"x" * (PATH_MAX + 10))
    assert err.value.errno == errno.ENAMETOOLONG


def test_no_descriptor_left_open(tmp_path):
    deepest = _deep(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        lstat_path(deepest + b"/f")
        read_xattrs(deepest + b"/f")
        with pytest.raises(FileNotFoundError):
            lstat_path(deepest + b"/missing/below")
    walk_source(os.fsencode(tmp_path), BuildOptions())
    assert len(os.listdir("/proc/self/fd")) == before


def test_walk_source_deep_tree(tmp_path):
    deepest = _deep(tmp_path)
    found = []
    root, count = walk_source(os.fsencode(tmp_path), BuildOptions(),
                              on_file=lambda node, rel, st: found.append((node, rel, st)))
    assert count == 1 + 40 + 2
    node = root
    for _ in range(40):
        (_name, node), = node.entries
    names = dict(node.entries)
    f, s = names[b"f"], names[b"s"]
    assert f.path == deepest + b"/f"
    assert f.xattrs == [(b"user.x", b"1")]
    assert s.target == b"f" and stat.S_ISLNK(s.mode)
    assert [(n, r) for n, r, _st in found] == [(f, deepest[len(os.fsencode(tmp_path)) + 1:]
                                                + b"/f")]
    assert found[0][2].st_size == len(b"deep data")


def test_walk_source_deep_excludes_and_no_xattrs(tmp_path):
    deepest = _deep(tmp_path, 36)
    rel = deepest[len(os.fsencode(tmp_path)) + 1:]
    options = BuildOptions(exclude_paths=[os.fsdecode(rel + b"/s")], xattr_tolerance=-1)
    root, count = walk_source(os.fsencode(tmp_path), options)
    assert count == 1 + 36 + 1
    node = root
    for _ in range(36):
        (_name, node), = node.entries
    (name, f), = node.entries
    assert name == b"f" and not f.xattrs
