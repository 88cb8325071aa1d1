"""Get files out of an image: into a folder (every attribute the target filesystem can hold) or
as a PAX tar stream.

Both walk the image through `iter_tree`, which checks every directory entry name before it is
used: a name must be one path component ("", ".", "..", a "/" or a NUL byte are refused), and
a directory reached twice (a loop, or a hard-linked directory) stops the walk. Extraction then
creates each entry relative to an open descriptor of its parent directory, never following a
symlink, so a hostile image cannot write outside the destination even with `force`.
"""
from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from ..errors import ExtractError
from ..ondisk.format import EROFS_FT_DIR
from ..ondisk.posix_acl import decode_posix_acl, posix_acl_problem, posix_acl_text
from .image import Image, ImageError, Inode

__all__ = ["ExtractError", "ExtractStats", "iter_tree", "resolve", "follow", "extract",
           "write_tar", "check_name", "show", "type_name", "device_numbers"]


# ---------------------------------------------------------------------------
# small shared helpers (also used by compare.py and cli/read.py)

def show(path: bytes) -> str:
    """A printable form of a path from an image (undecodable bytes as \\xNN escapes)."""
    return path.decode("utf-8", "backslashreplace")


_TYPE_NAMES = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory",
               stat.S_IFLNK: "symlink", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def type_name(mode: int) -> str:
    return _TYPE_NAMES.get(stat.S_IFMT(mode), f"unknown type {stat.S_IFMT(mode):o}")


def device_numbers(inode: Inode) -> tuple[int, int]:
    """(major, minor) of a device inode."""
    return inode.major, inode.minor


def check_name(name: bytes, parent: bytes) -> None:
    """Refuse a directory entry name that is not exactly one path component."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        where = show(parent) or "/"
        raise ImageError(f"directory {where} has an entry named {name!r}, which is not a "
                         "single path component: refusing to use it (hostile or corrupted image)")


def join(parent: bytes, name: bytes) -> bytes:
    return (parent if parent != b"/" else b"") + b"/" + name


# ---------------------------------------------------------------------------
# walking the image

ENTER, LEAF, LEAVE = "enter", "leaf", "leave"


def iter_tree(img: Image, top: Inode, top_path: bytes = b"/", check: bool = True,
              leaf_inodes: bool = True) -> Iterator[tuple[str, bytes, Optional[Inode]]]:
    """Depth first, in directory order: (ENTER, path, dir) before a directory's entries,
    (LEAVE, path, dir) after them, (LEAF, path, inode) for everything else. Paths are absolute
    in the image ("/" for the root). Names are checked with check_name (unless `check` is
    false: for listings); a directory met twice raises ImageError.

    Without `leaf_inodes` (a listing of names), the directory entry's file type decides what
    is a directory, as readdir's d_type does: only directories' inodes are read, and other
    entries come as (LEAF, path, None)."""
    if not stat.S_ISDIR(top.mode):
        yield LEAF, top_path, top
        return
    seen_dirs = {top.nid}
    yield ENTER, top_path, top
    stack = [(top_path, top, iter(img.listdir(top)))]
    while stack:
        path, directory, entries = stack[-1]
        for name, nid, ftype in entries:
            if check:
                check_name(name, path)
            child_path = join(path, name)
            if not leaf_inodes and ftype != EROFS_FT_DIR:
                yield LEAF, child_path, None
                continue
            child = img.inode(nid)
            if stat.S_ISDIR(child.mode):
                if nid in seen_dirs:
                    raise ImageError(f"{show(child_path)}: directory (nid {nid}) is reached "
                                     "twice: a directory loop or hard-linked directory")
                seen_dirs.add(nid)
                yield ENTER, child_path, child
                stack.append((child_path, child, iter(img.listdir(child))))
                break
            yield LEAF, child_path, child
        else:
            stack.pop()
            yield LEAVE, path, directory


def resolve(img: Image, path: Optional[str | bytes]) -> tuple[bytes, Inode]:
    """The normalized absolute image path and inode of a user-given PATH (None: the root)."""
    if path is None:
        return b"/", img.root
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise ImageError(f"{show(raw)}: '..' is not allowed in an image path")
    norm = b"/" + b"/".join(parts)
    if not parts:
        return norm, img.root
    try:
        return norm, img.lookup(norm)
    except ImageError as err:
        msg = str(err)
        if msg.startswith(show(norm) + ":"):
            raise
        # name the path asked for, not only the component that is missing
        raise ImageError(f"{show(norm)}: {msg}") from None


SYMLOOP_MAX = 40        # the kernel's MAXSYMLINKS: symlinks followed in one lookup


def follow(img: Image, path: bytes, inode: Inode) -> tuple[bytes, Inode]:
    """The path and inode a symlink at `path` leads to inside the image (itself if it is not a
    symlink); relative targets resolve against the link's directory, ".." stops at the root."""
    for _ in range(SYMLOOP_MAX):
        if not stat.S_ISLNK(inode.mode):
            return path, inode
        target = img.readlink(inode)
        base = path.rpartition(b"/")[0]
        path = target if target.startswith(b"/") else base + b"/" + target
        parts: list[bytes] = []
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                if parts:
                    parts.pop()
            else:
                parts.append(part)
        path = b"/" + b"/".join(parts)
        inode = img.lookup(path) if parts else img.root
    raise ImageError(f"{show(path)}: too many levels of symbolic links")


# ---------------------------------------------------------------------------
# extraction to a folder

@dataclass
class ExtractStats:
    dirs: int = 0
    files: int = 0
    links: int = 0          # hard links made
    others: int = 0         # symlinks, devices, fifos, sockets
    bytes: int = 0
    skipped_xattrs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return self.dirs + self.files + self.links + self.others


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HOLE_GRAIN = 64 * 1024                 # zero runs this long (aligned) become holes
_ZERO_GRAIN = bytes(_HOLE_GRAIN)


class _Extractor:
    def __init__(self, img: Image, owner: bool, xattrs: bool, warn: Callable[[str], None]):
        self.img = img
        self.owner = owner
        self.xattrs = xattrs
        self.privileged = os.geteuid() == 0
        self.warn = warn
        self.stats = ExtractStats()
        self.first_link: dict[int, tuple[tuple[bytes, ...], bytes]] = {}
        self.warned_namespaces: set[bytes] = set()

    # -- helpers -----------------------------------------------------------

    def _problem(self, msg: str) -> None:
        self.stats.problems.append(msg)
        self.warn(msg)

    def _fail(self, path: bytes, what: str, err: OSError) -> ExtractError:
        return ExtractError(f"{show(path)}: cannot {what}: {err.strerror or err}")

    def _clear(self, dfd: int, name: bytes, path: bytes, want_dir: bool) -> bool:
        """Make room for `name`; True if a directory already there is to be reused."""
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if want_dir:
                return True
            raise ExtractError(f"{show(path)}: the destination has a directory where the "
                               "image has a non-directory; remove it or extract elsewhere")
        os.unlink(name, dir_fd=dfd)
        return False

    def _open_parent(self, rootfd: int, parts: tuple[bytes, ...]) -> int:
        fd = os.dup(rootfd)
        try:
            for part in parts:
                nfd = os.open(part, _O_DIR, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _set_xattrs(self, target, inode: Inode, path: bytes, follow: bool) -> None:
        if not self.xattrs:
            return
        for name, value in self.img.xattrs(inode):
            ns = name.split(b".", 1)[0]
            if not self.privileged and ns in (b"trusted", b"security"):
                self.stats.skipped_xattrs += 1
                continue
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as err:
                if err.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOSPC,
                                 errno.E2BIG, errno.ERANGE, errno.EINVAL):
                    if ns not in self.warned_namespaces or err.errno not in (errno.ENOTSUP,):
                        self._problem(f"{show(path)}: cannot set xattr {show(name)}: "
                                      f"{err.strerror}")
                    self.warned_namespaces.add(ns)
                    continue
                raise

    def _attrs_fd(self, fd: int, inode: Inode, path: bytes) -> None:
        if self.owner:
            os.fchown(fd, inode.uid, inode.gid)
        os.fchmod(fd, stat.S_IMODE(inode.mode))
        self._set_xattrs(fd, inode, path, True)
        ns = inode.mtime * 1_000_000_000 + inode.mtime_nsec
        os.utime(fd, ns=(ns, ns))

    def _attrs_name(self, dfd: int, name: bytes, inode: Inode, path: bytes) -> None:
        is_link = stat.S_ISLNK(inode.mode)
        if self.owner:
            os.chown(name, inode.uid, inode.gid, dir_fd=dfd, follow_symlinks=False)
        if not is_link:
            os.chmod(name, stat.S_IMODE(inode.mode), dir_fd=dfd)
        # setxattr has no dir_fd form: go through the directory's descriptor in /proc
        self._set_xattrs(b"/proc/self/fd/%d/%s" % (dfd, name), inode, path, False)
        ns = inode.mtime * 1_000_000_000 + inode.mtime_nsec
        os.utime(name, ns=(ns, ns), dir_fd=dfd, follow_symlinks=False)

    # -- entries -----------------------------------------------------------

    def write_data(self, fd: int, inode: Inode, path: bytes) -> None:
        pos = 0
        seek_pending = False
        for chunk in self.img.iter_data(inode):
            chunk = bytes(chunk)
            for start in range(0, len(chunk), _HOLE_GRAIN):
                # (a bytes slice compares with memcmp; memoryviews compare item by item)
                piece = chunk[start:start + _HOLE_GRAIN]
                n = len(piece)
                if piece == (_ZERO_GRAIN if n == _HOLE_GRAIN else _ZERO_GRAIN[:n]):
                    seek_pending = True
                else:
                    if seek_pending:
                        os.lseek(fd, pos, os.SEEK_SET)
                        seek_pending = False
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view):]
                pos += n
        if pos != inode.size:
            raise ImageError(f"{show(path)}: data is {pos} bytes long, the inode says "
                             f"{inode.size}")
        if seek_pending:
            os.ftruncate(fd, pos)
        self.stats.bytes += pos

    def leaf(self, dfd: int, parts: tuple[bytes, ...], name: bytes, inode: Inode,
             path: bytes, rootfd: int) -> None:
        mode = inode.mode
        self._clear(dfd, name, path, False)
        if inode.nlink > 1:
            first = self.first_link.get(inode.nid)
            if first is not None:
                fparts, fname = first
                pfd = self._open_parent(rootfd, fparts)
                try:
                    os.link(fname, name, src_dir_fd=pfd, dst_dir_fd=dfd, follow_symlinks=False)
                finally:
                    os.close(pfd)
                self.stats.links += 1
                return
            self.first_link[inode.nid] = (parts, name)
        if stat.S_ISREG(mode):
            fd = os.open(name, _O_NEWFILE, 0o600, dir_fd=dfd)
            try:
                self.write_data(fd, inode, path)
                self._attrs_fd(fd, inode, path)
            finally:
                os.close(fd)
            self.stats.files += 1
            return
        if stat.S_ISLNK(mode):
            target = self.img.readlink(inode)
            if b"\0" in target or not target:
                raise ImageError(f"{show(path)}: symlink target {target!r} is empty or "
                                 "contains a NUL byte")
            os.symlink(target, name, dir_fd=dfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            major, minor = device_numbers(inode)
            try:
                os.mknod(name, stat.S_IFMT(mode) | 0o600, os.makedev(major, minor), dir_fd=dfd)
            except PermissionError as err:
                self._problem(f"{show(path)}: cannot create device {major}:{minor}: "
                              f"{err.strerror}")
                self.first_link.pop(inode.nid, None)
                return
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, dir_fd=dfd)
        else:
            raise ImageError(f"{show(path)}: unknown file type {stat.S_IFMT(mode):o}")
        self._attrs_name(dfd, name, inode, path)
        self.stats.others += 1

    def enter_dir(self, dfd: int, name: bytes, path: bytes) -> int:
        if not self._clear(dfd, name, path, True):
            os.mkdir(name, 0o700, dir_fd=dfd)
        fd = os.open(name, _O_DIR, dir_fd=dfd)
        # a directory extracted without write permission for us could not be filled
        if not self.privileged:
            os.fchmod(fd, 0o700)
        return fd

    # -- the walk ----------------------------------------------------------

    def run(self, dest_fd: int, top: Inode, top_path: bytes) -> None:
        fds: list[int] = []                 # open directory descriptors, innermost last
        parts: list[bytes] = []             # their names below dest (dest itself: none)
        base = top_path if stat.S_ISDIR(top.mode) else top_path.rpartition(b"/")[0] or b"/"
        try:
            for event, path, inode in iter_tree(self.img, top, top_path):
                rel = path[len(base):].lstrip(b"/") if path != base else b""
                name = rel.rpartition(b"/")[2]
                try:
                    if event == ENTER:
                        if not fds:
                            fds.append(os.dup(dest_fd))
                        else:
                            fds.append(self.enter_dir(fds[-1], name, path))
                            parts.append(name)
                    elif event == LEAVE:
                        fd = fds.pop()
                        try:
                            self._attrs_fd(fd, inode, path)
                        finally:
                            os.close(fd)
                        if parts:
                            parts.pop()
                        self.stats.dirs += 1
                    else:
                        dfd = fds[-1] if fds else dest_fd
                        self.leaf(dfd, tuple(parts), name, inode, path, dest_fd)
                except OSError as err:
                    raise self._fail(path, "extract it", err) from err
        finally:
            for fd in fds:
                os.close(fd)


def extract(img: Image, dest, *, path: Optional[str | bytes] = None, owner: Optional[bool] = None,
            xattrs: bool = True, force: bool = False,
            warn: Callable[[str], None] = lambda msg: None,
            stats: ExtractStats | None = None) -> ExtractStats:
    """Extract the image (or the subtree at `path`) into the folder `dest`.

    A directory's contents go straight into `dest` (which takes the directory's own mode, times,
    owner and xattrs); a single non-directory is written as dest/NAME. `dest` is created if
    missing and must be empty unless `force`. Owners are restored when `owner` is true (default:
    when running as root); xattrs unless `xattrs` is false (trusted./security. only as root).
    Problems that do not stop the extraction (a device node without privilege, an xattr the
    target filesystem refuses) are passed to `warn` and listed in the result's `problems`.
    `stats` (returned, filled as the extraction goes: another thread may watch it) defaults
    to a new ExtractStats."""
    top_path, top = resolve(img, path)
    dest = os.fsencode(dest)
    if owner is None:
        owner = os.geteuid() == 0
    try:
        os.makedirs(dest, exist_ok=True)
    except FileExistsError:
        raise ExtractError(f"{show(dest)}: exists and is not a directory") from None
    except OSError as err:
        raise ExtractError(f"{show(dest)}: cannot create it: {err.strerror or err}") from None
    try:
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise ExtractError(f"{show(dest)}: {err.strerror or err}") from None
    try:
        if not force and os.listdir(dest_fd):
            raise ExtractError(f"{show(dest)}: destination is not empty (use --force to "
                               "extract into it anyway)")
        worker = _Extractor(img, owner, xattrs, warn)
        if stats is not None:
            worker.stats = stats
        worker.run(dest_fd, top, top_path)
        return worker.stats
    finally:
        os.close(dest_fd)


# ---------------------------------------------------------------------------
# tar stream

class _DataStream:
    """A read(n)-only file object over Image.iter_data, for tarfile.addfile: it returns exactly
    n bytes until the end, holding at most one chunk of the file in memory."""

    def __init__(self, chunks: Iterator[bytes], path: bytes, size: int):
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._path = path
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._left
        parts = []
        want = n
        while want > 0:
            if not self._buf:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise ImageError(f"{show(self._path)}: data ends {self._left} bytes early")
                self._buf = memoryview(chunk)
            piece = self._buf[:want]
            self._buf = self._buf[len(piece):]
            parts.append(piece)
            want -= len(piece)
        self._left -= n
        return b"".join(parts)


def _pax_time(sec: int, nsec: int) -> str:
    total = sec * 1_000_000_000 + nsec
    sign = "-" if total < 0 else ""
    whole, frac = divmod(abs(total), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}".rstrip("0").rstrip(".")


def _str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


# GNU tar --acls restores ACLs from these text records only: with --acls and no text record it
# sets the ACL the mode implies, over any system.posix_acl_* xattr it has just restored
_ACL_TEXT_KEYS = {b"system.posix_acl_access": "SCHILY.acl.access",
                  b"system.posix_acl_default": "SCHILY.acl.default"}


def _note(stats: ExtractStats, warn: Callable[[str], None], msg: str) -> None:
    stats.problems.append(msg)
    warn(msg)


def _xattr_key(name: bytes) -> str:
    """The PAX key of xattr `name` as GNU tar writes it: a key ends at the first "=", so "%"
    and "=" in the name become %25 and %3D (GNU tar and mkerofs's tar reader decode them)."""
    text = _str(name)
    if "%" in text or "=" in text:
        text = text.replace("%", "%25").replace("=", "%3D")
    return "SCHILY.xattr." + text


def _xattr_records(img: Image, inode: Inode, path: bytes, stats: ExtractStats,
                   warn: Callable[[str], None]) -> dict[str, str]:
    """SCHILY.xattr.* records with every xattr's raw value (GNU tar --xattrs and mkerofs's tar
    reader restore ACLs exactly from these), then each ACL again as SCHILY.acl.* text."""
    records = {}
    acls = {}
    for name, value in img.xattrs(inode):
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            # tarfile writes PAX keys as strict UTF-8
            _note(stats, warn, f"{show(path)}: xattr name {show(name)} is not UTF-8; left out")
            continue
        records[_xattr_key(name)] = _str(value)
        if name in _ACL_TEXT_KEYS:
            acls[_ACL_TEXT_KEYS[name]] = _acl_text(name, value, path, stats, warn)
    records.update((key, text) for key, text in acls.items() if text is not None)
    return records


def _acl_text(name: bytes, value: bytes, path: bytes, stats: ExtractStats,
              warn: Callable[[str], None]) -> Optional[str]:
    try:
        entries = decode_posix_acl(value)
        problem = posix_acl_problem(entries)
        if problem:
            raise ValueError(f"the ACL {problem}")
        return posix_acl_text(entries)
    except ValueError as err:
        _note(stats, warn, f"{show(path)}: {show(name)}: {err}; written as a raw xattr only "
              "(GNU tar --acls replaces it with the ACL of the mode)")
        return None


def write_tar(img: Image, out, *, path: Optional[str | bytes] = None, xattrs: bool = True,
              warn: Callable[[str], None] = lambda msg: None) -> ExtractStats:
    """Write the image (or the subtree at `path`) to the binary file object `out` as a POSIX
    (PAX) tar stream: names relative to the subtree ("." is its top directory), numeric owners,
    mtimes with nanoseconds, xattrs as SCHILY.xattr.* records and POSIX ACLs also as
    SCHILY.acl.access/default text (as GNU tar writes both), hard links as link entries,
    devices and fifos. Sockets cannot be stored in tar: they are left out (with a warning).
    File data is streamed."""
    top_path, top = resolve(img, path)
    stats = ExtractStats()
    base = top_path if stat.S_ISDIR(top.mode) else top_path.rpartition(b"/")[0] or b"/"
    first: dict[int, str] = {}
    tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape")
    tf.copybufsize = 1 << 20
    try:
        for event, p, inode in iter_tree(img, top, top_path):
            if event == LEAVE:
                continue
            rel = p[len(base):].lstrip(b"/") if p != base else b""
            name = "./" + _str(rel) if rel else "."
            mode = inode.mode
            if stat.S_ISSOCK(mode):
                _note(stats, warn, f"{show(p)}: sockets cannot be stored in tar; left out")
                continue
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(mode)
            info.uid, info.gid = inode.uid, inode.gid
            info.uname = info.gname = ""
            info.mtime = inode.mtime
            pax = {}
            if inode.mtime_nsec or not 0 <= inode.mtime < 8 ** 11:
                pax["mtime"] = _pax_time(inode.mtime, inode.mtime_nsec)
            if xattrs:
                pax.update(_xattr_records(img, inode, p, stats, warn))
            info.pax_headers = pax
            data = None
            if not stat.S_ISDIR(mode) and inode.nlink > 1:
                if inode.nid in first:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first[inode.nid]
                    tf.addfile(info)
                    stats.links += 1
                    continue
                first[inode.nid] = name
            if stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                stats.dirs += 1
            elif stat.S_ISREG(mode):
                info.type = tarfile.REGTYPE
                info.size = inode.size
                data = _DataStream(iter(img.iter_data(inode)), p, inode.size)
                stats.files += 1
                stats.bytes += inode.size
            elif stat.S_ISLNK(mode):
                info.type = tarfile.SYMTYPE
                info.linkname = _str(img.readlink(inode))
                stats.others += 1
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = device_numbers(inode)
                stats.others += 1
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
                stats.others += 1
            else:
                raise ImageError(f"{show(p)}: unknown file type {stat.S_IFMT(mode):o}")
            tf.addfile(info, data)
    except BaseException:
        # no end-of-archive marker (nor a last flush) after a failure: readers see a
        # truncated archive, and a closed pipe gives no second error at exit
        tf.closed = True
        tf.fileobj.closed = True
        raise
    tf.close()
    return stats
