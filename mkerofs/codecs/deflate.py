"""DEFLATE (algorithm Z_EROFS_COMPRESSION_DEFLATE): ``-zdeflate`` (levels 0-9, dictsize) and
``-zlibdeflate`` (levels 0-12).

On disk: a raw RFC 1951 stream (no zlib or gzip wrapper) whose last block has BFINAL set; the
compression configuration (z_erofs_deflate_cfgs) holds the window bits.  Neither encoder can
fill a given size, so a search (base.fit_prefix) compresses growing prefixes.

Encoders: libdeflate.so.0 when present and the window is the full 32 KiB (2-3x faster than zlib
here, and smaller output), else the stdlib's zlib (also for smaller windows: libdeflate cannot
shrink its window).  Which one served changes the bytes of an image.  Decoding is zlib's.
"""
from __future__ import annotations

import ctypes
import zlib

from ..errors import CompressorUnavailable
from ..ondisk import format as fmt
from . import native
from .base import Codec, default_slack, fit_prefix
from .buffers import Native, Pinned, PerThread, as_bytes_like, scratch

DEFLATE_WINDOW_MAX = fmt.Z_EROFS_DEFLATE_MAX_DICT_SIZE     # RFC 1951
DEFLATE_WINDOW_MIN = 256
_MAX_DSIZE = fmt.Z_EROFS_PCLUSTER_MAX_DSIZE


def _fix_head(out: bytes) -> bytes:
    # A non-final stored block starts with byte 0 (BFINAL=0, BTYPE=00 and five padding bits).
    # EROFS would take that byte for zero padding, so set one of the padding bits (ignored by
    # inflate) instead.
    if out and out[0] == 0:
        return b"\x08" + out[1:]
    return out


class Deflate(Codec):
    """Raw DEFLATE; ``backend="zlib"``/``"libdeflate"`` forces an encoder."""
    name = "deflate"
    algorithm_id = fmt.Z_EROFS_COMPRESSION_DEFLATE
    default_level = 1
    level_range = "0-9"
    max_level = 9

    def __init__(self, level: int | None = None, dict_size: int | None = None,
                 slack: int | None = None, backend: str | None = None):
        super().__init__(level, dict_size)
        self._args = (level, dict_size, slack, backend)
        if backend not in (None, "zlib", "libdeflate"):
            raise ValueError(f"unknown deflate backend '{backend}'")
        self.dict_size = DEFLATE_WINDOW_MAX if dict_size is None else dict_size
        self.windowbits = self.dict_size.bit_length() - 1
        # zlib rejects a raw 256-byte window; 512 keeps distances < 256 anyway
        self._zwbits = max(9, self.windowbits)
        self._zlevel = min(self.level, 9)       # zlib's range
        self.slack = slack
        self._want = backend
        self.backend = None                     # chosen when bound
        self._tls = PerThread()

    @classmethod
    def level_ok(cls, level: int) -> bool:
        return 0 <= level <= cls.max_level

    @classmethod
    def check_dict_size(cls, dict_size: int) -> None:
        if not DEFLATE_WINDOW_MIN <= dict_size <= DEFLATE_WINDOW_MAX:
            raise ValueError(f"{cls.name} dictsize {dict_size} out of range "
                             f"{DEFLATE_WINDOW_MIN}-{DEFLATE_WINDOW_MAX}")

    def __repr__(self):
        return f"{super().__repr__()[:-1]} backend={self.backend}>"

    def _bind(self):
        full_window = self.dict_size == DEFLATE_WINDOW_MAX
        lib = None
        if self._want != "zlib" and full_window:
            try:
                lib = native.libdeflate()
            except CompressorUnavailable:
                if self._want == "libdeflate":
                    raise
        elif self._want == "libdeflate":
            raise CompressorUnavailable("libdeflate cannot use a window below 32 KiB")
        self.backend = "libdeflate" if lib else "zlib"
        # -zlibdeflate served by zlib is a fallback; for -zdeflate, libdeflate only speeds it up
        return lib or native.Library("zlib", zlib.ZLIB_RUNTIME_VERSION, zlib,
                                     fallback=self.name == "libdeflate")

    def _handle(self):
        lib = self._lib.lib
        return self._tls.encoder(lambda: Native(lib.libdeflate_alloc_compressor(self.level),
                                                lib.libdeflate_free_compressor,
                                                "libdeflate_alloc_compressor")).ptr

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        self.check_dest(dest_size)
        self._library()
        slack = self.slack if self.slack is not None else default_slack(dest_size)
        if self.backend == "zlib":
            mv = as_bytes_like(src)
            n = min(len(mv), _MAX_DSIZE)
            if n == 0:
                return 0, b""
            zlevel, zwbits = self._zlevel, -self._zwbits

            def attempt(m):
                out = zlib.compress(mv[:m], zlevel, zwbits)
                return len(out), (out if len(out) <= dest_size else None)

            used, out = fit_prefix(n, dest_size, slack, attempt, hint)
            return used, _fix_head(out)

        with Pinned(src) as p:
            n = min(p.size, _MAX_DSIZE)
            if n == 0:
                return 0, b""
            c = self._handle()
            cap = dest_size * 2          # room to learn the size of near misses
            dst = scratch.get(cap)
            addr = p.addr
            compress = self._lib.lib.libdeflate_deflate_compress

            def attempt(m):
                r = compress(c, addr, m, dst, cap)
                if not r:
                    return None, None
                return r, (ctypes.string_at(dst, r) if r <= dest_size else None)

            used, out = fit_prefix(n, dest_size, slack, attempt, hint)
        return used, _fix_head(out)

    def compress(self, src) -> bytes:
        self._library()
        if self.backend == "zlib":
            mv = as_bytes_like(src)
            if not len(mv):
                return b""
            return _fix_head(zlib.compress(mv, self._zlevel, -self._zwbits))
        with Pinned(src) as p:
            if not p.size:
                return b""
            cap = p.size + (p.size >> 3) + 64
            dst = scratch.get(cap)
            r = self._lib.lib.libdeflate_deflate_compress(self._handle(), p.addr, p.size, dst,
                                                          cap)
            if not r:
                raise RuntimeError("libdeflate compression failed")
            return _fix_head(ctypes.string_at(dst, r))

    def _decode(self, stream, length: int, partial: bool):
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(stream, length if partial else length + 1)
        except zlib.error as err:
            raise ValueError(f"corrupted data ({err})") from None
        if not partial and len(out) == length and (not d.eof or d.unused_data or
                                                   d.unconsumed_tail):
            raise ValueError("the stream does not end with the extent")
        return out

    def cfgs_payload(self, max_pclusterblks: int, blkszbits: int) -> bytes:
        return fmt.Z_EROFS_DEFLATE_CFGS.pack(self.windowbits)


class Libdeflate(Deflate):
    """``-zlibdeflate``: the same on-disk DEFLATE, levels 0-12, no dictsize; without
    libdeflate.so.0 it is zlib's (levels above 9 then act as 9)."""
    name = "libdeflate"
    level_range = "0-12"
    max_level = 12

    def __init__(self, level: int | None = None, slack: int | None = None,
                 backend: str | None = None):
        super().__init__(level, None, slack, backend)
        self._args = (level, slack, backend)

    @classmethod
    def check_dict_size(cls, dict_size: int) -> None:
        raise ValueError(f"dictsize is not supported for {cls.name}")

