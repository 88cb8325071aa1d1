"""Small helpers with no place in the pipeline: C-style integers, POSIX regexes, host xattrs."""
from __future__ import annotations

import errno
import os
import re


_SIZE_SUFFIXES = {"k": 10, "m": 20, "g": 30}


def parse_c_int(text: str, what: str, minimum: int | None = 0, suffixes: bool = False) -> int:
    """An integer as strtoull(…, 0) reads it: decimal, 0x hex or 0-prefixed octal; with
    `suffixes`, a k/m/g multiplier as mkfs.erofs takes for sizes. ValueError names `what`."""
    s = text.strip()
    shift = 0
    if suffixes and s[-1:].lower() in _SIZE_SUFFIXES:
        shift, s = _SIZE_SUFFIXES[s[-1].lower()], s[:-1]
    try:
        neg = s.startswith("-")
        body = s[1:] if neg or s.startswith("+") else s
        if body[:2].lower() == "0x":
            value = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            value = int(body[1:], 8)
        else:
            value = int(body, 10)
        value = (-value if neg else value) << shift
    except (ValueError, IndexError):
        raise ValueError(f"invalid {what} {text!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"invalid {what} {text!r}")
    return value



_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "xdigit": "0-9A-Fa-f",
    "cntrl": "\\x00-\\x1f\\x7f", "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e",
    "punct": "".join("\\" + c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
}


# glibc's regcomp knows these backslash operators (GNU extensions); any other letter is literal
_GNU_ESCAPES = {"w": "\\w", "W": "\\W", "s": "\\s", "S": "\\S", "b": "\\b", "B": "\\B",
                "<": "\\b(?=\\w)", ">": "\\b(?<=\\w)", "`": "\\A", "'": "\\Z"}


def posix_ere_to_python(pattern: str) -> str:
    """Translate a POSIX extended regex (as regcomp(REG_EXTENDED) reads it) to Python's syntax.

    The two differ inside bracket expressions (POSIX has [:class:] names, and a backslash there
    is an ordinary character), in `$` (POSIX: only the very end), in `.` (POSIX: newlines too;
    compile with re.DOTALL) and in backslash-letter, which POSIX reads as the letter itself.
    """
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            out.append(_GNU_ESCAPES.get(nxt, nxt if nxt.isalpha() else pattern[i:i + 2]))
            i += 2
            continue
        if c == "$":
            out.append("\\Z")
            i += 1
            continue
        if c != "[":
            out.append(c)
            i += 1
            continue
        j = i + 1
        parts = ["["]
        if j < n and pattern[j] == "^":
            parts.append("^")
            j += 1
        if j < n and pattern[j] == "]":
            parts.append("\\]")
            j += 1
        while j < n and pattern[j] != "]":
            if pattern.startswith("[:", j):
                end = pattern.find(":]", j + 2)
                name = pattern[j + 2:end] if end >= 0 else None
                if name not in _POSIX_CLASSES:
                    raise re.error(f"unknown character class [:{name}:]")
                parts.append(_POSIX_CLASSES[name])
                j = end + 2
            elif pattern[j] in "\\[":
                parts.append("\\" + pattern[j])
                j += 1
            else:
                parts.append(pattern[j])
                j += 1
        if j >= n:
            raise re.error("unterminated bracket expression")
        out.append("".join(parts) + "]")
        i = j + 1
    return "".join(out)



def read_xattrs(path: bytes | str) -> list[tuple[bytes, bytes]]:
    """The xattrs of `path` itself (symlinks not followed), sorted by name.

    A filesystem without xattr support gives []; an xattr removed between listing and reading is
    skipped (as mkfs.erofs does); any other failure raises OSError.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENODATA):
            return []
        raise
    out = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.ENODATA:
                continue
            raise
        out.append((os.fsencode(name), value))
    out.sort()
    return out


def pwrite_all(fd: int, data, pos: int) -> int:
    """Write all of `data` at `pos` of fd (pwrite may write less than asked); the position
    after it.  OSError as pwrite raises it."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, pos)
        view, pos = view[done:], pos + done
    return pos
