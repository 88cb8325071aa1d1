"""What every codec offers, and the longest-prefix search for codecs without a destsize API.

EROFS compresses file data into *physical clusters* (pclusters, 1..256 blocks, at most
Z_EROFS_PCLUSTER_MAX_SIZE bytes) that the kernel decodes one by one, so each holds one complete
stream, and the writer wants as much input as possible in each: "compress the longest prefix of
``src`` whose output fits in ``dest_size`` bytes".  A decoded extent is at most
Z_EROFS_PCLUSTER_MAX_DSIZE bytes (the kernel refuses more).

The stream is right-aligned in its pcluster after zero bytes, which the kernel skips to find
where it starts; no stream may therefore begin with a zero byte (true by construction for LZ4
with output, MicroLZMA and zstd; the DEFLATE codec sees to it).

Decoding is as strict as the kernel and fsck.erofs: a stream decodes to exactly the extent's
length and ends there; a *partial* decode (deduplicated partial references) only needs the
extent to be a prefix of what the stream holds.  A bad stream raises ValueError; a missing
library raises CompressorUnavailable, which is not a ValueError: a reader never takes it for a
damaged image.
"""
from __future__ import annotations

import ctypes

from ..errors import CompressorUnavailable
from ..ondisk import format as fmt
from . import native
from .buffers import Pinned, scratch, strip_zero_padding


class Codec:
    """One algorithm, configured (level, dictionary): compresses into a size and decodes.

    A codec may be shared by threads (native state is per thread) and pickled (it crosses to a
    worker process as its constructor arguments; the library is bound again there on first use).
    """
    name = ""                        # the -z name: lz4, lz4hc, lzma, deflate, libdeflate, zstd
    algorithm_id = -1                # on-disk algorithm (Z_EROFS_COMPRESSION_*)
    default_level: int | None = None
    level_range = ""                 # for messages; "" = no levels
    negative_is_default = True       # mkfs.erofs maps a negative -z level to the default

    def __init__(self, level: int | None = None, dict_size: int | None = None):
        self._args = (level, dict_size)
        if level is not None:
            self.check_level(level)
        self.level = self.default_level if level is None else level
        if dict_size is not None:
            self.check_dict_size(dict_size)
        self.dict_size = dict_size
        self._lib = None

    # -- facts for -z parsing and construction --------------------------------------------------
    @classmethod
    def level_ok(cls, level: int) -> bool:
        return False

    @classmethod
    def check_level(cls, level: int) -> None:
        if not cls.level_range:
            raise ValueError(f"compression level {level} is not supported for {cls.name}")
        if not cls.level_ok(level):
            raise ValueError(f"{cls.name} level {level} out of range {cls.level_range}")

    @classmethod
    def check_dict_size(cls, dict_size: int) -> None:
        raise ValueError(f"dictsize is not supported for {cls.name}")

    @classmethod
    def auto_dict_size(cls, pcluster_size: int) -> int | None:
        """The dictionary mkfs.erofs picks for an image whose largest pcluster has this size."""
        return None

    # -- binding the library ------------------------------------------------------------------
    def _bind(self):
        """Load what this codec calls and set up per-codec native state; returns the library."""
        raise NotImplementedError

    def _library(self, doing: str = "compress with"):
        if self._lib is None:
            try:
                self._lib = self._bind()
            except CompressorUnavailable as err:
                raise CompressorUnavailable(f"cannot {doing} {self.name}: {err}") from None
        return self._lib

    def require(self) -> "Codec":
        """Bind the library now (a build fails before it starts, not in a worker)."""
        self._library()
        return self

    def library(self) -> native.Library:
        """What serves this codec (binds it)."""
        return self._library("use")

    # -- the interface ------------------------------------------------------------------------
    def compress_destsize(self, src, dest_size: int, hint: int | None = None
                          ) -> tuple[int, bytes]:
        """Compress the longest prefix of ``src`` (any C-contiguous buffer, at most
        Z_EROFS_PCLUSTER_MAX_DSIZE of it) whose stream fits in ``dest_size`` bytes; return
        (consumed, stream).  ``hint``: the expected consumed length (e.g. the previous
        pcluster's), which only speeds up deflate/zstd; the result is a pure function of the
        arguments."""
        self.check_dest(dest_size)
        with Pinned(src) as p:
            n = min(p.size, fmt.Z_EROFS_PCLUSTER_MAX_DSIZE)
            if n == 0:
                return 0, b""
            dst = scratch.get(dest_size)
            used, size = self._fill(p.addr, n, dst, dest_size)
            return used, ctypes.string_at(dst, size)

    def _fill(self, addr, n: int, dst, cap: int) -> tuple[int, int]:
        """For encoders that stop when the output is full: compress up to ``n`` bytes at
        ``addr`` into at most ``cap`` bytes of ``dst``; (bytes consumed, bytes written)."""
        raise NotImplementedError

    def compress(self, src) -> bytes:
        """One stream holding all of ``src`` (b"" for empty input)."""
        raise NotImplementedError

    def _decode(self, stream, length: int, partial: bool):
        """The first ``length`` decoded bytes as a bytes-like object (possibly fewer when the
        stream holds fewer); raises ValueError on a bad stream or, unless ``partial``, one that
        goes on after them."""
        raise NotImplementedError

    def decode(self, data, length: int, partial: bool = False) -> bytes:
        """Decode the pcluster ``data`` (leading zero padding skipped) to exactly ``length``
        bytes."""
        if length <= 0:
            return b""
        return bytes(self._decoded(data, length, partial))

    def check(self, data, length: int, partial: bool = False) -> None:
        """decode() without keeping the bytes (verification of a whole image)."""
        if length > 0:
            self._decoded(data, length, partial)

    def _decoded(self, data, length: int, partial: bool):
        try:
            out = self._decode(strip_zero_padding(data), length, partial)
        except (ValueError, OverflowError) as err:
            raise ValueError(f"{self.name}: {err}") from None
        if len(out) != length:
            raise ValueError(f"{self.name}: the pcluster decodes to {len(out)} bytes, "
                             f"not {length}")
        return out

    def cfgs_payload(self, max_pclusterblks: int, blkszbits: int) -> bytes:
        """This algorithm's z_erofs_*_cfgs record (after the superblock)."""
        raise NotImplementedError

    def cfgs_record(self, max_pclusterblks: int, blkszbits: int) -> bytes:
        """The payload behind its le16 length, as stored."""
        payload = self.cfgs_payload(max_pclusterblks, blkszbits)
        return fmt.EROFS_METADATA_RECORD_LEN.pack(len(payload)) + payload

    def __reduce__(self):
        return type(self), self._args

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name} level={self.level} "
                f"dict_size={self.dict_size}>")

    @staticmethod
    def check_dest(dest_size: int) -> None:
        if not 16 <= dest_size <= fmt.Z_EROFS_PCLUSTER_MAX_SIZE:
            raise ValueError(f"dest_size {dest_size} out of range 16-"
                             f"{fmt.Z_EROFS_PCLUSTER_MAX_SIZE}")


def fit_prefix(n: int, dest: int, slack: int, attempt, hint: int | None = None,
               max_tries: int = 16) -> tuple[int, bytes]:
    """Longest-prefix search for codecs without a native destsize API.

    ``attempt(m)`` compresses ``src[:m]`` and returns (size, out): ``out`` is None when the
    result does not fit in ``dest`` (``size`` is then the real compressed size if known, else
    None).

    Compressed size grows roughly linearly with ``m``, so guesses come from secant steps through
    measured points (between the two bracketing attempts, or through the last two fits while no
    upper bound is known), with bisection as a safeguard whenever two attempts in a row land on
    the same side.  It stops once a fit leaves at most ``slack`` bytes unused, when the bracket
    is narrower than ~0.1% of the input, or after ``max_tries`` attempts (the best fit so far
    wins).

    The first attempt is ``hint`` (e.g. what the previous pcluster of the same file consumed)
    or 3 * dest.  The result is a pure function of (data, dest, slack, hint): no hidden state,
    so images are reproducible whatever the thread scheduling.
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


def default_slack(dest: int) -> int:
    """What a search accepts to leave unused in a pcluster before it stops: <=0.4% at 4 KiB,
    <=0.2% for big pclusters."""
    return max(16, dest >> 9)
