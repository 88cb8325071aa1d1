"""--compress-hints: per-file pcluster size and algorithm, in mkfs.erofs's file format.

Each line is ``SIZE [ALG] REGEX``: files whose path (relative to SOURCE, no leading '/')
matches the POSIX extended REGEX anywhere get pclusters of at most SIZE bytes, compressed with
the ALG-th algorithm of ``-z`` (counting from 0; default 0).  SIZE 0 keeps matching files
uncompressed.  The first matching line wins; files matching none use ``-C`` and the first
algorithm.  Lines starting with '#' and empty lines are skipped; the fields are read the way
mkfs.erofs reads them (strtok and atoi), so the regex is the rest of the line after ALG, and a
SIZE that is not a multiple of the block size only draws a warning and the line is ignored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import BuildError
from ..util import posix_ere_to_python
from .compress import check_pcluster_size


@dataclass(frozen=True)
class CompressHint:
    pattern: re.Pattern
    pcluster_size: int          # 0: not compressed
    algorithm: int              # index into the -z list


@dataclass
class CompressHints:
    hints: list[CompressHint]
    warnings: list[str]

    @property
    def max_pcluster_size(self) -> int:
        return max((h.pcluster_size for h in self.hints), default=0)

    def match(self, relpath: bytes) -> CompressHint | None:
        for hint in self.hints:
            if hint.pattern.search(relpath):
                return hint
        return None


def _atoi(text: str) -> int:
    m = re.match(r"\s*[+-]?\d+", text)
    return int(m.group()) if m else 0


def _strtok(line: str, pos: int, delims: str) -> tuple[str | None, int]:
    """C strtok on line[pos:]: skip delimiters, then the token up to the next one (consumed)."""
    n = len(line)
    while pos < n and line[pos] in delims:
        pos += 1
    if pos >= n:
        return None, n
    end = pos
    while end < n and line[end] not in delims:
        end += 1
    return line[pos:end], min(end + 1, n)


def load_compress_hints(path: str, block_size: int, algorithms: int) -> CompressHints:
    """Read a hints file; `algorithms`: how many -z algorithms there are.  BuildError names
    the file (and line) on any problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise BuildError(f"{path}: cannot read compress hints: {err.strerror or err}") from None
    hints, warnings = [], []
    text = os.fsdecode(raw)
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        if line.startswith("#") or line.startswith("\n") or not line:
            continue
        where = f"{path}:{lineno}"
        size_text, pos = _strtok(line, 0, "\t ")
        size = _atoi(size_text or "")
        alg, pos = _strtok(line, pos, "\n\t ")
        pattern, pos = _strtok(line, pos, "\n")
        if pattern is None:
            pattern, alg = alg, None
        if not pattern:
            raise BuildError(f"{where}: cannot find a match pattern")
        index = 0
        if alg:
            index = _atoi(alg)
            if not 0 <= index < algorithms:
                raise BuildError(f"{where}: invalid compressing configuration {alg!r} "
                                 f"(there are {algorithms} algorithms in -z)")
        if size < 0 or size % block_size:
            warnings.append(f"{where}: invalid physical cluster size {size}, line ignored")
            continue
        if size:
            try:
                check_pcluster_size(size, block_size)
            except ValueError as err:
                raise BuildError(f"{where}: {err}") from None
        try:
            regex = re.compile(os.fsencode(posix_ere_to_python(pattern)))
        except re.error as err:
            raise BuildError(f"{where}: invalid regex {pattern!r}: {err}") from None
        hints.append(CompressHint(regex, size, index))
    return CompressHints(hints, warnings)
