"""Segments of big files a worker process keeps (workers.HeldSegment): their blocks are given
in file order when they are taken, their bytes written by the worker once the file is known to
stay compressed, and let go of when it is stored flat.  The layouts are those of a build
without worker processes, and every kept file reads back from the blocks the workers wrote:
files of several segments (some kept, some coming back when HOLD_SEGMENTS_MAX is small), an
incompressible one stored flat between them, small files alone, an inline tail."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest

from mkerofs.codecs import registry
from mkerofs.util import can_fork
from mkerofs.writer import compress as z
from mkerofs.writer import workers as zw
from test_compress_unit import KernelStyleReader, mixed, read_back, text


@dataclass(frozen=True)
class _Given:
    """A FileJob reader returning bytes it carries (picklable: it crosses to the workers)."""
    data: bytes

    def __call__(self, offset: int, length: int, last: bool) -> bytes:
        return self.data[offset:offset + length]


class _Out:
    def __init__(self, fd: int):
        self.fd = fd

    def pwrite(self, data, pos: int) -> None:
        os.pwrite(self.fd, data, pos)


class _FileArea:
    """data.DataArea's allocation, over a real file (worker processes write to it too)."""

    def __init__(self, fd: int, block_size: int):
        self.out = _Out(fd)
        self.block_size = block_size
        self.next_block = 1

    def allocate(self, n: int) -> int:
        start = self.next_block
        self.next_block += n
        return start

    allocate_file = allocate

    def file_start(self) -> int:
        return self.next_block

    def rewind(self, block: int) -> None:
        self.next_block = block


def _files() -> list[bytes]:
    rnd = random.Random(15)
    return [text(5000, 1), text(700_000, 2), rnd.randbytes(300_000), text(9000, 3),
            mixed(400_000, 4), text(260_000 + 1234, 5), text(20000, 6)]


def _build(tmp_path, name: str, cfg: z.CompressConfig, processes: bool):
    path = tmp_path / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        area = _FileArea(fd, cfg.block_size)
        jobs = [zw.FileJob(i, len(data), 32, _Given(data)) for i, data in enumerate(_files())]
        out = [(job.key, layout, job.wrote_blocks) for job, layout in
               zw.compress_files(jobs, cfg, area, workers=2, processes=processes)]
    finally:
        os.close(fd)
    return out, path.read_bytes()


@pytest.mark.skipif("lz4" not in registry.available(), reason="liblz4 not available")
@pytest.mark.skipif(not can_fork(), reason="worker processes are forked")
@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("hold_max", [None, 128 << 10])
def test_held_segments_place_like_returned_ones(tmp_path, monkeypatch, tail, hold_max):
    if hold_max is not None:
        monkeypatch.setattr(zw, "HOLD_SEGMENTS_MAX", hold_max)
    cfg = z.CompressConfig.from_options("lz4hc", 4096, 16384, ztailpacking=tail,
                                        segment_size=64 << 10)
    seen = []
    real = zw._CompressionRun.take_held

    def spy(self, file, task, held):
        seen.append(len(held.blocks))
        return real(self, file, task, held)

    monkeypatch.setattr(zw._CompressionRun, "take_held", spy)
    held, image = _build(tmp_path, "processes", cfg, processes=True)
    assert seen, "no segment was held by a worker"
    local, _ = _build(tmp_path, "threads", cfg, processes=False)
    assert [(k, lay) for k, lay, _ in held] == [(k, lay) for k, lay, _ in local]
    files = _files()
    bs = cfg.block_size
    disk = {b: image[b * bs:(b + 1) * bs] for b in range(len(image) // bs)}
    for key, layout, wrote in held:
        data = files[key]
        if layout is None:
            # incompressible: stored flat; nothing of its held segments was written (those
            # past HOLD_SEGMENTS_MAX came back, and were)
            assert key == 2 and wrote == (hold_max is not None)
            continue
        reader = KernelStyleReader(layout.inline, 32, len(data), layout.datalayout, bs)
        assert read_back(reader, disk, cfg.primary) == data, f"file {key}"
