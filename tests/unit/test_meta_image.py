"""meta.MetaImage: the metadata area written through a mapping of the image file (its pages let
go of as it goes) holds the same bytes as one kept in anonymous memory and written at the end."""
from __future__ import annotations

import hashlib
import os

import pytest

from mkerofs.writer import meta
from mkerofs.writer.meta import MetaImage
from mkerofs.writer.output import Output

HEAD, TAIL_START, TAIL_END = 1024, 8192, 8192 + 300_000


def _fill(image: MetaImage) -> bytes:
    """Write items all over the tail area (in the parent and in a forked child, through views
    as the copiers do) and into the head; return what the area [0, TAIL_END) must hold."""
    want = bytearray(TAIL_END)
    items = [(TAIL_START + (i * 7919) % (TAIL_END - TAIL_START - 64), i) for i in range(2000)]
    for pos, i in items[:1000]:
        data = bytes([i % 251 + 1]) * 40
        image.put(pos, data)
        want[pos:pos + 40] = data
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for pos, i in items[1000:]:
                image.view(pos, 40)[:] = bytes([i % 251 + 1]) * 40
            code = 0
        finally:
            os._exit(code)
    for pos, i in items[1000:]:
        want[pos:pos + 40] = bytes([i % 251 + 1]) * 40
    assert os.waitpid(pid, 0)[1] == 0
    image.put(100, b"head bytes")
    want[100:110] = b"head bytes"
    return bytes(want)


@pytest.mark.parametrize("in_file", [True, False])
def test_meta_image_bytes(tmp_path, monkeypatch, in_file):
    monkeypatch.setattr(meta, "_RELEASE_EVERY", 16)      # let go of pages many times over
    monkeypatch.setattr(meta, "_HASH_CHUNK", 4096 * 3)
    out = Output(str(tmp_path / "img"))
    try:
        image = MetaImage(HEAD, TAIL_START, TAIL_END, out if in_file else None)
        assert image.in_file is in_file
        want = _fill(image)
        digest = hashlib.sha256()
        image.hash_into(digest)
        assert digest.digest() == hashlib.sha256(want[:HEAD] + want[TAIL_START:]).digest()
        image.write_out(out)
        out.finish(TAIL_END)
    finally:
        out.abort()
    got = (tmp_path / "img").read_bytes()
    assert got == want


def test_meta_image_with_offset(tmp_path):
    """--offset: the mapping starts on a page boundary before the image's metadata."""
    out = Output(str(tmp_path / "img"), offset=1000)
    try:
        image = MetaImage(HEAD, TAIL_START, TAIL_END, out)
        assert image.in_file
        want = _fill(image)
        image.write_out(out)
        out.finish(TAIL_END)
    finally:
        out.abort()
    got = (tmp_path / "img").read_bytes()
    assert got[:1000] == bytes(1000)
    assert got[1000:] == want
