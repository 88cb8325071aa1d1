"""The one place that finds and binds native compression libraries (ctypes).

Nothing is loaded at import time: each library is looked up on the first use of an algorithm
that needs it, once per process, and checked for the version whose functions we call:

* LZ4 >= 1.9 (LZ4_compress_destSize, LZ4_compress_HC_destSize, LZ4_decompress_safe_partial
  with the semantics of 1.9): the system's liblz4.so.1.  LZ4_compress_destSize is not part of
  python-lz4's public API, so without a system liblz4 the only other copy is the one python-lz4
  links into its extension module (lz4/block/_block*.so), which exports the liblz4 symbols: an
  explicit fallback, reported as such.
* liblzma >= 5.4 with lzma_microlzma_encoder/decoder: the system's liblzma.so.5 only (Python's
  lzma module does not offer MicroLZMA).
* zstd >= 1.4 (ZSTD_compress2 and the advanced parameter API): the system's libzstd.so.1, else
  the public API of the `zstandard` package (a different zstd version may give other bytes).
* libdeflate.so.0: optional; DEFLATE falls back to the stdlib's zlib.

MKEROFS_NATIVE=bundled (read on first use) skips the system liblz4/libzstd/libdeflate and takes
the fallbacks, so that they can be tested on a machine that has the system libraries.

A missing or too old library raises CompressorUnavailable naming the library.  The struct layouts
below are the public, stable ABIs of these libraries (zstd.h, lzma/base.h, lzma/lzma12.h).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import CompressorUnavailable

__all__ = ["Library", "lz4", "lzma", "zstd", "libdeflate", "reset", "mode",
           "ZstdBuffer", "LzmaStream", "LzmaOptions"]

LZ4_MIN_VERSION = 10900           # LZ4_versionNumber(): major * 10000 + minor * 100 + release
LZMA_MIN_VERSION = 50040002       # lzma_version_number(): 5.4.0 stable
ZSTD_MIN_VERSION = 10400          # ZSTD_versionNumber()


@dataclass
class Library:
    """A bound library: `lib` has its prototypes declared (for the zstandard package: the module)."""
    name: str                      # "liblz4.so.1", "python-lz4's bundled LZ4", "zstandard"
    version: str
    lib: Any
    gil_held: Any = None           # liblz4 again through PyDLL: calls that keep the GIL
    fallback: bool = False         # not the system library

    def describe(self) -> str:
        text = f"{self.name} {self.version}" if self.version else self.name
        return text + (" (fallback)" if self.fallback else "")


def mode() -> str:
    """"system" (system libraries first, then the fallbacks) or "bundled" (the fallbacks only)."""
    value = os.environ.get("MKEROFS_NATIVE", "system") or "system"
    if value not in ("system", "bundled"):
        raise CompressorUnavailable(f"MKEROFS_NATIVE={value!r}: expected 'system' or 'bundled'")
    return value


def _open(sonames: tuple[str, ...], symbols: tuple[str, ...], loader=ctypes.CDLL):
    """(library, path) of the first name that loads and exports every symbol, or (None, None)."""
    for name in sonames:
        try:
            lib = loader(name)
        except OSError:
            continue
        if all(hasattr(lib, s) for s in symbols):
            return lib, name
    return None, None


def _declare(lib, prototypes: dict[str, tuple]) -> Any:
    for fname, (restype, *argtypes) in prototypes.items():
        fn = getattr(lib, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _dotted(number: int, *scales: int) -> str:
    parts = []
    for s in scales:
        parts.append(str(number // s))
        number %= s
    return ".".join(parts)


# ---------------------------------------------------------------- LZ4
_int_p = ctypes.POINTER(ctypes.c_int)
_c_int, _vp, _sz = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
_LZ4_PROTOTYPES = {
    "LZ4_versionNumber": (_c_int,),
    "LZ4_compress_destSize": (_c_int, _vp, _vp, _int_p, _c_int),
    "LZ4_compress_HC_destSize": (_c_int, _vp, _vp, _vp, _int_p, _c_int, _c_int),
    "LZ4_sizeofStateHC": (_c_int,),
    "LZ4_compressBound": (_c_int, _c_int),
    "LZ4_decompress_safe": (_c_int, _vp, _vp, _c_int, _c_int),
    "LZ4_decompress_safe_partial": (_c_int, _vp, _vp, _c_int, _c_int, _c_int),
}


def _python_lz4_extension() -> list[str]:
    """python-lz4's extension module, found without importing the package."""
    try:
        spec = importlib.util.find_spec("lz4")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [p for d in spec.submodule_search_locations
            for p in sorted(glob.glob(os.path.join(d, "block", "_block*.so")))]


def _bind_lz4() -> Library:
    symbols = tuple(_LZ4_PROTOTYPES)
    lib = path = None
    fallback = mode() == "bundled"
    if not fallback:
        lib, path = _open(("liblz4.so.1", "liblz4.so"), symbols)
    if lib is None:
        lib, path = _open(tuple(_python_lz4_extension()), symbols)
        fallback = lib is not None
    if lib is None:
        raise CompressorUnavailable("liblz4.so.1 not found (nor python-lz4's bundled LZ4)")
    name = path if not fallback else "python-lz4's bundled LZ4"
    _declare(lib, _LZ4_PROTOTYPES)
    version = lib.LZ4_versionNumber()
    if version < LZ4_MIN_VERSION:
        raise CompressorUnavailable(f"{name} {_dotted(version, 10000, 100, 1)} is too old "
                                    "(need LZ4 >= 1.9)")
    # The same functions called with the GIL held: LZ4 on a few KiB takes microseconds, less
    # than it costs to hand the GIL back and forth between threads that mostly run Python.
    gil_held = _declare(ctypes.PyDLL(lib._name), _LZ4_PROTOTYPES)
    return Library(name, _dotted(version, 10000, 100, 1), lib, gil_held, fallback)


# ---------------------------------------------------------------- zstd
class ZstdBuffer(ctypes.Structure):        # ZSTD_inBuffer / ZSTD_outBuffer
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


_zbuf_p = ctypes.POINTER(ZstdBuffer)
_ZSTD_PROTOTYPES = {
    "ZSTD_versionNumber": (ctypes.c_uint,),
    "ZSTD_createCCtx": (_vp,),
    "ZSTD_freeCCtx": (_sz, _vp),
    "ZSTD_CCtx_setParameter": (_sz, _vp, _c_int, _c_int),
    "ZSTD_compress2": (_sz, _vp, _vp, _sz, _vp, _sz),
    "ZSTD_compressBound": (_sz, _sz),
    "ZSTD_isError": (ctypes.c_uint, _sz),
    "ZSTD_getErrorName": (ctypes.c_char_p, _sz),
    "ZSTD_createDCtx": (_vp,),
    "ZSTD_freeDCtx": (_sz, _vp),
    "ZSTD_DCtx_setParameter": (_sz, _vp, _c_int, _c_int),
    "ZSTD_DCtx_reset": (_sz, _vp, _c_int),
    "ZSTD_decompressStream": (_sz, _vp, _zbuf_p, _zbuf_p),
}


def _bind_zstd() -> Library:
    lib = path = None
    if mode() != "bundled":
        lib, path = _open(("libzstd.so.1", "libzstd.so"), tuple(_ZSTD_PROTOTYPES))
    if lib is not None:
        _declare(lib, _ZSTD_PROTOTYPES)
        version = lib.ZSTD_versionNumber()
        text = _dotted(version, 10000, 100, 1)
        if version < ZSTD_MIN_VERSION:
            raise CompressorUnavailable(f"{path} {text} is too old (need zstd >= 1.4)")
        return Library(path, text, lib)
    try:
        import zstandard
    except ImportError:
        raise CompressorUnavailable("libzstd.so.1 not found (nor the 'zstandard' "
                                    "package)") from None
    version = tuple(zstandard.ZSTD_VERSION)
    text = ".".join(map(str, version))
    if version < (1, 4, 0):
        raise CompressorUnavailable(f"the 'zstandard' package's zstd {text} is too old "
                                    "(need zstd >= 1.4)")
    return Library(f"zstandard {zstandard.__version__} with zstd", text, zstandard,
                   fallback=True)


# ---------------------------------------------------------------- liblzma
class LzmaStream(ctypes.Structure):        # lzma_stream
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


class LzmaOptions(ctypes.Structure):       # lzma_options_lzma
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


_strm_p = ctypes.POINTER(LzmaStream)
_LZMA_PROTOTYPES = {
    "lzma_version_number": (ctypes.c_uint32,),
    "lzma_microlzma_encoder": (_c_int, _strm_p, ctypes.POINTER(LzmaOptions)),
    "lzma_microlzma_decoder": (_c_int, _strm_p, ctypes.c_uint64, ctypes.c_uint64,
                               ctypes.c_ubyte, ctypes.c_uint32),
    "lzma_lzma_preset": (ctypes.c_ubyte, ctypes.POINTER(LzmaOptions), ctypes.c_uint32),
    "lzma_code": (_c_int, _strm_p, _c_int),
    "lzma_end": (None, _strm_p),
}


def _bind_lzma() -> Library:
    lib, path = _open(("liblzma.so.5", "liblzma.so"), ("lzma_version_number",))
    if lib is None:
        raise CompressorUnavailable("liblzma.so.5 not found")
    lib.lzma_version_number.restype = ctypes.c_uint32
    version = lib.lzma_version_number()
    text = _dotted(version // 10, 1000000, 1000, 1)
    if version < LZMA_MIN_VERSION or not hasattr(lib, "lzma_microlzma_encoder"):
        raise CompressorUnavailable(f"{path} {text} is too old (MicroLZMA needs liblzma >= 5.4)")
    return Library(path, text, _declare(lib, _LZMA_PROTOTYPES))


# ---------------------------------------------------------------- libdeflate
_LIBDEFLATE_PROTOTYPES = {
    "libdeflate_alloc_compressor": (_vp, _c_int),
    "libdeflate_deflate_compress": (_sz, _vp, _vp, _sz, _vp, _sz),
    "libdeflate_free_compressor": (None, _vp),
}


def _bind_libdeflate() -> Library:
    if mode() == "bundled":
        raise CompressorUnavailable("libdeflate.so.0 not used (MKEROFS_NATIVE=bundled)")
    lib, path = _open(("libdeflate.so.0", "libdeflate.so"), tuple(_LIBDEFLATE_PROTOTYPES))
    if lib is None:
        raise CompressorUnavailable("libdeflate.so.0 not found")
    # libdeflate has no version function; its soname is stable since 1.0
    return Library(path, "", _declare(lib, _LIBDEFLATE_PROTOTYPES))


# ---------------------------------------------------------------- loading once
_lock = threading.Lock()
_bound: dict[str, Library | CompressorUnavailable] = {}
_BINDERS: dict[str, Callable[[], Library]] = {
    "lz4": _bind_lz4, "zstd": _bind_zstd, "lzma": _bind_lzma, "libdeflate": _bind_libdeflate,
}


def _get(which: str) -> Library:
    got = _bound.get(which)
    if got is None:
        with _lock:
            got = _bound.get(which)
            if got is None:
                try:
                    got = _BINDERS[which]()
                except CompressorUnavailable as err:
                    got = err
                _bound[which] = got
    if isinstance(got, CompressorUnavailable):
        raise CompressorUnavailable(str(got))
    return got


def lz4() -> Library:
    return _get("lz4")


def zstd() -> Library:
    return _get("zstd")


def lzma() -> Library:
    return _get("lzma")


def libdeflate() -> Library:
    return _get("libdeflate")


def reset() -> None:
    """Forget what was bound (tests change MKEROFS_NATIVE); objects bound before keep theirs."""
    with _lock:
        _bound.clear()

