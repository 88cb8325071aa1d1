"""mkfs.erofs's ``-z`` argument: ``X[,level=Y][,dictsize=Z][:X2[,...]]``.

Also accepted, as mkfs.erofs does: the legacy ``X,Y`` (bare level) form, ``dictsize`` with
k/m/g suffixes and C-style 0x/0 prefixes, LZMA's ``lc=``/``lp=``/``pb=``, empty ``:`` pieces
(skipped, like strtok), a trailing comma, a negative level meaning the default (but for zstd,
where negative levels are real), and ``dictsize=0`` meaning automatic.  The ranges are the
codecs' own (registry.CODECS).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..util import parse_c_int
from .lzma import LZMA
from .registry import CODECS

__all__ = ["CompressorSpec", "parse_compressor_spec", "EROFS_MAX_COMPR_CFGS"]

EROFS_MAX_COMPR_CFGS = 64        # mkfs.erofs's limit on -z entries


@dataclass(frozen=True)
class CompressorSpec:
    """One entry of the ``-z`` list.  ``level``/``dictsize`` are None when not given (use the
    defaults); ``extra`` holds LZMA's ``lc=``/``lp=``/``pb=`` as sorted (key, value) pairs."""
    name: str
    level: int | None = None
    dictsize: int | None = None
    extra: tuple[tuple[str, int], ...] = field(default=())

    @property
    def algorithm_id(self) -> int:
        return CODECS[self.name].algorithm_id


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
    codec = CODECS.get(name)
    if codec is None:
        raise ValueError(f"unknown compressor '{name}' (supported: {', '.join(CODECS)})")
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
        elif codec is LZMA and key in ("lc", "lp", "pb"):
            extra[key] = _c_strtoul(val, f"{key} for lzma")
        else:
            raise ValueError(f"invalid compression option '{opt}' for {name}")

    if level is not None and level < 0 and (codec.negative_is_default or not codec.level_range):
        level = None
    if level is not None:
        codec.check_level(level)
    if dictsize == 0:                           # mkfs.erofs: 0 means "auto"
        dictsize = None
    if dictsize is not None:
        codec.check_dict_size(dictsize)
    if extra:
        LZMA.check_props(extra.get("lc", 3), extra.get("lp", 0), extra.get("pb", 2))
    return CompressorSpec(name, level, dictsize, tuple(sorted(extra.items())))


def parse_compressor_spec(text: str) -> list[CompressorSpec]:
    """The entries of a ``-z`` argument; ValueError on anything invalid."""
    if not isinstance(text, str):
        raise ValueError("compressor specification must be a string")
    segs = [s for s in text.split(":") if s]
    if not segs:
        raise ValueError("empty compressor specification")
    if len(segs) > EROFS_MAX_COMPR_CFGS:
        raise ValueError(f"too many compression algorithms (at most {EROFS_MAX_COMPR_CFGS})")
    return [_parse_one(s) for s in segs]
