"""Compression in worker processes, some files handed over while the walk still runs.

The image must not depend on how the work was shared: a build on worker processes (which take
files early, as the walk finds them) gives the same bytes as a build in one thread, whatever
mix of files was taken early (no xattrs, one link, one segment) and late (the rest), and the
kernel reads it back as the source.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from support.compare import compare_trees
from mkerofs.writer.build import build
from mkerofs.writer.options import BuildOptions, TimeInherit
from mkerofs.writer.workers import CompressionPool

pytestmark = pytest.mark.kernel

BUILD_TIME = 1_000_000
DEFAULT_EARLY_BYTES = CompressionPool.EARLY_BYTES


def _tree(root: Path) -> Path:
    rng = random.Random(23)
    root.mkdir()
    words = [b"worker ", b"early ", b"late ", b"pcluster ", b"%d\n"]

    def text(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            w = rng.choice(words)
            out += w % rng.randrange(999) if b"%d" in w else w
        return bytes(out[:n])

    for d in range(6):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(25):
            size = rng.choice([1, 700, 4096, 4097, 9000, 30000, 70000, 200000])
            data = text(size) if i % 3 else rng.randbytes(size)
            (root / f"d{d}" / f"f{i}").write_bytes(data)
            (sub / f"g{i}").write_bytes(text(size // 2 + 1))
    # not taken early: xattrs, more than one segment, "0" in the hints; a second link is the
    # same inode, taken at its first name; other inode forms (mtime, uid) are taken too
    (root / "d0" / "f3").write_bytes(text(50000))
    os.setxattr(root / "d0" / "f3", "user.note", b"late")
    os.link(root / "d1" / "f4", root / "d2" / "link-to-f4")
    (root / "d3" / "big").write_bytes(text(17 << 20))
    (root / "hints").write_text("0 d0/f1\n16384 lz4 d1/.*\n")
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (BUILD_TIME, BUILD_TIME))
    os.utime(root / "d4" / "f5", (1, 1))            # keeps its mtime: an extended inode
    os.chown(root / "d5" / "f6", 70000, 70000)      # so does a large uid
    return root


@pytest.fixture(scope="module")
def wtree(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("workers") / "src")


def _build(image: Path, src: Path, workers: int, **opts) -> None:
    build(image, src, BuildOptions(timestamp=BUILD_TIME, time_inherit=TimeInherit.SOURCE,
                                   uuid=bytes(16), workers=workers, **opts))


@pytest.mark.parametrize("early_bytes", [300_000, DEFAULT_EARLY_BYTES])
@pytest.mark.parametrize("opts", [
    dict(compressor="lz4"),
    dict(compressor="lz4hc", pcluster_size=65536, ztailpacking=True),
    dict(compressor="zstd", legacy_compress=True),
])
def test_files_taken_early_give_the_same_image(wtree, tmp_path, kernel, monkeypatch, opts,
                                               early_bytes):
    opts = dict(opts, compress_hints=str(wtree / "hints"))
    offered = []
    real_offer = CompressionPool.offer

    def offer(self, key, *args):
        offered.append(key)
        return real_offer(self, key, *args)

    monkeypatch.setattr(CompressionPool, "EARLY_BYTES", early_bytes)
    monkeypatch.setattr(CompressionPool, "offer", offer)
    one, many = tmp_path / "one.erofs", tmp_path / "many.erofs"
    _build(one, wtree, 1, **opts)
    assert not offered                          # one worker: no processes, nothing early
    _build(many, wtree, 2, **opts)
    names = {os.path.relpath(k.path, bytes(wtree)) for k in offered}
    assert offered and len(offered) < 300      # some files went early, some not
    assert not names & {b"d0/f3", b"d3/big", b"d0/f1", b"d2/link-to-f4"}
    assert len({id(k) for k in offered}) == len(offered)     # an inode once, at its first name
    if early_bytes == DEFAULT_EARLY_BYTES:      # the whole tree fits: inode forms vary
        assert {b"d4/f5", b"d5/f6"} <= names
    assert one.read_bytes() == many.read_bytes()
    with kernel(many) as mnt:
        compare_trees(wtree, mnt)


def test_a_build_from_a_thread_uses_threads_and_gives_the_same_image(wtree, tmp_path,
                                                                      monkeypatch):
    """Forking while other threads run is unsafe: a build started from a thread (an API caller's)
    compresses and copies on threads instead, and the image is the same."""
    import threading

    import mkerofs.writer.workers as workers

    def no_fork(*args, **kw):
        raise AssertionError("forked while another thread runs")

    monkeypatch.setattr(workers, "_ProcessPool", no_fork)
    monkeypatch.setattr(os, "fork", no_fork)
    opts = dict(compressor="lz4hc", pcluster_size=16384)
    one, threaded = tmp_path / "one.erofs", tmp_path / "threaded.erofs"
    _build(one, wtree, 1, **opts)
    failure = []

    def run():
        try:
            _build(threaded, wtree, 2, **opts)
        except BaseException as err:       # reported below, in the test's thread
            failure.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not failure, failure
    assert one.read_bytes() == threaded.read_bytes()


@pytest.mark.parametrize("hold_max", [0, 16 << 20])
def test_segments_kept_by_a_worker_or_sent_back(wtree, tmp_path, kernel, monkeypatch, hold_max):
    """A worker keeps the compressed segments of a big file's first HOLD_SEGMENTS_MAX bytes and
    writes them itself once the file is placed; the rest come back to be written.  d3/big (17
    MiB: two segments) all sent back, or its first segment kept and its second sent back: the
    same image as one thread, and the kernel reads it back as the source."""
    import mkerofs.writer.workers as workers

    monkeypatch.setattr(workers, "HOLD_SEGMENTS_MAX", hold_max)    # (inherited by the fork)
    opts = dict(compressor="lz4")
    one, many = tmp_path / "one.erofs", tmp_path / "many.erofs"
    _build(one, wtree, 1, **opts)
    _build(many, wtree, 2, **opts)
    assert one.read_bytes() == many.read_bytes()
    with kernel(many) as mnt:
        compare_trees(wtree, mnt)
