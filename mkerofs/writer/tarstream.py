"""Reading a tar stream entry by entry, in one forward pass, for ``mkerofs --tar``.

What is read (the formats GNU tar, bsdtar and Python's tarfile write):

* Headers are 512-byte blocks. The checksum is accepted as the unsigned or the signed byte sum
  (as GNU tar does). The magic must be POSIX ``ustar\\0`` (``prefix`` + ``/`` + ``name``, or
  star's shorter prefix when the block ends in ``tar\\0``), GNU ``ustar  \\0`` (no prefix: that
  area holds old-GNU atime/ctime/sparse data; mkfs.erofs 1.9.3 reads it as a prefix), or all
  zeros (V7). Numbers are octal (leading spaces, ended by NUL/space or the field's end) or GNU
  base-256 (first byte >= 0x80, sign in bit 6). An empty or malformed number is an error unless
  a PAX record replaces that field.
* Types: ``0``, ``7`` and the old ``\\0`` are regular files (``\\0`` with a trailing ``/`` is a
  V7 directory); ``1`` hard link, ``2`` symlink, ``3``/``4`` devices (both numbers required),
  ``5`` and GNU ``D`` (dump list skipped) directories, ``6`` fifo, old GNU ``S`` sparse files
  (with extension blocks). ``x``/``X`` PAX, ``g`` global PAX, ``L``/``K`` GNU long name and link
  apply to the next entry; ``V`` is a volume label (kept in `volume_label`). Any other type
  (``M`` multi-volume, ``N`` old long names, vendor letters) is an error: mkfs.erofs 1.9.3 drops
  these, and ``\\0`` and ``S`` files, without a word.
* PAX records ``LEN key=value\\n``: ``path``, ``linkpath``, ``size``, ``uid``, ``gid``,
  ``uname``, ``gname``, ``mtime`` (fraction kept to the ns; ``-1.5`` is 1.5 s before the
  epoch, as POSIX, GNU tar and tarfile read it; libarchive writes -1.5 s as ``-2.5``, so a
  bsdtar time before 1970 with a fraction comes out a second early), ``SCHILY.devmajor``/
  ``devminor``, ``SCHILY.xattr.NAME`` (raw value; GNU tar's %3D and %25 in NAME decoded),
  ``LIBARCHIVE.xattr.URLNAME`` (base64 value), ``SCHILY.acl.access``/``default`` (see below),
  GNU sparse 0.0, 0.1 and 1.0. An empty value unsets a standard key (also one set globally).
  Other keys (atime, ctime, charset, SCHILY.fflags, ...) are ignored: EROFS cannot store them.
  NFSv4 ACLs (``SCHILY.acl.ace``) are an error. Global records apply to every later entry that
  does not set the key itself (mkfs.erofs applies size/uid/gid/mtime only from the second entry
  on); a global ``path``, ``linkpath``, ``size`` or sparse record is refused, as it would make
  every entry the same.
* ACLs as text (``SCHILY.acl.*``, GNU tar with names only, star/bsdtar with ids appended) become
  the binary ``system.posix_acl_*`` value the kernel reads (ondisk/posix_acl.py); names without
  an id are looked up on this host, as GNU tar does when extracting, and an unknown one is an
  error. As setting it on a file would, an access ACL also sets the rwx bits of the mode (the
  group class shows the mask: bsdtar's mode field does not), and an access ACL of only
  user::/group::/other:: is no xattr at all. A raw ``SCHILY.xattr.system.posix_acl_*`` record,
  which GNU tar writes beside the text, wins over the text.
* Paths are normalised as mkfs.erofs walks them: leading and repeated ``/`` and ``.`` components
  dropped, ``..`` lexically to the parent (the root's parent is the root), so the root is
  ``b""``. A component over 255 bytes (EROFS_NAME_LEN) or a NUL is an error. Hard link targets
  are normalised the same way (`TarEntry.link_path`); symlink targets are kept verbatim.

Errors (TarError) name the entry and the byte offset of its first header in the uncompressed
stream: bad checksum or magic, a short read in a header, payload or padding, a bad number or PAX
record, bad base64, an unusable ACL, an inconsistent sparse map. Payloads that mean nothing for
the entry's type (a symlink, hard link or directory with a size) are skipped correctly, never
mistaken for headers (mkfs.erofs loses the rest of the archive there). Checks that need the
whole tree (a hard link to nothing, a non-directory inside a path) belong to the tree builder.

A headerball (``TarReader(..., headerball=True)``, for ``--tar=headerball``) is a tar with the
data of regular files and hard links left out: their size field still gives the file's size, no
payload follows the header, and the file reads as zeros (a sparse entry is an error there). PAX,
long-name and other payloads are still present.

End of archive: two zero blocks, or one zero block at the end of the input. A single zero block
followed by a header is skipped, as mkfs.erofs does (GNU tar would stop there and drop the
rest). The input ending at a header boundary with no zero block is an error by default (it is
what a truncated stream looks like; mkfs.erofs only warns). After the marker the rest of the
input is read to its end and discarded, counting it in `trailing_bytes` and noting in
`trailing_data` whether any of it is non-zero (a second concatenated archive, say): a pipe
writer such as containerd is then never killed by SIGPIPE, and a decompressor gets to check the
stream's own trailer (CRC, size). mkfs.erofs leaves it unread.

Use (TarReader also takes a bare binary file object: then nothing is sniffed or seeked)::

    with open_input(path_or_file) as inp:
        reader = TarReader(inp)
        for entry in reader:
            for offset, piece in reader.chunks(entry):   # only for the entry just yielded
                ...
Data the caller does not read is skipped (by seeking in a plain regular file) when the next
entry is read. All offsets are positions in the uncompressed stream, relative to where reading
started. ``TarReader(..., read_ahead=True)`` has a thread read (and so decode) the input up to
2 MiB ahead of the parsing, never seeking; ``close()`` ends that thread. A decoder's failure is
then reported at the start of the piece whose read failed, which may be up to 1 MiB before
where a reader without it would report it (what the failing read decoded is lost either way).
"""
from __future__ import annotations

import base64
import binascii
import functools
import grp
import os
import pwd
import queue
import re
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import BuildError
from ..ondisk import posix_acl as acl
from ..ondisk.format import EROFS_NAME_LEN
from .decompress import DECODE_ERRORS, TarInput

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_CHUNK = 1 << 20
_MTIMES = 1 << 12          # mtimes shared at a time (TarReader._mtimes)
_REFILL = 1 << 16          # header reads: a seek may follow, so read little
_AHEAD = 2                 # pieces of _CHUNK bytes a read-ahead thread reads before they are used
_MAX_META = 16 << 20            # PAX and long-name payloads are held in memory

REG, HARDLINK, SYMLINK, CHR, BLK, DIR, FIFO = "reg", "hardlink", "symlink", "chr", "blk", "dir", "fifo"
# type flags of headers that apply to the next entry (PAX, GNU long name and link) or stand
# alone (global PAX, volume label); a set, not b"xXgLKV": "in" a bytes first tries its operand
# as an int, and the TypeError costs more than the search
_EXTENSION_TYPES = frozenset((b"x", b"X", b"g", b"L", b"K", b"V"))

# typeflag -> (kind, S_IFMT)
_KINDS = {
    b"0": (REG, stat.S_IFREG), b"\0": (REG, stat.S_IFREG), b"7": (REG, stat.S_IFREG),
    b"S": (REG, stat.S_IFREG), b"1": (HARDLINK, stat.S_IFREG), b"2": (SYMLINK, stat.S_IFLNK),
    b"3": (CHR, stat.S_IFCHR), b"4": (BLK, stat.S_IFBLK), b"5": (DIR, stat.S_IFDIR),
    b"D": (DIR, stat.S_IFDIR), b"6": (FIFO, stat.S_IFIFO),
}

# name mode uid gid size mtime chksum typeflag linkname magic version uname gname devmajor
# devminor prefix (the last 12 bytes are the old-GNU realsize or star's "tar\0")
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
_MAGIC_GNU, _MAGIC_V7 = b"ustar  \0", bytes(8)      # POSIX: b"ustar\0" + any version
_CHKSUM = slice(148, 156)
_IDS_AREA, _SIZE, _MTIME = slice(100, 124), slice(124, 136), slice(136, 148)
_MEMO = 1 << 12                 # header fields remembered (_Memo)
_TYPEFLAG = 156
_MAGIC, _MAGIC_AND_VERSION = slice(257, 263), slice(257, 265)
_PREFIX0 = 345                  # the prefix's first byte
_PAX_TYPE = ord("x")
_OWNER_NAMES_AREA = slice(265, 329)     # uname gname
_OCTAL_CHARS = b"01234567 \0"
_NUL_TO_SPACE = bytes.maketrans(b"\0", b" ")
_HIGH_BYTES = bytes(range(128, 256))

# old-GNU sparse: 4 (offset, numbytes) pairs of 12-byte numbers at 386, isextended at 482,
# realsize at 483; an extension block holds 21 pairs and isextended at 504
_OLDGNU_SPARSE, _OLDGNU_ISEXT, _OLDGNU_REALSIZE = 386, 482, slice(483, 495)
_EXT_PAIRS, _EXT_ISEXT = 21, 504

_XATTR_SCHILY, _XATTR_LIBARCHIVE = b"SCHILY.xattr.", b"LIBARCHIVE.xattr."
_ACL_XATTR = {b"SCHILY.acl.access": b"system.posix_acl_access",
              b"SCHILY.acl.default": b"system.posix_acl_default"}
# keys whose empty value means "unset" (POSIX), rather than an empty value
_UNSETTABLE = {b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"uname", b"gname",
               b"SCHILY.devmajor", b"SCHILY.devminor"}
_NOT_GLOBAL = (b"path", b"linkpath", b"size", b"GNU.sparse.")
_SPARSE_00 = (b"GNU.sparse.offset", b"GNU.sparse.numbytes")
# keys GNU tar --format=posix writes for every entry and EROFS cannot store: dropped as they
# are parsed, so that most entries carry no records at all (other ignored keys are kept, unread)
_IGNORED = frozenset((b"atime", b"ctime"))
# the PAX payload of most entries GNU tar writes: its atime and ctime records, 10-digit
# seconds and a fraction of 1 to 9 digits (GNU tar drops its trailing zeros) or none, the
# record's length pinned for each (20 bytes, and the dot and digits), so it needs no parsing
_GNU_TIME = [(20 + digits + 1, rb"\.[0-9]{%d}" % digits) for digits in range(9, 0, -1)] + [(20, b"")]
_GNU_TIMES_ONLY = re.compile(b"(?:%s)+" % b"|".join(
    b"%d [ac]time=[0-9]{10}%s\n" % (length, fraction) for length, fraction in _GNU_TIME))
# ... and the record GNU tar puts before them when a name is too long for the header or an
# mtime has a fraction: one path or mtime record (its length is checked apart, a value with a
# newline is left to _parse_pax)
_GNU_LEAD_RECORD = re.compile(rb"([0-9]{1,20}) (path|mtime)=([^\n]*)\n")


class TarError(BuildError):
    """A tar stream that cannot be read as it is: the message names the entry and the byte
    offset of its first header in the (uncompressed) stream."""

    def __init__(self, message: str, path: bytes | None = None, offset: int | None = None):
        self.path, self.offset = path, offset
        where = []
        if path is not None:
            where.append(f"tar entry {path.decode('utf-8', 'backslashreplace')!r}")
        if offset is not None:
            where.append(f"at byte {offset}")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


@dataclass(slots=True)
class TarEntry:
    path: bytes                 # normalised: no leading "/", no "." or "..", root is b""
    name: bytes                 # as the archive spells it (after PAX path / GNU long name)
    kind: str                   # REG, HARDLINK, SYMLINK, CHR, BLK, DIR or FIFO
    mode: int                   # S_IFMT from the type flag | the header's 07777 bits
    uid: int
    gid: int
    mtime_ns: int               # may be negative; divmod(mtime_ns, 10**9) gives (sec, nsec)
    size: int = 0               # a regular file's length (holes included); 0 for other kinds
    linkname: bytes = b""       # symlink target verbatim, or the hard link target as written
    link_path: bytes | None = None      # a hard link's target, normalised like `path`
    devmajor: int = 0
    devminor: int = 0
    uname: bytes = b""
    gname: bytes = b""
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)   # in tar order
    sparse: list[tuple[int, int]] | None = None     # data extents (offset, length) in the file
    header_offset: int = 0      # first header of the entry (PAX/long-name headers included)
    data_offset: int = 0        # first byte of the data (after old-GNU extension blocks and a
                                # sparse-1.0 map); the extents follow each other from there
    payload: int = 0            # bytes of data at data_offset (a symlink's or directory's
                                # meaningless payload too; chunks() yields them)


def normalise_path(name: bytes) -> bytes:
    """`name` as mkfs.erofs resolves it in its tree (see the module docstring).
    ValueError if a component is too long for EROFS or the name holds a NUL."""
    # the common case: already normal (a directory's maybe with one "/" after it, as tar
    # writers add), too short for a component to be too long (find, not "in": see
    # _EXTENSION_TYPES)
    plain = name[:-1] if name.endswith(b"/") else name
    if (len(plain) <= EROFS_NAME_LEN and plain.find(b"//") < 0 and plain.find(b"/.") < 0
            and not plain.startswith((b"/", b".")) and not plain.endswith(b"/")
            and plain.find(b"\0") < 0):
        return plain
    parts = name.split(b"/")
    if b"" in parts or b"." in parts or b".." in parts:
        out: list[bytes] = []
        for part in parts:
            if part == b".." and out:
                out.pop()
            elif part not in (b"", b".", b".."):
                out.append(part)
        parts, name = out, b"/".join(out)
    if len(name) > EROFS_NAME_LEN and max(map(len, parts)) > EROFS_NAME_LEN:
        raise ValueError(f"a path component is longer than {EROFS_NAME_LEN} bytes")
    if b"\0" in name:
        raise ValueError("the path holds a NUL byte")
    return name


@functools.lru_cache(maxsize=None)
def host_id(kind: str, name: str) -> int | None:
    """The id of user or group `name` on this host (GNU tar's ACL text carries names only)."""
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        return None


# text tag -> (what it is called in messages, its object tag, its named tag)
_ACL_TAGS = {b"user": ("user", acl.ACL_USER_OBJ, acl.ACL_USER),
             b"group": ("group", acl.ACL_GROUP_OBJ, acl.ACL_GROUP),
             b"mask": ("mask", acl.ACL_MASK, None), b"other": ("other", acl.ACL_OTHER, None)}
_ACL_TAGS.update({k[:1]: v for k, v in list(_ACL_TAGS.items())})
_ACL_PERMS = {ord("r"): acl.ACL_READ, ord("w"): acl.ACL_WRITE, ord("x"): acl.ACL_EXECUTE, ord("-"): 0}


def acl_from_text(text: bytes,
                  resolve: Callable[[str, str], int | None] = host_id) -> list[tuple[int, int, int]]:
    """The entries (tag, perm, id) of an ACL in text form, as tar writers put it in
    ``SCHILY.acl.access``/``default``: ``tag:qualifier:perms[:id]`` split by ``,`` or newlines,
    ``#`` comments, short tags (``u``, ``g``, ``m``, ``o``). A named entry takes its id from the
    4th field (star, bsdtar), else from a numeric qualifier, else from `resolve` (GNU tar writes
    names only). ValueError says what is wrong, including what the kernel would refuse."""
    entries = []
    for item in re.split(rb"[,\n]", text):
        item = item.split(b"#", 1)[0].strip()
        if not item:
            continue
        fields = item.split(b":")
        kind, obj_tag, named_tag = _ACL_TAGS.get(fields[0], (None, 0, None))
        if kind is None:
            raise ValueError(f"unknown ACL entry {item!r}")
        if named_tag is None and len(fields) == 2:
            fields.insert(1, b"")
        if len(fields) not in (3, 4) or (named_tag is None and (fields[1] or len(fields) == 4)):
            raise ValueError(f"malformed ACL entry {item!r}")
        qualifier, perms = fields[1], fields[2]
        if len(perms) > 3 or any(c not in _ACL_PERMS for c in perms):
            raise ValueError(f"bad permissions in ACL entry {item!r}")
        perm = sum(_ACL_PERMS[c] for c in set(perms))
        if not qualifier:
            entries.append((obj_tag, perm, acl.ACL_UNDEFINED_ID))
            continue
        if len(fields) == 4:
            ident = _decimal_or_none(fields[3])
        elif qualifier.isdigit():
            ident = int(qualifier)
        else:
            ident = resolve(kind, qualifier.decode("utf-8", "surrogateescape"))
        if ident is None or not 0 <= ident < acl.ACL_UNDEFINED_ID:
            raise ValueError(f"no usable {kind} id in ACL entry {item!r}")
        entries.append((named_tag, perm, ident))
    problem = acl.posix_acl_problem(entries)
    if problem:
        raise ValueError(f"the ACL {text!r} {problem}")
    return entries


def acl_mode_bits(entries: list[tuple[int, int, int]]) -> int:
    """The rwxrwxrwx bits an access ACL gives the file (the kernel's posix_acl_equiv_mode /
    posix_acl_update_mode): the group class shows the mask when there is one."""
    perms = {tag: perm for tag, perm, _id in entries}
    group = perms.get(acl.ACL_MASK, perms[acl.ACL_GROUP_OBJ])
    return perms[acl.ACL_USER_OBJ] << 6 | group << 3 | perms[acl.ACL_OTHER]


def acl_is_minimal(entries: list[tuple[int, int, int]]) -> bool:
    """True if the ACL says no more than the mode: the kernel keeps no access ACL xattr then."""
    return all(tag in (acl.ACL_USER_OBJ, acl.ACL_GROUP_OBJ, acl.ACL_OTHER) for tag, _p, _i in entries)


def _decimal_or_none(text: bytes) -> int | None:
    return int(text) if text.isdigit() else None


def _cut(field: bytes) -> bytes:
    """A NUL-terminated header string."""
    return field.partition(b"\0")[0]


def _plain_octal(field: bytes) -> int | None:
    """A numeric header field of octal digits between spaces and NULs (the common case), else
    None: the caller then reads it with _header_number and its error messages."""
    if field.translate(None, _OCTAL_CHARS):
        return None
    try:
        return int(field.translate(_NUL_TO_SPACE), 8)
    except ValueError:
        return None      # empty, or spaces or NULs between the digits


def _plain_octals(area: bytes) -> tuple[int, ...] | None:
    """The 8-byte fields of `area` (mode, uid, gid) when all are plain octal, else None."""
    values = tuple(_plain_octal(area[i:i + 8]) for i in range(0, len(area), 8))
    return None if None in values else values


def _mtime_ns(field: bytes) -> int | None:
    seconds = _plain_octal(field)
    return None if seconds is None else seconds * 10**9


def _mode_and_ids(ifmt: int, area: bytes) -> tuple[int, int, int] | None:
    """(the inode's mode, uid, gid) of a header whose type gives `ifmt`, from its mode, uid
    and gid fields (`area`) when they are plain octal; else None."""
    ids = _plain_octals(area)
    return None if ids is None else (ifmt | (ids[0] & 0o7777), ids[1], ids[2])


def _owner_names(area: bytes) -> tuple[bytes, bytes]:
    return _cut(area[:32]), _cut(area[32:])


class _Memo(dict):
    """Values of header fields by their bytes, parsed by `parse` when first met: an archive's
    headers repeat a few modes, owners, times and PAX sizes, and a look-up costs a fraction of
    parsing one (the values are shared, too). At most _MEMO fields are kept."""

    __slots__ = ("_parse",)

    def __init__(self, parse: Callable[[bytes], object]):
        super().__init__()
        self._parse = parse

    def __missing__(self, field: bytes):
        if len(self) >= _MEMO:
            self.clear()
        value = self[field] = self._parse(field)
        return value


_IDS = _Memo(_plain_octals)                     # mode uid gid fields
_MTIMES_NS = _Memo(_mtime_ns)
_SIZES = _Memo(_plain_octal)                    # of extension headers
_OWNER_NAMES = _Memo(_owner_names)              # uname gname fields
# type flags _quick_entry reads: plain files and directories it makes itself (their kind, and
# their mode and ids by the header's fields), hard links, symlinks, devices and fifos it passes
# to _entry (None)
_QUICK_KINDS = {ord(flag): (kind, _Memo(functools.partial(_mode_and_ids, ifmt)))
                if flag in (b"0", b"7", b"5") else (None, None)
                for flag, (kind, ifmt) in _KINDS.items() if flag not in (b"\0", b"S", b"D")}


# what _quick_entry reads of a header, in one call: name, mode uid gid, size, mtime, chksum,
# typeflag (a number), magic and version, uname gname, the prefix's first byte
_QUICK_FIELDS = struct.Struct("100s24s12s12s8sB100x8s64s16xB166x")
# ... and of a PAX header: size, chksum, magic and version
_PAX_FIELDS = struct.Struct("124x12s12x8s101x8s247x")
# magics _header_ok accepts (other ustar versions are left to it)
_QUICK_MAGICS = frozenset((b"ustar\x0000", _MAGIC_GNU, _MAGIC_V7))
# PAX records _quick_entry applies itself
_QUICK_RECORDS = frozenset((b"path", b"mtime"))


def _quick_header_ok(block: bytes, chksum: bytes, magic: bytes) -> bool:
    """_header_ok for the common case (an ASCII block, a usual magic); False may still be a
    good header: ask _header_ok then."""
    try:
        stored = int(chksum.translate(_NUL_TO_SPACE), 8)
    except ValueError:
        return False
    # (the byte sums of block and field from Adler-32's low halves: see _checksum_ok)
    return stored == (zlib.adler32(block) & 0xFFFF) - (zlib.adler32(chksum) & 0xFFFF) \
        + 8 * 0x20 and block.isascii() and magic in _QUICK_MAGICS


def _quick_pax_mtime(value: bytes) -> int | None:
    """A PAX mtime in ns; None for an empty value (which unsets the key) or a malformed one
    (_entry then says what is wrong)."""
    try:
        return _pax_time_ns(value) if value else None
    except ValueError:
        return None


def _gnu_lead_record(buf: bytes, start: int, end: int) -> dict | None:
    """The records of the PAX payload buf[start:end], as _parse_pax reads them, when it is one
    path or mtime record then only atime/ctime records (_GNU_LEAD_RECORD); None otherwise."""
    match = _GNU_LEAD_RECORD.match(buf, start, end)
    if match is None or int(match[1]) != match.end() - start:
        return None
    if match.end() < end and not _GNU_TIMES_ONLY.fullmatch(buf, match.end(), end):
        return None
    return {match[2]: match[3]}


def _octal_fields(block: bytes) -> tuple[int, int, int, int, int] | None:
    """mode, uid, gid, size and mtime (in ns) when all five are plain octal (the common case);
    None sends the caller to the field-by-field path with its error messages."""
    ids = _IDS[block[_IDS_AREA]]
    size = _plain_octal(block[_SIZE])
    mtime_ns = _MTIMES_NS[block[_MTIME]]
    if ids is None or size is None or mtime_ns is None:
        return None
    return ids[0], ids[1], ids[2], size, mtime_ns


def _header_number(field: bytes) -> int | None:
    """A numeric header field; None if it is empty. ValueError if malformed."""
    if field[0] & 0x80:
        value = int.from_bytes(field, "big") & ~(1 << (8 * len(field) - 1))
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return None
    if digits.translate(None, b"01234567"):
        raise ValueError
    return int(digits, 8)


def _header_ok(block: bytes) -> bool:
    """A known magic and a right checksum (a number: what _check_header checks, as a yes or no)."""
    magic = block[_MAGIC_AND_VERSION]
    if magic[:6] != b"ustar\0" and magic not in (_MAGIC_GNU, _MAGIC_V7):
        return False
    field = block[_CHKSUM]
    try:
        stored = int(field.translate(_NUL_TO_SPACE), 8)     # (_stored_checksum inline)
    except ValueError:
        return False
    # (_checksum_ok's common case inline: an ASCII block, see there)
    return block.isascii() and stored == (zlib.adler32(block) & 0xFFFF) - 1 - sum(field) \
        + 8 * 0x20 or _checksum_ok(block, stored)


def _stored_checksum(field: bytes) -> int | None:
    try:
        return int(field.translate(_NUL_TO_SPACE), 8)
    except ValueError:
        return None


def _checksum_ok(block: bytes, stored: int) -> bool:
    if block.isascii():
        # the byte sum is then below 65521, so Adler-32's low half is 1 + the sum (and ten
        # times faster than sum()); signed and unsigned sums are the same
        return stored == (zlib.adler32(block) & 0xFFFF) - 1 - sum(block[_CHKSUM]) + 8 * 0x20
    unsigned = sum(block) - sum(block[_CHKSUM]) + 8 * 0x20
    if stored == unsigned:
        return True
    # the signed sum: every byte >= 0x80 counts 256 less (old Sun and some other tars)
    high = (BLOCK - len(block.translate(None, _HIGH_BYTES))) \
        - (8 - len(block[_CHKSUM].translate(None, _HIGH_BYTES)))
    return stored == unsigned - 256 * high


def _pax_decimal(value: bytes, signed: bool = False) -> int:
    """A PAX decimal integer (ASCII digits only). ValueError if malformed."""
    body = value[1:] if signed and value[:1] == b"-" else value
    if not body.isdigit():
        raise ValueError
    return int(value)


def _pax_time_ns(value: bytes) -> int:
    """``[-]sec[.frac]`` in ns; digits past the 9th are dropped (truncated, as mkfs.erofs)."""
    whole, dot, frac = value.partition(b".")
    if dot and not frac.isdigit():
        raise ValueError
    sec = _pax_decimal(whole, signed=True)
    ns = int(frac[:9].ljust(9, b"0")) if dot else 0
    # -1.5 is 1.5 s before the epoch, not -1 + 0.5
    return sec * 10**9 - ns if whole.startswith(b"-") else sec * 10**9 + ns


def _parse_pax(payload: bytes, records: dict) -> None:
    """Add the records of a PAX header to `records` (later ones win; the GNU sparse 0.0
    offset/numbytes records repeat, so they are collected in order under b"GNU.sparse.0.0";
    _IGNORED keys are left out). ValueError says what is malformed."""
    if _GNU_TIMES_ONLY.fullmatch(payload):
        return                  # nothing but ignored records, well formed
    pairs = _simple_pax(payload)
    if pairs is None:
        _parse_pax_records(payload, records)
        return
    for key, value in pairs:
        if key in _SPARSE_00:
            records.setdefault(b"GNU.sparse.0.0", []).append((key, value))
        elif key not in _IGNORED:
            records[key] = value


def _simple_pax(payload: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (key, value) records of a PAX payload that is one record a line, found by splitting
    at newlines (the common case: no newline in a value, no padding); None otherwise. When
    every line's length field is its own length, the records are exactly those
    _parse_pax_records finds."""
    lines = payload.split(b"\n")
    if lines.pop():
        return None             # not ended by a newline: NUL padding, or malformed
    pairs = []
    for line in lines:
        length, _sp, record = line.partition(b" ")
        key, eq, value = record.partition(b"=")
        if not (eq and key and length.isdigit() and len(length) <= 20
                and int(length) == len(line) + 1):
            return None
        pairs.append((key, value))
    return pairs


def _parse_pax_records(payload: bytes, records: dict) -> None:
    """_parse_pax record by record, as the length fields say (values may hold newlines)."""
    pos, end = 0, len(payload)
    while pos < end:
        space = payload.find(b" ", pos, pos + 21)
        if space < 0:
            if not payload[pos:].strip(b"\0"):
                return          # NUL padding after the last record (some writers add it)
            raise ValueError(f"PAX record at {pos} has no length")
        length_text = payload[pos:space]
        if not length_text.isdigit():
            raise ValueError(f"PAX record at {pos} has a bad length {length_text!r}")
        length = int(length_text)
        if length <= space + 1 - pos or pos + length > end or payload[pos + length - 1] != 0x0A:
            raise ValueError(f"PAX record at {pos} has a wrong length {length}")
        key, eq, value = payload[space + 1:pos + length - 1].partition(b"=")
        if not eq or not key:
            raise ValueError(f"PAX record at {pos} is not key=value")
        if key in _SPARSE_00:
            records.setdefault(b"GNU.sparse.0.0", []).append((key, value))
        elif key not in _IGNORED:
            records[key] = value
        pos += length


class _ReadAhead:
    """`raw.read(_CHUNK)` done in a thread, up to _AHEAD pieces ahead of the reader: the
    system calls (and a decoder's work: zlib, lzma and zstd let go of the GIL) overlap with
    the parsing.  `read()` gives the pieces in order, then b""; an exception the thread met
    is raised there, as the read would have raised it.  `close()` stops the thread and waits
    for it (it ends by itself after the input's end): it lets go after the read under way,
    so a pipe that stays open and silent makes close() wait for it, as a read would."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._queue: queue.Queue = queue.Queue(_AHEAD)
        self._stop = False
        self._ended = False         # the end (or an error) was given to the reader
        self._thread = threading.Thread(target=self._run, name="mkerofs-tar-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        put, read = self._queue.put, self._raw.read
        try:
            while not self._stop:
                data = read(_CHUNK)
                put((data, None))
                if not data:
                    return
        except BaseException as err:        # (raised by the reader, in its thread)
            put((b"", err))

    def read(self, _n: int = -1) -> bytes:
        if self._ended:
            return b""
        data, err = self._queue.get()
        if not data:
            self._ended = True
            self._thread.join()
            if err is not None:
                raise err
        return data

    def close(self) -> None:
        self._stop = True
        while self._thread.is_alive():
            try:                    # (makes room for a put the thread waits in)
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._ended = True


class _Source:
    """Buffered forward reading of the decompressed stream, tracking the offset.  With
    `read_ahead` a thread reads the stream (_ReadAhead): nothing seeks then, and a read
    gives the next piece whatever its size."""

    __slots__ = ("_raw", "_seekable", "_buf", "_pos", "_base", "_size", "_ahead", "_origin")

    def __init__(self, raw: BinaryIO, seekable: bool, read_ahead: bool = False):
        self._buf = b""
        self._pos = 0           # index in _buf of the next byte
        self._base = 0          # stream offset of _buf[0]
        self._ahead = _ReadAhead(raw) if read_ahead else None
        self._raw = self._ahead or raw
        self._seekable = seekable and not read_ahead
        self._origin = raw.tell() if self._seekable else 0     # (where offset 0 is in the file)
        self._size = os.fstat(raw.fileno()).st_size - self._origin if self._seekable else 0

    def close(self) -> None:
        """Stop the read-ahead thread, if there is one."""
        if self._ahead is not None:
            self._ahead.close()

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def restart(self, offset: int) -> None:
        """Read on from stream offset `offset` (a seekable input only)."""
        self._raw.seek(self._origin + offset)
        self._buf, self._pos, self._base = b"", 0, offset

    def _read(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except DECODE_ERRORS as err:
            raise TarError(f"cannot read the input: {err}", offset=self.offset) from None

    def header(self) -> tuple[int, bytes]:
        """(stream offset, the next block): take(BLOCK) with its offset, in one call."""
        pos = self._pos
        end = pos + BLOCK
        if end <= len(self._buf):
            self._pos = end
            return self._base + pos, self._buf[pos:end]
        offset = self._base + pos
        return offset, self.take(BLOCK)

    def take(self, n: int) -> bytes:
        """The next `n` bytes, or fewer at the end of the input."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):       # the common case: a header within the buffer
            self._pos = end
            return self._buf[pos:end]
        self._fill(n)
        data = self._buf[:n]
        self._pos = len(data)
        return data

    def take_view(self, n: int) -> memoryview | bytes:
        """take(n), as a view of the buffer when it holds them (no copy: data on its way to a
        write)."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return memoryview(self._buf)[pos:end]
        return self.take(n)

    def window(self, n: int) -> tuple[bytes, int, int]:
        """(buffer, index of the next byte in it, stream offset of the buffer), with at least
        `n` bytes from that index unless the input ends first; nothing is consumed (`advance`
        does that)."""
        if self._pos + n > len(self._buf):
            self._fill(n)
        return self._buf, self._pos, self._base

    def advance(self, pos: int) -> None:
        """Consume the buffer up to index `pos` (of the buffer `window` gave)."""
        self._pos = pos

    def _fill(self, n: int) -> None:
        """Make the buffer start at the next byte and hold `n` bytes, or all there are left."""
        pos = self._pos
        left = len(self._buf) - pos
        self._base += pos
        parts, have = [], 0
        if left and self._seekable:
            # a plain file: the bytes left are read again, a seek back, rather than the
            # read copied after them (one read is then the buffer as it is)
            self._raw.seek(-left, os.SEEK_CUR)
        elif left:
            parts, have = [self._buf[pos:]], left
        while have < n:
            data = self._read(max(_REFILL, n - have))
            if not data:
                break
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)
        self._pos = 0

    def _drop_buffer(self) -> None:
        self._base += len(self._buf)
        self._buf, self._pos = b"", 0

    def pieces(self, n: int) -> Iterator[bytes]:
        """The next `n` bytes in pieces of at most 1 MiB; EOFError if the input ends first."""
        avail = len(self._buf) - self._pos
        if avail and n:
            give = min(avail, n)
            start = self._pos
            self._pos += give       # before the yield: the caller may never resume us
            n -= give
            yield self._buf[start:start + give]
        if n:
            self._drop_buffer()
        while n:
            data = self._read(min(n, _CHUNK))
            if not data:
                raise EOFError
            if len(data) > n:
                # (a read-ahead piece that goes on past them: the rest is the buffer)
                self._buf, self._pos = data, n
                yield memoryview(data)[:n]
                return
            self._base += len(data)
            n -= len(data)
            yield data

    def skip(self, n: int) -> bool:
        """Pass over `n` bytes; False if the input ends first."""
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return True
        if self._seekable:
            n -= avail
            self._drop_buffer()
            if self._base + n > self._size:
                return False
            self._raw.seek(n, os.SEEK_CUR)
            self._base += n
            return True
        try:
            for _piece in self.pieces(n):
                pass
        except EOFError:
            return False
        return True

    def drain(self) -> tuple[int, bool]:
        """Read the input to its end: (bytes read, whether any was non-zero)."""
        rest = self._buf[self._pos:]
        count, nonzero = len(rest), rest.count(0) != len(rest)
        self._drop_buffer()
        while data := self._read(_CHUNK):
            count += len(data)
            nonzero = nonzero or data.count(0) != len(data)
        self._base += count - (len(rest))
        return count, nonzero


@dataclass(slots=True)
class _Pending:
    """What the extension headers before an entry said (when it is more than ignored keys)."""
    records: dict | None = None         # per-entry PAX records
    long_name: bytes | None = None
    long_link: bytes | None = None


class TarReader:
    """Iterate a tar stream's entries (see the module docstring). After the iteration ends,
    `end_offset` is where the end-of-archive marker starts, `archive_end` where it ends (the
    archive as mkfs.erofs reads it: --tar=i's device size), and `trailing_bytes` /
    `trailing_data` describe what followed it.  `read_ahead`: a thread reads the input ahead
    of the parsing (and nothing seeks): for input read whole; `close()` ends it."""

    def __init__(self, source: TarInput | BinaryIO, *,
                 resolve_id: Callable[[str, str], int | None] = host_id,
                 require_end_marker: bool = True, headerball: bool = False,
                 read_ahead: bool = False):
        if isinstance(source, TarInput):
            self._src = _Source(source.stream, source.seekable, read_ahead)
        else:
            self._src = _Source(source, False, read_ahead)
        self._resolve_id = resolve_id
        self._require_end = require_end_marker
        self._headerball = headerball
        self._global: dict = {}
        # each mode value as one int object, shared by the entries that have it (a few dozen
        # values; otherwise an int of 32 bytes an inode stays alive in the tree)
        self._modes: dict[int, int] = {}
        # ... and each mtime (a tree's files share a few hundred: 32 bytes an inode less),
        # at most _MTIMES of them at a time, so a tar of all different ones costs no more
        self._mtimes: dict[int, int] = {}
        self._current: TarEntry | None = None
        self._left = 0          # payload bytes of the current entry not yet read
        self._pad = 0           # zero padding after them
        self.volume_label: bytes | None = None
        self.end_offset: int | None = None
        self.archive_end: int | None = None
        self.trailing_bytes = 0
        self.trailing_data = False

    def __iter__(self) -> Iterator[TarEntry]:
        return self._entries()

    def _entries(self, stop: int | None = None) -> Iterator[TarEntry]:
        """The entries from here on; with `stop`, only until the first boundary between
        entries at or past that offset (the entry before it passed over, the next not read:
        `offset` then tells where it stopped)."""
        src = self._src
        while True:
            entry = self._current
            if entry is not None:
                self._current = None
                n = self._left + self._pad
                if n <= len(src._buf) - src._pos:
                    src._pos += n           # (skip's common case inline: within the buffer)
                elif not src.skip(n):
                    raise TarError("the input ends inside this entry's data or padding",
                                   entry.path, entry.header_offset)
            if stop is not None and src._base + src._pos >= stop:
                return
            # (a global PAX header or a headerball leaves the quick path for good)
            entry = self._quick_entry() if not self._global and not self._headerball else None
            if entry is None:
                entry = self._next_entry()
                if entry is None:
                    return
            self._current = entry
            yield entry

    def close(self) -> None:
        """End the read-ahead thread (a second call does nothing); the input is not closed."""
        self._src.close()

    @property
    def offset(self) -> int:
        """Where the next header is read (after the entry last yielded: see _entries)."""
        return self._src.offset

    def _restart(self, offset: int, global_records: dict, label: bytes | None) -> None:
        """Go on reading at `offset` (a boundary between entries of a seekable input) as if the
        stream had been read to there, the global PAX records and the volume label then being
        `global_records` and `label`."""
        self._src.restart(offset)
        self._current, self._left, self._pad = None, 0, 0
        self._global, self.volume_label = global_records, label
        self.end_offset = self.archive_end = None

    # -- data --------------------------------------------------------------------------------

    def chunks(self, entry: TarEntry) -> Iterator[tuple[int, bytes]]:
        """(file offset, bytes) pieces of `entry`'s data, the one just yielded, in stream order:
        the whole payload, or for a sparse file its extents (what lies between is a hole)."""
        if entry is not self._current or self._left != entry.payload:
            raise ValueError("chunks() reads the entry just yielded, once")
        extents = entry.sparse if entry.sparse is not None else ((0, entry.payload),)
        try:
            for offset, length in extents:
                for piece in self._src.pieces(length):
                    self._left -= len(piece)
                    yield offset, piece
                    offset += len(piece)
        except EOFError:
            raise TarError("the input ends inside this entry's data",
                           entry.path, entry.header_offset) from None

    def small_data(self, entry: TarEntry) -> memoryview | bytes | None:
        """All of `entry`'s data at once (what chunks() would yield as one piece) when it is
        not sparse and at most 64 KiB (most files: a view of the read buffer, no copy and no
        generators: the caller writes it on at once); None otherwise, and nothing is read."""
        size = entry.payload
        if size > _REFILL or entry.sparse is not None:
            return None
        if entry is not self._current or self._left != size:
            raise ValueError("small_data() reads the entry just yielded, once")
        data = self._src.take_view(size)
        if len(data) < size:
            self._left -= len(data)
            raise TarError("the input ends inside this entry's data",
                           entry.path, entry.header_offset)
        self._left = 0
        return data

    def read(self, entry: TarEntry) -> bytes:
        """The whole content of `entry` (holes as zeros): for small files and tests."""
        if entry.sparse is None:
            return b"".join(piece for _off, piece in self.chunks(entry))
        out = bytearray(entry.size)
        for offset, piece in self.chunks(entry):
            out[offset:offset + len(piece)] = piece
        return bytes(out)

    # -- headers -----------------------------------------------------------------------------

    def _next_entry(self) -> TarEntry | None:
        src = self._src
        pending: _Pending | None = None
        first = None            # offset of the first extension header before the entry
        while True:
            offset, block = src.header()
            if block == _ZERO_BLOCK or len(block) < BLOCK:
                if first is not None and (not block or block == _ZERO_BLOCK):
                    raise TarError("extension headers are not followed by an entry", offset=first)
                found = self._after_zero(offset, block)
                if found is None:
                    return None
                offset, block = found
            header = _HEADER.unpack(block)
            self._check_header(block, header, offset)
            typeflag = header[7]
            if typeflag in _EXTENSION_TYPES:
                if first is None:
                    first = offset
                pending = self._extension(header, offset, pending)
                if first == offset and typeflag in (b"g", b"V"):
                    first = None      # a global header or a volume label stands alone
                continue
            return self._entry(block, header, offset, offset if first is None else first, pending)

    def _quick_entry(self) -> TarEntry | None:
        """The next entry read straight from the buffer in the common case: at most one PAX
        header, then the entry's header, each with a right checksum and a known magic. A plain
        file or directory with plain octal numbers, a short name (or a PAX path) and no PAX
        records but path and mtime is made here; any other entry goes to _entry as the loop
        in _next_entry would send it. None when something else comes (a zero block, other extension headers, a bad
        header, the buffer's end): nothing is consumed then, and _next_entry reads the same
        bytes."""
        src = self._src
        buf, pos = src._buf, src._pos          # (window(3 * BLOCK) inline)
        if pos + 3 * BLOCK > len(buf):
            buf, pos, _base = src.window(3 * BLOCK)
        first = offset = src._base + pos
        end = pos + BLOCK
        if end > len(buf):
            return None
        block = buf[pos:end]
        records = pax_name = pax_mtime = None
        quick_records = True        # no records, or only those handled here
        if block[_TYPEFLAG] == _PAX_TYPE:
            size_field, chksum, magic = _PAX_FIELDS.unpack(block)
            if not _quick_header_ok(block, chksum, magic) and not _header_ok(block):
                return None
            size = _SIZES[size_field]
            if size is None:
                return None
            start = end
            pos = end + size + -size % BLOCK
            offset += pos - end + BLOCK
            end = pos + BLOCK
            if end > len(buf):
                return None
            if not _GNU_TIMES_ONLY.fullmatch(buf, start, start + size):
                records = _gnu_lead_record(buf, start, start + size)
                if records is None:
                    records = {}
                    try:
                        _parse_pax(buf[start:start + size], records)
                    except ValueError:
                        return None
                quick_records = False
                if records.keys() <= _QUICK_RECORDS:
                    pax_name = records.get(b"path")
                    mtime = records.get(b"mtime")
                    pax_mtime = _quick_pax_mtime(mtime) if mtime is not None else None
                    # (an empty value unsets the key, a bad one is an error: both for _entry)
                    quick_records = pax_name != b"" and (mtime is None or pax_mtime is not None)
            block = buf[pos:end]
        (raw_name, ids_area, size_field, mtime_field, chksum, typeflag, magic, owner_names,
         prefix0) = _QUICK_FIELDS.unpack(block)
        quick = _QUICK_KINDS.get(typeflag)
        if quick is None or not _quick_header_ok(block, chksum, magic) and not _header_ok(block):
            return None
        src._pos = end          # (advance inline)
        kind, modes_and_ids = quick
        ids = modes_and_ids[ids_area] if kind is not None else None
        # (_plain_octal's commonest case inline: digits, then NULs or spaces; an 8 or a 9 is
        # refused by int, and _entry says what is wrong)
        digits = size_field.rstrip(b"\0 ")
        try:
            payload = int(digits, 8) if digits.isdigit() else _plain_octal(size_field)
        except ValueError:
            payload = None
        mtime_ns = _MTIMES_NS[mtime_field] if pax_mtime is None else pax_mtime
        if ids is None or payload is None or mtime_ns is None or not quick_records or (
                prefix0 and magic[:6] == b"ustar\0"):
            return self._entry(block, _HEADER.unpack(block), offset, first,
                               _Pending(records) if records else None)
        if pax_name is None:
            name = raw_name.partition(b"\0")[0]
            plain = name[:-1] if name[-1:] == b"/" else name
        else:
            name = plain = pax_name
        # (normalise_path's common case inline, a call less an entry: a name of the header
        # holds no NUL; 47 is "/", 46 ".")
        if pax_name is None and name and name[0] != 47 and name[0] != 46 and plain[-1] != 47 \
                and len(plain) <= EROFS_NAME_LEN and plain.find(b"/.") < 0 \
                and plain.find(b"//") < 0:
            path = plain
        else:
            try:
                path = normalise_path(name)
            except ValueError as err:
                raise TarError(str(err), name, first) from None
        mode, uid, gid = ids
        uname, gname = _OWNER_NAMES[owner_names]
        self._pad = -payload % BLOCK
        self._left = payload
        return TarEntry(path, name, kind, mode, uid, gid, mtime_ns,
                        payload if kind == REG else 0, b"", None, 0, 0, uname, gname,
                        [], None, first, offset + BLOCK, payload)

    def _after_zero(self, offset: int, block: bytes) -> tuple[int, bytes] | None:
        """A zero block (or the input's end, or a short block) where a header was due: None
        at the end of the archive, else the header that follows a lone zero block."""
        if not block:
            if self._require_end:
                raise TarError("the input ends without an end-of-archive marker "
                               "(two zero blocks): truncated?", offset=offset)
            return self._end(offset)
        if block == _ZERO_BLOCK:
            block = self._src.take(BLOCK)
            if not block or block == _ZERO_BLOCK:
                return self._end(offset)
            # a lone zero block between entries is skipped, as mkfs.erofs does
            offset += BLOCK
        if len(block) < BLOCK:
            raise TarError("the input ends inside a header", offset=offset)
        return offset, block

    def _headerball_entry(self, entry: TarEntry, typeflag: bytes, records: dict,
                          size: int) -> None:
        """A regular file or hard link of a headerball: the size is the file's, but no data
        follows the header (the file reads as zeros)."""
        if typeflag == b"S" or any(k.startswith(b"GNU.sparse.") for k in records):
            raise TarError("a sparse entry in a headerball (its map would be in the data)",
                           entry.name, entry.header_offset)
        entry.size = size if entry.kind == REG else 0
        entry.payload = self._pad = self._left = 0
        entry.data_offset = self._src.offset

    def _end(self, offset: int) -> None:
        self.end_offset = offset
        self.archive_end = self._src.offset
        self.trailing_bytes, self.trailing_data = self._src.drain()
        return None

    def _check_header(self, block: bytes, header: tuple, offset: int) -> None:
        if _header_ok(block):
            return
        stored = _stored_checksum(header[6])
        if stored is None or not _checksum_ok(block, stored):
            raise TarError("bad header checksum (not a tar header, or a damaged one)",
                           _cut(header[0]), offset)
        raise TarError(f"unknown tar format (magic {header[9] + header[10]!r})",
                       _cut(header[0]), offset)

    def _number(self, field: bytes, what: str, name: bytes, offset: int,
                negative: bool = False) -> int:
        try:
            value = _header_number(field)
        except ValueError:
            value = None
        if value is None or (value < 0 and not negative):
            raise TarError(f"bad {what} field {field!r}", name, offset)
        return value

    def _payload(self, size: int, name_field: bytes, offset: int) -> bytes:
        """A whole extension payload (its padding read past)."""
        if size > _MAX_META:
            raise TarError(f"an extension header of {size} bytes is too large",
                           _cut(name_field), offset)
        padded = size + -size % BLOCK
        data = self._src.take(padded)
        if len(data) < padded:
            raise TarError("the input ends inside an extension header", _cut(name_field), offset)
        return data[:size] if padded != size else data

    def _extension(self, header: tuple, offset: int, pending: _Pending | None) -> _Pending | None:
        """Read an extension header's payload into `pending` (made when there is something to
        keep: most PAX headers hold only ignored keys) or the global records; returns it."""
        typeflag = header[7]
        if typeflag == b"V" and not header[4].strip(b"\0"):
            size = 0        # GNU tar leaves a label's size field empty
        else:
            size = _plain_octal(header[4])
            if size is None:
                size = self._number(header[4], "size", _cut(header[0]), offset)
        if typeflag == b"V":
            self.volume_label = _cut(header[0])
            if not self._src.skip(size + -size % BLOCK):
                raise TarError("the input ends inside a volume label", _cut(header[0]), offset)
            return pending
        # (the name only for messages: the header's, PAX and long names apply to the entry)
        data = self._payload(size, header[0], offset)
        if typeflag in (b"L", b"K"):
            if pending is None:
                pending = _Pending()
            if typeflag == b"L":
                pending.long_name = _cut(data)
            else:
                pending.long_link = _cut(data)
            return pending
        if typeflag == b"g":
            records = self._global
        else:
            records = pending.records if pending is not None and pending.records else {}
        try:
            _parse_pax(data, records)
        except ValueError as err:
            raise TarError(f"malformed PAX header: {err}", _cut(header[0]), offset) from None
        if typeflag == b"g":
            for key in _UNSETTABLE.intersection(records):
                if not records[key]:
                    del records[key]
            bad = [k for k in records if k.startswith(_NOT_GLOBAL)]
            if bad:
                raise TarError(f"a global PAX header sets {bad[0].decode('ascii', 'replace')!r} "
                               "for every later entry", _cut(header[0]), offset)
        elif records:
            if pending is None:
                pending = _Pending()
            pending.records = records
        return pending

    def _records(self, pending: _Pending | None) -> dict:
        """The PAX records for an entry: the global ones, overridden by its own."""
        own = pending.records if pending is not None else None
        if not own:
            return self._global
        merged = {**self._global, **own} if self._global else own
        for key in _UNSETTABLE.intersection(merged):
            if not merged[key]:
                del merged[key]
        return merged

    def _entry(self, block: bytes, header: tuple, offset: int, first: int,
               pending: _Pending | None) -> TarEntry:
        """The entry whose header `block` is at `offset` (`first`: its first extension header)."""
        (raw_name, _mode, _uid, _gid, _size, _mtime, _chksum, typeflag, linkname, magic, _version,
         uname, gname, devmajor, devminor, prefix, tail) = header
        records = self._records(pending) if pending is not None else self._global
        if records and records.get(b"GNU.sparse.name") is not None:
            name = records[b"GNU.sparse.name"]
        elif records and b"path" in records:
            name = records[b"path"]
        elif pending is not None and pending.long_name is not None:
            name = pending.long_name
        else:
            name = raw_name.partition(b"\0")[0]
            if magic == b"ustar\0" and prefix[0]:
                # star keeps atime/ctime in the last 24 bytes of the prefix area
                prefix = _cut(prefix[:130] if tail[8:] == b"tar\0" else prefix)
                name = prefix + b"/" + name if not prefix.endswith(b"/") else prefix + name
        kinds = _KINDS.get(typeflag)
        if kinds is None:
            raise TarError(f"unsupported entry type {typeflag!r}", name, first)
        kind, ifmt = kinds
        if typeflag == b"\0" and name.endswith(b"/"):
            kind, ifmt = DIR, stat.S_IFDIR          # a V7 directory
        try:
            path = normalise_path(name)
        except ValueError as err:
            raise TarError(str(err), name, first) from None
        numbers = _octal_fields(block) or self._header_numbers(header, records, name, first)
        perm, uid, gid, payload, mtime_ns = numbers
        if records:
            uid, gid, payload, mtime_ns = self._pax_numbers(records, numbers, name, first)
            uname = records.get(b"uname") or uname.partition(b"\0")[0]
            gname = records.get(b"gname") or gname.partition(b"\0")[0]
        else:
            uname, gname = uname.partition(b"\0")[0], gname.partition(b"\0")[0]
        # (all fields by position: a plain file's are final here; the kinds below amend theirs)
        mode = ifmt | (perm & 0o7777)
        mode = self._modes.setdefault(mode, mode)
        mtimes = self._mtimes
        if len(mtimes) >= _MTIMES:
            mtimes.clear()
        mtime_ns = mtimes.setdefault(mtime_ns, mtime_ns)
        entry = TarEntry(path, name, kind, mode, uid, gid, mtime_ns,
                         payload if kind == REG else 0, b"", None, 0, 0, uname, gname, [], None,
                         first, offset + BLOCK, payload)
        if kind in (HARDLINK, SYMLINK):
            self._link(entry, records, pending, linkname)
        elif kind in (CHR, BLK):
            entry.devmajor = self._device(records, b"SCHILY.devmajor", devmajor, "devmajor", name, first)
            entry.devminor = self._device(records, b"SCHILY.devminor", devminor, "devminor", name, first)
        if records:
            self._xattrs(entry, records)
        if self._headerball and kind in (REG, HARDLINK):
            self._headerball_entry(entry, typeflag, records, payload)
            return entry
        self._pad = -payload % BLOCK
        if typeflag == b"S":
            self._oldgnu_sparse(entry, block, payload)
            entry.data_offset = self._src.offset
        elif kind == REG and records and (b"GNU.sparse.0.0" in records or b"GNU.sparse.map" in records
                                           or b"GNU.sparse.major" in records):
            self._pax_sparse(entry, records, payload)
            entry.data_offset = self._src.offset
        self._left = entry.payload
        return entry

    def _pax_number(self, records: dict, key: bytes, name: bytes, offset: int) -> int:
        try:
            return _pax_decimal(records[key])
        except ValueError:
            raise TarError(f"bad PAX {key.decode()} {records[key]!r}", name, offset) from None

    def _header_numbers(self, header: tuple, records: dict, name: bytes, offset: int) -> tuple:
        """mode, uid, gid, size, mtime in ns one by one (base-256, odd spacing, errors); a field
        that a PAX record replaces is not read (None)."""
        mode, uid, gid, size, mtime = (self._number(header[1], "mode", name, offset),) + tuple(
            None if key in records else
            self._number(header[i], key.decode(), name, offset, negative=key == b"mtime")
            for i, key in ((2, b"uid"), (3, b"gid"), (4, b"size"), (5, b"mtime")))
        return mode, uid, gid, size, None if mtime is None else mtime * 10**9

    def _pax_numbers(self, records: dict, numbers: tuple, name: bytes, offset: int) -> tuple:
        """uid, gid, size and mtime in ns, the PAX records winning over the header's numbers."""
        _mode, uid, gid, size, mtime = numbers
        if b"uid" in records:
            uid = self._pax_number(records, b"uid", name, offset)
        if b"gid" in records:
            gid = self._pax_number(records, b"gid", name, offset)
        if b"size" in records:
            size = self._pax_number(records, b"size", name, offset)
        if b"mtime" not in records:
            return uid, gid, size, mtime
        try:
            return uid, gid, size, _pax_time_ns(records[b"mtime"])
        except ValueError:
            raise TarError(f"bad PAX mtime {records[b'mtime']!r}", name, offset) from None

    def _device(self, records: dict, key: bytes, field: bytes, what: str,
                name: bytes, offset: int) -> int:
        if key in records:
            return self._pax_number(records, key, name, offset)
        return self._number(field, what, name, offset)

    def _link(self, entry: TarEntry, records: dict, pending: _Pending | None,
              field: bytes) -> None:
        if b"linkpath" in records:
            target = records[b"linkpath"]
        elif pending is not None and pending.long_link is not None:
            target = pending.long_link
        else:
            target = _cut(field)
        entry.linkname = target
        if entry.kind == HARDLINK:
            if not target:
                raise TarError("hard link without a target", entry.name, entry.header_offset)
            try:
                entry.link_path = normalise_path(target)
            except ValueError as err:
                raise TarError(f"hard link target: {err}", entry.name, entry.header_offset) from None

    def _xattrs(self, entry: TarEntry, records: dict) -> None:
        """entry.xattrs from the PAX records; an ACL given as text also sets the permission
        bits, as setting it on a file does (bsdtar writes the group bits without the mask)."""
        name, offset = entry.name, entry.header_offset
        xattrs: dict[bytes, bytes | None] = {}
        acl_texts = {}
        for key, value in records.items():
            if key.startswith(_XATTR_SCHILY):
                xname = key[len(_XATTR_SCHILY):]
                xattrs[_gnu_unquote(xname) if b"%" in xname else xname] = value
            elif key.startswith(_XATTR_LIBARCHIVE):
                xattrs[_url_unquote(key[len(_XATTR_LIBARCHIVE):])] = \
                    self._base64(value, key, name, offset)
            elif key in _ACL_XATTR:
                if value:
                    # placeholder: a raw xattr of the same name, before or after, wins
                    xattrs.setdefault(_ACL_XATTR[key], None)
                    acl_texts[_ACL_XATTR[key]] = value
            elif key == b"SCHILY.acl.ace":
                raise TarError("NFSv4 ACLs (SCHILY.acl.ace) cannot be stored in EROFS", name, offset)
        if b"" in xattrs:
            raise TarError("an xattr record without a name", name, offset)
        for xname, value in list(xattrs.items()):
            if value is not None:
                continue
            try:
                entries = acl_from_text(acl_texts[xname], self._resolve_id)
            except ValueError as err:
                raise TarError(str(err), name, offset) from None
            if xname == b"system.posix_acl_access":
                entry.mode = entry.mode & ~0o777 | acl_mode_bits(entries)
                if acl_is_minimal(entries):
                    del xattrs[xname]
                    continue
            xattrs[xname] = acl.encode_posix_acl(entries)
        entry.xattrs = list(xattrs.items())

    @staticmethod
    def _base64(value: bytes, key: bytes, name: bytes, offset: int) -> bytes:
        try:
            # libarchive writes base64 without the trailing "=" padding
            return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
        except binascii.Error:
            raise TarError(f"bad base64 in PAX {key!r}", name, offset) from None

    # -- sparse files ------------------------------------------------------------------------

    def _oldgnu_sparse(self, entry: TarEntry, block: bytes, payload: int) -> None:
        name, offset = entry.name, entry.header_offset
        realsize = self._number(block[_OLDGNU_REALSIZE], "sparse realsize", name, offset)
        extents = self._sparse_pairs(block, _OLDGNU_SPARSE, 4, name, offset)
        extended = block[_OLDGNU_ISEXT]
        while extended:
            ext = self._src.take(BLOCK)
            if len(ext) < BLOCK:
                raise TarError("the input ends inside a sparse header", name, offset)
            extents += self._sparse_pairs(ext, 0, _EXT_PAIRS, name, offset)
            extended = ext[_EXT_ISEXT]
        self._set_sparse(entry, extents, realsize, payload)

    def _sparse_pairs(self, block: bytes, start: int, count: int, name: bytes,
                      offset: int) -> list[tuple[int, int]]:
        pairs = []
        for i in range(start, start + 24 * count, 24):
            if not block[i + 12]:
                break           # an unused slot
            pairs.append((self._number(block[i:i + 12], "sparse offset", name, offset),
                          self._number(block[i + 12:i + 24], "sparse numbytes", name, offset)))
        return pairs

    def _pax_sparse(self, entry: TarEntry, records: dict, payload: int) -> None:
        name, offset = entry.name, entry.header_offset
        try:
            if b"GNU.sparse.major" in records:
                version = (records[b"GNU.sparse.major"], records.get(b"GNU.sparse.minor"))
                if version != (b"1", b"0"):
                    raise ValueError(f"unknown GNU sparse version {version!r}")
                realsize = _pax_decimal(records[b"GNU.sparse.realsize"])
                numbers, map_size = self._sparse_map_10(payload, name, offset)
                payload -= map_size
            else:
                realsize = _pax_decimal(records[b"GNU.sparse.size"])
                if b"GNU.sparse.map" in records:
                    text = records[b"GNU.sparse.map"]
                    numbers = [_pax_decimal(n) for n in text.split(b",")] if text else []
                else:
                    pairs = records[b"GNU.sparse.0.0"]
                    if [k for k, _v in pairs] != list(_SPARSE_00) * (len(pairs) // 2):
                        raise ValueError("GNU.sparse.offset and numbytes records do not alternate")
                    numbers = [_pax_decimal(v) for _k, v in pairs]
                if len(numbers) % 2:
                    raise ValueError("the sparse map has an odd count of numbers")
                if b"GNU.sparse.numblocks" in records and \
                        _pax_decimal(records[b"GNU.sparse.numblocks"]) != len(numbers) // 2:
                    raise ValueError("GNU.sparse.numblocks does not match the map")
        except KeyError as err:
            raise TarError(f"sparse file without PAX {err.args[0].decode()}", name, offset) from None
        except ValueError as err:
            raise TarError(f"bad sparse map: {err or 'not a number'}", name, offset) from None
        self._set_sparse(entry, list(zip(numbers[::2], numbers[1::2])), realsize, payload)

    def _sparse_map_10(self, payload: int, name: bytes, offset: int) -> tuple[list[int], int]:
        """The map at the start of a sparse-1.0 payload: decimal lines, a count then pairs,
        padded to a block. Returns the numbers after the count and the map's size."""
        text, used, numbers, count = b"", 0, [], None
        while count is None or len(numbers) < 2 * count:
            if used + BLOCK > payload or used >= _MAX_META:
                raise TarError("the sparse map runs past the entry's data", name, offset)
            block = self._src.take(BLOCK)
            if len(block) < BLOCK:
                raise TarError("the input ends inside a sparse map", name, offset)
            used += BLOCK
            *lines, text = (text + block).split(b"\n")
            for line in lines:
                if count is None:
                    count = _pax_decimal(line)
                elif len(numbers) < 2 * count:
                    numbers.append(_pax_decimal(line))
        return numbers, used

    def _set_sparse(self, entry: TarEntry, extents: list[tuple[int, int]], realsize: int,
                    payload: int) -> None:
        extents = [(off, length) for off, length in extents if length]
        end = 0
        for off, length in extents:
            if off < end or off + length > realsize:
                raise TarError(f"sparse extent ({off}, {length}) overlaps or lies past the "
                               f"file's size {realsize}", entry.name, entry.header_offset)
            end = off + length
        if sum(length for _off, length in extents) != payload:
            raise TarError(f"the sparse map covers a different byte count than the "
                           f"{payload} bytes stored", entry.name, entry.header_offset)
        entry.size, entry.sparse, entry.payload = realsize, extents, payload


def _gnu_unquote(text: bytes) -> bytes:
    """GNU tar writes ``=`` and ``%`` in SCHILY.xattr names as %3D and %25 (and nothing else)."""
    return re.sub(rb"%3[Dd]|%25", lambda m: b"%" if m.group() == b"%25" else b"=", text)


def _url_unquote(text: bytes) -> bytes:
    """libarchive %-escapes bytes of an xattr name that are special in PAX keys."""
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text)
