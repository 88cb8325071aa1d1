"""The tar reader's fast paths give what its general code gives, on the inputs they accept, and
hand everything else to it (pinned here since the two are easy to let drift)."""
import io
import random
import tarfile

import pytest

from mkerofs.writer import tarstream as ts


def _record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _both(payload: bytes):
    """(what _parse_pax gives, what _parse_pax_records alone gives): records or the error."""
    out = []
    for parse in (ts._parse_pax, ts._parse_pax_records):
        records = {}
        try:
            parse(payload, records)
        except ValueError as err:
            out.append(("error", str(err)))
        else:
            out.append(list(records.items()))
    return out


@pytest.mark.parametrize("payload", [
    b"", b"\n", _record(b"path", b"a\nb"), _record(b"path", b"x") + b"\0" * 20,
    _record(b"atime", b"1.5") + _record(b"ctime", b"2") + _record(b"path", b"p"),
    _record(b"GNU.sparse.offset", b"0") + _record(b"GNU.sparse.numbytes", b"5") * 2,
    b"0" * 21 + b"9 a=b\n", b"09 path=\n", b" 9 path=x\n", b"8 a=b=c\n", b"7 =abc\n",
])
def test_simple_pax_agrees(payload):
    fast, slow = _both(payload)
    assert fast == slow


def test_simple_pax_agrees_on_random_payloads():
    rng = random.Random(15)
    alphabet = b"0123456789 =\n\0ab"
    for _ in range(3000):
        parts = [_record(b"k" * rng.randint(0, 3), bytes(rng.choices(alphabet, k=rng.randint(0, 6))))
                 for _ in range(rng.randint(0, 3))]
        payload = bytearray(b"".join(parts))
        for _ in range(rng.randint(0, 2)):
            if payload:
                payload[rng.randrange(len(payload))] = rng.choice(alphabet)
        fast, slow = _both(bytes(payload))
        assert fast == slow, payload
    assert ts._simple_pax(_record(b"atime", b"1") + _record(b"path", b"p")) is not None


def test_ignored_keys_are_dropped():
    records = {}
    ts._parse_pax(_record(b"atime", b"1.5") + _record(b"ctime", b"2") + _record(b"mtime", b"3"),
                  records)
    assert records == {b"mtime": b"3"}


@pytest.mark.parametrize("field", [
    b"0000644\0", b"   644 \0", b"644\0\0\0\0\0", b"\0" * 8, b" " * 8, b"64 4\0\0\0\0", b"6\0" + b"4" * 6,
    b"0o644\0\0\0", b"6_44\0\0\0\0", b"+644\0\0\0\0", b"0008\0\0\0\0", b"\x80" + bytes(6) + b"\x05",
])
def test_plain_octal_agrees(field):
    fast = ts._plain_octal(field)
    try:
        slow = ts._header_number(field)
    except ValueError:
        slow = "error"
    assert fast is None or fast == slow


@pytest.mark.parametrize("name", [
    b"", b"a", b"a/b", b"a/b/", b"/a", b"./a", b"a//b", b"a/./b", b"a/../b", b"..", b".a/b",
    b"a/.b", b"a\0b", b"x" * 255, b"x" * 256, b"d/" + b"x" * 255, b"d/" + b"x" * 256,
])
def test_normalise_path_fast_path(name):
    def general(name):
        parts = name.split(b"/")
        out = []
        for part in parts:
            if part == b".." and out:
                out.pop()
            elif part not in (b"", b".", b".."):
                out.append(part)
        if any(len(p) > 255 for p in out) or b"\0" in name:
            return "error"
        return b"/".join(out)
    try:
        got = ts.normalise_path(name)
    except ValueError:
        got = "error"
    assert got == general(name)


@pytest.mark.parametrize("payload", [
    _record(b"atime", b"1795940613.148940629") + _record(b"ctime", b"1795940613.125391844"),
    _record(b"ctime", b"1795940613.125391844"),
    _record(b"atime", b"999999999.148940629"),                 # 29 bytes: the general path
    _record(b"atime", b"1795940613.148940629") + _record(b"mtime", b"1795940613.1"),
    b"30 atime=1795940613.148940629\n31 ctime=1795940613.125391844\n",   # a wrong length
    b"31 atime=1795940613.148940629\n30 ctime=1795940613.12539184\n\n",
])
def test_gnu_times_fast_path_agrees(payload):
    fast, slow = _both(payload)
    assert fast == slow


def test_gnu_times_fast_path_is_taken():
    payload = _record(b"atime", b"1795940613.148940629") + _record(b"ctime", b"1.5")
    assert ts._GNU_TIMES_ONLY.fullmatch(payload) is None      # (not GNU tar's 10-digit seconds)
    payload = _record(b"atime", b"1795940613.148940629")
    assert len(payload) == 30 and ts._GNU_TIMES_ONLY.fullmatch(payload)
    # GNU tar drops a fraction's trailing zeros: every shorter fraction, and none
    for frac in (b".14894062", b".1489406", b".5", b""):
        payload = _record(b"atime", b"1795940613.148940629") + _record(b"ctime", b"1795940613" + frac)
        assert ts._GNU_TIMES_ONLY.fullmatch(payload), payload
        assert _both(payload) == [[], []]
    # a dot without digits goes the general way; so does a length one off, which it refuses
    assert ts._GNU_TIMES_ONLY.fullmatch(b"21 atime=1795940613.\n") is None
    for payload in (b"21 atime=1795940613\n", b"22 atime=1795940613.12\n", b"19 ctime=1795940613\n"):
        assert ts._GNU_TIMES_ONLY.fullmatch(payload) is None
        assert _both(payload)[0][0] == "error"


def _tar_of(sizes: list[int]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([i % 251 + 1]) * size))
    return out.getvalue()


def test_small_data_is_what_chunks_gives():
    sizes = [0, 1, 511, 512, 513, 65535, 65536, 65537, 200_000, 3]
    raw = _tar_of(sizes)
    got = []
    reader = ts.TarReader(io.BytesIO(raw))
    for entry in reader:
        data = reader.small_data(entry)
        if data is None:
            assert entry.payload > 65536
            data = reader.read(entry)
        got.append(data)
    want = [bytes([i % 251 + 1]) * size for i, size in enumerate(sizes)]
    assert got == want


def test_small_data_reads_once_and_only_the_current_entry():
    raw = _tar_of([10, 20])
    reader = ts.TarReader(io.BytesIO(raw))
    first = next(iter(reader))
    assert reader.small_data(first) == bytes([1]) * 10
    with pytest.raises(ValueError):
        reader.small_data(first)


def test_small_data_of_a_truncated_entry():
    raw = _tar_of([1000])
    reader = ts.TarReader(io.BytesIO(raw[:512 + 100]))
    entry = next(iter(reader))
    with pytest.raises(ts.TarError, match="ends inside"):
        reader.small_data(entry)


def _tar_with_size_field(field: bytes) -> bytes:
    """A ustar archive of one 10-byte file "f" whose size field is `field` (checksum redone)."""
    info = tarfile.TarInfo("f")
    info.size = 10
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    header[124:136] = field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"x" * 10 + bytes(502) + bytes(1024)


@pytest.mark.parametrize("field, size", [
    (b"00000000012\0", 10), (b"00000000012 ", 10), (b"000000000012", 10), (b"12\0" + bytes(9), 10),
    (b"         12 ", 10), (b" 0000000012\0", 10), (b"00000000019\0", None),
    (b"0000000001_2", None), (b"0o0000000012", None), (b"+0000000012\0", None),
    (b"0000000 0012", None), (bytes(12), None),
])
def test_size_field_of_the_quick_path(field, size):
    """The entry header's size as the quick path reads it (digits, then NULs or spaces, read at
    once) and as the general code does (the rest): the same size, or the same refusal."""
    reader = ts.TarReader(io.BytesIO(_tar_with_size_field(field)))
    if size is None:
        with pytest.raises(ts.TarError):
            list(reader)
        return
    entries = [(e.path, e.size, reader.read(e)) for e in reader]
    assert entries == [(b"f", size, b"x" * 10)]
