"""Per-pcluster compressors for EROFS images.

EROFS compresses file data into fixed-size *physical clusters* (pclusters,
1..256 blocks, at most 1 MiB).  Every pcluster is decoded on its own by the
kernel, so each one holds one complete, self-contained compressed stream, and
the writer wants to put as much input as possible into each of them: "compress
the longest prefix of ``src`` whose output fits in ``dest_size`` bytes".

On-disk forms (what the kernel decoders accept):

* LZ4 (algorithm 0, also used for ``lz4hc``): one raw LZ4 block, no frame.
  The kernel runs ``LZ4_decompress_safe`` on exactly the stored bytes, so the
  block must decode to exactly the extent's length.
* LZMA (algorithm 1): MicroLZMA - a raw LZMA1 stream without end marker
  whose first byte (always 0 in plain LZMA) is replaced by the bitwise NOT of
  the lc/lp/pb properties byte.  Produced by liblzma's
  ``lzma_microlzma_encoder``; decoded by the kernel's ``xz_dec_microlzma``.
* DEFLATE (algorithm 2): a raw RFC 1951 stream (no zlib/gzip wrapper) whose
  last block has BFINAL set.  Its first byte must not be 0 (see below).
* ZSTD (algorithm 3): one complete zstd frame (magic, frame header with the
  content size, no checksum) whose window is at most ``dict_size``.

The stored data is right-aligned in its pcluster: ``plen`` is the compressed
size rounded up to the block size and the gap is zero bytes *in front of* the
stream.  The kernel skips leading zero bytes (within the first block) to find
where the stream starts, which is why no stream may begin with a zero byte
(true by construction for LZ4 with >0 output, MicroLZMA and zstd; for DEFLATE
we set an ignored bit when the first block is a non-final stored block).

Everything heavy runs in C (ctypes or zlib) with the GIL released, so several
threads can compress different pclusters in parallel.  A compressor object may
be shared by threads: its scratch state lives in thread-local storage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from ..errors import CompressorUnavailable
from ..ondisk import format as fmt
from ..ondisk.format import (LZ4_DISTANCE_MAX, Z_EROFS_COMPRESSION_DEFLATE, Z_EROFS_COMPRESSION_LZ4,
                             Z_EROFS_COMPRESSION_LZMA, Z_EROFS_COMPRESSION_ZSTD,
                             Z_EROFS_DEFLATE_MAX_DICT_SIZE, Z_EROFS_LZMA_MAX_DICT_SIZE,
                             Z_EROFS_PCLUSTER_MAX_DSIZE, Z_EROFS_PCLUSTER_MAX_SIZE,
                             Z_EROFS_ZSTD_MAX_DICT_SIZE)
from ..util import parse_c_int

__all__ = [
    "CompressorSpec", "parse_compressor_spec", "make_compressor", "Compressor",
    "CompressorUnavailable", "LZ4Compressor", "LZ4HCCompressor", "LZMACompressor",
    "DeflateCompressor", "LibdeflateCompressor", "ZstdCompressor",
    "build_compr_cfgs", "available_compressors", "backend_info", "default_level",
    "Z_EROFS_COMPRESSION_LZ4", "Z_EROFS_COMPRESSION_LZMA",
    "Z_EROFS_COMPRESSION_DEFLATE", "Z_EROFS_COMPRESSION_ZSTD",
    "Z_EROFS_PCLUSTER_MAX_SIZE", "Z_EROFS_PCLUSTER_MAX_DSIZE",
    "Z_EROFS_LZMA_MAX_DICT_SIZE", "Z_EROFS_ZSTD_MAX_DICT_SIZE", "LZ4_DISTANCE_MAX",
]

EROFS_MAX_COMPR_CFGS = 64                    # mkfs.erofs's limit on -z entries

_ZSTD_MIN_LEVEL = -(1 << 17)                 # ZSTD_minCLevel() of zstd >= 1.3.6


# --------------------------------------------------------------------------
# -z parsing
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressorSpec:
    """One entry of mkfs.erofs's ``-z`` list.

    ``level``/``dictsize`` are None when not given (use the defaults).
    ``extra`` holds LZMA's advanced ``lc=``/``lp=``/``pb=`` options as sorted
    (key, value) pairs.
    """
    name: str
    level: int | None = None
    dictsize: int | None = None
    extra: tuple[tuple[str, int], ...] = field(default=())

    @property
    def algorithm_id(self) -> int:
        return _ALGS[self.name].alg_id


@dataclass(frozen=True)
class _AlgInfo:
    alg_id: int
    default_level: int | None          # None: the algorithm takes no level
    level_ok: Callable[[int], bool] | None
    level_range: str
    negative_is_default: bool          # mkfs.erofs maps level<0 to the default
    takes_dictsize: bool


_ALGS: dict[str, _AlgInfo] = {
    "lz4": _AlgInfo(Z_EROFS_COMPRESSION_LZ4, None, None, "", True, False),
    "lz4hc": _AlgInfo(Z_EROFS_COMPRESSION_LZ4, 9, lambda v: 0 <= v <= 12, "0-12", True, False),
    "lzma": _AlgInfo(Z_EROFS_COMPRESSION_LZMA, 6,
                     lambda v: 0 <= v <= 9 or 100 <= v <= 109, "0-9,100-109", True, True),
    "deflate": _AlgInfo(Z_EROFS_COMPRESSION_DEFLATE, 1, lambda v: 0 <= v <= 9, "0-9", True, True),
    "libdeflate": _AlgInfo(Z_EROFS_COMPRESSION_DEFLATE, 1, lambda v: 0 <= v <= 12, "0-12",
                           True, False),
    "zstd": _AlgInfo(Z_EROFS_COMPRESSION_ZSTD, 3, lambda v: _ZSTD_MIN_LEVEL <= v <= 22,
                     f"{_ZSTD_MIN_LEVEL}-22", False, True),
}


def default_level(name: str) -> int | None:
    """Default level of algorithm ``name`` (None for plain lz4)."""
    return _ALGS[name].default_level


def _c_strtoul(text: str, what: str) -> int:
    """strtoull(base 0) + mkfs.erofs's k/m/g suffix, the whole string consumed."""
    if not text.strip()[:1].isdigit():
        raise ValueError(f"invalid {what} {text!r}")
    return parse_c_int(text, what, minimum=0, suffixes=True)


def _parse_level(text: str, name: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"invalid compression level '{text}' for {name}") from None


def _parse_one(seg: str) -> CompressorSpec:
    name, _, rest = seg.partition(",")
    if name not in _ALGS:
        raise ValueError(f"unknown compressor '{name}' (supported: {', '.join(_ALGS)})")
    info = _ALGS[name]
    level: int | None = None
    dictsize: int | None = None
    extra: dict[str, int] = {}
    opts = rest.split(",") if rest else []
    if opts and opts[0][:1].isdigit():          # legacy "-zlz4hc,12" form
        level = _parse_level(opts[0], name)
        opts = opts[1:]
    for opt in opts:
        if not opt:
            continue                            # "lz4hc,level=9," is accepted
        key, eq, val = opt.partition("=")
        if not eq:
            raise ValueError(f"invalid compression option '{opt}' for {name}")
        if key == "level":
            level = _parse_level(val, name)
        elif key == "dictsize":
            dictsize = _c_strtoul(val, f"dictsize for {name}")
        elif name == "lzma" and key in ("lc", "lp", "pb"):
            extra[key] = _c_strtoul(val, f"{key} for lzma")
        else:
            raise ValueError(f"invalid compression option '{opt}' for {name}")

    if level is not None:
        if info.level_ok is None:
            if level >= 0:
                raise ValueError(f"compression level {level} is not supported for {name}")
            level = None
        elif level < 0 and info.negative_is_default:
            level = None
        elif not info.level_ok(level):
            raise ValueError(f"{name} level {level} out of range {info.level_range}")

    if dictsize == 0:                           # mkfs.erofs: 0 means "auto"
        dictsize = None
    if dictsize is not None:
        if not info.takes_dictsize:
            raise ValueError(f"dictsize is not supported for {name}")
        if name == "lzma" and not 4096 <= dictsize <= Z_EROFS_LZMA_MAX_DICT_SIZE:
            raise ValueError(f"lzma dictsize {dictsize} out of range 4096-"
                             f"{Z_EROFS_LZMA_MAX_DICT_SIZE}")
        if name == "zstd" and (dictsize & (dictsize - 1) or
                               not 1 << fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN <= dictsize
                               <= Z_EROFS_ZSTD_MAX_DICT_SIZE):
            raise ValueError(f"zstd dictsize {dictsize} must be a power of two in "
                             f"{1 << fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN}-{Z_EROFS_ZSTD_MAX_DICT_SIZE}")
        if name == "deflate" and not 256 <= dictsize <= Z_EROFS_DEFLATE_MAX_DICT_SIZE:
            raise ValueError(f"deflate dictsize {dictsize} out of range 256-"
                             f"{Z_EROFS_DEFLATE_MAX_DICT_SIZE}")
    if extra:
        lc, lp, pb = extra.get("lc", 3), extra.get("lp", 0), extra.get("pb", 2)
        if lc > 4 or lp > 4 or pb > 4 or lc + lp > 4:
            raise ValueError(f"invalid lzma options lc={lc} lp={lp} pb={pb} "
                             "(need lc+lp <= 4, pb <= 4)")
    return CompressorSpec(name, level, dictsize, tuple(sorted(extra.items())))


def parse_compressor_spec(text: str) -> list[CompressorSpec]:
    """Parse mkfs.erofs's ``-z`` argument: ``X[,level=Y][,dictsize=Z][:X2[,...]]``.

    Also accepts the legacy ``X,Y`` (bare level) form, ``dictsize`` with
    k/m/g suffixes (and C-style 0x/0 prefixes) and LZMA's ``lc=/lp=/pb=``.
    Empty ``:``-separated pieces are skipped, like mkfs.erofs's strtok().
    Raises ValueError on anything invalid.
    """
    if not isinstance(text, str):
        raise ValueError("compressor specification must be a string")
    segs = [s for s in text.split(":") if s]
    if not segs:
        raise ValueError("empty compressor specification")
    if len(segs) > EROFS_MAX_COMPR_CFGS:
        raise ValueError(f"too many compression algorithms (at most {EROFS_MAX_COMPR_CFGS})")
    return [_parse_one(s) for s in segs]


# --------------------------------------------------------------------------
# native libraries
# --------------------------------------------------------------------------
def _package_extensions(pkg: str, pattern: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    out: list[str] = []
    for d in spec.submodule_search_locations:
        out.extend(sorted(glob.glob(os.path.join(d, pattern))))
    return out


def _load_first(candidates: list[str], required: tuple[str, ...]):
    """CDLL of the first candidate exporting all ``required`` symbols."""
    for path in candidates:
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, sym) for sym in required):
            return lib, path
    return None, None


_LZ4_SYMS = ("LZ4_compress_destSize", "LZ4_compress_HC_destSize", "LZ4_sizeofStateHC",
             "LZ4_decompress_safe", "LZ4_compressBound", "LZ4_versionNumber")
_LZ4_CANDIDATES = (_package_extensions("lz4", os.path.join("block", "_block*.so")) +
                   ["liblz4.so.1", ctypes.util.find_library("lz4") or ""])


def _bind_lz4(lib):
    """Declare the LZ4 prototypes on ``lib`` (a CDLL exporting _LZ4_SYMS)."""
    _c_int_p = ctypes.POINTER(ctypes.c_int)
    lib.LZ4_compress_destSize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _c_int_p, ctypes.c_int]
    lib.LZ4_compress_destSize.restype = ctypes.c_int
    lib.LZ4_compress_HC_destSize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                              _c_int_p, ctypes.c_int, ctypes.c_int]
    lib.LZ4_compress_HC_destSize.restype = ctypes.c_int
    lib.LZ4_sizeofStateHC.argtypes = []
    lib.LZ4_sizeofStateHC.restype = ctypes.c_int
    lib.LZ4_decompress_safe.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.LZ4_decompress_safe.restype = ctypes.c_int
    lib.LZ4_compressBound.argtypes = [ctypes.c_int]
    lib.LZ4_compressBound.restype = ctypes.c_int
    return lib


# LZ4 (not HC) output at most this big is produced with the GIL held (see _lz4_gil)
_GIL_HELD_MAX = 16384
_lz4, _lz4_path = _load_first(_LZ4_CANDIDATES, _LZ4_SYMS)
_lz4_gil = None
if _lz4 is not None:
    _bind_lz4(_lz4)
    # The same functions called with the GIL held: LZ4 on a few KiB takes microseconds, less
    # than it costs to hand the GIL back and forth between threads that mostly run Python.
    _lz4_gil = ctypes.PyDLL(_lz4_path)
    _bind_lz4(_lz4_gil)

_ZSTD_SYMS = ("ZSTD_createCCtx", "ZSTD_CCtx_setParameter", "ZSTD_compress2", "ZSTD_isError",
              "ZSTD_getErrorName", "ZSTD_compressBound", "ZSTD_freeCCtx", "ZSTD_createDCtx",
              "ZSTD_DCtx_setParameter", "ZSTD_decompressStream", "ZSTD_DCtx_reset",
              "ZSTD_freeDCtx", "ZSTD_versionNumber")
_ZSTD_CANDIDATES = (["libzstd.so.1", ctypes.util.find_library("zstd") or ""] +
                    _package_extensions("zstandard", "_cffi*.so"))


class _ZstdBuf(ctypes.Structure):           # ZSTD_inBuffer / ZSTD_outBuffer
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


def _bind_zstd(lib):
    """Declare the zstd prototypes on ``lib`` (a CDLL exporting _ZSTD_SYMS)."""
    lib.ZSTD_createCCtx.argtypes = []
    lib.ZSTD_createCCtx.restype = ctypes.c_void_p
    lib.ZSTD_freeCCtx.argtypes = [ctypes.c_void_p]
    lib.ZSTD_freeCCtx.restype = ctypes.c_size_t
    lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_CCtx_setParameter.restype = ctypes.c_size_t
    lib.ZSTD_compress2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_void_p, ctypes.c_size_t]
    lib.ZSTD_compress2.restype = ctypes.c_size_t
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_createDCtx.argtypes = []
    lib.ZSTD_createDCtx.restype = ctypes.c_void_p
    lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
    lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
    lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
    lib.ZSTD_DCtx_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ZSTD_DCtx_reset.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_ZstdBuf),
                                            ctypes.POINTER(_ZstdBuf)]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    return lib


_zstd, _zstd_path = _load_first(_ZSTD_CANDIDATES, _ZSTD_SYMS)
if _zstd is not None:
    _bind_zstd(_zstd)

# zstd.h enum values (stable API)
_ZSTD_c_compressionLevel = 100
_ZSTD_c_windowLog = 101
_ZSTD_c_contentSizeFlag = 200
_ZSTD_c_checksumFlag = 201
_ZSTD_d_windowLogMax = 100
_ZSTD_reset_session_only = 1


class _LzmaStream(ctypes.Structure):       # lzma_stream (liblzma 5.x ABI)
    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t), ("total_in", ctypes.c_uint64),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_size_t),
        ("total_out", ctypes.c_uint64),
        ("allocator", ctypes.c_void_p), ("internal", ctypes.c_void_p),
        ("reserved_ptr1", ctypes.c_void_p), ("reserved_ptr2", ctypes.c_void_p),
        ("reserved_ptr3", ctypes.c_void_p), ("reserved_ptr4", ctypes.c_void_p),
        ("seek_pos", ctypes.c_uint64), ("reserved_int2", ctypes.c_uint64),
        ("reserved_int3", ctypes.c_size_t), ("reserved_int4", ctypes.c_size_t),
        ("reserved_enum1", ctypes.c_int), ("reserved_enum2", ctypes.c_int),
    ]


class _LzmaOptions(ctypes.Structure):      # lzma_options_lzma (liblzma 5.x ABI)
    _fields_ = [
        ("dict_size", ctypes.c_uint32), ("preset_dict", ctypes.c_void_p),
        ("preset_dict_size", ctypes.c_uint32), ("lc", ctypes.c_uint32), ("lp", ctypes.c_uint32),
        ("pb", ctypes.c_uint32), ("mode", ctypes.c_int), ("nice_len", ctypes.c_uint32),
        ("mf", ctypes.c_int), ("depth", ctypes.c_uint32), ("ext_flags", ctypes.c_uint32),
        ("ext_size_low", ctypes.c_uint32), ("ext_size_high", ctypes.c_uint32),
        ("reserved_int4", ctypes.c_uint32), ("reserved_int5", ctypes.c_uint32),
        ("reserved_int6", ctypes.c_uint32), ("reserved_int7", ctypes.c_uint32),
        ("reserved_int8", ctypes.c_uint32),
        ("reserved_enum1", ctypes.c_int), ("reserved_enum2", ctypes.c_int),
        ("reserved_enum3", ctypes.c_int), ("reserved_enum4", ctypes.c_int),
        ("reserved_ptr1", ctypes.c_void_p), ("reserved_ptr2", ctypes.c_void_p),
    ]


_LZMA_OK, _LZMA_STREAM_END = 0, 1
_LZMA_FINISH = 3
_LZMA_PRESET_EXTREME = 1 << 31
_LZMA_SYMS = ("lzma_microlzma_encoder", "lzma_microlzma_decoder", "lzma_lzma_preset",
              "lzma_code", "lzma_end", "lzma_version_number")
_lzma, _lzma_path = _load_first(["liblzma.so.5", ctypes.util.find_library("lzma") or ""],
                                _LZMA_SYMS)
if _lzma is not None:
    _lzma.lzma_microlzma_encoder.argtypes = [ctypes.POINTER(_LzmaStream),
                                             ctypes.POINTER(_LzmaOptions)]
    _lzma.lzma_microlzma_encoder.restype = ctypes.c_int
    _lzma.lzma_microlzma_decoder.argtypes = [ctypes.POINTER(_LzmaStream), ctypes.c_uint64,
                                             ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_uint32]
    _lzma.lzma_microlzma_decoder.restype = ctypes.c_int
    _lzma.lzma_lzma_preset.argtypes = [ctypes.POINTER(_LzmaOptions), ctypes.c_uint32]
    _lzma.lzma_lzma_preset.restype = ctypes.c_ubyte
    _lzma.lzma_code.argtypes = [ctypes.POINTER(_LzmaStream), ctypes.c_int]
    _lzma.lzma_code.restype = ctypes.c_int
    _lzma.lzma_end.argtypes = [ctypes.POINTER(_LzmaStream)]
    _lzma.lzma_end.restype = None

_LIBDEFLATE_SYMS = ("libdeflate_alloc_compressor", "libdeflate_deflate_compress",
                    "libdeflate_free_compressor", "libdeflate_alloc_decompressor",
                    "libdeflate_deflate_decompress", "libdeflate_free_decompressor")
_libdeflate, _libdeflate_path = _load_first(
    ["libdeflate.so.0", ctypes.util.find_library("deflate") or ""], _LIBDEFLATE_SYMS)
if _libdeflate is not None:
    _libdeflate.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
    _libdeflate.libdeflate_alloc_compressor.restype = ctypes.c_void_p
    _libdeflate.libdeflate_deflate_compress.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                        ctypes.c_size_t, ctypes.c_void_p,
                                                        ctypes.c_size_t]
    _libdeflate.libdeflate_deflate_compress.restype = ctypes.c_size_t
    _libdeflate.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
    _libdeflate.libdeflate_free_compressor.restype = None
    _libdeflate.libdeflate_alloc_decompressor.argtypes = []
    _libdeflate.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
    _libdeflate.libdeflate_deflate_decompress.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_size_t)]
    _libdeflate.libdeflate_deflate_decompress.restype = ctypes.c_int
    _libdeflate.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
    _libdeflate.libdeflate_free_decompressor.restype = None


def backend_info() -> dict[str, str | None]:
    """Which shared object serves each algorithm (None: unavailable)."""
    return {"lz4": _lz4_path, "lzma": _lzma_path, "deflate": f"zlib {zlib.ZLIB_RUNTIME_VERSION}",
            "libdeflate": _libdeflate_path or f"zlib {zlib.ZLIB_RUNTIME_VERSION} (fallback)",
            "zstd": _zstd_path}


def available_compressors() -> list[str]:
    """Names usable with make_compressor() on this machine."""
    ok = {"lz4": _lz4, "lz4hc": _lz4, "lzma": _lzma, "deflate": zlib, "libdeflate": zlib,
          "zstd": _zstd}
    return [n for n in _ALGS if ok[n] is not None]


# --------------------------------------------------------------------------
# buffers without copies
# --------------------------------------------------------------------------
class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
_PyBuffer_Release.restype = None
_PyBUF_SIMPLE = 0


class _Pinned:
    """Context manager giving (addr, size) of any C-contiguous buffer.

    ``addr`` is what to pass for a ``c_void_p`` argument: the ``bytes``
    object itself (ctypes passes its internal buffer) or, for anything else
    (memoryview, bytearray, mmap, read-only or not), the address of the
    buffer pinned with PyObject_GetBuffer.  Nothing is copied and the memory
    stays valid while the GIL is released in C.  Use ``_int_addr(addr)`` where
    an integer is needed (structure fields).
    """
    __slots__ = ("view", "addr", "size")

    def __init__(self, obj):
        if type(obj) is bytes:
            self.view = None
            self.addr = obj
            self.size = len(obj)
            return
        view = self.view = _PyBuffer()
        _PyObject_GetBuffer(obj, view, _PyBUF_SIMPLE)    # raises on failure
        self.addr = view.buf or 0
        self.size = view.len

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        view = self.view
        if view is not None:
            self.view = None
            _PyBuffer_Release(view)
        return False


def bytes_address(data: bytes) -> int:
    """Address of a bytes object's contents (valid while the object lives)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _int_addr(addr) -> int:
    if type(addr) is bytes:
        return ctypes.cast(ctypes.c_char_p(addr), ctypes.c_void_p).value or 0
    return addr


def _as_bytes_like(src):
    """memoryview of ``src`` as flat unsigned bytes (no copy)."""
    mv = src if isinstance(src, memoryview) else memoryview(src)
    if mv.ndim != 1 or mv.format not in ("B", "b", "c"):
        mv = mv.cast("B")
    return mv


class _Scratch(threading.local):
    """Per-thread output buffer, grown on demand, and an in/out int argument."""

    def __init__(self):
        self.buf = ctypes.create_string_buffer(0)
        self.view = memoryview(b"")        # of buf, as bytes
        self.size = 0
        self.int = ctypes.c_int(0)
        self.int_ref = ctypes.byref(self.int)

    def get(self, n: int):
        if n > self.size:
            self.size = max(n, 4096)
            self.buf = ctypes.create_string_buffer(self.size)
            self.view = memoryview(self.buf).cast("B")
        return self.buf


_scratch = _Scratch()


def _strip_zero_padding(data) -> memoryview:
    mv = _as_bytes_like(data)
    n = len(mv)
    i = 0
    # fast path: look at the first byte; padding is rare in our callers
    if n and mv[0] == 0:
        b = bytes(mv[: min(n, Z_EROFS_PCLUSTER_MAX_SIZE)])
        i = len(b) - len(b.lstrip(b"\0"))
        if i >= n:
            raise ValueError("compressed data is all zeros")
    return mv[i:]


# --------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------
@runtime_checkable
class Compressor(Protocol):
    """What every compressor offers.  ``src``/``data`` may be any C-contiguous
    buffer (bytes, bytearray, memoryview, mmap); nothing big is copied."""

    name: str                  # "lz4", "lz4hc", "lzma", "deflate", "libdeflate", "zstd"
    algorithm_id: int          # 0 lz4/lz4hc, 1 lzma, 2 deflate/libdeflate, 3 zstd
    level: int | None          # resolved level (None for plain lz4)
    dict_size: int | None      # window/dictionary in bytes (None for lz4)

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        """Compress the longest prefix of ``src`` (at most 12 MiB) whose
        stream fits in ``dest_size`` bytes; return (consumed, stream).
        ``hint``: expected consumed length (e.g. the previous pcluster's of
        the same file) - only speeds up deflate/zstd; the result is a pure
        function of the arguments."""
        ...

    def compress(self, src) -> bytes:
        """One stream holding all of ``src`` (b"" for empty input)."""
        ...

    def decompress(self, data, out_size: int) -> bytes:
        """Decode one stream to exactly ``out_size`` bytes, as strictly as the
        kernel does (leading zero padding is skipped); ValueError if bad."""
        ...

    def cfgs_record(self, max_pclusterblks: int, blkszbits: int) -> bytes | None:
        """The on-disk compression-config record for this algorithm:
        __le16 payload size followed by the payload."""
        ...


class _Base:
    name = ""
    algorithm_id = -1
    level: int | None = None
    dict_size: int | None = None
    # (spec, block_size, pcluster_size) when made by make_compressor: a compressor crosses to a
    # worker process as that recipe (its native handles cannot be pickled)
    made_from: tuple | None = None

    def __reduce__(self):
        if self.made_from is None:
            raise TypeError(f"{self!r} was not made by make_compressor and cannot be pickled")
        return make_compressor, self.made_from

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name} level={self.level} "
                f"dict_size={self.dict_size}>")

    @staticmethod
    def _check_dest(dest_size: int) -> None:
        if not 16 <= dest_size <= Z_EROFS_PCLUSTER_MAX_SIZE:
            raise ValueError(f"dest_size {dest_size} out of range 16-{Z_EROFS_PCLUSTER_MAX_SIZE}")


def _cfgs(payload: bytes) -> bytes:
    """On-disk record: __le16 payload size + payload."""
    return fmt.pack_metadata_record(payload)


# ---------------------------------------------------------------- LZ4 / LZ4HC
class _PerThread(threading.local):
    """Native encoder/decoder state owned by one thread (the C handles are not thread-safe)."""

    def __init__(self):
        self.enc = None
        self.dec = None

    def encoder(self, make):
        if self.enc is None:
            self.enc = make()
        return self.enc

    def decoder(self, make):
        if self.dec is None:
            self.dec = make()
        return self.dec


class LZ4Compressor(_Base):
    """LZ4 raw block via LZ4_compress_destSize (algorithm 0)."""
    name = "lz4"
    algorithm_id = Z_EROFS_COMPRESSION_LZ4
    max_distance = LZ4_DISTANCE_MAX

    def __init__(self, level: int | None = None):
        if _lz4 is None:
            raise CompressorUnavailable("lz4 needs liblz4 (python 'lz4' package or liblz4.so.1)")
        self.level = None

    def _destsize(self, src_addr: int, dst, n: int, dest_size: int, sz: ctypes.c_int) -> int:
        return self._destsize_ref(src_addr, dst, ctypes.byref(sz), dest_size)

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        self._check_dest(dest_size)
        with _Pinned(src) as p:
            n = min(p.size, Z_EROFS_PCLUSTER_MAX_DSIZE)
            if n == 0:
                return 0, b""
            dst = _scratch.get(dest_size)
            sz = ctypes.c_int(n)
            out = self._destsize(p.addr, dst, n, dest_size, sz)
            if out <= 0:
                raise RuntimeError(f"{self.name} compression failed")
            return sz.value, ctypes.string_at(dst, out)

    def destsize_at(self, addr: int, n: int, dest_size: int) -> tuple[int, bytes]:
        """compress_destsize() of `n` (> 0) bytes at address `addr`, which the caller keeps
        alive: for the many small pclusters of a segment, without pinning a buffer each time
        (and with as little Python around the call as can be: it runs once per pcluster)."""
        scratch = _scratch
        dst = scratch.buf if dest_size <= scratch.size else scratch.get(dest_size)
        sz = scratch.int
        sz.value = n if n < Z_EROFS_PCLUSTER_MAX_DSIZE else Z_EROFS_PCLUSTER_MAX_DSIZE
        out = self._destsize_ref(addr, dst, scratch.int_ref, dest_size)
        if out <= 0:
            raise RuntimeError(f"{self.name} compression failed")
        return sz.value, scratch.view[:out].tobytes()

    def _destsize_ref(self, src_addr: int, dst, sz_ref, dest_size: int) -> int:
        lib = _lz4_gil if dest_size <= _GIL_HELD_MAX else _lz4
        return lib.LZ4_compress_destSize(src_addr, dst, sz_ref, dest_size)

    def compress(self, src) -> bytes:
        with _Pinned(src) as p:
            n = p.size
            if n == 0:
                return b""
            if n > 0x7E000000:
                raise ValueError("input too large for LZ4")
            cap = _lz4.LZ4_compressBound(n)
            dst = _scratch.get(cap)
            sz = ctypes.c_int(n)
            out = self._destsize(p.addr, dst, n, cap, sz)
            if out <= 0 or sz.value != n:
                raise RuntimeError(f"{self.name} compression failed")
            return ctypes.string_at(dst, out)

    def decompress(self, data, out_size: int) -> bytes:
        if out_size <= 0:
            return b""
        mv = _strip_zero_padding(data)
        dst = ctypes.create_string_buffer(max(out_size, 1))
        with _Pinned(mv) as p:
            ret = _lz4.LZ4_decompress_safe(p.addr, dst, p.size, out_size)
        if ret != out_size:
            raise ValueError(f"lz4: corrupted data (decoder returned {ret}, want {out_size})")
        return dst.raw[:out_size] if out_size != len(dst) else dst.raw

    def cfgs_record(self, max_pclusterblks: int, blkszbits: int) -> bytes | None:
        """z_erofs_lz4_cfgs: le16 max_distance, le16 max_pclusterblks, 10 reserved."""
        if not 1 <= max_pclusterblks or (max_pclusterblks << blkszbits) > Z_EROFS_PCLUSTER_MAX_SIZE:
            raise ValueError(f"max_pclusterblks {max_pclusterblks} out of range")
        return _cfgs(fmt.Z_EROFS_LZ4_CFGS.pack(self.max_distance, max_pclusterblks))


class LZ4HCCompressor(LZ4Compressor):
    """LZ4 raw block via LZ4_compress_HC_destSize (algorithm 0, levels 0-12)."""
    name = "lz4hc"

    def __init__(self, level: int | None = None):
        super().__init__()
        self.level = 9 if level is None else level
        if not 0 <= self.level <= 12:
            raise ValueError(f"lz4hc level {self.level} out of range 0-12")
        self._state_size = _lz4.LZ4_sizeofStateHC()
        self._tls = _PerThread()

    def _destsize_ref(self, src_addr, dst, sz_ref, dest_size):
        st = self._tls.encoder(self._new_state)
        return _lz4.LZ4_compress_HC_destSize(st, src_addr, dst, sz_ref, dest_size, self.level)

    def _new_state(self):
        return ctypes.create_string_buffer(self._state_size)


# ---------------------------------------------------------------- LZMA
class _LzmaHandle:
    """An lzma_stream owned by one thread; its allocations are reused."""

    def __init__(self):
        self.strm = _LzmaStream()
        self._end = _lzma.lzma_end

    def __del__(self):
        if self.strm.internal:
            self._end(ctypes.byref(self.strm))


class LZMACompressor(_Base):
    """MicroLZMA via liblzma's lzma_microlzma_encoder (algorithm 1)."""
    name = "lzma"
    algorithm_id = Z_EROFS_COMPRESSION_LZMA

    def __init__(self, level: int | None = None, dict_size: int = 1 << 15,
                 lc: int | None = None, lp: int | None = None, pb: int | None = None):
        if _lzma is None:
            raise CompressorUnavailable(
                "lzma needs liblzma.so.5 >= 5.3.2 with MicroLZMA support "
                "(lzma_microlzma_encoder); install liblzma5 / xz-utils >= 5.4")
        self.level = 6 if level is None else level
        if not (0 <= self.level <= 9 or 100 <= self.level <= 109):
            raise ValueError(f"lzma level {self.level} out of range 0-9,100-109")
        if not 4096 <= dict_size <= Z_EROFS_LZMA_MAX_DICT_SIZE:
            raise ValueError(f"lzma dictsize {dict_size} out of range 4096-"
                             f"{Z_EROFS_LZMA_MAX_DICT_SIZE}")
        self.dict_size = dict_size
        preset = (self.level - 100) | _LZMA_PRESET_EXTREME if self.level >= 100 else self.level
        opts = _LzmaOptions()
        if _lzma.lzma_lzma_preset(ctypes.byref(opts), preset):
            raise ValueError(f"lzma: unsupported preset {self.level}")
        opts.dict_size = dict_size
        if lc is not None:
            opts.lc = lc
        if lp is not None:
            opts.lp = lp
        if pb is not None:
            opts.pb = pb
        if opts.lc + opts.lp > 4 or opts.pb > 4:
            raise ValueError("lzma: need lc+lp <= 4 and pb <= 4")
        self.lc, self.lp, self.pb = opts.lc, opts.lp, opts.pb
        self._opts = opts
        self._tls = _PerThread()

    def _encode(self, addr: int, n: int, dst, cap: int) -> tuple[int, int]:
        h = self._tls.encoder(_LzmaHandle)
        s = h.strm
        ret = _lzma.lzma_microlzma_encoder(ctypes.byref(s), ctypes.byref(self._opts))
        if ret != _LZMA_OK:
            raise RuntimeError(f"lzma_microlzma_encoder failed ({ret})")
        s.next_in = _int_addr(addr)
        s.avail_in = n
        s.next_out = ctypes.addressof(dst)
        s.avail_out = cap
        ret = _lzma.lzma_code(ctypes.byref(s), _LZMA_FINISH)
        if ret != _LZMA_STREAM_END:
            raise RuntimeError(f"lzma: MicroLZMA encoding failed ({ret})")
        return s.total_in, s.total_out

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        self._check_dest(dest_size)
        with _Pinned(src) as p:
            n = min(p.size, Z_EROFS_PCLUSTER_MAX_DSIZE)
            if n == 0:
                return 0, b""
            dst = _scratch.get(dest_size)
            used, out = self._encode(p.addr, n, dst, dest_size)
            return used, ctypes.string_at(dst, out)

    def compress(self, src) -> bytes:
        with _Pinned(src) as p:
            n = p.size
            if n == 0:
                return b""
            cap = n + (n >> 2) + 256
            dst = _scratch.get(cap)
            used, out = self._encode(p.addr, n, dst, cap)
            if used != n:
                raise RuntimeError("lzma: whole-buffer compression did not consume the input")
            return ctypes.string_at(dst, out)

    def decompress(self, data, out_size: int) -> bytes:
        if out_size <= 0:
            return b""
        mv = _strip_zero_padding(data)
        h = self._tls.decoder(_LzmaHandle)
        s = h.strm
        dst = ctypes.create_string_buffer(max(out_size, 1))
        with _Pinned(mv) as p:
            ret = _lzma.lzma_microlzma_decoder(ctypes.byref(s), p.size, out_size, 1,
                                               self.dict_size)
            if ret != _LZMA_OK:
                raise RuntimeError(f"lzma_microlzma_decoder failed ({ret})")
            s.next_in = _int_addr(p.addr)
            s.avail_in = p.size
            s.next_out = ctypes.addressof(dst)
            s.avail_out = out_size
            ret = _lzma.lzma_code(ctypes.byref(s), _LZMA_FINISH)
        if ret != _LZMA_STREAM_END or s.total_out != out_size or s.total_in != len(mv):
            raise ValueError(f"lzma: corrupted MicroLZMA data (ret {ret}, "
                             f"in {s.total_in}/{len(mv)}, out {s.total_out}/{out_size})")
        return dst.raw[:out_size]

    def cfgs_record(self, max_pclusterblks: int, blkszbits: int) -> bytes | None:
        """z_erofs_lzma_cfgs: le32 dict_size, le16 format (0), 8 reserved."""
        return _cfgs(fmt.Z_EROFS_LZMA_CFGS.pack(self.dict_size, 0))


# ---------------------------------------------------------------- fitting search
def _fit(n: int, dest: int, slack: int, attempt, hint: int | None = None,
         max_tries: int = 16) -> tuple[int, bytes]:
    """Longest-prefix search for codecs without a native destsize API.

    ``attempt(m)`` compresses ``src[:m]`` and returns (size, out): ``out`` is
    None when the result does not fit in ``dest`` (``size`` is then the real
    compressed size if known, else None).

    Compressed size grows roughly linearly with ``m``, so guesses come from
    secant steps through measured points (between the two bracketing
    attempts, or through the last two fits while no upper bound is known),
    with bisection as a safeguard whenever two attempts in a row land on the
    same side.  It stops once a fit leaves at most ``slack`` bytes unused,
    when the bracket is narrower than ~0.1% of the input, or after
    ``max_tries`` attempts (the best fit so far wins).

    The first attempt is ``hint`` (e.g. what the previous pcluster of the
    same file consumed) or 3 * dest.  The result is a pure function of
    (data, dest, slack, hint): no hidden state, so images are reproducible
    whatever the thread scheduling.
    """
    lo, lo_size, lo_out = 0, 0, None
    prev_lo, prev_lo_size = 0, 0
    hi, hi_size = n + 1, None
    m = max(1, min(n, hint if hint else dest * 3))
    target = dest - slack // 2
    tries = 0
    last_fit = None
    same_side = 0
    while True:
        size, out = attempt(m)
        tries += 1
        fit = out is not None
        same_side = same_side + 1 if fit == last_fit else 1
        last_fit = fit
        if fit:
            prev_lo, prev_lo_size = lo, lo_size
            lo, lo_size, lo_out = m, size, out
            if m >= n or dest - size <= slack:
                break
        else:
            hi, hi_size = m, size
        if hi - lo <= max(1, lo >> 10) and lo_out is not None:
            break
        if tries >= max_tries and lo_out is not None:
            break
        if hi <= n and same_side >= 2:
            nm = (lo + hi) // 2                                  # safeguard
        elif hi <= n and hi_size is not None and hi_size > lo_size:
            nm = lo + (hi - lo) * (target - lo_size) // (hi_size - lo_size)
        elif hi <= n:
            nm = (lo + hi) // 2
        elif prev_lo and lo_size > prev_lo_size:
            # no upper bound yet: secant through the last two fits, at most x2
            nm = lo + (lo - prev_lo) * (target - lo_size) // (lo_size - prev_lo_size)
            nm = min(nm, lo * 2)
        elif prev_lo:
            # the last input added nothing to the output: gallop
            nm = min(lo + max(2 * (lo - prev_lo), lo >> 3), lo * 2)
        else:
            nm = lo * target // max(lo_size, 1)
        if hi > n:
            nm = max(nm, lo + max(1, lo >> 8))                  # make real progress
        m = min(nm, hi - 1, n)
        if m <= lo:
            m = (lo + hi) // 2
            if m <= lo:
                break
    if lo_out is None:
        # only reachable when max_tries ran out without any fit
        raise RuntimeError("could not fit any input into the pcluster")
    return lo, lo_out


def _default_slack(dest: int) -> int:
    # what we accept to leave unused in a pcluster before stopping the search:
    # <=0.4% at 4 KiB, <=0.2% for big pclusters
    return max(16, dest >> 9)


# ---------------------------------------------------------------- DEFLATE
def _fix_deflate_head(out: bytes) -> bytes:
    # A non-final stored block starts with byte 0 (BFINAL=0, BTYPE=00 and
    # five padding bits).  EROFS would take that byte for zero padding, so set
    # one of the padding bits (ignored by inflate) instead.
    if out and out[0] == 0:
        return b"\x08" + out[1:]
    return out


class _Native:
    """A pointer made by a C library's constructor, handed back to its destructor when dropped."""

    def __init__(self, ptr, free, what: str):
        if not ptr:
            raise MemoryError(f"{what} failed")
        self.ptr = ptr
        self._free = free

    def __del__(self):
        if self.ptr:
            self._free(self.ptr)


def _libdeflate_compressor(level: int) -> _Native:
    return _Native(_libdeflate.libdeflate_alloc_compressor(level),
                   _libdeflate.libdeflate_free_compressor, "libdeflate_alloc_compressor")


class DeflateCompressor(_Base):
    """Raw DEFLATE (algorithm 2, levels 0-9).

    Backend: libdeflate.so.0 when present and the window is the full 32 KiB
    (about 2-3x faster than zlib here, and smaller output), else the
    stdlib's zlib (also for ``dictsize`` < 32 KiB: libdeflate cannot shrink
    its window).  Pass ``backend="zlib"``/``"libdeflate"`` to force one.
    """
    name = "deflate"
    algorithm_id = Z_EROFS_COMPRESSION_DEFLATE
    max_level = 9

    def __init__(self, level: int | None = None, dict_size: int = 1 << 15,
                 slack: int | None = None, backend: str | None = None):
        self.level = 1 if level is None else level
        if not 0 <= self.level <= self.max_level:
            raise ValueError(f"{self.name} level {self.level} out of range 0-{self.max_level}")
        if not 256 <= dict_size <= Z_EROFS_DEFLATE_MAX_DICT_SIZE:
            raise ValueError(f"deflate dictsize {dict_size} out of range 256-32768")
        full_window = dict_size == Z_EROFS_DEFLATE_MAX_DICT_SIZE
        if backend is None:
            backend = "libdeflate" if _libdeflate is not None and full_window else "zlib"
        if backend == "libdeflate" and (_libdeflate is None or not full_window):
            raise CompressorUnavailable("libdeflate backend needs libdeflate.so.0 and a "
                                        "32 KiB window")
        if backend not in ("zlib", "libdeflate"):
            raise ValueError(f"unknown deflate backend '{backend}'")
        self.backend = backend
        self.dict_size = dict_size
        self.windowbits = dict_size.bit_length() - 1
        # zlib rejects a raw 256-byte window; 512 keeps distances < 256 anyway
        self._zwbits = max(9, self.windowbits)
        self._zlevel = min(self.level, 9)       # zlib's range
        self.slack = slack
        self._tls = _PerThread()

    def __repr__(self):
        return f"{super().__repr__()[:-1]} backend={self.backend}>"

    def _handle(self):
        return self._tls.encoder(lambda: _libdeflate_compressor(self.level))

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        self._check_dest(dest_size)
        slack = self.slack if self.slack is not None else _default_slack(dest_size)
        if self.backend == "zlib":
            mv = _as_bytes_like(src)
            n = min(len(mv), Z_EROFS_PCLUSTER_MAX_DSIZE)
            if n == 0:
                return 0, b""
            zlevel, zwbits = self._zlevel, -self._zwbits

            def attempt(m):
                out = zlib.compress(mv[:m], zlevel, zwbits)
                return len(out), (out if len(out) <= dest_size else None)

            used, out = _fit(n, dest_size, slack, attempt, hint)
            return used, _fix_deflate_head(out)

        with _Pinned(src) as p:
            n = min(p.size, Z_EROFS_PCLUSTER_MAX_DSIZE)
            if n == 0:
                return 0, b""
            c = self._handle().ptr
            cap = dest_size * 2          # room to learn the size of near misses
            dst = _scratch.get(cap)
            addr = p.addr
            compress = _libdeflate.libdeflate_deflate_compress

            def attempt(m):
                r = compress(c, addr, m, dst, cap)
                if not r:
                    return None, None
                return r, (ctypes.string_at(dst, r) if r <= dest_size else None)

            used, out = _fit(n, dest_size, slack, attempt, hint)
        return used, _fix_deflate_head(out)

    def compress(self, src) -> bytes:
        if self.backend == "zlib":
            mv = _as_bytes_like(src)
            if not len(mv):
                return b""
            return _fix_deflate_head(zlib.compress(mv, self._zlevel, -self._zwbits))
        with _Pinned(src) as p:
            if not p.size:
                return b""
            cap = p.size + (p.size >> 3) + 64
            dst = _scratch.get(cap)
            r = _libdeflate.libdeflate_deflate_compress(self._handle().ptr, p.addr, p.size, dst, cap)
            if not r:
                raise RuntimeError("libdeflate compression failed")
            return _fix_deflate_head(ctypes.string_at(dst, r))

    def decompress(self, data, out_size: int) -> bytes:
        if out_size <= 0:
            return b""
        mv = _strip_zero_padding(data)
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(mv, out_size + 1)
        except zlib.error as e:
            raise ValueError(f"deflate: corrupted data ({e})") from None
        if len(out) != out_size or not d.eof or d.unused_data or d.unconsumed_tail:
            raise ValueError(f"deflate: stream decodes to {len(out)} bytes "
                             f"(eof={d.eof}), want exactly {out_size}")
        return out

    def cfgs_record(self, max_pclusterblks: int, blkszbits: int) -> bytes | None:
        """z_erofs_deflate_cfgs: u8 windowbits, 5 reserved."""
        return _cfgs(fmt.Z_EROFS_DEFLATE_CFGS.pack(self.windowbits))


class LibdeflateCompressor(DeflateCompressor):
    """``-zlibdeflate``: the same on-disk DEFLATE, levels 0-12, no dictsize.

    Uses libdeflate.so.0; without it falls back to zlib (levels above 9 then
    act as 9).
    """
    name = "libdeflate"
    max_level = 12

    def __init__(self, level: int | None = None, slack: int | None = None,
                 backend: str | None = None):
        super().__init__(level, 1 << 15, slack, backend)


# ---------------------------------------------------------------- ZSTD
def _zstd_cctx(level: int, window_log: int) -> _Native:
    cctx = _Native(_zstd.ZSTD_createCCtx(), _zstd.ZSTD_freeCCtx, "ZSTD_createCCtx")
    for p, v in ((_ZSTD_c_compressionLevel, level), (_ZSTD_c_windowLog, window_log),
                 (_ZSTD_c_contentSizeFlag, 1), (_ZSTD_c_checksumFlag, 0)):
        r = _zstd.ZSTD_CCtx_setParameter(cctx.ptr, p, v)
        if _zstd.ZSTD_isError(r):
            raise ValueError(f"zstd: bad parameter {p}={v}: "
                             f"{_zstd.ZSTD_getErrorName(r).decode()}")
    return cctx


def _zstd_dctx() -> _Native:
    return _Native(_zstd.ZSTD_createDCtx(), _zstd.ZSTD_freeDCtx, "ZSTD_createDCtx")


class ZstdCompressor(_Base):
    """One zstd frame per pcluster via ZSTD_compress2 (algorithm 3)."""
    name = "zstd"
    algorithm_id = Z_EROFS_COMPRESSION_ZSTD

    def __init__(self, level: int | None = None, dict_size: int = 1 << 15,
                 slack: int | None = None):
        if _zstd is None:
            raise CompressorUnavailable("zstd needs libzstd.so.1 or the 'zstandard' package")
        self.level = 3 if level is None else level
        if not _ZSTD_MIN_LEVEL <= self.level <= 22:
            raise ValueError(f"zstd level {self.level} out of range {_ZSTD_MIN_LEVEL}-22")
        if dict_size & (dict_size - 1) or not 1024 <= dict_size <= Z_EROFS_ZSTD_MAX_DICT_SIZE:
            raise ValueError(f"zstd dictsize {dict_size} must be a power of two in "
                             f"1024-{Z_EROFS_ZSTD_MAX_DICT_SIZE}")
        self.dict_size = dict_size
        self.window_log = dict_size.bit_length() - 1
        self.slack = slack
        self._tls = _PerThread()
        _zstd_cctx(self.level, self.window_log)         # validate parameters now

    def _cctx(self):
        return self._tls.encoder(lambda: _zstd_cctx(self.level, self.window_log)).ptr

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        self._check_dest(dest_size)
        with _Pinned(src) as p:
            n = min(p.size, Z_EROFS_PCLUSTER_MAX_DSIZE)
            if n == 0:
                return 0, b""
            cctx = self._cctx()
            cap = dest_size * 2          # room to learn the size of near misses
            dst = _scratch.get(cap)
            addr = p.addr
            compress2 = _zstd.ZSTD_compress2
            is_error = _zstd.ZSTD_isError

            def attempt(m):
                # with a too small dst, zstd gives up at the first block that
                # does not fit, so far misses are cheap
                r = compress2(cctx, dst, cap, addr, m)
                if is_error(r):
                    return None, None
                return r, (ctypes.string_at(dst, r) if r <= dest_size else None)

            slack = self.slack if self.slack is not None else _default_slack(dest_size)
            return _fit(n, dest_size, slack, attempt, hint)

    def compress(self, src) -> bytes:
        with _Pinned(src) as p:
            if not p.size:
                return b""
            cap = _zstd.ZSTD_compressBound(p.size)
            dst = _scratch.get(cap)
            r = _zstd.ZSTD_compress2(self._cctx(), dst, cap, p.addr, p.size)
            if _zstd.ZSTD_isError(r):
                raise RuntimeError(f"zstd: {_zstd.ZSTD_getErrorName(r).decode()}")
            return ctypes.string_at(dst, r)

    def decompress(self, data, out_size: int) -> bytes:
        """Streaming decode with the window limited to dict_size, like the kernel."""
        if out_size <= 0:
            return b""
        mv = _strip_zero_padding(data)
        d = self._tls.decoder(_zstd_dctx).ptr
        _zstd.ZSTD_DCtx_reset(d, _ZSTD_reset_session_only)
        _zstd.ZSTD_DCtx_setParameter(d, _ZSTD_d_windowLogMax, max(self.window_log, 10))
        dst = ctypes.create_string_buffer(max(out_size, 1))
        with _Pinned(mv) as p:
            inb = _ZstdBuf(_int_addr(p.addr), p.size, 0)
            outb = _ZstdBuf(ctypes.addressof(dst), out_size, 0)
            while True:
                r = _zstd.ZSTD_decompressStream(d, ctypes.byref(outb), ctypes.byref(inb))
                if _zstd.ZSTD_isError(r):
                    raise ValueError(f"zstd: {_zstd.ZSTD_getErrorName(r).decode()}")
                if r == 0 or outb.pos == outb.size or inb.pos == inb.size:
                    break
        if outb.pos != out_size:
            raise ValueError(f"zstd: frame decodes to {outb.pos} bytes, want {out_size}")
        if r != 0 or inb.pos != inb.size:
            raise ValueError("zstd: frame does not end with the data")
        return dst.raw[:out_size]

    def cfgs_record(self, max_pclusterblks: int, blkszbits: int) -> bytes | None:
        """z_erofs_zstd_cfgs: u8 format (0), u8 windowlog-10, 4 reserved."""
        windowlog = self.window_log - fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN
        return _cfgs(fmt.Z_EROFS_ZSTD_CFGS.pack(0, windowlog))


# --------------------------------------------------------------------------
# factory and superblock helpers
# --------------------------------------------------------------------------
def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def make_compressor(spec: CompressorSpec, block_size: int, pcluster_size: int) -> Compressor:
    """The compressor for ``spec`` in an image of ``block_size`` blocks whose largest pcluster
    has ``pcluster_size`` bytes (see _make_compressor)."""
    comp = _make_compressor(spec, block_size, pcluster_size)
    comp.made_from = (spec, block_size, pcluster_size)
    return comp


def _make_compressor(spec: CompressorSpec, block_size: int, pcluster_size: int) -> Compressor:
    """Build the compressor for ``spec``.

    ``pcluster_size`` is the image's *maximum* pcluster size in bytes
    (``-C``, default one block); it sets the automatic dictionary sizes the
    way mkfs.erofs does: lzma max(32 KiB, min(8 MiB, 4 * pcluster)), zstd the
    power of two <= min(1 MiB, 8 * pcluster), deflate 32 KiB.
    """
    if block_size < 512 or block_size & (block_size - 1):
        raise ValueError(f"bad block size {block_size}")
    if (pcluster_size < block_size or pcluster_size % block_size or
            pcluster_size > Z_EROFS_PCLUSTER_MAX_SIZE):
        raise ValueError(f"pcluster size {pcluster_size} must be a multiple of the block size "
                         f"and at most {Z_EROFS_PCLUSTER_MAX_SIZE}")
    name = spec.name
    if name == "lz4":
        return LZ4Compressor()
    if name == "lz4hc":
        return LZ4HCCompressor(spec.level)
    if name == "lzma":
        ds = spec.dictsize or max(32768, min(Z_EROFS_LZMA_MAX_DICT_SIZE, pcluster_size << 2))
        ex = dict(spec.extra)
        return LZMACompressor(spec.level, ds, ex.get("lc"), ex.get("lp"), ex.get("pb"))
    if name == "deflate":
        return DeflateCompressor(spec.level, spec.dictsize or Z_EROFS_DEFLATE_MAX_DICT_SIZE)
    if name == "libdeflate":
        return LibdeflateCompressor(spec.level)
    if name == "zstd":
        ds = spec.dictsize or _pow2_floor(min(Z_EROFS_ZSTD_MAX_DICT_SIZE, pcluster_size << 3))
        return ZstdCompressor(spec.level, ds)
    raise ValueError(f"unknown compressor '{name}'")


def build_compr_cfgs(compressors, max_pclusterblks: int, blkszbits: int):
    """What the superblock needs for a set of compressors.

    Returns ``(available_compr_algs, need_compr_cfgs, records)``:

    * ``available_compr_algs``: bitmap of algorithm ids (superblock u1 when
      COMPR_CFGS is set);
    * ``need_compr_cfgs``: True if any non-LZ4 algorithm is used or
      ``max_pclusterblks > 1`` (mkfs.erofs sets the COMPR_CFGS incompat bit,
      0x2 - the same bit as BIG_PCLUSTER - in that case);
    * ``records``: the bytes to place right after the superblock (each record
      is le16 size + payload, in increasing algorithm id order, 4-byte
      aligned - they all are), or b"" if ``need_compr_cfgs`` is False, in
      which case superblock u1 holds lz4_max_distance (65535) instead.

    Several compressors of one algorithm share one record, built from the one
    with the biggest dictionary (mkfs.erofs writes the max dict size).
    """
    best: dict[int, Compressor] = {}
    for c in compressors:
        cur = best.get(c.algorithm_id)
        if cur is None or (c.dict_size or 0) > (cur.dict_size or 0):
            best[c.algorithm_id] = c
    algs = 0
    for i in best:
        algs |= 1 << i
    need = bool(algs & ~(1 << Z_EROFS_COMPRESSION_LZ4)) or max_pclusterblks > 1
    if not need:
        return algs, False, b""
    recs = b"".join(best[i].cfgs_record(max_pclusterblks, blkszbits) for i in sorted(best))
    return algs, True, recs
