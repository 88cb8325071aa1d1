"""The tar stream reader (mkerofs/writer/tarstream.py) and input decompression (decompress.py).

Tars are written by GNU tar (ustar, gnu, oldgnu, v7, posix; with xattrs, ACLs and every sparse
version), bsdtar and Python's tarfile from a source tree that holds every kind of file; each
parsed entry is compared with os.lstat, the file's bytes and its xattrs. Damaged tars are built
by hand (or by cutting real ones) and must fail naming the entry and its byte offset.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from mkerofs.ondisk import posix_acl as acl
from mkerofs.util import read_xattrs
from mkerofs.writer.decompress import open_input, sniff
from mkerofs.writer.tarstream import (BLK, CHR, DIR, FIFO, HARDLINK, REG, SYMLINK, TarEntry,
                                      TarError, TarReader, acl_from_text, normalise_path)
from support.tarfiles import END, header, member, pax
from support.tars import write_sparse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown)")

NS = 10**9


# -- the source tree ---------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _make_basic(root: Path) -> None:
    """Files every format stores (names fit ustar's prefix+name, small ids)."""
    b = root / "basic"
    b.mkdir()
    _write(b / "empty", b"")
    _write(b / "small", b"hello\n")
    for n in (511, 512, 513, 200_000):
        _write(b / f"f{n}", hashlib.shake_256(str(n).encode()).digest(n))
    _write(b / "suid", b"#!/bin/sh\n")
    os.chmod(b / "suid", 0o4755)
    (b / "dir1" / "nested").mkdir(parents=True)
    _write(b / "dir1" / "nested" / "file", b"nested")
    os.chmod(b / "dir1", 0o750)
    _write(b / ("p" * 60) / ("q" * 60), b"prefix+name")       # ustar splits this path
    os.symlink("small", b / "sym")
    os.symlink("does/not/exist", b / "dangling")
    os.link(b / "f513", b / "hard513")
    os.mknod(b / "chr", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(b / "blk", 0o660 | stat.S_IFBLK, os.makedev(8, 300))
    os.mkfifo(b / "fifo", 0o600)
    _write(b / "owned", b"owned")
    os.chown(b / "owned", 1234, 5678)
    os.utime(b / "small", ns=(1_234_567_890_123_456_789, 1_234_567_890_123_456_789))


def _make_ext(root: Path) -> None:
    """What needs GNU or PAX extensions."""
    e = root / "ext"
    e.mkdir()
    _write(e / ("L" * 120) / "f", b"abc")
    _write(e / ("d" * 100) / ("e" * 100) / ("f" * 100) / "deep", b"deep file")
    _write(e / ("n" * 255), b"255-byte name")
    os.symlink("T" * 150, e / "longlink")
    os.link(e / ("d" * 100) / ("e" * 100) / ("f" * 100) / "deep", e / "hard-to-deep")
    _write(e / "biguid", b"big ids")
    os.chown(e / "biguid", 3_000_000, 3_000_001)
    _write(e / "old", b"before the epoch")
    os.utime(e / "old", ns=(-1_500_000_000, -1_500_000_000))
    write_sparse(e / "sparse-hole-end", 1 << 20, [(70_000, b"A" * 4), (500_000, b"B" * 5000)])
    write_sparse(e / "sparse-data-end", 2 << 20, [(0, b"C" * 10), ((2 << 20) - 3, b"END")])
    # 30 extents: old-GNU headers hold 4, the rest go to extension blocks of 21
    write_sparse(e / "sparse-many", 4 << 20, [(i * 131072, bytes([65 + i]) * 4096) for i in range(30)])
    _write(e / "xattrs", b"x")
    os.setxattr(e / "xattrs", "user.foo", b"bar")
    os.setxattr(e / "xattrs", "user.empty", b"")
    os.setxattr(e / "xattrs", "user.a=b", b"eq")
    os.setxattr(e / "xattrs", "trusted.bin", bytes(range(256)))
    _write(e / "acl", b"acl")
    subprocess.run(["setfacl", "-m", "u:1000:rwx,u:4242:r,g:100:r-x,g:4343:w", str(e / "acl")],
                   check=True)
    (e / "acldir").mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1000:rx,o::-", str(e / "acldir")], check=True)
    _write(Path(os.fsdecode(bytes(e) + b"/caf\xe9")), b"latin-1 name")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tarsrc")
    _make_basic(root)
    _make_ext(root)
    return root


# -- reading and comparing ---------------------------------------------------------------------

def read_all(source, **kw) -> tuple[list[tuple[TarEntry, bytes]], TarReader]:
    with open_input(source, **kw) as inp:
        reader = TarReader(inp)
        out = [(e, reader.read(e)) for e in reader]
    return out, reader


def source_paths(root: Path, tops: tuple[str, ...]) -> set[bytes]:
    out = set()
    for top in tops:
        out.add(top.encode())
        for dirpath, dirs, files in os.walk(os.fsencode(root / top)):
            for n in dirs + files:
                out.add(os.path.relpath(os.path.join(dirpath, n), os.fsencode(root)))
    return out


_KIND_OF = {stat.S_IFREG: REG, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHR,
            stat.S_IFBLK: BLK, stat.S_IFIFO: FIFO}


def check_against(entries, root: Path, tops: tuple[str, ...], *, mtime: str, xattrs: bool,
                  sparse: bool = False) -> None:
    """Every entry matches the file it came from, and every file came out once."""
    seen = set()
    for entry, data in entries:
        assert entry.path not in seen, entry.path
        seen.add(entry.path)
        path = os.path.join(os.fsencode(root), entry.path)
        st = os.lstat(path)
        what = (entry.path, entry.kind)
        if entry.kind == HARDLINK:
            target = os.lstat(os.path.join(os.fsencode(root), entry.link_path))
            assert (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino), what
            continue
        assert entry.kind == _KIND_OF[stat.S_IFMT(st.st_mode)], what
        assert entry.mode == st.st_mode, (what, oct(entry.mode), oct(st.st_mode))
        assert (entry.uid, entry.gid) == (st.st_uid, st.st_gid), what
        if mtime == "ns":
            assert entry.mtime_ns == st.st_mtime_ns, what
        elif mtime == "float":      # Python's tarfile writes st_mtime, a float
            assert abs(entry.mtime_ns - st.st_mtime_ns) < 2000, what
        else:                       # whole seconds (floor or truncated)
            assert abs(entry.mtime_ns - st.st_mtime_ns) < NS and entry.mtime_ns % NS == 0, what
        if entry.kind == REG:
            assert entry.size == st.st_size, what
            assert data == Path(os.fsdecode(path)).read_bytes(), what
            if sparse and entry.path.startswith(b"ext/sparse"):
                assert entry.sparse is not None and entry.payload < entry.size, what
        else:
            assert entry.size == 0, what
        if entry.kind == SYMLINK:
            assert entry.linkname == os.readlink(path), what
        if entry.kind in (CHR, BLK):
            assert (entry.devmajor, entry.devminor) == (os.major(st.st_rdev), os.minor(st.st_rdev))
        if xattrs:
            assert dict(entry.xattrs) == dict(read_xattrs(path)), what
    assert seen == source_paths(root, tops)


def tar_gnu(src: Path, out: Path, fmt: str, *args: str, tops=("basic", "ext")) -> Path:
    subprocess.run(["tar", f"--format={fmt}", *args, "-cf", str(out), "-C", str(src), *tops],
                   check=True)
    return out


def tar_python(src: Path, out: Path, fmt: int, tops=("basic", "ext")) -> Path:
    with tarfile.open(out, "w", format=fmt) as t:
        for top in tops:
            t.add(src / top, arcname=top)
    return out


# -- formats -----------------------------------------------------------------------------------

GNU_CASES = [
    ("ustar", (), ("basic",), "s", False),
    ("v7", (), ("basic",), "s", False),
    ("gnu", ("--sparse",), ("basic", "ext"), "s", False),
    ("oldgnu", ("--sparse",), ("basic", "ext"), "s", False),
    ("posix", ("--xattrs", "--xattrs-include=*", "--acls", "--sparse"), ("basic", "ext"), "ns", True),
    ("posix", ("--acls", "--sparse", "--sparse-version=0.0"), ("basic", "ext"), "ns", False),
    ("posix", ("--sparse", "--sparse-version=0.1"), ("basic", "ext"), "ns", False),
    ("posix", ("--sparse", "--sparse-version=1.0"), ("basic", "ext"), "ns", False),
]


@pytest.mark.parametrize("fmt,args,tops,mtime,xattrs", GNU_CASES,
                         ids=[f"{c[0]}{''.join(c[1][-1:])}" for c in GNU_CASES])
def test_gnu_tar(src, tmp_path, fmt, args, tops, mtime, xattrs):
    if fmt == "v7":     # v7 has no devices, fifos or ustar names
        tops = ("basic/dir1",)
    tar = tar_gnu(src, tmp_path / "t.tar", fmt, *args, tops=tops)
    entries, reader = read_all(tar)
    check_against(entries, src, tops, mtime=mtime, xattrs=xattrs, sparse="--sparse" in args)
    assert reader.end_offset is not None and not reader.trailing_data
    if "--sparse" in args:
        many = next(e for e, _ in entries if e.path == b"ext/sparse-many")
        assert many.sparse == [(i * 131072, 4096) for i in range(30)]


def test_gnu_acl_text_converted_to_kernel_xattr(src, tmp_path):
    # --acls without --xattrs: only SCHILY.acl.* text (with user and group names) is written
    tar = tar_gnu(src, tmp_path / "t.tar", "posix", "--acls", tops=("ext",))
    raw = tar.read_bytes()
    assert b"SCHILY.acl.access" in raw and b"SCHILY.xattr.system" not in raw
    entries = {e.path: e for e, _ in read_all(tar)[0]}
    for name, xname in (("acl", "system.posix_acl_access"), ("acldir", "system.posix_acl_default")):
        path = src / "ext" / name
        want = os.getxattr(path, xname, follow_symlinks=False)
        assert dict(entries[f"ext/{name}".encode()].xattrs)[xname.encode()] == want
        assert entries[f"ext/{name}".encode()].mode == os.lstat(path).st_mode
    # a minimal ACL (what --acls writes for every file) is the mode, not an xattr
    assert entries[b"ext/xattrs"].xattrs == []


@pytest.mark.parametrize("fmt", ["pax", "ustar", "gnutar"])
def test_bsdtar(src, tmp_path, fmt):
    tops = ("basic", "ext") if fmt != "ustar" else ("basic",)
    tar = tmp_path / "t.tar"
    subprocess.run(["bsdtar", f"--format={fmt}", "--xattrs", "--acls", "-cf", str(tar),
                    "-C", str(src), *tops], check=True)
    entries, _ = read_all(tar)
    for entry, _data in entries:
        if entry.path == b"ext/old" and fmt == "pax":
            # libarchive writes -1.5 s as "mtime=-2.5" (sec -2, then the fraction); POSIX, GNU
            # tar and Python's tarfile read that as -2.5 s, and so does this reader
            assert entry.mtime_ns == -2_500_000_000
            entry.mtime_ns = -1_500_000_000
        if entry.path == b"ext/old" and fmt == "gnutar":
            assert entry.mtime_ns == 0      # libarchive's gnutar writer clamps negative times
            entry.mtime_ns = -2 * NS
        if entry.path == b"ext/acl" and fmt == "gnutar":
            # without the ACL, bsdtar's mode shows the group:: entry, not the mask (rwx)
            assert entry.mode & 0o070 == 0o040
            entry.mode |= 0o070
    check_against(entries, src, tops, mtime="ns" if fmt == "pax" else "s",
                  xattrs=fmt == "pax", sparse=fmt == "pax")


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_python_tarfile(src, tmp_path, fmt):
    tops = ("basic",) if fmt == tarfile.USTAR_FORMAT else ("basic", "ext")
    tar = tar_python(src, tmp_path / "t.tar", fmt, tops=tops)
    entries, _ = read_all(tar)
    check_against(entries, src, tops, mtime="float" if fmt == tarfile.PAX_FORMAT else "s",
                  xattrs=False)
    if fmt == tarfile.GNU_FORMAT:
        raw = tar.read_bytes()
        assert b"\x80\x00\x00\x00\x00\x2d\xc6\xc0" in raw     # uid 3000000 in base-256
        old = next(e for e, _ in entries if e.path == b"ext/old")
        assert old.mtime_ns == -NS                  # int(-1.5): tarfile truncates


def test_data_offsets_point_at_the_data(src, tmp_path):
    tar = tar_gnu(src, tmp_path / "t.tar", "posix", "--sparse")
    raw = tar.read_bytes()
    for entry, data in read_all(tar)[0]:
        assert raw[entry.header_offset + 257:entry.header_offset + 262] == b"ustar"
        if entry.sparse is None:
            assert raw[entry.data_offset:entry.data_offset + entry.payload] == data
        else:
            stored = b"".join(data[o:o + n] for o, n in entry.sparse)
            assert raw[entry.data_offset:entry.data_offset + entry.payload] == stored


# -- compression and pipes ---------------------------------------------------------------------

def _fingerprint(entries) -> list:
    return [(e.path, e.kind, e.mode, e.size, e.data_offset, e.xattrs, hashlib.sha256(d).digest())
            for e, d in entries]


COMPRESSORS = {"gzip": ["gzip", "-c"], "xz": ["xz", "-c"], "lzma": ["xz", "--format=lzma", "-c"],
               "zstd": ["zstd", "-q", "-c"], "bzip2": ["bzip2", "-c"]}


@pytest.fixture(scope="module")
def posix_tar(src, tmp_path_factory) -> Path:
    return tar_gnu(src, tmp_path_factory.mktemp("tars") / "p.tar", "posix", "--xattrs",
                   "--xattrs-include=*", "--acls", "--sparse")


@pytest.mark.parametrize("kind", list(COMPRESSORS))
@pytest.mark.parametrize("via", ["file", "pipe"])
def test_compressed_input(posix_tar, tmp_path, kind, via):
    plain = _fingerprint(read_all(posix_tar)[0])
    packed = tmp_path / "t.c"
    with open(posix_tar, "rb") as fin, open(packed, "wb") as fout:
        subprocess.run(COMPRESSORS[kind], stdin=fin, stdout=fout, check=True)
    if via == "file":
        entries, _ = read_all(packed)
    else:
        with subprocess.Popen(["cat", str(packed)], stdout=subprocess.PIPE) as proc:
            with open_input(proc.stdout) as inp:
                assert inp.kind == kind and not inp.seekable
                reader = TarReader(inp)
                entries = [(e, reader.read(e)) for e in reader]
    assert _fingerprint(entries) == plain


def test_plain_tar_from_a_pipe_skipping_data(posix_tar):
    want = [(e.path, e.data_offset) for e, _ in read_all(posix_tar)[0]]
    with subprocess.Popen(["cat", str(posix_tar)], stdout=subprocess.PIPE) as proc:
        with open_input(proc.stdout) as inp:
            assert inp.kind == "tar" and not inp.seekable
            reader = TarReader(inp)
            got = []
            for e in reader:
                got.append((e.path, e.data_offset))
                if e.payload > 100_000:     # read a little of a big file, leave the rest
                    next(reader.chunks(e))
        assert proc.wait() == 0     # the input was read to its end: no SIGPIPE for the writer
    assert got == want


def test_concatenated_members_and_frames(posix_tar, tmp_path):
    raw = posix_tar.read_bytes()
    half = len(raw) // 2
    import gzip
    import zstandard
    (tmp_path / "t.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    c = zstandard.ZstdCompressor()
    (tmp_path / "t.zst").write_bytes(c.compress(raw[:half]) + c.compress(raw[half:]))
    plain = _fingerprint(read_all(posix_tar)[0])
    for name in ("t.gz", "t.zst"):
        assert _fingerprint(read_all(tmp_path / name)[0]) == plain


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_truncated_compressed_input_fails(posix_tar, tmp_path, kind):
    packed = subprocess.run(COMPRESSORS[kind], input=posix_tar.read_bytes(),
                            stdout=subprocess.PIPE, check=True).stdout
    for cut in (1, 4, 9, len(packed) // 2):
        (tmp_path / "cut").write_bytes(packed[:-cut])
        with pytest.raises(TarError):
            read_all(tmp_path / "cut")


def test_dump_of_the_decompressed_stream(posix_tar, tmp_path):
    packed = subprocess.run(["gzip", "-c"], input=posix_tar.read_bytes(), stdout=subprocess.PIPE,
                            check=True).stdout
    (tmp_path / "t.gz").write_bytes(packed)
    for source in (tmp_path / "t.gz", posix_tar):
        with open(tmp_path / "dump", "wb") as dump:
            with open_input(source, hint="gzip", dump=dump) as inp:
                assert not inp.seekable
                for _ in TarReader(inp):       # data not read is still copied
                    pass
        assert (tmp_path / "dump").read_bytes() == posix_tar.read_bytes()


def test_hints_and_sniffing(posix_tar, tmp_path):
    assert sniff(posix_tar.read_bytes()[:512]) == "tar"
    with open_input(posix_tar, hint="gzip") as inp:     # --ungzip on a plain tar: read as is
        assert inp.kind == "tar" and inp.seekable
    (tmp_path / "junk").write_bytes(b"\x01" * 2000)
    with pytest.raises(TarError, match="cannot read the input"):
        read_all(tmp_path / "junk", hint="xz")          # handed to the lzma decoder
    with pytest.raises(TarError, match="bad header checksum"):
        read_all(tmp_path / "junk")
    with pytest.raises(ValueError):
        open_input(posix_tar, hint="brotli")


# -- hand-made tars ----------------------------------------------------------------------------

def parse(data: bytes, **kw) -> tuple[list[tuple[TarEntry, bytes]], TarReader]:
    reader = TarReader(io.BytesIO(data), **kw)
    return [(e, reader.read(e)) for e in reader], reader


def fails(data: bytes, *words: str, **kw) -> TarError:
    with pytest.raises(TarError) as info:
        parse(data, **kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return info.value


def test_old_style_regular_file_and_v7_directory():
    data = member(header(b"f0", b"\0", 3), b"abc") + member(header(b"d/", b"\0")) + END
    (f0, body), (d, _) = parse(data)[0]
    assert (f0.kind, body, d.kind, d.path) == (REG, b"abc", DIR, b"d")


def test_payload_of_a_symlink_is_skipped_not_taken_for_headers():
    junk = b"\xff" * 8      # mkfs.erofs 1.9.3 loses every entry after this one
    data = member(header(b"s", b"2", 8, linkname=b"target"), junk) + \
        member(header(b"after", b"0", 5), b"after") + END
    (s, sdata), (after, adata) = parse(data)[0]
    assert (s.kind, s.linkname, s.payload, sdata) == (SYMLINK, b"target", 8, junk)
    assert (after.path, adata) == (b"after", b"after")


def test_device_with_empty_numbers_fails():
    data = member(header(b"a", b"0")) + \
        member(header(b"cdev", b"3", devmajor=bytes(8), devminor=bytes(8))) + member(header(b"b")) + END
    fails(data, "'cdev'", "at byte 512", "devmajor")


def test_devices_fifo_and_base256():
    big = b"\x80" + (3_000_000).to_bytes(7, "big")
    neg = b"\xff" * 4 + (-5).to_bytes(8, "big", signed=True)
    data = member(header(b"c", b"3", mode=0o666, devmajor=b"0000001\0", devminor=b"0000003\0")) + \
        member(header(b"b", b"4", devmajor=b"0000010\0", devminor=b"0000454\0")) + \
        member(header(b"p", b"6", mode=0o600)) + \
        member(header(b"big", fields={"uid": big, "mtime": neg})) + END
    (c, _), (b, _), (p, _), (bg, _) = parse(data)[0]
    assert (c.kind, c.mode, c.devmajor, c.devminor) == (CHR, stat.S_IFCHR | 0o666, 1, 3)
    assert (b.kind, b.devmajor, b.devminor) == (BLK, 8, 300)
    assert (p.kind, p.mode) == (FIFO, stat.S_IFIFO | 0o600)
    assert (bg.uid, bg.mtime_ns) == (3_000_000, -5 * NS)


def test_signed_checksum_accepted():
    data = member(header(b"caf\xe9", signed=True)) + END
    assert parse(data)[0][0][0].path == b"caf\xe9"


def test_bad_checksum_names_entry_and_offset():
    good = member(header(b"a", size=3), b"abc")
    bad = bytearray(header(b"second", size=0))
    bad[136] ^= 1                                        # a bit of mtime
    fails(good + bytes(bad) + END, "'second'", "at byte 1024", "checksum")


@pytest.mark.parametrize("field,value,word", [
    ("uid", b"12x4567\0", "uid"), ("mode", b"\0" * 8, "mode"), ("size", b"1_2\0", "size"),
    ("mtime", b"-1234567890\0", "mtime"), ("size", b"\xff" * 12, "size"),     # negative size
])
def test_bad_number_fields(field, value, word):
    data = member(header(b"ok")) + member(header(b"victim", fields={field: value})) + END
    fails(data, "'victim'", "at byte 512", word)


def test_number_with_spaces_and_full_width():
    data = member(header(b"f", fields={"mode": b"   644 \0", "size": b"00000000003", })) + \
        b"abc".ljust(512, b"\0") + END
    (f, body), = parse(data)[0]
    assert (f.mode & 0o7777, body) == (0o644, b"abc")


@pytest.mark.parametrize("payload,word", [
    (b"99 path=x\n", "wrong length"), (b"8 pathx\n", "key=value"), (b"x9 path=a\n", "bad length"),
    (b"4 a\n", "key=value"), (b"3 a=\n", "wrong length"), (b"11 path=ab ", "wrong length"),
    (b"6 =ab\n", "key=value"), (b"7 path=x\n", "wrong length"),
])
def test_malformed_pax_records(payload, word):
    data = member(header(b"PaxHeader", b"x", len(payload)), payload) + member(header(b"f")) + END
    fails(data, "PaxHeader", "at byte 0", word)


@pytest.mark.parametrize("key,value", [(b"uid", b"-1"), (b"size", b"1e3"), (b"mtime", b"12.x"),
                                       (b"gid", b"\xef\xbc\x91")])
def test_bad_pax_values(key, value):
    data = pax([(key, value), (b"path", b"named")]) + member(header(b"f")) + END
    fails(data, "'named'", "at byte 0", key.decode())


def test_pax_attributes():
    data = pax([
        (b"path", b"p/" + b"n" * 100 + b"/" + b"m" * 100 + b"/file.txt"),
        (b"mtime", b"1234567890.123456789123"), (b"uid", b"70000"), (b"gid", b"80000"),
        (b"uname", b"bob"), (b"atime", b"1.5"), (b"SCHILY.xattr.user.foo", b"bar"),
        (b"SCHILY.xattr.trusted.t", b"v=\nv"), (b"LIBARCHIVE.xattr.user.b%3Dz", b"aGVsbG8"),
        (b"SCHILY.xattr.user.foo", b"later wins"), (b"size", b"7"),
    ]) + member(header(b"ignored", size=0), b"paxdata") + \
        pax([(b"mtime", b"-1.5"), (b"linkpath", b"L" * 300)]) + member(header(b"l", b"2")) + END
    (f, body), (link, _) = parse(data)[0]
    assert f.path.endswith(b"/file.txt") and body == b"paxdata" and f.size == 7
    assert (f.mtime_ns, f.uid, f.gid, f.uname) == (1_234_567_890_123_456_789, 70000, 80000, b"bob")
    assert f.xattrs == [(b"user.foo", b"later wins"), (b"trusted.t", b"v=\nv"), (b"user.b=z", b"hello")]
    assert (link.mtime_ns, link.linkname) == (-1_500_000_000, b"L" * 300)


def test_global_pax_header():
    data = pax([(b"uid", b"42"), (b"SCHILY.xattr.user.g", b"G")], b"g") + \
        member(header(b"one", uid=1)) + pax([(b"uid", b"")]) + member(header(b"two", uid=7)) + \
        pax([(b"uid", b"9")]) + member(header(b"three")) + END
    (one, _), (two, _), (three, _) = parse(data)[0]
    assert (one.uid, two.uid, three.uid) == (42, 7, 9)     # an empty value unsets the global one
    assert one.xattrs == two.xattrs == three.xattrs == [(b"user.g", b"G")]
    assert one.header_offset == 1024        # the global header is not part of the entry
    fails(pax([(b"path", b"x")], b"g") + member(header(b"f")) + END, "global", "'path'")


def test_gnu_long_names_and_links():
    long = b"d/" + b"x" * 200
    data = member(header(b"././@LongLink", b"L", len(long) + 1), long + b"\0") + \
        member(header(b"././@LongLink", b"K", 301), b"t" * 200 + b"/" + b"u" * 99 + b"\0") + \
        member(header(long[:100], b"1", linkname=b"t" * 100)) + END
    (h, _), = parse(data)[0]
    assert (h.path, h.kind, h.linkname, h.link_path, h.header_offset) == \
        (long, HARDLINK, b"t" * 200 + b"/" + b"u" * 99, b"t" * 200 + b"/" + b"u" * 99, 0)


def test_prefix_and_star_prefix():
    # star: a 130-byte prefix, then atime and ctime, and "tar\0" at the end of the block
    star_prefix = b"star".ljust(130, b"\0") + b"1" * 25
    data = member(header(b"name", prefix=b"pre/fix")) + \
        member(header(b"name", prefix=star_prefix, tail=bytes(8) + b"tar\0")) + \
        member(header(b"name", prefix=b"ends/in/slash/")) + END
    (a, _), (b, _), (c, _) = parse(data)[0]
    assert (a.path, b.path, c.path) == (b"pre/fix/name", b"star/name", b"ends/in/slash/name")


def test_hard_link_targets():
    data = member(header(b"t", size=2), b"tt") + member(header(b"sub/h2", b"1", linkname=b"./t")) + \
        member(header(b"h3", b"1", linkname=b"missing")) + END
    (_t, _), (h2, _), (h3, _) = parse(data)[0]
    assert h2.link_path == b"t"
    # a target that does not exist is the tree builder's to refuse: the reader cannot know yet
    assert h3.link_path == b"missing"
    fails(member(header(b"h", b"1")) + END, "'h'", "hard link without a target")


def test_unsupported_types_fail():
    for flag in (b"M", b"N", b"Z"):
        fails(member(header(b"ok")) + member(header(b"odd", flag)) + END, "'odd'", "at byte 512",
              "unsupported entry type")


def test_volume_label_and_dumpdir(tmp_path, src):
    data = member(header(b"my label", b"V")) + member(header(b"d", b"D", 10), b"Yfile\0\0\0\0\0") + \
        member(header(b"d/file", size=1), b"z") + END
    entries, reader = parse(data)
    assert reader.volume_label == b"my label"
    assert [(e.path, e.kind, d) for e, d in entries] == [(b"d", DIR, b"Yfile\0\0\0\0\0"),
                                                        (b"d/file", REG, b"z")]
    # GNU tar's own: --label and --listed-incremental (D entries)
    tar = tmp_path / "inc.tar"
    subprocess.run(["tar", "--format=gnu", "-V", "vol1", f"--listed-incremental={tmp_path}/snar",
                    "-cf", str(tar), "-C", str(src), "basic"], check=True)
    entries, reader = read_all(tar)
    assert reader.volume_label == b"vol1"
    check_against(entries, src, ("basic",), mtime="s", xattrs=False)


def test_name_too_long_for_erofs():
    ok = b"a/" + b"n" * 255
    data = pax([(b"path", ok)]) + member(header(b"x")) + END
    assert parse(data)[0][0][0].path == ok
    data = member(header(b"ok")) + pax([(b"path", b"a/" + b"n" * 256)]) + member(header(b"x")) + END
    fails(data, "at byte 512", "longer than 255")


@pytest.mark.parametrize("name,want", [
    (b"/abs/f", b"abs/f"), (b"./x/../y", b"y"), (b"a//b///c", b"a/b/c"), (b".", b""),
    (b"./", b""), (b"/", b""), (b"../x", b"x"), (b"a/b/..", b"a"), (b"d/", b"d"), (b"a/./b", b"a/b"),
])
def test_normalise_path(name, want):
    assert normalise_path(name) == want


def test_end_of_archive_and_trailing_data():
    one = member(header(b"a", size=1), b"a")
    # a lone zero block between entries is skipped
    entries, r = parse(one + bytes(512) + member(header(b"b")) + END)
    assert [e.path for e, _ in entries] == [b"a", b"b"] and r.end_offset == 2048
    # what follows the marker is read and reported
    _, r = parse(one + END + bytes(9216))
    assert (r.end_offset, r.trailing_bytes, r.trailing_data) == (1024, 9216, False)
    _, r = parse(one + END + member(header(b"second archive")))
    assert (r.trailing_bytes, r.trailing_data) == (512, True)
    # one zero block, then the end of the input
    assert [e.path for e, _ in parse(one + bytes(512))[0]] == [b"a"]
    # no marker at all: what a truncated stream looks like
    fails(one, "at byte 1024", "end-of-archive")
    assert [e.path for e, _ in parse(one, require_end_marker=False)[0]] == [b"a"]
    fails(pax([(b"path", b"p")]) + END, "not followed by an entry")


def test_truncation_anywhere_fails(posix_tar):
    raw = posix_tar.read_bytes()
    entries = read_all(posix_tar)[0]
    cuts = set()
    for e, _ in entries:
        cuts.update({e.header_offset + 1, e.header_offset + 511, e.data_offset + 1,
                     e.data_offset + e.payload + 1 if e.payload % 512 else e.data_offset + 1})
        if e.header_offset != e.data_offset - 512:     # inside PAX/long-name headers
            cuts.add(e.header_offset + 700)
    end = max(e.data_offset + e.payload for e, _ in entries)
    cuts.add(end + -end % 512)                          # right before the end marker
    for cut in sorted(c for c in cuts if c < len(raw) - 1024):
        err = fails(raw[:cut])
        assert err.offset is not None and err.offset <= cut
    # the same through a pipe (no seeking while skipping)
    cut = entries[-1][0].data_offset + 3
    with subprocess.Popen(["head", "-c", str(cut), str(posix_tar)], stdout=subprocess.PIPE) as proc:
        with open_input(proc.stdout) as inp, pytest.raises(TarError, match="ends inside"):
            for _ in TarReader(inp):
                pass


def test_truncated_seekable_file_detected_when_skipping(posix_tar, tmp_path):
    raw = posix_tar.read_bytes()
    big = next(e for e, _ in read_all(posix_tar)[0] if e.payload > 100_000)
    (tmp_path / "cut.tar").write_bytes(raw[:big.data_offset + 5000])
    with open_input(tmp_path / "cut.tar") as inp, pytest.raises(TarError) as info:
        for _ in TarReader(inp):
            pass
    assert big.path.decode() in str(info.value) and f"at byte {big.header_offset}" in str(info.value)


def test_sparse_map_errors():
    def sparse(records, payload):
        return pax(records) + member(header(b"GNUSparseFile.1/s", size=len(payload)), payload) + END
    ok = sparse([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", b"10,3,90,2")], b"abcde")
    (e, body), = parse(ok)[0]
    assert (e.path, e.size, e.sparse) == (b"GNUSparseFile.1/s", 100, [(10, 3), (90, 2)])
    assert body == bytes(10) + b"abc" + bytes(77) + b"de" + bytes(8)
    fails(sparse([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", b"10,3,90")], b"abc"), "odd")
    fails(sparse([(b"GNU.sparse.size", b"50"), (b"GNU.sparse.map", b"10,3,90,2")], b"abcde"), "past")
    fails(sparse([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", b"10,3,11,2")], b"abcde"), "overlaps")
    fails(sparse([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", b"10,3")], b"abcde"), "different")
    fails(sparse([(b"GNU.sparse.map", b"10,3")], b"abc"), "GNU.sparse.size")
    ten = b"1\n4\n3\n".ljust(512, b"\0") + b"xyz"
    (e, body), = parse(sparse([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                               (b"GNU.sparse.name", b"real"), (b"GNU.sparse.realsize", b"9")],
                              ten))[0]
    assert (e.path, body, e.payload) == (b"real", b"\0\0\0\0xyz\0\0", 3)
    fails(sparse([(b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0"),
                  (b"GNU.sparse.realsize", b"9")], ten), "version")


def test_acl_text_forms():
    ids = {("user", "alice"): 1001, ("group", "staff"): 50}
    resolve = lambda kind, name: ids.get((kind, name))      # noqa: E731
    want = acl.encode_posix_acl([(acl.ACL_USER_OBJ, 6, acl.ACL_UNDEFINED_ID), (acl.ACL_USER, 7, 1000),
                                 (acl.ACL_USER, 6, 1001), (acl.ACL_GROUP_OBJ, 4, acl.ACL_UNDEFINED_ID),
                                 (acl.ACL_GROUP, 5, 50), (acl.ACL_MASK, 7, acl.ACL_UNDEFINED_ID),
                                 (acl.ACL_OTHER, 0, acl.ACL_UNDEFINED_ID)])
    forms = [
        b"user::rw-,group::r--,other::---,user:alice:rw-:1001,user:1000:rwx:1000,"
        b"group:staff:r-x:50,mask::rwx",
        b"user::rw-\nuser:1000:rwx\nuser:alice:rw-\t#effective:rw-\ngroup::r--\n"
        b"group:staff:r-x\nmask::rwx\nother::---\n",
        b"u::rw,u:alice:rw,u:1000:rwx,g::r,g:staff:rx,m:rwx,o::",
    ]
    for text in forms:
        assert acl.encode_posix_acl(acl_from_text(text, resolve)) == want, text
    # kernel order: by tag, then by id (not by permission)
    assert want.index((1000).to_bytes(4, "little")) < want.index((1001).to_bytes(4, "little"))
    for bad, word in [(b"user::rw-,group::r--,other::r--,user:bob:r--", "no usable user id"),
                      (b"user::rw-,group::r--,other::r--,user:7:r--", "no mask"),
                      (b"user::rw-,group::r--", "other::"),
                      (b"user::rwz,group::r--,other::r--", "permissions"),
                      (b"user::rw-,user::r--,group::r--,other::r--", "user::"),
                      (b"world::rwx", "unknown")]:
        with pytest.raises(ValueError, match=word):
            acl_from_text(bad, resolve)


def test_acl_records_in_a_tar():
    text = b"user::rwx,group::r--,other::r--,user:x:rw-:5,mask::rw-"
    data = pax([(b"SCHILY.acl.access", text), (b"SCHILY.xattr.user.k", b"v")]) + \
        member(header(b"f", mode=0o4644)) + \
        pax([(b"SCHILY.acl.access", b"user::rw-,group::r--,other::---")]) + member(header(b"minimal")) + \
        pax([(b"SCHILY.acl.access", b"user::rw-,user:x:rw-"),
             (b"SCHILY.xattr.system.posix_acl_access", b"RAW")]) + \
        member(header(b"raw wins")) + END
    (f, _), (minimal, _), (raw, _) = parse(data)[0]
    assert f.mode == stat.S_IFREG | 0o4764          # the group class shows the mask
    assert [n for n, _ in f.xattrs] == [b"system.posix_acl_access", b"user.k"]
    assert (minimal.mode & 0o777, minimal.xattrs) == (0o640, [])
    assert raw.xattrs == [(b"system.posix_acl_access", b"RAW")]
    fails(pax([(b"SCHILY.acl.access", b"user::rw-,user:5:rw-")]) + member(header(b"bad acl")) + END,
          "'bad acl'", "at byte 0", "needs exactly one")
    fails(pax([(b"SCHILY.acl.access", b"user::rw-,user:nosuchuser-here:rw-")]) + member(header(b"who")) + END,
          "'who'", "no usable user id")
    fails(pax([(b"SCHILY.acl.ace", b"owner@:rw-p--aARWcCos:-------:allow")]) + member(header(b"n")) + END,
          "NFSv4")
    fails(pax([(b"LIBARCHIVE.xattr.user.x", b"!!!")]) + member(header(b"b64")) + END, "base64")


def test_chunks_only_for_the_current_entry():
    data = member(header(b"a", size=3), b"abc") + member(header(b"b", size=3), b"def") + END
    reader = TarReader(io.BytesIO(data))
    it = iter(reader)
    a = next(it)
    b = next(it)
    with pytest.raises(ValueError):
        list(reader.chunks(a))
    assert list(reader.chunks(b)) == [(0, b"def")]
    with pytest.raises(ValueError):
        list(reader.chunks(b))


def test_headerball_has_no_file_data():
    # a headerball keeps the headers (and PAX payloads) but drops the data of files and links
    data = (header(b"f", size=5000) + header(b"h", b"1", size=5000, linkname=b"f")
            + pax([(b"uid", b"77")]) + header(b"g", size=10) + header(b"d/", b"5") + END)
    entries, _ = parse(data, headerball=True)
    assert [(e.path, e.kind, e.size, e.payload, d) for e, d in entries] == [
        (b"f", REG, 5000, 0, b""), (b"h", HARDLINK, 0, 0, b""), (b"g", REG, 10, 0, b""),
        (b"d", DIR, 0, 0, b"")]
    assert entries[2][0].uid == 77
    # the same blocks read as a normal tar lose sync: f's "data" is h's header and more
    with pytest.raises(TarError):
        parse(data)
    sparse = pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                  (b"GNU.sparse.realsize", b"10")]) + header(b"s", size=512) + END
    fails(sparse, "'s'", "sparse entry in a headerball", headerball=True)
