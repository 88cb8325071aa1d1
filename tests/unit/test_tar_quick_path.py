"""The tar reader's quick path (TarReader._quick_entry) reads every archive exactly as its
general code does: the same entries, offsets and end, or the same error, also on damaged
headers; and --tar=i's shared chunk layouts give every file the map a layout of its own gives."""
import io
import random
import stat
import tarfile

import pytest

from mkerofs.ondisk import format as fmt
from mkerofs.writer import tarstream as ts
from mkerofs.writer.chunks import (ChunkLayout, covering_chunkbits, index_tar_files, make_indexed_file,
                                   set_chunk_map)
from mkerofs.writer.walk import DataRef, TreeInode
from support.tarfiles import END, header, member, pax

_parse_pax = ts._parse_pax


class _GeneralReader(ts.TarReader):
    """The reader without its quick path."""

    def _quick_entry(self):
        return None


def _read(reader_class, raw: bytes, chunk: int = 1 << 20):
    """Entries (with their data) and the end offsets, or the error's message."""
    reader = reader_class(io.BufferedReader(io.BytesIO(raw), chunk))
    out = []
    try:
        for entry in reader:
            out.append((entry, reader.read(entry)))
    except ts.TarError as err:
        out.append(("error", str(err)))
    return out, reader.end_offset, reader.archive_end, reader.trailing_bytes


def _same(raw: bytes) -> list:
    quick = _read(ts.TarReader, raw)
    assert quick == _read(_GeneralReader, raw)
    return quick[0]


def _tarfile(fmt_: int, names: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt_) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000 + i
            info.uid, info.gid, info.uname = i, 2 * i, "u%d" % i
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif name.startswith("l"):
                info.type, info.linkname = tarfile.SYMTYPE, "target/" + name
                tar.addfile(info)
            elif name.startswith("h"):
                info.type, info.linkname = tarfile.LNKTYPE, names[0]
                tar.addfile(info)
            elif name.startswith("c"):
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                tar.addfile(info)
            else:
                data = name.encode() * (i % 5)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


_NAMES = ["f0", "d/", "d/f1", "d/e/", "l1", "h1", "c1", "./d/../g", "d//x", "/abs", "x" * 99,
          "p/" * 60 + "deep", "é/ü", "d/" + "y" * 120, "z" * 300]


@pytest.mark.parametrize("format_", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_archives_of_every_format(format_):
    names = _NAMES if format_ != tarfile.USTAR_FORMAT else \
        [n for n in _NAMES if len(n) < 100 and n.isascii()]
    entries = _same(_tarfile(format_, names))
    assert len(entries) == len(names)


def _gnu_posix_entry(name: bytes, data: bytes, times: bytes, typeflag: bytes = b"0") -> bytes:
    """What GNU tar --format=posix writes for a file: a PAX header of its atime and ctime."""
    return member(header(b"./PaxHeaders/" + name, b"x", len(times)), times) + \
        member(header(name, typeflag, len(data)), data)


_TIMES = b"30 atime=1795940613.148940629\n29 ctime=1795940611.14587329\n"


def _gnu_posix_archive() -> bytes:
    return b"".join([
        _gnu_posix_entry(b"dir/", b"", _TIMES, b"5"),
        _gnu_posix_entry(b"dir/a", b"abc" * 200, _TIMES),
        _gnu_posix_entry(b"dir/b", b"", b"20 atime=1795940613\n" + _TIMES[30:]),
        pax([(b"path", b"dir/" + b"n" * 150), (b"atime", b"1.5")]) + member(header(b"short", size=3), b"xyz"),
        pax([(b"mtime", b"1795940473.348698025")]) + member(header(b"dir/c", size=1), b"q"),
        member(header(b"plain", size=700), b"p" * 700),
        member(header(b"dir/pre", size=2, prefix=b"pfx"), b"zz"),
        _gnu_posix_entry(b"dir/link", b"", _TIMES, b"2"),
    ]) + END


def test_gnu_posix_archive_is_read_the_quick_way():
    raw = _gnu_posix_archive()
    entries = _same(raw)
    assert [e.path for e, _d in entries] == [b"dir", b"dir/a", b"dir/b", b"dir/" + b"n" * 150,
                                              b"dir/c", b"plain", b"pfx/dir/pre", b"dir/link"]
    assert entries[4][0].mtime_ns == 1795940473_348698025
    calls = []

    class Counting(ts.TarReader):
        def _entry(self, *args):
            calls.append(args[2])
            return super()._entry(*args)

    _read(Counting, raw)
    # the general _entry: a prefix, a symlink; the rest (PAX path and mtime records too) made
    # by the quick path
    assert len(calls) == 2


# PAX records the quick path applies itself (path, mtime), with values it leaves to _entry
_PAX_CASES = [
    [(b"path", b"dir/" + b"n" * 150)], [(b"path", b"")], [(b"path", b"a/../../b/./c/")],
    [(b"path", b"x/" + b"y" * 256)], [(b"path", b"a\0b")], [(b"path", b"/abs//p")],
    [(b"mtime", b"1795940473.348698025")], [(b"mtime", b"")], [(b"mtime", b"-1.5")],
    [(b"mtime", b"12x")], [(b"mtime", b"1.")], [(b"mtime", b"+3")], [(b"mtime", b"7.1234567891")],
    [(b"path", b"p" * 120), (b"mtime", b"5.5")], [(b"mtime", b"5"), (b"path", b"")],
    [(b"path", b"q"), (b"uid", b"7")], [(b"path", b"q"), (b"uname", b"bob")],
    [(b"path", b"q"), (b"SCHILY.xattr.user.a", b"b")], [(b"path", b"q"), (b"atime", b"1.5")],
    [(b"path", b"first"), (b"path", b"second")],
]


@pytest.mark.parametrize("records", _PAX_CASES)
@pytest.mark.parametrize("typeflag,mtime", [(b"0", 1_700_000_000), (b"5", 1), (b"2", 3)])
def test_pax_path_and_mtime_alike(records, typeflag, mtime):
    raw = pax(records) + member(header(b"hdr-name", typeflag, 0, mtime=mtime)) + \
        member(header(b"after", size=2), b"ab") + END
    bad_mtime = pax(records) + member(header(b"hdr", fields={"mtime": b"12 x"})) + END
    for archive in (raw, bad_mtime):
        _same(archive)


@pytest.mark.parametrize("chunk", [512, 1000, 1536, 4096])
def test_small_reads_split_headers_anywhere(chunk):
    raw = _gnu_posix_archive()
    assert _read(ts.TarReader, raw, chunk) == _read(_GeneralReader, raw, chunk)


def test_damaged_archives_fail_alike():
    """Bytes of the headers overwritten at random: the quick path accepts or refuses exactly
    what the general code does, with the same message."""
    raw = _gnu_posix_archive()
    heads = [i for i in range(0, len(raw), 512) if raw[i + 257:i + 262] == b"ustar"]
    rng = random.Random(7)
    values = b"0 7\0\xff/.xX5L8"
    errors = 0
    for _ in range(1500):
        damaged = bytearray(raw)
        blocks = set()
        for _ in range(rng.randint(1, 3)):
            block = rng.choice(heads)
            blocks.add(block)
            at = rng.choice([0, 1, 99, 100, 107, 124, 130, 135, 136, 148, 150, 155, 156, 257,
                             262, 263, 345, rng.randrange(512)])
            damaged[block + at] = rng.choice(values)
        if rng.random() < 0.7:
            # and the checksums made right again, so that the fields themselves are read
            for block in blocks:
                damaged[block + 148:block + 156] = b" " * 8
                damaged[block + 148:block + 156] = b"%06o\0 " % sum(damaged[block:block + 512])
        entries = _same(bytes(damaged))
        errors += entries[-1:] != [] and entries[-1][0] == "error"
    assert 100 < errors < 1400


def _damage_payloads(raw: bytes, seed: int, values: bytes, reach: int) -> set[bool]:
    """Whether each of 600 copies of `raw` fails, one or two bytes within `reach` of the start
    of its PAX payloads overwritten with some of `values`; each read alike by both paths."""
    payloads = [i + 512 for i in range(0, len(raw), 512)
                if raw[i + 257:i + 262] == b"ustar" and raw[i + 156:i + 157] == b"x"]
    rng = random.Random(seed)
    outcomes = set()
    for _ in range(600):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 2)):
            damaged[rng.choice(payloads) + rng.randrange(reach)] = rng.choice(values)
        entries = _same(bytes(damaged))
        outcomes.add(entries[-1:] != [] and entries[-1][0] == "error")
    return outcomes


def test_damaged_pax_payloads_read_alike():
    """PAX payloads (path, mtime, atime/ctime records) overwritten at random: the quick path
    reads what the general code reads, or fails as it does."""
    assert _damage_payloads(_gnu_posix_archive(), 11, b"0 9.-=\n/\0amp", 40) == {True, False}


def _record(key: bytes, value: bytes) -> bytes:
    """A PAX record with its right length."""
    rest = b" %s=%s\n" % (key, value)
    length = len(rest) + 1
    while len(b"%d" % length) + len(rest) != length:
        length += 1
    return b"%d" % length + rest


def _gnu_lead_archive() -> bytes:
    """GNU tar --format=posix's PAX payloads with a path or mtime record before the times."""
    return b"".join([
        _gnu_posix_entry(b"dir/", b"", _TIMES, b"5"),
        _gnu_posix_entry(b"dir/a", b"abc", _record(b"path", b"dir/" + b"n" * 150) + _TIMES),
        _gnu_posix_entry(b"dir/b", b"", _record(b"mtime", b"1795940473.348698025") + _TIMES),
        _gnu_posix_entry(b"dir/c", b"xy", _record(b"mtime", b"1795940473.34869802")),
        _gnu_posix_entry(b"dir/d", b"", _record(b"mtime", b"1795940473") + _TIMES[:30]),
        _gnu_posix_entry(b"dir/e", b"z", _record(b"path", b"dir/a=b c/../d") + _TIMES),
        _gnu_posix_entry(b"dir/f", b"", _record(b"path", b"") + _TIMES),
        _gnu_posix_entry(b"dir/g", b"", _record(b"path", b"x\ny") + _TIMES),
    ]) + END


def test_gnu_lead_records_read_the_quick_way(monkeypatch):
    parsed = []
    monkeypatch.setattr(ts, "_parse_pax", lambda payload, records: parsed.append(payload) or
                        _parse_pax(payload, records))
    entries = _same(_gnu_lead_archive())
    assert [e.path for e, _d in entries] == [b"dir", b"dir/" + b"n" * 150, b"dir/b", b"dir/c",
                                              b"dir/d", b"dir/d", b"dir/f", b"x\ny"]
    assert [e.mtime_ns for e, _d in entries[2:5]] == [1795940473_348698025, 1795940473_348698020,
                                                       1795940473_000000000]
    # the general code parses all 8 payloads; the quick path only the one whose path holds a
    # newline
    assert len(parsed) == 8 + 1
    assert ts._gnu_lead_record(b"29 path=" + b"p" * 20 + b"\n", 0, 29) == {b"path": b"p" * 20}
    # a wrong length, or times that are not GNU's: left to _parse_pax
    assert ts._gnu_lead_record(b"30 path=" + b"p" * 20 + b"\n", 0, 29) is None
    assert ts._gnu_lead_record(b"12 path=abc\n13 atime=1.5\n", 0, 25) is None


def test_damaged_gnu_lead_records_read_alike():
    """The lengths, keys and values of path and mtime records overwritten at random: read as
    the general code reads them, or refused as it refuses them."""
    assert _damage_payloads(_gnu_lead_archive(), 13, b"0 19.-=\n/\0apm", 12) == {True, False}


# -- --tar=i: one layout for all files with the same map shape ---------------------------------

@pytest.mark.parametrize("size", [1, 511, 512, 513, 4096, 12345, 1 << 20, (1 << 20) + 1, 3 << 30])
@pytest.mark.parametrize("start,device_id", [(0, 1), (77, 1), ((1 << 32) - 1, 1), (1 << 40, 1),
                                             (5, 0), (1000, 0)])
@pytest.mark.parametrize("xattr_bytes", [0, 4, 12])
def test_indexed_file_map_is_its_own_layouts(size, start, device_id, xattr_bytes):
    src = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, size, 0,
                      data=DataRef(b"", 0, indexed=True))

    def node():
        n = TreeInode(src.where, src.mode, 0, 0, size, 0, nlink=1, data=src.data,
                         ftype=fmt.EROFS_FT_REG_FILE)
        n.set_xattr_ibody(bytes(xattr_bytes))
        return n

    for blkszbits in (9, 12):
        if not device_id and start >= fmt.EROFS_NULL_ADDR_32:
            continue
        shared, own = node(), node()
        make_indexed_file(shared, blkszbits, start, device_id)
        chunkbits = covering_chunkbits(size, blkszbits)
        step = 1 << (chunkbits - blkszbits)
        addrs = list(range(start, start + -(-size >> chunkbits) * step, step))
        layout = ChunkLayout(size, blkszbits, chunkbits, bool(device_id),
                             bool(device_id) and addrs[-1] >= fmt.EROFS_NULL_ADDR_32)
        set_chunk_map(own, layout, addrs, device_id)
        assert (shared.datalayout, shared.i_u, shared.inline, shared.inline_len) == \
            (own.datalayout, own.i_u, own.inline, own.inline_len)


@pytest.mark.parametrize("xattr_bytes", [0, 4, 12, 20])
def test_index_tar_files_gives_each_file_its_own_map(xattr_bytes):
    """index_tar_files' one-chunk shortcut writes the map make_indexed_file writes."""
    sizes = [1, 511, 512, 513, 4096, 12345, 1 << 20, (1 << 20) + 1, 3 << 30]
    offsets = [0, 512, 77 * 512, ((1 << 32) - 2) * 512, (1 << 32) * 512]

    def nodes():
        out = []
        for size in sizes:
            for offset in offsets:
                n = TreeInode(b"f", stat.S_IFREG | 0o644, 0, 0, size, 0, nlink=1,
                              data=DataRef(b"", offset, indexed=True), ftype=fmt.EROFS_FT_REG_FILE)
                n.set_xattr_ibody(bytes(xattr_bytes))
                out.append(n)
        return out

    indexed, own = nodes(), nodes()
    index_tar_files(indexed, 9, None)
    for n in own:
        make_indexed_file(n, 9, n.data.offset >> 9, 1)
    assert [(n.datalayout, n.i_u, n.inline, n.inline_len) for n in indexed] == \
        [(n.datalayout, n.i_u, n.inline, n.inline_len) for n in own]
