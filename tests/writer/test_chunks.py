"""Chunk-based regular files (--chunksize, --blobdev, -Eforce-chunk-indexes,
-Eforce-inode-blockmap, -Ededupe without -z) read back with mkerofs's reader, no mount needed:

* the engine (mkerofs.writer.chunks): which chunks hold data (SEEK_DATA), how runs of chunks
  merge into larger ones, a store that writes each distinct chunk once and zeros as holes;
* whole builds: every uncompressed file with data chunk-based, the chunk format asked for,
  INCOMPAT_CHUNKED_FILE, exact block counts saved by deduplication, holes that take no block,
  the blob of --blobdev (its size in the device slot, the image metadata only);
* the option errors of mkfs.erofs, one clean message each, no image (nor blob) left behind.

The kernel's view of the same images is in tests/kernel/test_kernel_chunks.py.
"""
from __future__ import annotations

import os
import random
import struct
import tarfile
from pathlib import Path

import pytest

from mkerofs import BuildOptions, build
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image
from mkerofs.writer.options import TarOptions
from mkerofs.writer import chunks
from mkerofs.writer.chunks import ChunkStore, ChunkTable, chunk_file, data_chunks, merged_chunks
from mkerofs.errors import BuildError
from support.oracle import read_superblock
from support.run import assert_clean_failure, leftovers, run_mkerofs
from support.tars import write_sparse

T = 1_700_000_000
KiB, MiB = 1 << 10, 1 << 20


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class MemorySink:
    """A ChunkSink in memory: blocks handed out from 0, writes kept by byte position."""

    def __init__(self):
        self.next = 0
        self.writes: dict[int, bytes] = {}

    def allocate(self, n: int) -> int:
        start, self.next = self.next, self.next + n
        return start

    def pwrite(self, data, pos: int) -> None:
        self.writes[pos] = bytes(data)

    def pread(self, n: int, pos: int) -> bytes:
        for start, data in self.writes.items():
            if start <= pos < start + len(data):
                return data[pos - start:pos - start + n]
        return b""


# -- the engine ------------------------------------------------------------------------------


def test_merged_chunks_contiguous_runs_become_one_chunk():
    # 4 one-block chunks one after the other: one chunk of 4 blocks (covering the file)
    assert merged_chunks([10, 11, 12, 13], 12, 12, 4 * 4096) == (14, [10])
    # a break after chunk 2: chunks of 2 blocks
    assert merged_chunks([10, 11, 50, 51], 12, 12, 4 * 4096) == (13, [10, 50])
    # a break after chunk 1: nothing merges
    assert merged_chunks([10, 20, 21, 22], 12, 12, 4 * 4096) == (12, [10, 20, 21, 22])
    # holes merge with holes only
    assert merged_chunks([None, None, 7, 8], 12, 12, 4 * 4096) == (13, [None, 7])
    # the last run may end anywhere: 3 blocks + 1 byte contiguous is one chunk
    assert merged_chunks([5, 6, 7, 8], 12, 12, 3 * 4096 + 1) == (14, [5])


def test_merged_chunks_never_past_the_format_limit():
    size = 1 << 45                               # 2^33 blocks of 4 KiB: more than 2^31
    bits, addrs = merged_chunks([0] + [None] * 3, 43, 12, size)
    assert bits == 43 and len(addrs) == 4        # nothing to merge: a data chunk, then holes
    bits, addrs = merged_chunks([None] * 4, 43, 12, size)
    assert bits == 12 + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK and addrs == [None] * 4


def test_data_chunks_follow_seek_data(tmp_path):
    f = tmp_path / "sparse"
    write_sparse(f, 10 * MiB, [(3 * MiB + 5, b"x"), (8 * MiB - 1, b"yz")])
    with open(f, "rb") as fh:
        runs = data_chunks(fh.fileno(), 0, 10 * MiB, 20)     # 1 MiB chunks
    # chunk 3 holds the x; chunks 7 and 8 the y and z (crossing a chunk boundary)
    assert runs == [(3, 4), (7, 9)]
    with open(f, "rb") as fh:
        # a range of the file (as a tar entry's data): offsets count from `base`
        assert data_chunks(fh.fileno(), 3 * MiB, 2 * MiB, 20) == [(0, 1)]
        assert data_chunks(fh.fileno(), 4 * MiB, 3 * MiB, 20) == []


def test_store_writes_each_chunk_once_and_zeros_as_holes(tmp_path):
    a, b = rand(4096, 1), rand(4096, 2)
    f = tmp_path / "f"
    f.write_bytes(a + b + a + bytes(4096) + b + b"tail")
    sink = MemorySink()
    store = ChunkStore(sink, 12, 12)
    with open(f, "rb") as fh:
        layout, addrs = chunk_file(store, fh.fileno(), 0, f.stat().st_size, "f")
    assert addrs == [0, 1, 0, None, 1, 2]
    assert sink.next == 3 and store.blocks_written == 3
    assert sink.writes == {0: a + b + b"tail" + bytes(4092)}
    assert layout.chunkbits == 12 and not layout.indexes
    # without dedupe every chunk is new, the zeros too, and the whole file is one run
    sink = MemorySink()
    store = ChunkStore(sink, 12, 12, dedupe=False)
    with open(f, "rb") as fh:
        layout, addrs = chunk_file(store, fh.fileno(), 0, f.stat().st_size, "f")
    assert sink.next == 6 and layout.chunkbits == 15 and addrs == [0]


def test_store_big_chunks_are_streamed(tmp_path):
    """Chunks larger than a read (here 4 MiB): hashed piece by piece, zeros still holes."""
    data = rand(4 * MiB, 3)
    f = tmp_path / "f"
    f.write_bytes(data + bytes(4 * MiB) + data + b"!")
    sink = MemorySink()
    store = ChunkStore(sink, 12, 22)
    with open(f, "rb") as fh:
        layout, addrs = chunk_file(store, fh.fileno(), 0, f.stat().st_size, "f")
    # data (new), zeros (a hole), the same data (shared), "!" (short, new)
    assert addrs == [0, None, 0, 1024] and layout.chunkbits == 22
    assert sink.next == 1025
    joined = b"".join(sink.writes[p] for p in sorted(sink.writes))
    assert joined == data + b"!" + bytes(4095)


class _OneHash:
    """Stands for xxhash in chunks.py: every chunk hashes to 0, so every key collides."""

    @staticmethod
    def xxh3_64_intdigest(data) -> int:
        return 0

    class xxh3_64:
        def update(self, data) -> None:
            pass

        def intdigest(self) -> int:
            return 0


@pytest.mark.parametrize("chunkbits,zero_chunks", [(12, 300), (22, 1)])
def test_store_compares_bytes_when_hashes_collide(tmp_path, monkeypatch, chunkbits, zero_chunks):
    """A chunk is shared only with one of the same bytes and length: with every hash the same,
    the store still finds what SHA-256 would (earlier windows read back from the sink, this
    window's new chunks from memory; a short chunk that starts like a stored one is new)."""
    cs = 1 << chunkbits
    a, b = rand(cs, 4), rand(cs, 5)
    f = tmp_path / "f"
    f.write_bytes(a + b + bytes(cs * zero_chunks) + b + a + a[:100])

    def store_file():
        sink = MemorySink()
        with open(f, "rb") as fh:
            _layout, addrs = chunk_file(ChunkStore(sink, 12, chunkbits), fh.fileno(), 0,
                                        f.stat().st_size, "f")
        return addrs, b"".join(sink.writes[p] for p in sorted(sink.writes))

    blocks = cs >> 12
    want = [0, blocks] + [None] * zero_chunks + [blocks, 0, 2 * blocks]
    assert store_file() == (want, a + b + a[:100] + bytes(4096 - 100))
    monkeypatch.setattr(chunks, "xxhash", _OneHash)
    assert store_file() == (want, a + b + a[:100] + bytes(4096 - 100))


def test_chunk_table_finds_every_key_it_was_given():
    """The packed table of a ChunkStore: keys that share their low bits (one slot, so a run of
    slots), growth past what was expected, values of 0 and of 64 bits or more."""
    table = ChunkTable(expected=3)
    rng = random.Random(7)
    keys = [k << 20 | 5 for k in range(40)] + [rng.getrandbits(60) for _ in range(3000)]
    values = {key: (n * 0x9E3779B97F4A7C15 << n % 3) % (1 << 70) for n, key in enumerate(keys)}
    values[keys[1]] = 0
    values[keys[2]] = 1 << 64
    values[keys[3]] = (1 << 64) - 1
    for key in keys:
        assert table.get(key, "missing") == "missing"
        table.add(key, values[key])
    assert len(table) == len(keys)
    assert all(table.get(key, None) == values[key] for key in keys)
    assert table.get(40 << 20 | 5, None) is None and table.get(1 << 59, None) is None


# -- whole builds, read back ------------------------------------------------------------------


def chunk_tree(root: Path) -> dict[str, bytes]:
    """Files for chunking: duplicates (whole and per chunk), zeros, holes, a hard link."""
    a = rand(5 * 4096 + 100, 10)
    files = {"a": a, "dup/a2": a, "dup/a3": a, "zeros": bytes(64 * KiB), "empty": b"",
             "small": b"hello\n", "mixed": a[4096:8192] + rand(8192, 11) + a[:4096]}
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    write_sparse(root / "sparse", 3 * MiB, [(MiB + 10, b"data")])
    write_sparse(root / "allhole", 2 * MiB + 3, [])
    os.link(root / "small", root / "link")
    return files


def build_chunked(tmp_path: Path, src: Path, name: str, **kw):
    opts = BuildOptions(timestamp=T, uuid=bytes(16), **kw)
    image = tmp_path / f"{name}.erofs"
    result = build(image, src, opts)
    return image, result


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return src, chunk_tree(src)


def file_layouts(image: Path) -> dict[bytes, tuple[int, int]]:
    with Image.open(image) as img:
        return {p: (i.datalayout, i.startblk) for p, i in img.walk() if i.is_reg()}


@pytest.mark.parametrize("bs,chunk", [(4096, 4096), (4096, 8192), (4096, MiB), (512, 512),
                                      (1024, 4096)])
def test_every_file_with_data_is_chunk_based(tmp_path, tree, bs, chunk):
    src, _files = tree
    image, result = build_chunked(tmp_path, src, "img", block_size=bs, chunk_size=chunk,
                                  verify=True)
    with Image.open(image) as img:
        assert "chunked_file" in img.features()
        for path, inode in img.walk():
            if not inode.is_reg():
                continue
            if inode.size == 0:
                assert inode.datalayout != fmt.EROFS_INODE_CHUNK_BASED
                continue
            assert inode.datalayout == fmt.EROFS_INODE_CHUNK_BASED, path
            chunkbits = fmt.blksz_bits(bs) + (inode.startblk & fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK)
            assert not inode.startblk & fmt.EROFS_CHUNK_FORMAT_INDEXES
            assert chunkbits >= min(chunk.bit_length() - 1, max(fmt.blksz_bits(bs),
                                                                (inode.size - 1).bit_length()))
            assert b"".join(img.iter_data(inode)) == (src / path.decode().lstrip("/")).read_bytes()
        # holes take no block: the all-hole file, and the zeros when they fill whole chunks
        # (a short chunk of zeros is stored, as in mkfs.erofs)
        for name in (b"/allhole", b"/zeros") if chunk <= 64 * KiB else (b"/allhole",):
            assert all(e.kind == "hole" for e in img.extents(img.lookup(name))), name
        # the three copies of a share their blocks
        phys = {tuple(e.physical for e in img.extents(img.lookup(p)))
                for p in (b"/a", b"/dup/a2", b"/dup/a3")}
        assert len(phys) == 1


def test_dedupe_saves_exactly_the_duplicate_blocks(tmp_path, tree):
    src, files = tree
    _, on = build_chunked(tmp_path, src, "on", chunk_size=4096)
    _, off = build_chunked(tmp_path, src, "off", chunk_size=4096, dedupe=False)
    # a: 6 blocks; a2, a3: 6 each saved; mixed: its first and last 4 KiB are blocks of a;
    # zeros: 16 blocks of zeros stored only without dedupe
    assert off.blocks - on.blocks == 6 + 6 + 2 + 16


def test_chunk_indexes_and_blockmap(tmp_path, tree):
    src, _ = tree
    image, _ = build_chunked(tmp_path, src, "idx", chunk_size=8192, chunk_format="indexes",
                             verify=True)
    for path, (layout, fmt_) in file_layouts(image).items():
        if layout == fmt.EROFS_INODE_CHUNK_BASED:
            assert fmt_ & fmt.EROFS_CHUNK_FORMAT_INDEXES, path
    image, _ = build_chunked(tmp_path, src, "map", chunk_size=8192, chunk_format="blockmap",
                             verify=True)
    chunked = [f for layout, f in file_layouts(image).values()
               if layout == fmt.EROFS_INODE_CHUNK_BASED]
    assert chunked and not any(f & fmt.EROFS_CHUNK_FORMAT_INDEXES for f in chunked)


def test_dedupe_without_compression_means_block_chunks(tmp_path, tree, capsys):
    src, _ = tree
    image, result = build_chunked(tmp_path, src, "dd", dedupe=True, chunk_size=MiB,
                                  quiet=False, verify=True)
    assert "compression is not enabled" in capsys.readouterr().err.lower()
    _, same = build_chunked(tmp_path, src, "c4k", chunk_size=4096)
    assert result.blocks == same.blocks
    with Image.open(image) as img:
        assert "chunked_file" in img.features()


def test_compressed_build_chunks_what_stays_uncompressed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    noise = rand(200 * KiB, 5)
    (src / "noise").write_bytes(noise)
    (src / "noise2").write_bytes(noise)
    (src / "text").write_bytes(b"compress me " * 20000)
    image, _ = build_chunked(tmp_path, src, "z", compressor="lz4", chunk_size=4096, verify=True)
    layouts = file_layouts(image)
    assert layouts[b"/noise"][0] == fmt.EROFS_INODE_CHUNK_BASED
    assert layouts[b"/noise2"][0] == fmt.EROFS_INODE_CHUNK_BASED
    assert layouts[b"/text"][0] in (fmt.EROFS_INODE_COMPRESSED_FULL,
                                    fmt.EROFS_INODE_COMPRESSED_COMPACT)
    with Image.open(image) as img:
        a, b = (img.extents(img.lookup(p)) for p in (b"/noise", b"/noise2"))
        assert [e.physical for e in a] == [e.physical for e in b]


def test_blobdev_holds_the_data(tmp_path, tree):
    src, _ = tree
    blob = tmp_path / "blob"
    image, result = build_chunked(tmp_path, src, "meta", chunk_size=4096, blobdev=str(blob))
    _, inside = build_chunked(tmp_path, src, "inside", chunk_size=4096)
    blob_blocks = blob.stat().st_size // 4096
    assert blob.stat().st_size % 4096 == 0 and blob_blocks > 0
    # the same chunks, elsewhere: the blob holds as many blocks as the chunks take inside an
    # image, and the image is metadata only (8-byte indexes and the device table may take a
    # block more)
    stored = set()
    with Image.open(tmp_path / "inside.erofs") as img:
        for _path, inode in img.walk():
            if inode.is_reg() and inode.datalayout == fmt.EROFS_INODE_CHUNK_BASED:
                for e in img.extents(inode):
                    if e.physical is not None:
                        stored.update(range(e.physical // 4096,
                                            (e.physical + e.physical_length) // 4096))
    assert blob_blocks == len(stored)
    assert result.blocks <= inside.blocks - blob_blocks + 1
    with Image.open(image) as img:
        assert "chunked_file" in img.features() and "device_table" in img.features()
        for path, inode in img.walk():
            if inode.is_reg() and inode.size:
                assert inode.startblk & fmt.EROFS_CHUNK_FORMAT_INDEXES, path
    # the device slot, read with the test suite's own parser: one device, the blob's blocks,
    # mapped right after the image's (flatdev)
    sb = read_superblock(image)
    extra_devices, devt_slotoff = struct.unpack_from("<HH", sb.raw, 86)
    assert extra_devices == 1
    with open(image, "rb") as f:
        f.seek(devt_slotoff * 128)
        slot = f.read(128)
    assert slot[:64] == bytes(64)
    assert struct.unpack_from("<II", slot, 64) == (blob_blocks, result.blocks)


def test_verify_reads_the_blob(tmp_path, tree):
    """--verify reads the chunks back from the blob as device 1 and compares every file."""
    src, _ = tree
    blob = tmp_path / "blob"
    build_chunked(tmp_path, src, "img", chunk_size=4096, blobdev=str(blob), verify=True)
    assert blob.stat().st_size > 0


@pytest.mark.parametrize("dsunit,chunk,aligned", [(4, 4 * 4096, True), (2, MiB, True),
                                                  (8, 4096, False)])
def test_dsunit_aligns_each_files_first_new_chunk(tmp_path, tree, dsunit, chunk, aligned):
    """--dsunit with chunks at least dsunit blocks: every file's first chunk that is not a
    duplicate begins at a multiple of dsunit (mkfs.erofs aligns each file's place in its blob);
    smaller chunks are left unaligned (dedupe would shift the rest), as mkfs.erofs does."""
    src, _ = tree
    image, _ = build_chunked(tmp_path, src, "img", chunk_size=chunk, dsunit=dsunit,
                             dedupe=False, verify=True)
    firsts = []
    with Image.open(image) as img:
        for path, inode in img.walk():
            if inode.is_reg() and inode.datalayout == fmt.EROFS_INODE_CHUNK_BASED:
                blocks = [e.physical // 4096 for e in img.extents(inode) if e.kind == "plain"]
                if blocks:
                    firsts.append(blocks[0])
    assert len(firsts) > 3
    if aligned:
        assert all(b % dsunit == 0 for b in firsts), firsts
    else:
        assert any(b % dsunit for b in firsts), firsts


def test_tar_input_with_chunks(tmp_path, tree):
    src, _ = tree
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        for p in sorted(src.rglob("*")):
            t.add(p, arcname=str(p.relative_to(src)), recursive=False)
    image, _ = build_chunked(tmp_path, tar, "tar", chunk_size=4096, tar=TarOptions(),
                             verify=True)
    with Image.open(image) as img:
        a = img.lookup(b"/a")
        assert a.datalayout == fmt.EROFS_INODE_CHUNK_BASED
        assert [e.physical for e in img.extents(a)] == \
            [e.physical for e in img.extents(img.lookup(b"/dup/a2"))]


# -- option errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("args,mentions", [
    (["--chunksize=3000"], ["chunk size", "power of two"]),
    (["--chunksize=0x0"], ["chunk size"]),
    (["--chunksize=2048"], ["chunk size", "block size"]),
    (["-b1024", "--chunksize=512"], ["chunk size", "block size"]),
    (["--blobdev=BLOB"], ["--blobdev", "--chunksize"]),
    (["--chunksize=4096", "--blobdev=BLOB", "-Eforce-inode-blockmap"], ["blobdev", "block map"]),
    (["--chunksize=4096", "--blobdev=NODIR/blob"], ["blobdev", "NODIR/blob"]),
])
def test_bad_chunk_options(tmp_path, args, mentions):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10000)
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("BLOB", str(out / "blob")).replace("NODIR", str(tmp_path / "nodir"))
            for a in args]
    mentions = [m.replace("NODIR", str(tmp_path / "nodir")) for m in mentions]
    r = run_mkerofs(*args, out / "img", src, check=False)
    assert_clean_failure(r, mentions=mentions, image=out / "img")
    assert leftovers(out) == []


def test_failed_build_leaves_no_blob_it_created(tmp_path, tree, monkeypatch):
    """A build failing after chunks went to the blob: neither the image nor a blob this build
    created is left; a blob that existed before is kept as it was (mkfs.erofs has emptied it
    by then)."""
    import mkerofs.writer.build as build_module
    src, _ = tree
    calls = []
    real = build_module.make_chunked

    def failing(node, store):
        real(node, store)
        calls.append(node)
        if len(calls) == 3:
            raise BuildError("injected failure")

    monkeypatch.setattr(build_module, "make_chunked", failing)
    out = tmp_path / "out"
    out.mkdir()
    opts = BuildOptions(timestamp=T, chunk_size=4096, blobdev=str(out / "blob"))
    with pytest.raises(BuildError, match="injected"):
        build(out / "img", src, opts)
    assert len(calls) == 3 and leftovers(out) == []
    (out / "blob").write_bytes(b"old")
    calls.clear()
    with pytest.raises(BuildError, match="injected"):
        build(out / "img", src, opts)
    assert leftovers(out) == ["blob"]
    assert (out / "blob").read_bytes() == b"old"


def test_blob_inside_the_source_is_left_out(tmp_path, tree):
    src, _ = tree
    image, _ = build_chunked(tmp_path, src, "img", chunk_size=4096, blobdev=str(src / "blob"))
    assert (src / "blob").stat().st_size > 0
    with Image.open(image) as img:
        names = {p for p, _i in img.walk()}
    assert b"/a" in names and b"/blob" not in names
