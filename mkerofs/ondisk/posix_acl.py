"""The value of a ``system.posix_acl_access`` / ``system.posix_acl_default`` xattr, as the kernel
stores and reads it (include/uapi/linux/posix_acl_xattr.h, include/uapi/linux/posix_acl.h).

EROFS stores the value verbatim (only the name is shortened to an index), so an image carries
exactly what the kernel's posix_acl_from_xattr() parses:

* a 4-byte header ``a_version`` = POSIX_ACL_XATTR_VERSION, then
* 8-byte entries ``{le16 e_tag; le16 e_perm; le32 e_id}``.

The kernel's posix_acl_valid() wants the entries ordered by tag (USER_OBJ, USER..., GROUP_OBJ,
GROUP..., MASK, OTHER), exactly one each of USER_OBJ, GROUP_OBJ and OTHER, a MASK whenever named
USER/GROUP entries exist, and no repeated named id; libacl also sorts named entries by id. The
object entries carry ACL_UNDEFINED_ID.

Tar archives carry an ACL as text instead (``SCHILY.acl.access`` / ``default``), in the long form
of libacl's acl_to_text(): one ``tag:qualifier:perms`` entry a line, e.g. ``user::rw-``,
``user:1000:r--``, ``mask::r--``. GNU tar 1.34 writes names where the host knows the id (even
with --numeric-owner) and the number otherwise; on extraction libacl's acl_from_text() takes
either (a qualifier that reads as a C number, strtol base 0, is the id; anything else is looked
up as a name). posix_acl_text() writes decimal ids only: an image holds ids, not names.
"""
from __future__ import annotations

import struct

POSIX_ACL_XATTR_VERSION = 0x0002

# e_tag
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20

# e_perm
ACL_READ = 0x04
ACL_WRITE = 0x02
ACL_EXECUTE = 0x01

ACL_UNDEFINED_ID = 0xFFFFFFFF

posix_acl_xattr_header = struct.Struct("<I")      # a_version
posix_acl_xattr_entry = struct.Struct("<HHI")     # e_tag, e_perm, e_id
assert posix_acl_xattr_header.size == 4 and posix_acl_xattr_entry.size == 8


def encode_posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """The xattr value of `entries` (tag, perm, id), put in the order the kernel requires."""
    out = [posix_acl_xattr_header.pack(POSIX_ACL_XATTR_VERSION)]
    out.extend(posix_acl_xattr_entry.pack(*e) for e in sorted(entries, key=lambda e: (e[0], e[2])))
    return b"".join(out)


def decode_posix_acl(value: bytes) -> list[tuple[int, int, int]]:
    """The entries (tag, perm, id) of an xattr value, in stored order; ValueError if it is not
    what posix_acl_from_xattr() parses (short, a partial entry, another version)."""
    if len(value) < posix_acl_xattr_header.size or \
            (len(value) - posix_acl_xattr_header.size) % posix_acl_xattr_entry.size:
        raise ValueError(f"an ACL value of {len(value)} bytes is not a 4-byte header "
                         "and 8-byte entries")
    (version,) = posix_acl_xattr_header.unpack_from(value)
    if version != POSIX_ACL_XATTR_VERSION:
        raise ValueError(f"ACL version {version}, not {POSIX_ACL_XATTR_VERSION}")
    return list(posix_acl_xattr_entry.iter_unpack(value[posix_acl_xattr_header.size:]))


# e_tag -> the word acl_to_text() writes; named entries (ACL_USER, ACL_GROUP) add the id
ACL_TAG_TEXT = {ACL_USER_OBJ: "user", ACL_USER: "user", ACL_GROUP_OBJ: "group",
                ACL_GROUP: "group", ACL_MASK: "mask", ACL_OTHER: "other"}


def posix_acl_text(entries: list[tuple[int, int, int]]) -> str:
    """`entries` as acl_to_text() writes them (one entry a line, each line ended), with
    numeric ids. ValueError for a tag or permission bits text cannot express."""
    lines = []
    for tag, perm, id_ in entries:
        word = ACL_TAG_TEXT.get(tag)
        if word is None:
            raise ValueError(f"unknown ACL tag {tag:#x}")
        if perm & ~(ACL_READ | ACL_WRITE | ACL_EXECUTE):
            raise ValueError(f"ACL permission bits {perm:#x} beyond r, w, x")
        qualifier = str(id_) if tag in (ACL_USER, ACL_GROUP) else ""
        rwx = "".join(c if perm & bit else "-"
                      for c, bit in (("r", ACL_READ), ("w", ACL_WRITE), ("x", ACL_EXECUTE)))
        lines.append(f"{word}:{qualifier}:{rwx}\n")
    return "".join(lines)


def posix_acl_problem(entries: list[tuple[int, int, int]]) -> str | None:
    """Why the kernel's posix_acl_valid() would refuse `entries`, or None if it accepts them."""
    tags = [tag for tag, _perm, _id in entries]
    for needed, name in ((ACL_USER_OBJ, "user::"), (ACL_GROUP_OBJ, "group::"), (ACL_OTHER, "other::")):
        if tags.count(needed) != 1:
            return f"needs exactly one {name} entry"
    if tags.count(ACL_MASK) > 1:
        return "has more than one mask entry"
    if (ACL_USER in tags or ACL_GROUP in tags) and ACL_MASK not in tags:
        return "has named entries but no mask entry"
    named = [(tag, id_) for tag, _perm, id_ in entries if tag in (ACL_USER, ACL_GROUP)]
    if len(set(named)) != len(named):
        return "names the same user or group twice"
    if any(perm & ~(ACL_READ | ACL_WRITE | ACL_EXECUTE) for _tag, perm, _id in entries):
        return "has a permission other than r, w, x"
    return None
