"""The codecs by -z name and by on-disk algorithm id, and what the superblock needs from them.

Several -z names share one on-disk algorithm (lz4/lz4hc, deflate/libdeflate); an image only
records the algorithm, so the reader decodes with the codec named after it.
"""
from __future__ import annotations

from ..errors import CompressorUnavailable
from ..ondisk import format as fmt
from .base import Codec
from .deflate import Deflate, Libdeflate
from .lz4 import LZ4, LZ4HC
from .lzma import LZMA
from .zstd import Zstd

__all__ = ["CODECS", "ALGORITHM_NAMES", "codec_for", "decoder", "build_compr_cfgs",
           "available", "report"]

CODECS: dict[str, type[Codec]] = {c.name: c for c in (LZ4, LZ4HC, LZMA, Deflate, Libdeflate,
                                                       Zstd)}
# on-disk algorithm id -> the name of its decoder (and of the algorithm in messages)
ALGORITHM_NAMES: dict[int, str] = {c.algorithm_id: c.name for c in (LZ4, LZMA, Deflate, Zstd)}
assert sorted(ALGORITHM_NAMES) == list(range(fmt.Z_EROFS_COMPRESSION_MAX))


def codec_for(spec, block_size: int, pcluster_size: int) -> Codec:
    """The writer's codec for one -z entry (a spec.CompressorSpec), its library bound (or
    CompressorUnavailable now).  ``pcluster_size`` is the image's largest pcluster in bytes: it
    sets the automatic dictionary sizes the way mkfs.erofs does."""
    if block_size < 512 or block_size & (block_size - 1):
        raise ValueError(f"bad block size {block_size}")
    if (pcluster_size < block_size or pcluster_size % block_size or
            pcluster_size > fmt.Z_EROFS_PCLUSTER_MAX_SIZE):
        raise ValueError(f"pcluster size {pcluster_size} must be a multiple of the block size "
                         f"and at most {fmt.Z_EROFS_PCLUSTER_MAX_SIZE}")
    cls = CODECS.get(spec.name)
    if cls is None:
        raise ValueError(f"unknown compressor '{spec.name}'")
    dict_size = spec.dictsize or cls.auto_dict_size(pcluster_size)
    if cls is LZMA:
        props = dict(spec.extra)
        codec = LZMA(spec.level, dict_size, props.get("lc"), props.get("lp"), props.get("pb"))
    elif dict_size is None:
        codec = cls(spec.level)
    else:
        codec = cls(spec.level, dict_size)
    return codec.require()


def decoder(algorithm_id: int, dict_size: int | None = None) -> Codec:
    """The codec that decodes algorithm ``algorithm_id`` with the window an image's compression
    configuration gives (None: the algorithm's largest).  Nothing is loaded until it decodes."""
    if algorithm_id == fmt.Z_EROFS_COMPRESSION_LZMA:
        return LZMA(None, max(dict_size or fmt.Z_EROFS_LZMA_MAX_DICT_SIZE, 4096))
    if algorithm_id == fmt.Z_EROFS_COMPRESSION_ZSTD:
        return Zstd(None, dict_size or fmt.Z_EROFS_ZSTD_MAX_DICT_SIZE)
    return CODECS[ALGORITHM_NAMES[algorithm_id]]()


def build_compr_cfgs(codecs, max_pclusterblks: int, blkszbits: int):
    """What the superblock needs for a set of codecs.

    Returns ``(available_compr_algs, need_compr_cfgs, records)``:

    * ``available_compr_algs``: bitmap of algorithm ids (superblock u1 with COMPR_CFGS);
    * ``need_compr_cfgs``: True if any non-LZ4 algorithm is used or ``max_pclusterblks > 1``
      (mkfs.erofs then sets the COMPR_CFGS incompat bit, the same bit as BIG_PCLUSTER);
    * ``records``: what follows the superblock (one le16 size + payload per algorithm, in
      increasing id order, 4-byte aligned - they all are), or b"" without COMPR_CFGS, when
      superblock u1 holds lz4_max_distance instead.

    Several codecs of one algorithm share one record, built from the one with the biggest
    dictionary (mkfs.erofs writes the largest).
    """
    best: dict[int, Codec] = {}
    for c in codecs:
        cur = best.get(c.algorithm_id)
        if cur is None or (c.dict_size or 0) > (cur.dict_size or 0):
            best[c.algorithm_id] = c
    algs = 0
    for i in best:
        algs |= 1 << i
    need = bool(algs & ~(1 << fmt.Z_EROFS_COMPRESSION_LZ4)) or max_pclusterblks > 1
    if not need:
        return algs, False, b""
    recs = b"".join(best[i].cfgs_record(max_pclusterblks, blkszbits) for i in sorted(best))
    return algs, True, recs


def _served_by(name: str) -> str:
    try:
        return CODECS[name]().library().describe()
    except CompressorUnavailable as err:
        return f"unavailable ({err})"


def available() -> list[str]:
    """The -z names whose libraries load on this machine (loads them)."""
    return [name for name in CODECS if not _served_by(name).startswith("unavailable")]


def report() -> dict[str, str]:
    """-z name -> what serves it ("liblz4.so.1 1.9.4", "unavailable (...)"); loads them all."""
    return {name: _served_by(name) for name in CODECS}
