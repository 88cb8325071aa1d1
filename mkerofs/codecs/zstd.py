"""Zstandard (algorithm Z_EROFS_COMPRESSION_ZSTD): ``-zzstd``.

On disk: one complete zstd frame per pcluster (magic, a frame header with the content size, no
checksum) whose window is at most the dictionary size; the compression configuration
(z_erofs_zstd_cfgs) holds that window as windowlog - Z_EROFS_ZSTD_WINDOWLOG_MIN, and the kernel
decodes with no bigger window.  zstd cannot fill a given size, so a search (base.fit_prefix)
compresses growing prefixes.

Served by the system's libzstd (ZSTD_compress2, streaming decoder) or else by the `zstandard`
package's public API (see native.py); a different zstd version may give other bytes.
"""
from __future__ import annotations

import ctypes

from ..ondisk import format as fmt
from . import native
from .base import Codec, default_slack, fit_prefix
from .buffers import Native, Pinned, PerThread, as_bytes_like, int_addr, scratch

ZSTD_MIN_LEVEL = -(1 << 17)          # ZSTD_minCLevel() of zstd >= 1.3.6
ZSTD_MAX_LEVEL = 22
# zstd.h enum values (stable API)
_ZSTD_c_compressionLevel = 100
_ZSTD_c_windowLog = 101
_ZSTD_c_contentSizeFlag = 200
_ZSTD_c_checksumFlag = 201
_ZSTD_d_windowLogMax = 100
_ZSTD_reset_session_only = 1
_MAX_DSIZE = fmt.Z_EROFS_PCLUSTER_MAX_DSIZE
# the zstandard fallback decodes this much input per call: bounds what one call may produce
_FEED = 512


def _error(lib, code: int) -> str:
    return lib.ZSTD_getErrorName(code).decode(errors="replace")


class Zstd(Codec):
    name = "zstd"
    algorithm_id = fmt.Z_EROFS_COMPRESSION_ZSTD
    default_level = 3
    level_range = f"{ZSTD_MIN_LEVEL}-{ZSTD_MAX_LEVEL}"
    negative_is_default = False

    def __init__(self, level: int | None = None, dict_size: int | None = None,
                 slack: int | None = None):
        super().__init__(level, dict_size)
        self._args = (level, dict_size, slack)
        self.dict_size = 1 << 15 if dict_size is None else dict_size
        self.window_log = self.dict_size.bit_length() - 1
        self.slack = slack
        self._tls = PerThread()

    @classmethod
    def level_ok(cls, level: int) -> bool:
        return ZSTD_MIN_LEVEL <= level <= ZSTD_MAX_LEVEL

    @classmethod
    def check_dict_size(cls, dict_size: int) -> None:
        low = 1 << fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN
        if dict_size & (dict_size - 1) or not low <= dict_size <= fmt.Z_EROFS_ZSTD_MAX_DICT_SIZE:
            raise ValueError(f"zstd dictsize {dict_size} must be a power of two in "
                             f"{low}-{fmt.Z_EROFS_ZSTD_MAX_DICT_SIZE}")

    @classmethod
    def auto_dict_size(cls, pcluster_size: int) -> int:
        """The power of two <= min(Z_EROFS_ZSTD_MAX_DICT_SIZE, 8 * pcluster)."""
        return 1 << (min(fmt.Z_EROFS_ZSTD_MAX_DICT_SIZE, pcluster_size << 3).bit_length() - 1)

    def _bind(self):
        lib = native.zstd()
        self._api = lib.fallback
        self._new_encoder(lib)              # refuses bad parameters now
        return lib

    def _new_encoder(self, lib: native.Library):
        """A compression context (the zstandard package's ZstdCompressor for the fallback)."""
        if lib.fallback:
            z = lib.lib
            params = z.ZstdCompressionParameters(compression_level=self.level,
                                                 window_log=self.window_log,
                                                 write_content_size=1, write_checksum=0)
            return z.ZstdCompressor(compression_params=params)
        lib = lib.lib
        cctx = Native(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx, "ZSTD_createCCtx")
        for p, v in ((_ZSTD_c_compressionLevel, self.level), (_ZSTD_c_windowLog, self.window_log),
                     (_ZSTD_c_contentSizeFlag, 1), (_ZSTD_c_checksumFlag, 0)):
            r = lib.ZSTD_CCtx_setParameter(cctx.ptr, p, v)
            if lib.ZSTD_isError(r):
                raise ValueError(f"zstd: bad parameter {p}={v}: {_error(lib, r)}")
        return cctx

    def _new_decoder(self, lib: native.Library):
        if lib.fallback:
            return lib.lib.ZstdDecompressor(max_window_size=1 << self.window_log)
        lib = lib.lib
        return Native(lib.ZSTD_createDCtx(), lib.ZSTD_freeDCtx, "ZSTD_createDCtx")

    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        self.check_dest(dest_size)
        bound = self._library()
        lib = bound.lib
        enc = self._tls.encoder(lambda: self._new_encoder(bound))
        slack = self.slack if self.slack is not None else default_slack(dest_size)
        if self._api:
            mv = as_bytes_like(src)
            n = min(len(mv), _MAX_DSIZE)
            if n == 0:
                return 0, b""

            def attempt(m):
                out = enc.compress(mv[:m])
                return len(out), (out if len(out) <= dest_size else None)

            return fit_prefix(n, dest_size, slack, attempt, hint)
        with Pinned(src) as p:
            n = min(p.size, _MAX_DSIZE)
            if n == 0:
                return 0, b""
            cctx = enc.ptr
            cap = dest_size * 2          # room to learn the size of near misses
            dst = scratch.get(cap)
            addr = p.addr
            compress2 = lib.ZSTD_compress2
            is_error = lib.ZSTD_isError

            def attempt(m):
                # with a too small dst, zstd gives up at the first block that does not fit,
                # so far misses are cheap
                r = compress2(cctx, dst, cap, addr, m)
                if is_error(r):
                    return None, None
                return r, (ctypes.string_at(dst, r) if r <= dest_size else None)

            return fit_prefix(n, dest_size, slack, attempt, hint)

    def compress(self, src) -> bytes:
        bound = self._library()
        lib = bound.lib
        enc = self._tls.encoder(lambda: self._new_encoder(bound))
        if self._api:
            return enc.compress(src) if len(as_bytes_like(src)) else b""
        with Pinned(src) as p:
            if not p.size:
                return b""
            cap = lib.ZSTD_compressBound(p.size)
            dst = scratch.get(cap)
            r = lib.ZSTD_compress2(enc.ptr, dst, cap, p.addr, p.size)
            if lib.ZSTD_isError(r):
                raise RuntimeError(f"zstd: {_error(lib, r)}")
            return ctypes.string_at(dst, r)

    def _decode(self, stream, length: int, partial: bool):
        bound = self._library("decode")
        lib = bound.lib
        dec = self._tls.decoder(lambda: self._new_decoder(bound))
        # one spare byte: a stream that goes on past the extent shows as output beyond it
        cap = length if partial else length + 1
        if self._api:
            return self._decode_api(lib, dec, stream, length, cap, partial)
        d = dec.ptr
        lib.ZSTD_DCtx_reset(d, _ZSTD_reset_session_only)
        lib.ZSTD_DCtx_setParameter(d, _ZSTD_d_windowLogMax,
                                   max(self.window_log, fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN))
        dst = scratch.get(cap)
        with Pinned(stream) as p:
            inb = native.ZstdBuffer(int_addr(p.addr), p.size, 0)
            outb = native.ZstdBuffer(ctypes.addressof(dst), cap, 0)
            while True:
                before = (inb.pos, outb.pos)
                r = lib.ZSTD_decompressStream(d, ctypes.byref(outb), ctypes.byref(inb))
                if lib.ZSTD_isError(r):
                    raise ValueError(_error(lib, r))
                if r == 0 or outb.pos == outb.size and partial or (inb.pos, outb.pos) == before:
                    break
        if not partial and outb.pos == length and (r != 0 or inb.pos != inb.size):
            raise ValueError("the frame does not end with the extent")
        return scratch.view[:outb.pos]

    @staticmethod
    def _decode_api(zstandard, dec, stream, length: int, cap: int, partial: bool):
        """Through the zstandard package, fed a little input at a time: a hostile frame cannot
        make one call produce much more than the extent."""
        obj = dec.decompressobj()
        mv = as_bytes_like(stream)
        out = bytearray()
        pos = 0
        try:
            while pos < len(mv) and len(out) < cap and not obj.eof:
                out += obj.decompress(mv[pos:pos + _FEED])
                pos += _FEED
        except zstandard.ZstdError as err:
            raise ValueError(str(err)) from None
        if partial:
            return out[:length]
        if len(out) == length and (not obj.eof or obj.unused_data or pos < len(mv)):
            raise ValueError("the frame does not end with the extent")
        return out

    def cfgs_payload(self, max_pclusterblks: int, blkszbits: int) -> bytes:
        return fmt.Z_EROFS_ZSTD_CFGS.pack(0, self.window_log - fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN)
