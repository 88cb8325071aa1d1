"""Small helpers with no place in the pipeline: C-style integers, POSIX regexes, host xattrs,
paths of any length, exclusive temporary files (without `tempfile`, which with shutil, bz2, lzma
and random is ~1 MiB and a few ms of every build's start-up)."""
from __future__ import annotations

import errno
import os
import re
import signal
import threading


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



# Linux refuses a path of PATH_MAX bytes or more (with its NUL: 4096) in any system call, with
# ENAMETOOLONG; a tree may be deeper than that (EROFS limits only each name to 255 bytes).  Such
# a path is reached in steps: directories opened relative to each other, each step shorter.
PATH_MAX = 4096
NAME_MAX = 255                                # the longest name (one component)

_O_STEP = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def open_parent(path: bytes) -> tuple[int, bytes]:
    """An O_PATH descriptor of the directory holding `path`'s last component (the caller
    closes it), and that component; the directory is reached in steps of less than PATH_MAX
    bytes, each relative to the one before (symlinks on the way followed, as in one lookup)."""
    head, _slash, name = path.rstrip(b"/").rpartition(b"/")
    if not _slash:
        head = b"."
    elif not head:
        head = b"/"
    fd = None
    try:
        while head:
            if len(head) < PATH_MAX:
                step, head = head, b""
            else:
                cut = head.rfind(b"/", 0, PATH_MAX - 1)
                if cut < 0:
                    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
                step, head = head[:cut] or b"/", head[cut + 1:]
            nfd = os.open(step, _O_STEP, dir_fd=fd)
            if fd is not None:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return fd, name


def at_path(call, path: bytes):
    """call(path, None) for a path the kernel takes at once, else call(its last component,
    a descriptor of its directory) (see open_parent): for os functions that take dir_fd."""
    if len(path) < PATH_MAX:
        return call(path, None)
    dir_fd, name = open_parent(path)
    try:
        return call(name, dir_fd)
    finally:
        os.close(dir_fd)


def open_path(path: bytes, flags: int, mode: int = 0o777) -> int:
    """os.open for a path of any length."""
    return at_path(lambda p, d: os.open(p, flags, mode, dir_fd=d), path)


def lstat_path(path: bytes) -> os.stat_result:
    """os.lstat for a path of any length."""
    return at_path(lambda p, d: os.lstat(p, dir_fd=d), path)


def readlink_path(path: bytes) -> bytes:
    """os.readlink for a path of any length."""
    return at_path(lambda p, d: os.readlink(p, dir_fd=d), path)


def listdir_path(path: bytes) -> list[bytes]:
    """os.listdir (names as bytes) of a directory at a path of any length."""
    if len(path) < PATH_MAX:
        return os.listdir(path)
    fd = open_path(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        names = os.listdir(fd)              # (str names: listdir of a descriptor decodes them)
    finally:
        os.close(fd)
    return [os.fsencode(n) for n in names]


def xattr_path(name: bytes, dir_fd: int | None) -> bytes:
    """A path for the xattr calls (which take no dir_fd) of `name` in the directory dir_fd,
    through /proc; `name` itself when dir_fd is None."""
    return name if dir_fd is None else b"/proc/self/fd/%d/%s" % (dir_fd, name)


def read_xattrs(path: bytes | str, dir_fd: int | None = None) -> list[tuple[bytes, bytes]]:
    """The xattrs of `path` itself (symlinks not followed), sorted by name; `path` relative
    to the directory `dir_fd` if given, of any length if bytes.

    A filesystem without xattr support gives []; an xattr removed between listing and reading is
    skipped (as mkfs.erofs does); any other failure raises OSError.
    """
    if dir_fd is not None:
        path = xattr_path(path, dir_fd)
    elif isinstance(path, bytes) and len(path) >= PATH_MAX:
        return at_path(read_xattrs, path)
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


def can_fork() -> bool:
    """Whether os.fork is safe here: forking a process that runs other threads may copy a
    lock some thread holds; and whether a child forked can be waited for: where SIGCHLD is
    ignored (set so, or inherited so through exec), the kernel reaps children at once and
    waitpid fails (ECHILD)."""
    return hasattr(os, "fork") and threading.active_count() == 1 \
        and signal.getsignal(signal.SIGCHLD) != signal.SIG_IGN


class PageBudget:
    """Gives mapped pages back (calls each of `drops`) every `every` units spent (bytes
    compared, items written, directories read): pages read or written through a mapping stay
    in the process's resident size until it lets go of them, whatever the mapping's size."""
    __slots__ = ("every", "drops", "left")

    def __init__(self, every: int, *drops):
        self.every = every
        self.drops = drops
        self.left = every

    def spend(self, units: int = 1) -> None:
        self.left -= units
        if self.left <= 0:
            self.left = self.every
            for drop in self.drops:
                drop()


def create_exclusive(folder: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file `prefix` + random + `suffix` in `folder`, open for reading and writing, mode
    0600, created with O_EXCL (never an existing file or a symlink's target): as
    tempfile.mkstemp makes it. OSError if the folder refuses it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", folder)
