"""LZMA (algorithm Z_EROFS_COMPRESSION_LZMA): ``-zlzma``, as MicroLZMA.

On disk: a raw LZMA1 stream without end marker whose first byte (always 0 in plain LZMA) is
replaced by the bitwise NOT of the lc/lp/pb properties byte, as liblzma's
lzma_microlzma_encoder writes it and the kernel's xz_dec_microlzma reads it.  The encoder fills
a pcluster directly (it stops when the output is full).  The compression configuration
(z_erofs_lzma_cfgs) holds the dictionary size, which bounds the decoder's.
"""
from __future__ import annotations

import ctypes

from ..ondisk import format as fmt
from . import native
from .base import Codec
from .buffers import Pinned, PerThread, int_addr, scratch

LZMA_DICT_SIZE_MIN = 4096      # liblzma's smallest dictionary
_LZMA_OK, _LZMA_STREAM_END = 0, 1
_LZMA_FINISH = 3
_LZMA_PRESET_EXTREME = 1 << 31


class _Stream:
    """An lzma_stream owned by one thread; its allocations are reused."""

    def __init__(self, end):
        self.strm = native.LzmaStream()
        self._end = end

    def __del__(self):
        if self.strm.internal:
            self._end(ctypes.byref(self.strm))


class LZMA(Codec):
    name = "lzma"
    algorithm_id = fmt.Z_EROFS_COMPRESSION_LZMA
    default_level = 6
    level_range = "0-9,100-109"

    def __init__(self, level: int | None = None, dict_size: int | None = None,
                 lc: int | None = None, lp: int | None = None, pb: int | None = None):
        super().__init__(level, dict_size)
        self._args = (level, dict_size, lc, lp, pb)
        self.dict_size = 1 << 15 if dict_size is None else dict_size
        self._props = (lc, lp, pb)
        self._tls = PerThread()

    @classmethod
    def level_ok(cls, level: int) -> bool:
        return 0 <= level <= 9 or 100 <= level <= 109

    @classmethod
    def check_dict_size(cls, dict_size: int) -> None:
        if not LZMA_DICT_SIZE_MIN <= dict_size <= fmt.Z_EROFS_LZMA_MAX_DICT_SIZE:
            raise ValueError(f"lzma dictsize {dict_size} out of range {LZMA_DICT_SIZE_MIN}-"
                             f"{fmt.Z_EROFS_LZMA_MAX_DICT_SIZE}")

    @classmethod
    def auto_dict_size(cls, pcluster_size: int) -> int:
        return max(32768, min(fmt.Z_EROFS_LZMA_MAX_DICT_SIZE, pcluster_size << 2))

    @staticmethod
    def check_props(lc: int, lp: int, pb: int) -> None:
        if lc > 4 or lp > 4 or pb > 4 or lc + lp > 4:
            raise ValueError(f"invalid lzma options lc={lc} lp={lp} pb={pb} "
                             "(need lc+lp <= 4, pb <= 4)")

    def _bind(self):
        lib = native.lzma()
        level = self.level
        preset = (level - 100) | _LZMA_PRESET_EXTREME if level >= 100 else level
        opts = native.LzmaOptions()
        if lib.lib.lzma_lzma_preset(ctypes.byref(opts), preset):
            raise ValueError(f"lzma: unsupported preset {level}")
        opts.dict_size = self.dict_size
        for key, value in zip(("lc", "lp", "pb"), self._props):
            if value is not None:
                setattr(opts, key, value)
        self.check_props(opts.lc, opts.lp, opts.pb)
        self.lc, self.lp, self.pb = opts.lc, opts.lp, opts.pb
        self._opts = opts
        return lib

    def _stream(self, make) -> ctypes.Structure:
        return make(lambda: _Stream(self._lib.lib.lzma_end)).strm

    def _fill(self, addr, n: int, dst, cap: int) -> tuple[int, int]:
        lib = self._library().lib
        s = self._stream(self._tls.encoder)
        ret = lib.lzma_microlzma_encoder(ctypes.byref(s), ctypes.byref(self._opts))
        if ret != _LZMA_OK:
            raise RuntimeError(f"lzma_microlzma_encoder failed ({ret})")
        s.next_in = int_addr(addr)
        s.avail_in = n
        s.next_out = ctypes.addressof(dst)
        s.avail_out = cap
        ret = lib.lzma_code(ctypes.byref(s), _LZMA_FINISH)
        if ret != _LZMA_STREAM_END:
            raise RuntimeError(f"lzma: MicroLZMA encoding failed ({ret})")
        return s.total_in, s.total_out

    def compress(self, src) -> bytes:
        with Pinned(src) as p:
            n = p.size
            if n == 0:
                return b""
            cap = n + (n >> 2) + 256
            dst = scratch.get(cap)
            used, out = self._fill(p.addr, n, dst, cap)
            if used != n:
                raise RuntimeError("lzma: whole-buffer compression did not consume the input")
            return ctypes.string_at(dst, out)

    def _decode(self, stream, length: int, partial: bool):
        lib = self._library("decode").lib
        s = self._stream(self._tls.decoder)
        dst = scratch.get(length)
        with Pinned(stream) as p:
            # uncomp_size_is_exact: the stream must end with the extent unless partial
            if lib.lzma_microlzma_decoder(ctypes.byref(s), p.size, length, 0 if partial else 1,
                                          self.dict_size) != _LZMA_OK:
                raise ValueError("cannot set up the MicroLZMA decoder")
            s.next_in = int_addr(p.addr)
            s.avail_in = p.size
            s.next_out = ctypes.addressof(dst)
            s.avail_out = length
            ret = lib.lzma_code(ctypes.byref(s), _LZMA_FINISH)
        if ret != _LZMA_STREAM_END:
            raise ValueError(f"corrupted MicroLZMA data (liblzma error {ret})")
        if not partial and s.total_in != p.size:
            raise ValueError(f"the stream ends after {s.total_in} of {p.size} bytes")
        return scratch.view[:s.total_out]

    def cfgs_payload(self, max_pclusterblks: int, blkszbits: int) -> bytes:
        return fmt.Z_EROFS_LZMA_CFGS.pack(self.dict_size, 0)
