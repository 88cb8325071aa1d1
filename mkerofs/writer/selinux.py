"""SELinux labels from a file_contexts file (--file-contexts), as libselinux's selabel_lookup() gives them.

mkfs.erofs opens the file with selabel_open(SELABEL_CTX_FILE, {SELABEL_OPT_PATH: file}) (no
validation, not "base only") and, for every inode, looks up ``"/" + mount_point + "/" + relpath``
with the inode's st_mode.  The context it gets becomes the inode's ``security.selinux`` xattr,
stored *without* a trailing NUL (setfiles stores one; the kernel accepts both); the source's own
``security.selinux`` is dropped.  No match, or a ``<<none>>`` match, means no label at all.

File syntax (libselinux label_file): one specification per line,
``REGEX [FILETYPE] CONTEXT``, whitespace separated; blank lines and lines whose first non-blank
character is ``#`` are skipped; fields after the third are ignored; non-ASCII bytes are an error.
FILETYPE is one of ``--`` (regular file) ``-d`` ``-l`` ``-b`` ``-c`` ``-p`` ``-s``; without it the
line applies to every file type.

Matching (libselinux 3.4's rule; 3.8's rewrite keeps it):

* REGEX is a PCRE anchored as ``"^" + REGEX + "$"`` (no group around it, so a top-level ``|``
  anchors only its outer ends, as in libselinux), with ``.`` matching newlines too (DOTALL).
* A spec without regex metacharacters (``. ^ $ ? * + | [ ( {`` outside a backslash escape) is a
  *literal path*; every literal spec takes precedence over every regex spec.  Within each group
  the **last** matching line wins (the file is read top to bottom; later lines override).
* The path's "stem" (its first component, ``/usr`` of ``/usr/bin/x``) must equal the spec's
  stem when the spec has one (the part of REGEX before its second ``/`` if that part has no
  metacharacters).
* The looked-up path has repeated slashes collapsed and a trailing slash removed.
* Like libselinux, ``FILE.homedirs`` and ``FILE.local`` are read after FILE when they exist, and
  the substitutions of ``FILE.subs`` then ``FILE.subs_dist`` ("SRC DST" lines: a path starting with
  the SRC directory is looked up as if under DST) apply.  A precompiled ``FILE.bin`` is never
  used: the text is always parsed.

Python's ``re`` stands in for PCRE2; POSIX classes (``[[:digit:]]``) are translated.  PCRE-only
syntax that ``re`` rejects (``\\Q..\\E``, ``\\p{..}``, inline flags after the start, ...) is
reported as a bad line at load time (libselinux reports a bad regex only when it is first used).

Lookups are indexed (literal paths in a dict, regexes by their literal prefix, a run of regexes
joined into one alternation) but answer exactly as the newest-first scan above; match_slowly()
is that scan, kept as the reference.
"""
from __future__ import annotations

import heapq
import os
import re
import stat
from dataclasses import dataclass

NO_LABEL = b"<<none>>"
XATTR_SELINUX = b"security.selinux"

FILE_TYPES = {
    "--": stat.S_IFREG, "-d": stat.S_IFDIR, "-l": stat.S_IFLNK, "-b": stat.S_IFBLK,
    "-c": stat.S_IFCHR, "-p": stat.S_IFIFO, "-s": stat.S_IFSOCK,
}
_META = frozenset(b".^$?*+|[({")

_POSIX_CLASSES = {
    b"alpha": rb"a-zA-Z", b"digit": rb"0-9", b"alnum": rb"a-zA-Z0-9", b"upper": rb"A-Z",
    b"lower": rb"a-z", b"space": rb" \t\n\r\f\v", b"blank": rb" \t", b"punct":
    rb"!-/:-@\[-`{-~", b"xdigit": rb"0-9A-Fa-f", b"word": rb"\w", b"cntrl": rb"\x00-\x1f\x7f",
    b"print": rb" -~", b"graph": rb"!-~",
}


def _has_meta(regex: bytes) -> bool:
    """Whether `regex` has a metacharacter outside a backslash escape (libselinux's test)."""
    i = 0
    while i < len(regex):
        c = regex[i]
        if c in _META:
            return True
        i += 2 if c == 0x5C else 1
    return False


def _spec_stem(regex: bytes) -> bytes | None:
    slash = regex.find(b"/", 1)
    if slash < 0 or any(c in _META for c in regex[:slash]):
        return None
    return regex[:slash]


def _path_stem(path: bytes) -> bytes | None:
    slash = path.find(b"/", 1)
    return None if slash < 0 else path[:slash]


def _translate(regex: bytes) -> bytes:
    """PCRE -> Python re: POSIX classes inside brackets; everything else is passed through."""
    if b"[:" not in regex:
        return regex
    out = bytearray()
    i, n = 0, len(regex)
    in_class = False
    while i < n:
        c = regex[i]
        if c == 0x5C:                                  # escape: copy two bytes
            out += regex[i:i + 2]
            i += 2
            continue
        if not in_class:
            if c == ord("["):
                in_class = True
                out.append(c)
                i += 1
                if regex[i:i + 1] == b"^":
                    out.append(regex[i])
                    i += 1
                if regex[i:i + 1] == b"]":             # a leading ']' is literal
                    out += rb"\]"
                    i += 1
                continue
            out.append(c)
            i += 1
            continue
        if regex.startswith(b"[:", i):
            end = regex.find(b":]", i + 2)
            name = regex[i + 2:end] if end > 0 else b""
            if name in _POSIX_CLASSES:
                out += _POSIX_CLASSES[name]
                i = end + 2
                continue
        if c == ord("["):
            out += rb"\["
            i += 1
            continue
        if c == ord("]"):
            in_class = False
        out.append(c)
        i += 1
    return bytes(out)


@dataclass
class Spec:
    regex: bytes
    pattern: re.Pattern
    file_type: int | None          # S_IFMT value, or None for any
    context: bytes | None          # None: <<none>>
    literal: bool
    stem: bytes | None
    source: str
    lineno: int
    order: int = 0                 # position among all loaded lines: the higher, the later

    def applies(self, key: bytes, key_stem: bytes | None, ftype: int) -> bool:
        if self.file_type is not None and ftype and ftype != self.file_type:
            return False
        if self.stem is not None and self.stem != key_stem:
            return False
        return self.pattern.match(key) is not None


class FileContexts:
    """A parsed file_contexts database; lookup() answers like selabel_lookup()."""

    def __init__(self) -> None:
        self.literal: list[Spec] = []      # in file order; the last match wins
        self.regex: list[Spec] = []
        self.subs: list[tuple[bytes, bytes]] = []        # FILE.subs, last line first
        self.dist_subs: list[tuple[bytes, bytes]] = []   # FILE.subs_dist, last line first
        # indexes for lookup (same answers as scanning the lists backwards)
        self._exact: dict[bytes, list[Spec]] = {}        # literal specs by the path they name
        self._literal_rx: list[Spec] = []                # literal specs with \d-like escapes
        self._rx_by_prefix: dict[bytes, _Bucket] = {}   # regex specs by literal prefix
        self._prefix_lengths: list[int] = []
        self._next_order = 0

    def __len__(self) -> int:
        return len(self.literal) + len(self.regex)

    def _index(self, spec: Spec) -> None:
        if spec.literal:
            self.literal.append(spec)
            text = _unescape(spec.regex)
            if text is None:
                self._literal_rx.append(spec)
            else:
                self._exact.setdefault(text, []).append(spec)
        else:
            self.regex.append(spec)
            prefix = _literal_prefix(spec.regex)
            bucket = self._rx_by_prefix.get(prefix)
            if bucket is None:
                bucket = self._rx_by_prefix[prefix] = _Bucket(prefix)
                self._prefix_lengths = sorted({*self._prefix_lengths, len(prefix)})
            bucket.add(spec)

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, companions: bool = True) -> "FileContexts":
        """Parse `path` (and, like libselinux, its .homedirs/.local/.subs/.subs_dist companions).

        Raises ValueError("FILE:LINE: reason") for a bad line, OSError when FILE is unreadable.
        """
        path = os.fspath(path)
        fc = cls()
        with open(path, "rb") as f:
            fc.parse(f.read(), path)
        if companions:
            for suffix in (".homedirs", ".local"):
                try:
                    with open(path + suffix, "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    continue
                fc.parse(data, path + suffix)
            fc.subs = _read_subs(path + ".subs")
            fc.dist_subs = _read_subs(path + ".subs_dist")
        return fc

    @classmethod
    def from_text(cls, text: str | bytes, source: str = "file_contexts") -> "FileContexts":
        fc = cls()
        fc.parse(text.encode() if isinstance(text, str) else text, source)
        return fc

    def parse(self, data: bytes, source: str) -> None:
        for lineno, line in enumerate(data.split(b"\n"), 1):
            spec = _parse_line(line, source, lineno)
            if spec is not None:
                spec.order = self._next_order
                self._next_order += 1
                self._index(spec)

    # -- lookup ------------------------------------------------------------------------------------

    def lookup(self, fspath: str | bytes, mode: int = 0) -> bytes | None:
        """The context for `fspath` (an absolute path in the target filesystem) and `mode`
        (st_mode; 0 matches any file type), as bytes without a trailing NUL; None for no label."""
        spec = self.match(fspath, mode)
        return None if spec is None else spec.context

    def match(self, fspath: str | bytes, mode: int = 0) -> Spec | None:
        """The spec that decides `fspath` (its context may be None for <<none>>), or None."""
        key = _normalize(os.fsencode(fspath))
        key = self._substitute(key)
        key_stem = _path_stem(key)
        ftype = stat.S_IFMT(mode)
        exact = self._exact.get(key, ())
        if key.endswith(b"\n"):               # "^/x$" also matches "/x\n", as in PCRE
            exact = sorted([*exact, *self._exact.get(key[:-1], ())], key=_order)
        for spec in heapq.merge(reversed(exact), reversed(self._literal_rx), key=_neg_order):
            if spec.applies(key, key_stem, ftype):
                return spec
        # only regex specs whose literal prefix starts the key can match it; the latest wins
        best = None
        for n in self._prefix_lengths:
            if n > len(key):
                break
            bucket = self._rx_by_prefix.get(key[:n])
            if bucket is not None:
                spec = bucket.best(key, key_stem, ftype)
                if spec is not None and (best is None or spec.order > best.order):
                    best = spec
        return best

    def match_slowly(self, fspath: str | bytes, mode: int = 0) -> Spec | None:
        """match() by brute force, every spec in turn (the reference for tests)."""
        key = self._substitute(_normalize(os.fsencode(fspath)))
        key_stem = _path_stem(key)
        ftype = stat.S_IFMT(mode)
        for group in (self.literal, self.regex):
            for spec in reversed(group):
                if spec.applies(key, key_stem, ftype):
                    return spec
        return None

    def _substitute(self, key: bytes) -> bytes:
        sub = _apply_subs(self.subs, key)
        if sub is not None:
            return _apply_subs(self.dist_subs, sub) or sub
        return _apply_subs(self.dist_subs, key) or key


def fs_path(relpath: bytes | str, mount_point: str | bytes = "/") -> bytes:
    """The path mkfs.erofs looks up for a file at `relpath` below SOURCE: "/MOUNT/relpath"."""
    mount = os.fsencode(mount_point).rstrip(b"/")
    return _normalize(b"/" + mount + b"/" + os.fsencode(relpath).lstrip(b"/"))


def with_label(xattrs: list[tuple[bytes, bytes]], label: bytes | None) -> list[tuple[bytes, bytes]]:
    """`xattrs` with security.selinux replaced by `label` (removed when None), kept sorted."""
    out = [(n, v) for n, v in xattrs if n != XATTR_SELINUX]
    if label is not None:
        out.append((XATTR_SELINUX, label))
        out.sort()
    return out


class _Bucket:
    """The regex specs sharing one literal prefix, matched a run at a time.

    Consecutive specs (newest first) are joined into one alternation "(?:^R1$)()|(?:^R2$)()|..."
    whose empty marker groups tell which one matched: re tries the alternatives in order, so
    the first that matches is the newest, as a backwards scan would find.  One alternation is
    built per file type asked for, of the specs that apply to it.  A spec that cannot be joined
    (back-references, inline flags, a stem its prefix does not imply) is tried on its own.
    """
    __slots__ = ("prefix", "specs", "_runs")

    def __init__(self, prefix: bytes):
        self.prefix = prefix
        self.specs: list[Spec] = []
        self._runs: dict[int, list] = {}

    def add(self, spec: "Spec") -> None:
        self.specs.append(spec)
        self._runs.clear()

    def best(self, key: bytes, key_stem: bytes | None, ftype: int) -> "Spec | None":
        runs = self._runs.get(ftype)
        if runs is None:
            runs = self._runs[ftype] = self._build(ftype)
        for run in runs:
            if type(run) is tuple:
                m = run[0].match(key)
                if m is not None:
                    return run[1][m.lastindex]
            elif run.applies(key, key_stem, ftype):
                return run
        return None

    def _joinable(self, spec: "Spec") -> bool:
        if b"(?" in spec.regex or _BACKREF.search(spec.regex):
            return False
        return spec.stem is None or self.prefix.startswith(spec.stem + b"/")

    def _build(self, ftype: int) -> list:
        runs: list = []
        group: list[Spec] = []

        def flush():
            if len(group) == 1:
                runs.append(group[0])
            elif group:
                # the specs' own groups become non-capturing (nothing refers to them), so the
                # markers are groups 1, 2, ...: few groups keep re's backtracking cheap
                parts = [b"(?:^" + _noncapturing(_translate(spec.regex)) + b"$)()" for spec in group]
                by_marker = {i: spec for i, spec in enumerate(group, 1)}
                runs.append((re.compile(b"|".join(parts), re.DOTALL), by_marker))
            group.clear()

        for spec in reversed(self.specs):
            if ftype and spec.file_type is not None and spec.file_type != ftype:
                continue
            if self._joinable(spec):
                group.append(spec)
            else:
                flush()
                runs.append(spec)
        flush()
        return runs


_BACKREF = re.compile(rb"\\[1-9gkP]")


def _skip_class(regex: bytes, i: int) -> int:
    """The index just past the bracket expression starting at regex[i] ('[')."""
    n = len(regex)
    j = i + 1
    if regex[j:j + 1] == b"^":
        j += 1
    if regex[j:j + 1] == b"]":
        j += 1
    while j < n and regex[j] != 0x5D:
        if regex[j] == 0x5B and regex[j + 1:j + 2] == b":":
            end = regex.find(b":]", j + 2)
            j = end + 2 if end > 0 else j + 1
            continue
        j += 2 if regex[j] == 0x5C else 1
    return j + 1


def _noncapturing(regex: bytes) -> bytes:
    """`regex` with every capturing "(" turned into "(?:" (for regexes without "(?" or \\1)."""
    out = bytearray()
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == 0x5C:
            out += regex[i:i + 2]
            i += 2
        elif c == 0x5B:
            j = _skip_class(regex, i)
            out += regex[i:j]
            i = j
        elif c == 0x28:
            out += b"(?:"
            i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _order(spec: "Spec") -> int:
    return spec.order


def _neg_order(spec: "Spec") -> int:
    return -spec.order


def _literal_prefix(regex: bytes) -> bytes:
    """A string every path matching "^REGEX$" starts with (b"" when unsure).

    Stops at the first metacharacter or letter escape (\\d); a quantifier (? * {) also takes
    back the atom before it; a top-level '|' anywhere means no common prefix.
    """
    depth, i, n = 0, 0, len(regex)
    while i < n:                                   # look for a top-level '|'
        c = regex[i]
        if c == 0x5C:
            i += 2
            continue
        if c == 0x5B:
            i = _skip_class(regex, i)
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
        elif c == 0x7C and depth <= 0:
            return b""
        i += 1
    atoms: list[bytes] = []
    i = 0
    while i < n:
        c = regex[i]
        if c == 0x5C:
            if i + 1 >= n or chr(regex[i + 1]).isalnum():
                break
            atoms.append(regex[i + 1:i + 2])
            i += 2
            continue
        if c in _META:
            if c in b"?*{" and atoms:
                atoms.pop()
            break
        atoms.append(regex[i:i + 1])
        i += 1
    return b"".join(atoms)


def _unescape(regex: bytes) -> bytes | None:
    """The path a metacharacter-free spec names ("\\." -> "."), or None if it escapes a letter or
    digit (\\d, \\x41, ...), whose meaning only the regex engine knows."""
    if b"\\" not in regex:
        return regex
    out = bytearray()
    i = 0
    while i < len(regex):
        c = regex[i]
        if c == 0x5C:
            if i + 1 >= len(regex) or chr(regex[i + 1]).isalnum():
                return None
            out.append(regex[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def _normalize(key: bytes) -> bytes:
    while b"//" in key:
        key = key.replace(b"//", b"/")
    if len(key) > 1 and key.endswith(b"/"):
        key = key[:-1]
    return key


def _apply_subs(subs: list[tuple[bytes, bytes]], key: bytes) -> bytes | None:
    for src, dst in subs:
        if key.startswith(src) and key[len(src):len(src) + 1] in (b"", b"/"):
            rest = key[len(src):]
            if rest.startswith(b"/") and dst == b"/":
                rest = rest[1:]
            return dst + rest
    return None


def _read_subs(path: str) -> list[tuple[bytes, bytes]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    subs = []
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith(b"#"):
            continue
        subs.append((fields[0], fields[1]))
    subs.reverse()                     # libselinux prepends each line: the last one is tried first
    return subs


def _parse_line(line: bytes, source: str, lineno: int) -> Spec | None:
    def bad(reason: str) -> ValueError:
        return ValueError(f"{source}:{lineno}: {reason}")

    stripped = line.strip()
    if not stripped or stripped.startswith(b"#"):
        return None
    if any(c > 0x7F for c in stripped):
        raise bad("non-ASCII characters found")
    fields = stripped.split()
    if len(fields) < 2:
        raise bad("missing fields (expected REGEX [FILETYPE] CONTEXT)")
    regex = fields[0]
    file_type = None
    if len(fields) >= 3:
        kind = fields[1].decode()
        if kind not in FILE_TYPES:
            raise bad(f"invalid file type {kind!r} (one of {', '.join(FILE_TYPES)})")
        file_type = FILE_TYPES[kind]
        context = fields[2]
    else:
        context = fields[1]
    try:
        pattern = re.compile(b"^" + _translate(regex) + b"$", re.DOTALL)
    except re.error as err:
        raise bad(f"invalid regex {regex.decode()!r}: {err}") from None
    has_meta = _has_meta(regex)
    return Spec(regex=regex, pattern=pattern, file_type=file_type,
                context=None if context == NO_LABEL else context, literal=not has_meta,
                stem=_spec_stem(regex), source=source, lineno=lineno)
