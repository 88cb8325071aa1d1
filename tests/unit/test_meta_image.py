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


def test_put_inodes_writes_what_a_put_each_writes(tmp_path, monkeypatch):
    # Runs of inodes back to back are put at once: across a head that ends where the tail
    # area starts, gaps (a tail's room), inline bytes and xattr ibodies, more than a run holds.
    from mkerofs.writer.plan import TreeInode
    monkeypatch.setattr(meta, "_COUNT_EVERY", 5)
    monkeypatch.setattr(meta, "_RELEASE_PAGES", 3)
    nodes, pos = [], 4096 - 64            # (the first ends where the head does)
    for i in range(60):
        node = TreeInode(b"", 0o100644, i, 2 * i, 10 * i, (1000 + i) * 10**9 + i, nlink=1,
                            ftype=2 if i % 5 == 2 else 1, extended=i % 4 == 0)
        node.inline = bytes([i + 1]) * (i % 3 * 8)
        if i % 7 == 3:
            node.set_xattr_ibody(bytes(12))
        length = -(-len(meta.serialize_inode(node, 0, 900)) // 32) * 32
        if pos // 4096 != (pos + length - 1) // 4096:
            pos += -pos % 4096          # (no item crosses a block boundary, as in MetaAllocator)
        node.nid = pos // 32
        nodes.append(node)
        pos += length + (64 if i % 11 == 5 else 0)
    end = pos + 4096
    images = []
    for batched in (True, False):
        out = Output(str(tmp_path / f"img{batched}"))
        try:
            image = MetaImage(4096, 4096, end, out)
            assert image.in_file
            if batched:
                meta.put_inodes(image, nodes, 10, 900, skip=nodes[17])
            else:
                for ino, node in enumerate(nodes, 10):
                    if node is not nodes[17]:
                        image.put(node.nid * 32, meta.serialize_inode(node, ino, 900))
            image.write_out(out)
            out.finish(end)
        finally:
            out.abort()
        images.append((tmp_path / f"img{batched}").read_bytes())
    assert images[0] == images[1]
    assert images[0][nodes[17].nid * 32:nodes[18].nid * 32] == bytes((nodes[18].nid -
                                                                      nodes[17].nid) * 32)
    assert images[0][nodes[18].nid * 32:].startswith(meta.serialize_inode(nodes[18], 28, 900))

    # render_dir: a directory's inline bytes given as its inode is written, none kept before
    tails = {}
    for node in nodes:
        if node.ftype == 2:
            tails[id(node)], node.inline = node.inline, b""
    rendered = []

    def render_dir(node):
        rendered.append(node)
        return tails[id(node)]
    out = Output(str(tmp_path / "rendered"))
    try:
        image = MetaImage(4096, 4096, end, out)
        meta.put_inodes(image, nodes, 10, 900, skip=nodes[17], render=render_dir)
        image.write_out(out)
        out.finish(end)
    finally:
        out.abort()
    assert (tmp_path / "rendered").read_bytes() == images[0]
    assert rendered == [n for n in nodes if n.ftype == 2 and n is not nodes[17]]
    assert any(tails[id(n)] for n in rendered)


def test_put_inodes_counts_pages_written(tmp_path, monkeypatch):
    # Pages of the metadata area are let go of by the pages written, not the inodes: 64 inodes
    # of 64 bytes share one page (one count), an inode with a tail of a block takes its own.
    from mkerofs.writer.plan import TreeInode
    monkeypatch.setattr(meta, "_COUNT_EVERY", 1)
    page = meta.mmap.PAGESIZE
    nodes = []
    for i in range(3 * page // 64):                 # three pages of small inodes
        node = TreeInode(b"", 0o100644, 0, 0, 0, 0, nlink=1, ftype=1)
        node.nid = (page + i * 64) // 32
        nodes.append(node)
    for i in range(5):                              # then five with a tail filling a page
        node = TreeInode(b"", 0o100644, 0, 0, 0, 0, nlink=1, ftype=1)
        node.inline = bytes(page - 32)
        node.nid = (4 * page + i * page) // 32
        nodes.append(node)
    out = Output(str(tmp_path / "img"))
    try:
        image = MetaImage(0, 0, 10 * page, out)
        counts = []
        image.pages_written = counts.append
        meta.put_inodes(image, nodes, 1, 0)
        image.write_out(out)
    finally:
        out.abort()
    assert sum(counts) == 3 + 5
