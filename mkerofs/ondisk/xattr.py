"""Extended attributes on disk: name prefixes, the name filter, entries and ibody headers.

The kernel's rules (fs/erofs/erofs_fs.h, xattr.c), restated:

* An entry is ``u8 e_name_len, u8 e_name_index, le16 e_value_size``, the stored name, the value,
  zero-padded to 4 bytes.  e_name_index says which prefix the stored name lacks: a short prefix
  (1 ``user.``, 2 the whole name ``system.posix_acl_access``, 3 ``system.posix_acl_default``,
  4 ``trusted.``, 6 ``security.``) or, with bit 0x80, entry k (the low 7 bits) of the long-prefix
  table.  Index 5 (``lustre.``) is reserved, but neither the kernel nor erofs-utils maps it to a
  prefix, and index 0 has none: names stored with them are not listed.
* A long prefix is a metadata record whose payload is ``u8 base_index, infix``: the prefix is the
  short prefix of base_index followed by the infix.
* The inline xattr area (ibody) opens with ``le32 h_name_filter, u8 h_shared_count, 7 reserved``
  and h_shared_count le32 shared xattr ids; inline entries follow.
* The name filter: bit ``xxh32(name after its short prefix, EROFS_XATTR_FILTER_SEED +
  short index) & 31`` of h_name_filter is cleared for every xattr the inode has (a long prefix
  hashes as its base index, with the infix part of the hashed name).
"""
from __future__ import annotations

import struct

import xxhash

from ..errors import ImageError
from . import format as fmt

XATTR_VALUE_MAX = 0xFFFF                  # le16 e_value_size
XATTR_NAME_SUFFIX_MAX = 0xFF              # u8 e_name_len
XATTR_IBODY_MAX = fmt.xattr_ibody_size(0xFFFF)   # le16 i_xattr_icount -> 262148 bytes
XATTR_SHARED_PER_INODE_MAX = 0xFF         # u8 h_shared_count
XATTR_LONG_PREFIX_COUNT_MAX = fmt.EROFS_XATTR_LONG_PREFIX_MASK + 1   # 7 bits of e_name_index

# short name index -> the prefix the stored name lacks (the whole name for the ACL indexes);
# EROFS_XATTR_INDEX_LUSTRE is left out: nothing maps it to a prefix
SHORT_PREFIXES = {
    fmt.EROFS_XATTR_INDEX_USER: b"user.",
    fmt.EROFS_XATTR_INDEX_POSIX_ACL_ACCESS: b"system.posix_acl_access",
    fmt.EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    fmt.EROFS_XATTR_INDEX_TRUSTED: b"trusted.",
    fmt.EROFS_XATTR_INDEX_SECURITY: b"security.",
}
_WHOLE_NAMES = (fmt.EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, fmt.EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT)
_MATCH = tuple((prefix, index, index in _WHOLE_NAMES) for index, prefix in SHORT_PREFIXES.items())
_SHARED_ID = struct.Struct("<I")
assert _SHARED_ID.size == fmt.EROFS_XATTR_SHARED_ID_SIZE
_FILTER_MASK = fmt.EROFS_XATTR_FILTER_BITS - 1


def short_prefix(name: bytes) -> tuple[int, int]:
    """(e_name_index, prefix length) of the short prefix `name` starts with; (0, 0) for none."""
    for prefix, index, whole in _MATCH:
        if name == prefix if whole else name.startswith(prefix):
            return index, len(prefix)
    return 0, 0


def long_prefix_index(slot: int) -> int:
    """e_name_index of entry `slot` of the long-prefix table."""
    return fmt.EROFS_XATTR_LONG_PREFIX | slot


def long_prefix_slot(index: int) -> int | None:
    """The long-prefix table entry an e_name_index refers to; None for a short index."""
    if index & fmt.EROFS_XATTR_LONG_PREFIX:
        return index & fmt.EROFS_XATTR_LONG_PREFIX_MASK
    return None


def pack_long_prefix(base_index: int, infix: bytes) -> bytes:
    """One long-prefix record (with its le16 length, padded to 4 bytes)."""
    return fmt.pack_metadata_record(bytes((base_index,)) + infix)


def unpack_long_prefix(payload: bytes) -> tuple[int, bytes]:
    """(base index, infix) of a long-prefix record's payload."""
    return payload[0], payload[1:]


def full_name(index: int, suffix: bytes, long_prefixes) -> bytes | None:
    """The name listxattr shows for a stored entry; None for those it hides (index 0, lustre,
    a long prefix beyond the table).  `long_prefixes`: (base index, infix) per table entry."""
    slot = long_prefix_slot(index)
    if slot is not None:
        if slot >= len(long_prefixes):
            return None
        index, infix = long_prefixes[slot]
        suffix = infix + suffix
    short = SHORT_PREFIXES.get(index)
    return None if short is None else short + suffix


def filter_bit(base_index: int, rest: bytes) -> int:
    """The bit of h_name_filter an xattr clears (0..31): `rest` is its name after the short
    prefix of `base_index`."""
    return xxhash.xxh32_intdigest(rest, seed=fmt.EROFS_XATTR_FILTER_SEED + base_index) \
        & _FILTER_MASK


def name_filter_bit(name: bytes) -> int:
    """filter_bit() of a whole name, as the kernel hashes it in getxattr."""
    index, base_len = short_prefix(name)
    return filter_bit(index, name[base_len:])


def entry_filter_bit(index: int, suffix: bytes, long_prefixes) -> int:
    """filter_bit() of a stored entry (its long prefix, if any, resolved through the table)."""
    slot = long_prefix_slot(index)
    if slot is not None:
        index, infix = long_prefixes[slot]
        suffix = infix + suffix
    return filter_bit(index, suffix)


def pack_entry(index: int, suffix: bytes, value: bytes) -> bytes:
    """One erofs_xattr_entry with its name suffix and value, zero-padded to 4 bytes."""
    raw = fmt.EROFS_XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
    return raw.ljust(fmt.xattr_align(len(raw)), b"\0")


def unpack_entry(raw: bytes, pos: int, limit: int) -> tuple[int, bytes, bytes, int]:
    """(e_name_index, stored name, value, padded size) of the entry at `pos`, which must end by
    `limit`."""
    if pos + fmt.EROFS_XATTR_ENTRY_SIZE > limit:
        raise ImageError("truncated entry")
    nlen, index, vlen = fmt.EROFS_XATTR_ENTRY.unpack_from(raw, pos)
    at = pos + fmt.EROFS_XATTR_ENTRY_SIZE
    if at + nlen + vlen > limit:
        raise ImageError(f"a {nlen}-byte name and {vlen}-byte value do not fit")
    return (index, raw[at:at + nlen], raw[at + nlen:at + nlen + vlen],
            fmt.xattr_align(fmt.EROFS_XATTR_ENTRY_SIZE + nlen + vlen))


def entry_size(head: bytes) -> int:
    """Unpadded bytes of the entry whose 4-byte header is `head`."""
    nlen, _index, vlen = fmt.EROFS_XATTR_ENTRY.unpack(head)
    return fmt.EROFS_XATTR_ENTRY_SIZE + nlen + vlen


def pack_ibody_header(name_filter: int, shared_ids) -> bytes:
    """The ibody header and the inode's shared xattr ids."""
    return fmt.EROFS_XATTR_IBODY_HEADER.pack(name_filter, len(shared_ids), bytes(7)) + \
        b"".join(map(_SHARED_ID.pack, shared_ids))


def unpack_ibody_header(body: bytes) -> tuple[int, int]:
    """(h_name_filter, h_shared_count) of an ibody."""
    name_filter, shared, _reserved = fmt.EROFS_XATTR_IBODY_HEADER.unpack_from(body)
    return name_filter, shared


def shared_ids(body: bytes, count: int) -> list[int]:
    """The `count` shared xattr ids after the ibody header (the caller checks they fit)."""
    start = fmt.EROFS_XATTR_IBODY_HEADER.size
    return [i for (i,) in _SHARED_ID.iter_unpack(body[start:start + count * _SHARED_ID.size])]


def inline_entries_start(shared_count: int) -> int:
    """Where the inline entries of an ibody begin."""
    return fmt.EROFS_XATTR_IBODY_HEADER.size + shared_count * fmt.EROFS_XATTR_SHARED_ID_SIZE
