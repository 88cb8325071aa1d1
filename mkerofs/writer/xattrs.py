"""Extended attributes: read them from the source, decide which are shared, encode them for EROFS.

The on-disk forms (entries, prefixes, the ibody header, the name filter) are in
mkerofs/ondisk/xattr.py.  What matters here besides them:

* An inode with xattrs is followed by its *xattr ibody*, whose size is in i_xattr_icount
  (``xattr_ibody_size(icount) = 12 + 4 * (icount - 1)``; 0 means none, and exactly 12 makes the
  kernel refuse every xattr call of the inode with EOPNOTSUPP).  A value is at most 65535 bytes
  (Linux allows 65536) and a stored name suffix at most 255.

* Shared entries live in the shared xattr area; a shared id is the entry's byte offset from
  ``sb.xattr_blkaddr * block_size``, divided by 4.  The area is just entries back to back.

* The name filter (compat bit XATTR_FILTER, used by the kernel only while
  ``sb.xattr_filter_reserved == 0``) is a 32-bit bloom filter per inode with one bit cleared
  per xattr the inode has (inline and shared).  A set bit means "no xattr hashing here":
  getxattr() returns ENODATA without reading the body.  listxattr() never looks at the filter.

* The long-prefix table (``--xattr-prefix``, incompat bit XATTR_PREFIXES) holds
  ``sb.xattr_prefix_count`` records, the first at byte ``sb.xattr_prefix_start * 4``.  With no
  packed inode (or with compat bit PLAIN_XATTR_PFX) the kernel reads it from the image itself
  at that absolute offset, through the metadata buffer, so it can go anywhere 4-aligned below
  16 GiB; mkerofs writes it "plain" and sets PLAIN_XATTR_PFX, as mkfs.erofs 1.9 does when it
  packs no fragments.  When the image has a packed inode (-Efragments), kernels that predate
  PLAIN_XATTR_PFX read the table from the packed inode's data instead; so there it goes, first
  (``in_packed_inode``), as mkfs.erofs does, unless -Eplain-xattr-prefixes.

Which prefix a name gets (as mkfs.erofs 1.9.3):

* ``user.``, ``trusted.``, ``security.`` and exactly ``system.posix_acl_access`` /
  ``system.posix_acl_default`` have short indexes.
* Any other name (``system.nfs4_acl``, ``lustre.*``, ...) is stored whole with index 0.  Neither
  the kernel nor erofs-utils maps index 0 to a prefix, so such xattrs are kept in the image but are
  invisible (listxattr skips them, getxattr cannot ask for them).  The format reserves index 5
  for ``lustre.``, but nothing reads it (mkfs.erofs never writes it and erofs-utils' own
  listxattr would emit the name without its prefix), so mkerofs, like mkfs.erofs, uses 0.
* A name that starts with a ``--xattr-prefix`` of the same short prefix uses that long prefix
  instead (mkerofs picks the longest matching one; mkfs.erofs the first given).

Which xattrs are shared (mkfs.erofs's rule): a (name, value) pair is shared when it occurs more
than ``tolerance`` (-x, default 2) times, counting one occurrence per *path* below the root (a
file hard-linked three times counts three; the root directory itself is not counted).  -x with a
negative value stores no xattrs at all; -x >= 2**31-1 shares nothing.  An inode lists at most 255
shared ids; further shared xattrs of it are stored inline.

Order: every inode's xattrs are sorted by name (bytes); its shared ids come first in that order,
then its inline entries in that order.  The shared area is sorted by name, NUL, value.  Both
orders match mkfs.erofs 1.9.3 and depend only on the input, so images are reproducible.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..ondisk import format as fmt
from ..ondisk import xattr as ondisk_xattr
from ..ondisk.xattr import (XATTR_IBODY_MAX, XATTR_LONG_PREFIX_COUNT_MAX, XATTR_NAME_SUFFIX_MAX,
                            XATTR_SHARED_PER_INODE_MAX, XATTR_VALUE_MAX)

XATTR_LONG_PREFIX_LEN_MAX = 0xFF          # mkfs.erofs refuses longer --xattr-prefix values
# 65532, as mkfs.erofs
ROOT_XATTR_ISIZE_MAX = fmt.xattr_align(XATTR_VALUE_MAX - fmt.EROFS_XATTR_ENTRY_SIZE)
TOLERANCE_NO_SHARING = 2**31 - 1          # mkfs.erofs: -x >= INT_MAX means "always inline"

_HEADER_SIZE = fmt.EROFS_XATTR_IBODY_HEADER.size


def _check_root_isize(value: int) -> None:
    if not 0 <= value <= ROOT_XATTR_ISIZE_MAX:
        raise ValueError(f"invalid root xattr isize {value}: at most {ROOT_XATTR_ISIZE_MAX}")


@dataclass
class XattrOptions:
    """What mkfs.erofs's xattr options ask for."""
    tolerance: int = 2                    # -x#: < 0 no xattrs; shared when count > tolerance
    name_filter: bool = True              # -E[^]xattr-name-filter
    long_prefixes: list[bytes] = field(default_factory=list)   # --xattr-prefix=X, in order
    plain_prefixes: bool = False          # -Eplain-xattr-prefixes (mkerofs always writes them plain)
    root_isize: int = 0                   # --root-xattr-isize=#

    @property
    def enabled(self) -> bool:
        return self.tolerance >= 0


class _Item:
    """One distinct (name, value) pair of the whole tree, encoded once."""
    __slots__ = ("name", "value", "entry", "bit", "count", "shared_id")

    def __init__(self, name: bytes, value: bytes, entry: bytes, bit: int):
        self.name = name
        self.value = value
        self.entry = entry
        self.bit = bit
        self.count = 0
        self.shared_id: int | None = None


class XattrSet:
    """The xattrs of one or more inodes (identical sets are one object): the handle add() returns."""
    __slots__ = ("items", "where", "_ibody", "_root_ibody")

    def __init__(self, items: tuple[_Item, ...], where: str | None):
        self.items = items
        self.where = where            # a path, for error messages
        self._ibody: bytes | None = None
        self._root_ibody: bytes | None = None

    def __len__(self) -> int:
        return len(self.items)


class XattrLayout:
    """Collects every inode's xattrs, decides the shared ones, and encodes ibodies.

    Use: ``h = layout.add(xattrs, weight)`` for every inode (first pass), then
    ``layout.finalize()``, then ``layout.ibody(h, is_root)`` per inode; write ``shared_area`` at
    block ``xattr_blkaddr`` and ``prefix_records`` at byte ``xattr_prefix_start * 4`` and copy
    the superblock fields (see superblock_fields()).  feature_compat is final only after the last
    ibody() call (mkfs.erofs sets XATTR_FILTER only when some inode got a non-zero filter).

    Nothing here depends on where the inodes go, so ibodies can be made before placement; the
    block size is kept for callers but no encoding depends on it.  Bad options (too many or too
    long --xattr-prefix values, --root-xattr-isize over 65532) raise ValueError at construction.
    """

    def __init__(self, options: XattrOptions, block_size: int):
        self.options = options
        self.block_size = block_size
        _check_root_isize(options.root_isize)
        self._prefixes = self._check_prefixes(options.long_prefixes)
        self._items: dict[tuple[bytes, bytes], _Item] = {}
        self._sets: dict[tuple[_Item, ...], XattrSet] = {}
        self._raw: dict[tuple, XattrSet] = {}           # add()'s input as given -> its set
        self._names: dict[bytes, tuple[int, bytes, int]] = {}
        self._empty = XattrSet((), None)
        self._finalized = False
        self._filter_used = False
        self.shared_area = b""
        self.shared_base = 0
        self.prefix_records = self._prefix_records()
        self.xattr_prefix_count = len(self._prefixes)
        # the table is stored at the start of the packed inode (set by the writer)
        self.in_packed_inode = False
        self.xattr_filter_reserved = 0       # must stay 0, or the kernel ignores the filters

    # -- long prefixes -----------------------------------------------------------------------------

    @staticmethod
    def _check_prefixes(prefixes: list[bytes]) -> list[tuple[bytes, int, int]]:
        if len(prefixes) > XATTR_LONG_PREFIX_COUNT_MAX:
            raise ValueError(f"too many xattr name prefixes ({len(prefixes)}): "
                             f"at most {XATTR_LONG_PREFIX_COUNT_MAX}")
        out = []
        for prefix in prefixes:
            if isinstance(prefix, str):
                prefix = os.fsencode(prefix)
            if not prefix or len(prefix) > XATTR_LONG_PREFIX_LEN_MAX or b"\0" in prefix:
                raise ValueError(f"invalid xattr name prefix {os.fsdecode(prefix)!r}: 1 to "
                                 f"{XATTR_LONG_PREFIX_LEN_MAX} bytes without NUL")
            base_index, base_len = ondisk_xattr.short_prefix(prefix)
            out.append((prefix, base_index, base_len))
        return out

    def _prefix_records(self) -> bytes:
        return b"".join(ondisk_xattr.pack_long_prefix(base_index, prefix[base_len:])
                        for prefix, base_index, base_len in self._prefixes)

    def name_index(self, name: bytes) -> tuple[int, bytes]:
        """(e_name_index, stored suffix) of `name`: the longest long prefix, else the short one."""
        base_index, base_len = ondisk_xattr.short_prefix(name)
        best, best_len = -1, -1
        for k, (prefix, p_base, _) in enumerate(self._prefixes):
            if p_base == base_index and len(prefix) > best_len and name.startswith(prefix):
                best, best_len = k, len(prefix)
        if best >= 0:
            return ondisk_xattr.long_prefix_index(best), name[best_len:]
        return base_index, name[base_len:]

    # -- first pass --------------------------------------------------------------------------------

    def _name_info(self, name: bytes, where: str | None) -> tuple[int, bytes, int]:
        """(e_name_index, stored suffix, filter bit) of a name, computed once per name."""
        info = self._names.get(name)
        if info is None:
            label = f"{where}: " if where else ""
            if not name or b"\0" in name:
                raise ValueError(f"{label}invalid xattr name {name!r}")
            index, suffix = self.name_index(name)
            if len(suffix) > XATTR_NAME_SUFFIX_MAX:
                raise ValueError(f"{label}xattr {os.fsdecode(name)}: name too long for EROFS "
                                 f"({len(suffix)} bytes after its prefix, at most "
                                 f"{XATTR_NAME_SUFFIX_MAX})")
            info = self._names[name] = (index, suffix, ondisk_xattr.name_filter_bit(name))
        return info

    def _item(self, name: bytes, value: bytes, where: str | None) -> _Item:
        key = (name, value)
        item = self._items.get(key)
        if item is None:
            index, suffix, bit = self._name_info(name, where)
            if len(value) > XATTR_VALUE_MAX:
                label = f"{where}: " if where else ""
                raise ValueError(f"{label}xattr {os.fsdecode(name)}: value of {len(value)} bytes "
                                 f"exceeds EROFS's limit of {XATTR_VALUE_MAX}")
            item = _Item(name, value, ondisk_xattr.pack_entry(index, suffix, value), bit)
            self._items[key] = item
        return item

    def add(self, xattrs, weight: int = 1, where: str | None = None) -> XattrSet:
        """Register one inode's xattrs ((name, value) pairs) and return its handle.

        `weight` is how often the inode counts for the sharing decision: mkfs.erofs counts once
        per path below the root, so pass the number of links found in the tree (1 for a
        directory) and 0 for the root.  `where` (a path) goes into error messages.
        Raises ValueError for a value over 65535 bytes, a name suffix over 255, a repeated name.
        """
        assert not self._finalized, "add() after finalize()"
        if not xattrs or not self.options.enabled:
            return self._empty
        try:
            raw = tuple(xattrs) if type(xattrs) is not tuple else xattrs
            xset = self._raw.get(raw)
        except TypeError:                    # unhashable pairs (lists, bytearrays): slow path
            raw, xset = None, None
        if xset is None:
            xset = self._new_set(xattrs, where)
            if raw is not None:
                self._raw[raw] = xset
        if weight:
            for item in xset.items:
                item.count += weight
        return xset

    def _new_set(self, xattrs, where: str | None) -> XattrSet:
        pairs = sorted((n if type(n) is bytes else os.fsencode(n),
                        v if type(v) is bytes else bytes(v)) for n, v in xattrs)
        items = []
        previous = None
        for name, value in pairs:
            if name == previous:
                label = f"{where}: " if where else ""
                raise ValueError(f"{label}xattr {os.fsdecode(name)} given twice")
            previous = name
            items.append(self._item(name, value, where))
        key = tuple(items)
        xset = self._sets.get(key)
        if xset is None:
            xset = self._sets[key] = XattrSet(key, where)
        return xset

    # -- decisions ---------------------------------------------------------------------------------

    def finalize(self, shared_base: int = 0) -> None:
        """Decide the shared xattrs and build the shared area.

        `shared_base` is where the area starts, in bytes from block xattr_blkaddr (a multiple of
        4; 0 when the area starts on its own block).  Raises ValueError when an inode's inline
        xattrs exceed what i_xattr_icount can describe.
        """
        if shared_base % 4:
            raise ValueError("the shared xattr area must start 4-byte aligned")
        self.shared_base = shared_base
        tolerance = self.options.tolerance
        shared: list[_Item] = []
        if 0 <= tolerance < TOLERANCE_NO_SHARING:
            shared = [i for i in self._items.values() if i.count > tolerance]
            shared.sort(key=lambda i: i.name + b"\0" + i.value)
        area = bytearray()
        for item in shared:
            item.shared_id = (shared_base + len(area)) // 4
            area += item.entry
        if (shared_base + len(area)) // 4 > 0xFFFFFFFF:
            raise ValueError("shared xattr area too large for 32-bit ids")
        self.shared_area = bytes(area)
        self._finalized = True
        for xset in self._sets.values():
            self._check_size(xset)
        self._sets.clear()           # handles stay valid; the indexes are only needed while adding
        self._raw.clear()

    @staticmethod
    def _split(xset: XattrSet) -> tuple[list[_Item], list[_Item]]:
        shared, inline = [], []
        for item in xset.items:
            if item.shared_id is not None and len(shared) < XATTR_SHARED_PER_INODE_MAX:
                shared.append(item)
            else:
                inline.append(item)
        return shared, inline

    def _check_size(self, xset: XattrSet) -> None:
        shared, inline = self._split(xset)
        size = _HEADER_SIZE + 4 * len(shared)
        for item in inline:
            size += len(item.entry)
            if size > XATTR_IBODY_MAX:
                label = f"{xset.where}: " if xset.where else ""
                raise ValueError(
                    f"{label}xattr {os.fsdecode(item.name)}: the inode's inline xattrs exceed "
                    f"EROFS's limit of {XATTR_IBODY_MAX} bytes")

    # -- second pass -------------------------------------------------------------------------------

    def ibody(self, handle: XattrSet, is_root: bool = False) -> bytes:
        """The inode's xattr ibody (what follows the inode; its length sets i_xattr_icount)."""
        assert self._finalized, "ibody() before finalize()"
        pad_to = self.options.root_isize if is_root else 0
        cached = handle._root_ibody if is_root else handle._ibody
        if cached is None:
            cached = self._encode(handle, pad_to)
            if is_root:
                handle._root_ibody = cached
            else:
                handle._ibody = cached
        return cached

    def _encode(self, xset: XattrSet, pad_to: int) -> bytes:
        if not xset.items and not pad_to:
            return b""
        shared, inline = self._split(xset)
        name_filter = 0
        if self.options.name_filter:
            present = 0
            for item in xset.items:
                present |= 1 << item.bit
            name_filter = fmt.EROFS_XATTR_FILTER_DEFAULT & ~present
            if name_filter:
                self._filter_used = True
        body = bytearray(ondisk_xattr.pack_ibody_header(name_filter,
                                                        [item.shared_id for item in shared]))
        for item in inline:
            body += item.entry
        if len(body) < pad_to or len(body) == _HEADER_SIZE:
            # --root-xattr-isize: room for later in-place edits.  Zero bytes read as empty entries
            # of index 0 (4 bytes each), which the kernel skips.  A bare 12-byte header (what
            # mkfs.erofs writes for --root-xattr-isize=12 on a root without xattrs) makes the
            # kernel refuse every xattr call on the inode (EOPNOTSUPP): we always add at least one
            # empty entry.
            body += bytes(max(fmt.xattr_align(pad_to), len(body) + fmt.EROFS_XATTR_ENTRY_SIZE)
                          - len(body))
        assert len(body) % 4 == 0 and len(body) <= XATTR_IBODY_MAX
        return bytes(body)

    # -- superblock --------------------------------------------------------------------------------

    @property
    def has_shared(self) -> bool:
        return bool(self.shared_area)

    @property
    def feature_compat(self) -> int:
        bits = 0
        if self._filter_used:
            bits |= fmt.EROFS_FEATURE_COMPAT_XATTR_FILTER
        if self._prefixes and not self.in_packed_inode:
            bits |= fmt.EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX
        return bits

    @property
    def feature_incompat(self) -> int:
        return fmt.EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES if self._prefixes else 0

    def superblock_fields(self, xattr_blkaddr: int, prefix_offset: int) -> dict:
        """SuperBlock keyword values, given where shared_area and prefix_records were written.

        `xattr_blkaddr` is the block of the shared area (0 when there is none); `prefix_offset`
        the absolute byte offset of prefix_records (ignored when there are no prefixes).
        """
        if self._prefixes:
            if prefix_offset % 4 or prefix_offset // 4 > 0xFFFFFFFF:
                raise ValueError(f"xattr prefix table at {prefix_offset}: must be 4-byte aligned "
                                 "and below 16 GiB")
        return {
            "xattr_blkaddr": xattr_blkaddr if self.shared_area else 0,
            "xattr_prefix_count": self.xattr_prefix_count,
            "xattr_prefix_start": prefix_offset // 4 if self._prefixes else 0,
            "xattr_filter_reserved": self.xattr_filter_reserved,
        }
