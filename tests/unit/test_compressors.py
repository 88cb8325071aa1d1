"""Tests for mkerofs.codecs: per-pcluster compression and decoding as EROFS needs them, one codec
object per algorithm, and the native libraries behind them (system ones and the fallbacks)."""

import os
import random
import struct
import subprocess
import sys
import threading
import time

import pytest

from mkerofs.codecs import native, registry
from mkerofs.codecs.base import Codec
from mkerofs.codecs.deflate import Deflate
from mkerofs.codecs.registry import CODECS, codec_for, decoder
from mkerofs.codecs.spec import CompressorSpec, parse_compressor_spec
from mkerofs.errors import CompressorUnavailable

AVAILABLE = set(registry.available())

# (spec text, id) for every algorithm at several levels
ALGOS = [
    "lz4",
    "lz4hc,level=1", "lz4hc", "lz4hc,level=12",
    "lzma,level=0", "lzma", "lzma,level=109",
    "deflate,level=0", "deflate", "deflate,level=9",
    "libdeflate", "libdeflate,level=12",
    "zstd,level=-5", "zstd,level=1", "zstd", "zstd,level=19",
]
DESTS = [4096, 16384, 65536]


def _needs(name):
    return pytest.mark.skipif(name not in AVAILABLE, reason=f"{name} backend missing")


def _comp(spec_text, pcluster=65536, block=4096):
    spec = parse_compressor_spec(spec_text)[0]
    if spec.name not in AVAILABLE:
        pytest.skip(f"{spec.name} backend missing")
    return codec_for(spec, block, pcluster)


def _text(rng, n):
    words = [b"erofs", b"pcluster", b"inode", b"the", b"of", b"compress", b"block",
             b"kernel", b"superblock", b"data", b"\n", b"0123", b"read-only", b"image"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _data(kind, n, seed=1):
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(n)
    if kind == "zeros":
        return bytes(n)
    if kind == "text":
        return _text(rng, n)
    # mixed: alternate 3 KiB random, 5 KiB text, 2 KiB zeros, some 0xff runs
    out = bytearray()
    while len(out) < n:
        out += rng.randbytes(3072) + _text(rng, 5120) + bytes(2048) + b"\xff" * rng.randrange(1, 600)
    return bytes(out[:n])


def _pad_to_block(out, block):
    """Right-align like the image writer: zero padding in front, block multiple."""
    plen = -(-len(out) // block) * block
    return bytes(plen - len(out)) + out


# ---------------------------------------------------------------- destsize
@pytest.mark.parametrize("spec_text", ALGOS)
@pytest.mark.parametrize("kind", ["random", "zeros", "text", "mixed"])
@pytest.mark.parametrize("dest", DESTS)
def test_destsize_roundtrip(spec_text, kind, dest):
    c = _comp(spec_text)
    slow = any(s in spec_text for s in ("lzma", "level=12", "level=19", "level=9"))
    n = dest * (6 if slow else 24)
    src = _data(kind, n)
    used, out = c.compress_destsize(src, dest)

    assert isinstance(out, bytes)
    assert 0 < len(out) <= dest
    assert 0 < used <= len(src)
    assert out[0] != 0                       # a leading 0 would be taken for padding
    assert c.decode(out, used) == src[:used]
    # as stored in the image: right-aligned in whole blocks after zero padding
    assert c.decode(_pad_to_block(out, 4096), used) == src[:used]

    if kind == "random" or spec_text == "deflate,level=0":
        # incompressible (or level 0 = stored blocks): about dest bytes of input
        assert dest * 0.95 <= used <= dest + 64
    elif kind == "zeros":
        factor = 10 if spec_text.startswith("lz4") else 50
        assert used == len(src) or used > dest * factor
    elif kind == "text":
        assert used == len(src) or used > dest * 2
    else:
        assert used == len(src) or used > dest * 1.1
    if used < len(src):
        # the pcluster must really be filled, not just "something that fits"
        assert len(out) >= dest - max(64, dest // 64), (used, len(out))


@pytest.mark.parametrize("spec_text", ALGOS)
def test_decoder_is_exact(spec_text):
    """Like the kernel, decoding must produce exactly the extent length."""
    c = _comp(spec_text)
    src = _data("mixed", 50000, seed=7)
    used, out = c.compress_destsize(src, 4096)
    assert c.decode(out, used) == src[:used]
    with pytest.raises(ValueError):
        c.decode(out, used + 1)
    with pytest.raises(ValueError):
        c.decode(out, used - 1)
    with pytest.raises(ValueError):
        c.decode(out[:-1], used)


@pytest.mark.parametrize("spec_text", ALGOS)
def test_whole_buffer_compress(spec_text):
    c = _comp(spec_text)
    for kind, n in (("text", 70000), ("random", 5000), ("zeros", 100000), ("mixed", 1)):
        src = _data(kind, n, seed=3)
        out = c.compress(src)
        assert out and out[0] != 0
        assert c.decode(out, len(src)) == src
    assert c.compress(b"") == b""


@pytest.mark.parametrize("name", sorted(CODECS))
def test_buffer_types_give_same_result(name):
    c = _comp(name)
    raw = _data("mixed", 120000, seed=5)
    base = bytearray(b"xyz" + raw)
    variants = [raw, bytearray(raw), memoryview(raw), memoryview(bytes(base))[3:],
                memoryview(base)[3:]]
    results = {c.compress_destsize(v, 4096) for v in variants}
    assert len(results) == 1
    used, out = results.pop()
    assert c.decode(memoryview(out), used) == raw[:used]


@pytest.mark.parametrize("name", ["deflate", "libdeflate", "zstd"])
def test_search_is_deterministic_and_hint_only_affects_speed(name):
    c = _comp(name)
    srcs = [_data(k, 200000, seed=9) for k in ("text", "mixed", "random")]
    first = [c.compress_destsize(x, 4096) for x in srcs]
    # other calls in between must not change the result (no hidden state)
    assert [c.compress_destsize(x, 4096) for x in reversed(srcs)][::-1] == first
    for x, (used, out) in zip(srcs, first):
        for hint in (1, used, 3 * used, 10 ** 7):
            u2, o2 = c.compress_destsize(x, 4096, hint=hint)
            assert len(o2) <= 4096 and c.decode(o2, u2) == x[:u2]
            assert abs(u2 - used) <= used // 20 + 64       # same quality either way
            assert c.compress_destsize(x, 4096, hint=hint) == (u2, o2)


@pytest.mark.parametrize("name", ["lz4", "lz4hc", "zstd", "deflate"])
def test_decoded_size_capped_at_12mib(name):
    c = _comp(name, pcluster=1 << 20)
    src = bytes(16 << 20)
    used, out = c.compress_destsize(src, 1 << 20)
    assert used <= 12 << 20                  # kernel: decoded extent <= 12 MiB
    assert used > 4 << 20
    assert c.decode(out, used) == src[:used]


def test_tiny_and_empty_inputs():
    for name in AVAILABLE:
        c = _comp(name)
        assert c.compress_destsize(b"", 4096) == (0, b"")
        used, out = c.compress_destsize(b"A", 4096)
        assert used == 1 and c.decode(out, 1) == b"A"
    c = _comp("lz4")
    with pytest.raises(ValueError):
        c.compress_destsize(b"abc", (1 << 20) + 1)


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("name", ["deflate", "libdeflate"])
@pytest.mark.parametrize("dest", DESTS + [1 << 20])
def test_deflate_stored_blocks_never_start_with_zero(name, dest):
    import zlib
    c = _comp(name + ",level=0")
    src = _data("random", 300000, seed=11)
    # level 0 = stored blocks; more than 64 KiB starts with a non-final stored
    # block whose first byte is 0x00 - EROFS would skip it as zero padding
    assert zlib.compress(src, 0, -15)[0] == 0
    used, out = c.compress_destsize(src, dest)
    assert out[0] != 0
    if used > 65535:
        assert out[0] & 0x07 == 0                   # non-final stored block, pad bit set
    assert c.decode(out, used) == src[:used]
    assert c.decode(_pad_to_block(out, 4096), used) == src[:used]
    whole = c.compress(src)
    assert whole[0] != 0 and whole[0] & 0x07 == 0
    assert c.decode(whole, len(src)) == src


@_needs("deflate")
def test_deflate_is_raw_stream():
    import zlib
    c = _comp("deflate")
    src = _data("text", 30000)
    used, out = c.compress_destsize(src, 4096)
    d = zlib.decompressobj(-15)                     # raw: no zlib header/adler32
    assert d.decompress(out) == src[:used] and d.eof and not d.unused_data


@_needs("zstd")
@pytest.mark.parametrize("pcluster,dict_size", [(4096, 32768), (65536, 512 << 10),
                                                (1 << 20, 1 << 20)])
def test_zstd_frame_window_fits_cfgs(pcluster, dict_size):
    c = _comp("zstd", pcluster=pcluster)
    assert c.dict_size == dict_size
    rec = c.cfgs_record(pcluster // 4096, 12)
    assert rec == struct.pack("<HBB4x", 6, 0, dict_size.bit_length() - 1 - 10)
    for kind, n in (("text", 3 * dict_size), ("random", 3000), ("mixed", 2 * pcluster)):
        src = _data(kind, n)
        used, out = c.compress_destsize(src, pcluster)
        assert out[:4] == b"\x28\xb5\x2f\xfd"        # one zstd frame
        fhd = out[4]
        assert fhd & 0x03 == 0 and not fhd & 0x04     # no dictionary id, no checksum
        single = fhd & 0x20
        fcs_len = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fhd >> 6]
        assert fcs_len, "frame content size must be present"
        if single:
            window = int.from_bytes(out[5:5 + fcs_len], "little") + (256 if fcs_len == 2 else 0)
        else:
            wd = out[5]
            base = 1 << (10 + (wd >> 3))
            window = base + (base >> 3) * (wd & 7)
        assert window <= dict_size                     # kernel: windowlog from cfgs
        assert c.decode(out, used) == src[:used]


@_needs("lzma")
def test_microlzma_format_and_cfgs():
    c = _comp("lzma", pcluster=4096)
    assert c.dict_size == 32768                           # max(32K, 4 * pcluster)
    assert _comp("lzma", pcluster=1 << 20).dict_size == 4 << 20
    assert _comp("lzma,dictsize=64k").dict_size == 65536
    src = _data("text", 40000)
    used, out = c.compress_destsize(src, 4096)
    props = (c.pb * 5 + c.lp) * 9 + c.lc
    assert out[0] == (~props & 0xFF) == 0xA2              # negated lc/lp/pb byte
    assert c.cfgs_record(1, 12) == struct.pack("<HIH8x", 14, 32768, 0)
    c2 = _comp("lzma,lc=1,lp=3,pb=0")
    used, out = c2.compress_destsize(src, 4096)
    assert out[0] == ~((0 * 5 + 3) * 9 + 1) & 0xFF
    assert c2.decode(out, used) == src[:used]


def test_cfgs_records():
    lz4 = _comp("lz4")
    assert lz4.cfgs_record(16, 12) == struct.pack("<HHH10x", 14, 65535, 16)
    assert lz4.cfgs_record(1, 12) == b"\x0e\x00\xff\xff\x01\x00" + bytes(10)
    with pytest.raises(ValueError):
        lz4.cfgs_record(512, 12)                          # 2 MiB > 1 MiB pcluster
    dfl = _comp("deflate")
    assert dfl.cfgs_record(1, 12) == struct.pack("<HB5x", 6, 15)
    assert _comp("deflate,dictsize=4k").cfgs_record(1, 12) == struct.pack("<HB5x", 6, 12)
    assert _comp("libdeflate").cfgs_record(1, 12) == struct.pack("<HB5x", 6, 15)


def test_build_compr_cfgs():
    lz4 = _comp("lz4")
    assert registry.build_compr_cfgs([lz4], 1, 12) == (1, False, b"")
    algs, need, recs = registry.build_compr_cfgs([lz4], 16, 12)
    assert (algs, need) == (1, True) and recs == lz4.cfgs_record(16, 12)
    if "lzma" in AVAILABLE:
        a = _comp("lzma,dictsize=64k")
        b = _comp("lzma,level=9,dictsize=1m")
        algs, need, recs = registry.build_compr_cfgs([a, lz4, b], 1, 12)
        assert algs == 0b11 and need
        assert recs == lz4.cfgs_record(1, 12) + b.cfgs_record(1, 12)
        assert len(recs) == 32 and struct.unpack_from("<I", recs, 18)[0] == 1 << 20
    if "zstd" in AVAILABLE:
        algs, need, recs = registry.build_compr_cfgs([_comp("zstd"), _comp("deflate")], 1, 12)
        assert algs == 0b1100 and need and len(recs) == 16
        assert recs[:8] == _comp("deflate").cfgs_record(1, 12)


def test_algorithm_ids():
    ids = {n: _comp(n).algorithm_id for n in AVAILABLE}
    expect = {"lz4": 0, "lz4hc": 0, "lzma": 1, "deflate": 2, "libdeflate": 2, "zstd": 3}
    assert ids == {n: expect[n] for n in ids}
    for n in AVAILABLE:
        assert isinstance(_comp(n), Codec)


# ---------------------------------------------------------------- threads
@pytest.mark.parametrize("name", sorted(CODECS))
def test_shared_compressor_across_threads(name):
    c = _comp(name)
    inputs = [_data(k, 80000, seed=s) for s, k in enumerate(["text", "mixed", "random", "text"])]
    expect = [c.compress_destsize(x, 4096) for x in inputs] * 3
    got = [None] * len(expect)

    def work(i):
        for j in range(i, len(expect), 4):
            got[j] = c.compress_destsize(inputs[j % len(inputs)], 4096)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for (u, o), (u2, o2), x in zip(expect, got, inputs * 3):
        assert c.decode(o2, u2) == x[:u2]
        if name in ("lz4", "lz4hc", "lzma"):     # single-shot codecs: deterministic
            assert (u, o) == (u2, o2)


@pytest.mark.parametrize("spec_text,size", [
    ("lz4hc,level=12", 1 << 20), ("lzma", 256 << 10),
    ("zstd,level=19", 512 << 10), ("libdeflate,level=12", 512 << 10)])
def test_gil_released_during_native_call(spec_text, size):
    """A Python thread keeps running while one long C call is in progress."""
    c = _comp(spec_text)
    while True:
        src = _data("mixed", size)
        stamps = []
        stop = threading.Event()

        def ticker():
            while not stop.is_set():
                stamps.append(time.perf_counter())
                for _ in range(2000):
                    pass

        t = threading.Thread(target=ticker)
        t.start()
        time.sleep(0.02)
        t0 = time.perf_counter()
        c.compress(src)                              # one single native call
        t1 = time.perf_counter()
        stop.set()
        t.join()
        if t1 - t0 >= 0.15:
            break
        if size >= 64 << 20:
            pytest.skip("machine too fast to measure")
        size *= 4
    lo, hi = t0 + 0.3 * (t1 - t0), t0 + 0.7 * (t1 - t0)
    assert any(lo < s < hi for s in stamps)


# ---------------------------------------------------------------- -z parsing
@pytest.mark.parametrize("text,expect", [
    ("lz4", [CompressorSpec("lz4", None, None)]),
    ("lz4hc", [CompressorSpec("lz4hc", None, None)]),
    ("lz4hc,12", [CompressorSpec("lz4hc", 12, None)]),
    ("lz4hc,level=0", [CompressorSpec("lz4hc", 0, None)]),
    ("lz4hc,level=-1", [CompressorSpec("lz4hc", None, None)]),
    ("lzma,9", [CompressorSpec("lzma", 9, None)]),
    ("lzma,level=109,dictsize=8m", [CompressorSpec("lzma", 109, 8 << 20)]),
    ("lzma,dictsize=65536,level=3", [CompressorSpec("lzma", 3, 65536)]),
    ("lzma,dictsize=0", [CompressorSpec("lzma", None, None)]),
    ("lzma,lc=0,pb=0", [CompressorSpec("lzma", None, None, (("lc", 0), ("pb", 0)))]),
    ("deflate,level=9,dictsize=0x4000", [CompressorSpec("deflate", 9, 16384)]),
    ("deflate,dictsize=32K", [CompressorSpec("deflate", None, 32768)]),
    ("libdeflate,level=12", [CompressorSpec("libdeflate", 12, None)]),
    ("zstd,level=22,dictsize=1M", [CompressorSpec("zstd", 22, 1 << 20)]),
    ("zstd,level=-7", [CompressorSpec("zstd", -7, None)]),
    ("zstd,level=3,", [CompressorSpec("zstd", 3, None)]),
    ("lz4hc,level=9:lzma,level=6,dictsize=64k",
     [CompressorSpec("lz4hc", 9, None), CompressorSpec("lzma", 6, 65536)]),
    ("lz4::zstd", [CompressorSpec("lz4", None, None), CompressorSpec("zstd", None, None)]),
])
def test_parse_good(text, expect):
    assert parse_compressor_spec(text) == expect


@pytest.mark.parametrize("text,msg", [
    ("foo", "unknown compressor 'foo'"),
    ("lz4hc,level=13", "lz4hc level 13 out of range 0-12"),
    ("lz4hc,13", "lz4hc level 13 out of range 0-12"),
    ("lz4,level=1", "not supported for lz4"),
    ("lz4,dictsize=4k", "dictsize is not supported for lz4"),
    ("lz4hc,dictsize=4k", "dictsize is not supported for lz4hc"),
    ("libdeflate,dictsize=32k", "dictsize is not supported for libdeflate"),
    ("lzma,level=10", "lzma level 10 out of range 0-9,100-109"),
    ("lzma,level=110", "lzma level 110 out of range"),
    ("lzma,dictsize=16m", "lzma dictsize 16777216 out of range"),
    ("lzma,dictsize=2k", "lzma dictsize 2048 out of range"),
    ("lzma,lc=4,lp=1", "lc+lp <= 4"),
    ("deflate,level=10", "deflate level 10 out of range 0-9"),
    ("deflate,dictsize=64k", "deflate dictsize 65536 out of range"),
    ("libdeflate,level=13", "libdeflate level 13 out of range 0-12"),
    ("zstd,level=23", "zstd level 23 out of range"),
    ("zstd,dictsize=3000", "power of two"),
    ("zstd,dictsize=2m", "power of two"),
    ("lz4hc,level=abc", "invalid compression level 'abc'"),
    ("lz4hc,level=", "invalid compression level"),
    ("lz4hc,9x", "invalid compression level '9x'"),
    ("lzma,dictsize=12q", "invalid dictsize"),
    ("lzma,dictsize=", "invalid dictsize"),
    ("lz4hc,foo=1", "invalid compression option 'foo=1' for lz4hc"),
    ("lz4hc,fast", "invalid compression option 'fast'"),
    ("zstd,lc=1", "invalid compression option 'lc=1' for zstd"),
    ("", "empty compressor specification"),
    (":", "empty compressor specification"),
    ("LZ4", "unknown compressor 'LZ4'"),
    (":".join(["lz4"] * 65), "too many"),
])
def test_parse_bad(text, msg):
    with pytest.raises(ValueError) as ei:
        parse_compressor_spec(text)
    assert msg in str(ei.value)


def test_default_levels_and_dicts():
    assert [CODECS[n].default_level for n in ("lz4", "lz4hc", "lzma", "deflate", "libdeflate", "zstd")] \
        == [None, 9, 6, 1, 1, 3]
    assert _comp("lz4hc").level == 9
    assert _comp("deflate").level == 1 and _comp("deflate").dict_size == 32768
    if "zstd" in AVAILABLE:
        assert _comp("zstd").level == 3
        assert _comp("zstd", pcluster=4096).dict_size == 32768
        assert _comp("zstd,dictsize=64k", pcluster=4096).dict_size == 65536
    with pytest.raises(ValueError):
        codec_for(CompressorSpec("lz4", None, None), 4096, 6000)
    with pytest.raises(ValueError):
        codec_for(CompressorSpec("lz4", None, None), 4096, 2 << 20)


# ---------------------------------------------------------------- backends
def _roundtrip_all_levels(names):
    src = _data("mixed", 200000, seed=21)
    for name in names:
        c = _comp(name)
        used, out = c.compress_destsize(src, 8192)
        assert len(out) <= 8192 and used > 8192 and c.decode(out, used) == src[:used]


@pytest.fixture
def bundled(monkeypatch):
    """The fallbacks (MKEROFS_NATIVE=bundled) for the codecs made in the test."""
    monkeypatch.setenv("MKEROFS_NATIVE", "bundled")
    native.reset()
    yield
    monkeypatch.delenv("MKEROFS_NATIVE")
    native.reset()


def _system_and_bundled(spec_text):
    system = _comp(spec_text)
    os.environ["MKEROFS_NATIVE"] = "bundled"
    native.reset()
    try:
        fallback = _comp(spec_text)
    finally:
        del os.environ["MKEROFS_NATIVE"]
        native.reset()
    return system, fallback


@pytest.mark.parametrize("spec_text", ["lz4", "lz4hc,level=12", "zstd", "zstd,level=-3"])
def test_bundled_fallbacks(spec_text):
    """python-lz4's bundled LZ4 and the zstandard package serve the same API; LZ4 of the same
    version gives the same bytes, and each decodes what the other wrote."""
    system, fallback = _system_and_bundled(spec_text)
    assert not system.library().fallback and fallback.library().fallback
    src = _data("mixed", 300000, seed=23)
    for dest in (4096, 65536):
        got = fallback.compress_destsize(src, dest)
        want = system.compress_destsize(src, dest)
        if system.library().version == fallback.library().version:
            assert got == want
        for enc, dec in ((got, system), (want, fallback)):
            used, out = enc
            assert dec.decode(out, used) == src[:used]
            assert dec.decode(out, used, partial=True) == src[:used]
            assert dec.decode(out, used // 3, partial=True) == src[:used // 3]
            with pytest.raises(ValueError):
                dec.decode(out, used + 1)
            with pytest.raises(ValueError):
                dec.decode(out, used - 1)


def test_bundled_mode_names_what_serves(bundled):
    served = registry.report()
    assert "python-lz4" in served["lz4"] and "fallback" in served["lz4"]
    assert served["zstd"].startswith("zstandard") and "fallback" in served["zstd"]
    assert served["libdeflate"].startswith("zlib")
    assert _comp("deflate").backend == "zlib"


def test_bad_native_mode(monkeypatch):
    monkeypatch.setenv("MKEROFS_NATIVE", "nonsense")
    native.reset()
    try:
        with pytest.raises(CompressorUnavailable, match="MKEROFS_NATIVE"):
            codec_for(CompressorSpec("lz4"), 4096, 4096)
    finally:
        monkeypatch.delenv("MKEROFS_NATIVE")
        native.reset()


def test_libdeflate_falls_back_to_zlib(monkeypatch, bundled):
    c = _comp("libdeflate,level=12")
    assert c.level == 12 and c._zlevel == 9 and c.backend == "zlib"
    assert _comp("deflate").backend == "zlib"
    _roundtrip_all_levels(["libdeflate,level=12", "libdeflate"])
    src = _data("text", 50000)
    assert c.decode(c.compress(src), len(src)) == src


@pytest.mark.parametrize("backend", ["zlib", "libdeflate"])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_deflate_backends(backend, level):
    if backend == "libdeflate" and "libdeflate.so" not in registry.report()["libdeflate"]:
        pytest.skip("no libdeflate.so.0")
    c = Deflate(level, backend=backend).require()
    assert c.backend == backend
    src = _data("mixed", 300000, seed=level)
    for dest in (4096, 65536):
        used, out = c.compress_destsize(src, dest)
        assert out[0] != 0 and len(out) <= dest
        assert used == len(src) or len(out) >= dest - max(64, dest // 64)
        assert c.decode(out, used) == src[:used]
    # a window below 32 KiB is zlib-only (libdeflate cannot shrink its window)
    small = Deflate(level, dict_size=4096).require()
    assert small.backend == "zlib" and small.windowbits == 12
    used, out = small.compress_destsize(src, 4096)
    assert small.decode(out, used) == src[:used]
    if backend == "libdeflate":
        with pytest.raises(CompressorUnavailable):
            Deflate(level, dict_size=4096, backend="libdeflate").require()


def _missing(monkeypatch, which, message):
    def fail():
        raise CompressorUnavailable(message)
    monkeypatch.setitem(native._BINDERS, which, fail)
    native.reset()


@pytest.fixture
def no_liblzma(monkeypatch):
    _missing(monkeypatch, "lzma", "liblzma.so.5 not found")
    yield
    monkeypatch.undo()
    native.reset()


def test_unavailable_library_message(no_liblzma):
    with pytest.raises(CompressorUnavailable, match="^cannot compress with lzma: liblzma.so.5 "
                                                    "not found$"):
        codec_for(CompressorSpec("lzma"), 4096, 4096)
    with pytest.raises(CompressorUnavailable, match="^cannot decode lzma: liblzma.so.5 not found"):
        decoder(1, 1 << 16).decode(b"\xa2abc", 10)
    assert "lzma" not in registry.available()
    assert registry.report()["lzma"].startswith("unavailable")


def test_too_old_library_is_refused(monkeypatch):
    monkeypatch.setattr(native, "LZ4_MIN_VERSION", 99999)
    native.reset()
    try:
        with pytest.raises(CompressorUnavailable, match=r"cannot compress with lz4hc: .*1\.9\.4"
                                                        r" is too old \(need LZ4 >= 1\.9\)"):
            codec_for(CompressorSpec("lz4hc"), 4096, 4096)
    finally:
        monkeypatch.undo()
        native.reset()


def test_codecs_bind_nothing_until_used():
    """Reader-side codecs are made for every algorithm of an image: making one loads nothing."""
    for alg in registry.ALGORITHM_NAMES:
        assert decoder(alg)._lib is None


# ---------------------------------------------------------------- partial decoding
@pytest.mark.parametrize("spec_text", ["lz4", "lz4hc", "lzma", "deflate", "libdeflate", "zstd"])
def test_partial_decode(spec_text):
    """A partial reference (dedupe) takes a prefix of what a pcluster decodes to: every codec
    decodes any prefix with partial=True, and refuses a prefix without it."""
    c = _comp(spec_text)
    src = _data("mixed", 200000, seed=31)
    used, out = c.compress_destsize(src, 16384)
    stored = _pad_to_block(out, 4096)
    # the reader's codec: made from the algorithm id and the image's window
    d = decoder(c.algorithm_id, c.dict_size)
    for n in (1, 100, used // 2, used - 1, used):
        assert d.decode(stored, n, partial=True) == src[:n]
        d.check(stored, n, partial=True)
    with pytest.raises(ValueError):
        d.decode(stored, used // 2)
    with pytest.raises(ValueError):
        d.check(stored, used // 2)
    with pytest.raises(ValueError):
        d.decode(stored, used + 1, partial=True)        # more than the stream holds
    assert d.decode(stored, used) == src[:used]


@pytest.mark.parametrize("alg", sorted(registry.ALGORITHM_NAMES))
def test_decoder_rejects_all_zero_pcluster(alg):
    with pytest.raises(ValueError, match="all zeros"):
        decoder(alg).decode(bytes(4096), 100)


# ---------------------------------------------------------------- images through the fallbacks
def _tree(root):
    root.mkdir()
    for i, kind in enumerate(["text", "mixed", "random", "zeros", "text", "mixed"]):
        (root / f"f{i}").write_bytes(_data(kind, 5000 + 70000 * i, seed=i))
    return root


def _read(image, mode):
    return subprocess.run([sys.executable, "-m", "mkerofs.cli.read", "verify", str(image)],
                          capture_output=True, text=True,
                          env={**os.environ, "MKEROFS_NATIVE": mode})


@pytest.mark.parametrize("zspec", ["lz4", "lz4hc,level=12", "zstd"])
def test_images_built_through_fallbacks(tmp_path, zspec):
    """MKEROFS_NATIVE=bundled builds with python-lz4's LZ4 (the same bytes as the system's
    liblz4 of the same version) or the zstandard package; -V says so, and the reader reads the
    images through either library."""
    from support.run import run_mkerofs
    system, fallback = _system_and_bundled(zspec)
    src = _tree(tmp_path / "src")
    images = {}
    for mode in ("system", "bundled"):
        images[mode] = tmp_path / f"{mode}.erofs"
        run_mkerofs("-Uclear", "-T0", f"-z{zspec}", "-C65536", images[mode], src,
                    env={"MKEROFS_NATIVE": mode})
    shown = run_mkerofs("-V", env={"MKEROFS_NATIVE": "bundled"}).stdout
    assert f"{zspec.split(',')[0]}: {fallback.library().describe()}" in shown
    if system.library().version == fallback.library().version:
        assert images["system"].read_bytes() == images["bundled"].read_bytes()
    for mode in ("system", "bundled"):
        for image in images.values():
            r = _read(image, mode)
            assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr


def test_reader_reports_a_missing_library_not_damage(tmp_path):
    """Reading an lzma image where liblzma cannot be found: the reader's own error, never a
    report of a damaged image."""
    if "lzma" not in AVAILABLE:
        pytest.skip("no liblzma")
    from support.run import run_mkerofs
    image = tmp_path / "lzma.erofs"
    run_mkerofs("-zlzma", image, _tree(tmp_path / "src"))
    code = ("import sys\n"
            "from mkerofs.codecs import native\n"
            "from mkerofs.errors import CompressorUnavailable\n"
            "def missing():\n"
            "    raise CompressorUnavailable('liblzma.so.5 not found')\n"
            "native._BINDERS['lzma'] = missing\n"
            "from mkerofs.cli.read import main\n"
            "sys.exit(main(['verify', sys.argv[1]]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot decode lzma: liblzma.so.5 not found" in r.stderr
    assert "Traceback" not in r.stderr and "clean" not in r.stdout
