"""LZ4 (algorithm Z_EROFS_COMPRESSION_LZ4): ``-zlz4`` and ``-zlz4hc``.

On disk: one raw LZ4 block per pcluster, no frame.  The kernel runs LZ4_decompress_safe (or
its partial form) on exactly the stored bytes, so the block must decode to exactly the extent.
The compression configuration (z_erofs_lz4_cfgs) holds the match distance the encoder used
and the largest pcluster in blocks.  The encoders are LZ4_compress_destSize (fast) and
LZ4_compress_HC_destSize (levels 0-12), which fill a pcluster directly.
"""
from __future__ import annotations

import ctypes
from typing import Callable

from ..ondisk import format as fmt
from . import native
from .base import Codec
from .buffers import Pinned, PerThread, scratch

# LZ4 (not HC) output at most this big is produced with the GIL held (see native._bind_lz4)
GIL_HELD_MAX = 16384
_MAX_DSIZE = fmt.Z_EROFS_PCLUSTER_MAX_DSIZE
_LZ4_MAX_INPUT_SIZE = 0x7E000000


class LZ4(Codec):
    """LZ4 raw blocks via LZ4_compress_destSize."""
    name = "lz4"
    algorithm_id = fmt.Z_EROFS_COMPRESSION_LZ4
    max_distance = fmt.LZ4_DISTANCE_MAX

    def _bind(self):
        lib = native.lz4()
        self._fast, self._slow = lib.gil_held, lib.lib
        return lib

    def _destsize_ref(self, src_addr, dst, sz_ref, dest_size: int) -> int:
        if self._lib is None:
            self._library()
        lib = self._fast if dest_size <= GIL_HELD_MAX else self._slow
        return lib.LZ4_compress_destSize(src_addr, dst, sz_ref, dest_size)

    def _fill(self, addr, n: int, dst, cap: int) -> tuple[int, int]:
        sz = ctypes.c_int(n)
        out = self._destsize_ref(addr, dst, ctypes.byref(sz), cap)
        if out <= 0:
            raise RuntimeError(f"{self.name} compression failed")
        return sz.value, out

    def destsize_filler(self, dest_size: int) -> Callable[[int, int], tuple[int, bytes]]:
        """fill(addr, n): compress_destsize() into `dest_size` bytes of the `n` (> 0) bytes at
        address `addr`, which the caller keeps alive: for the many small pclusters of a
        segment, in this thread, without pinning a buffer each time.  The native function,
        its state and the output buffer are looked up here, once per segment, not in fill(),
        which runs once per pcluster (~0.5 us less a call)."""
        native = self._destsize_native(dest_size)
        dst = scratch.get(dest_size)
        view = scratch.view
        name = self.name
        sz = ctypes.c_int(0)
        sz_ref = ctypes.byref(sz)

        def fill(addr: int, n: int) -> tuple[int, bytes]:
            sz.value = n if n < _MAX_DSIZE else _MAX_DSIZE
            out = native(addr, dst, sz_ref, dest_size)
            if out <= 0:
                raise RuntimeError(f"{name} compression failed")
            return sz.value, view[:out].tobytes()
        return fill

    def _destsize_native(self, dest_size: int) -> Callable:
        """native(src, dst, int *srcSize, dest_size) for this thread (see _destsize_ref)."""
        if self._lib is None:
            self._library()
        return (self._fast if dest_size <= GIL_HELD_MAX else self._slow).LZ4_compress_destSize

    def compress(self, src) -> bytes:
        with Pinned(src) as p:
            n = p.size
            if n == 0:
                return b""
            if n > _LZ4_MAX_INPUT_SIZE:
                raise ValueError("input too large for LZ4")
            cap = self._library().lib.LZ4_compressBound(n)
            dst = scratch.get(cap)
            used, out = self._fill(p.addr, n, dst, cap)
            if used != n:
                raise RuntimeError(f"{self.name} compression failed")
            return ctypes.string_at(dst, out)

    def _decode(self, stream, length: int, partial: bool):
        lib = self._library("decode").lib
        dst = scratch.get(length)
        with Pinned(stream) as p:
            if partial:
                got = lib.LZ4_decompress_safe_partial(p.addr, dst, p.size, length, length)
            else:
                got = lib.LZ4_decompress_safe(p.addr, dst, p.size, length)
        if got < 0:
            raise ValueError(f"corrupted data (decoder returned {got})")
        return scratch.view[:got]

    def cfgs_payload(self, max_pclusterblks: int, blkszbits: int) -> bytes:
        if not 1 <= max_pclusterblks or \
                (max_pclusterblks << blkszbits) > fmt.Z_EROFS_PCLUSTER_MAX_SIZE:
            raise ValueError(f"max_pclusterblks {max_pclusterblks} out of range")
        return fmt.Z_EROFS_LZ4_CFGS.pack(self.max_distance, max_pclusterblks)


class LZ4HC(LZ4):
    """LZ4 raw blocks via LZ4_compress_HC_destSize (levels 0-12)."""
    name = "lz4hc"
    default_level = 9
    level_range = "0-12"

    @classmethod
    def level_ok(cls, level: int) -> bool:
        return 0 <= level <= 12

    def _bind(self):
        lib = super()._bind()
        self._state_size = lib.lib.LZ4_sizeofStateHC()
        self._tls = PerThread()
        return lib

    def _destsize_ref(self, src_addr, dst, sz_ref, dest_size):
        lib = self._lib or self._library()
        st = self._tls.encoder(self._new_state)
        return lib.lib.LZ4_compress_HC_destSize(st, src_addr, dst, sz_ref, dest_size, self.level)

    def _destsize_native(self, dest_size: int) -> Callable:
        native = (self._lib or self._library()).lib.LZ4_compress_HC_destSize
        state, level = self._tls.encoder(self._new_state), self.level
        return lambda src, dst, sz_ref, dest: native(state, src, dst, sz_ref, dest, level)

    def _new_state(self):
        return ctypes.create_string_buffer(self._state_size)
