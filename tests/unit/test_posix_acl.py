"""ondisk/posix_acl.py: the kernel's ACL xattr value decoded, and its text form (libacl's
acl_to_text long form with numeric ids, as `mkerofs-read tar` writes SCHILY.acl.* records)."""
from __future__ import annotations

import pytest

from mkerofs.ondisk import posix_acl as acl

U = acl.ACL_UNDEFINED_ID
ENTRIES = [(acl.ACL_USER_OBJ, 6, U), (acl.ACL_USER, 4, 0), (acl.ACL_USER, 7, 4242),
           (acl.ACL_GROUP_OBJ, 5, U), (acl.ACL_GROUP, 1, 100), (acl.ACL_MASK, 7, U),
           (acl.ACL_OTHER, 0, U)]


def test_decode_is_the_inverse_of_encode():
    value = acl.encode_posix_acl(list(reversed(ENTRIES)))
    assert value[:4] == b"\x02\0\0\0" and len(value) == 4 + 8 * len(ENTRIES)
    assert acl.decode_posix_acl(value) == ENTRIES          # stored in the kernel's order
    assert acl.decode_posix_acl(acl.encode_posix_acl([])) == []


@pytest.mark.parametrize("value,why", [
    (b"", "0 bytes"), (b"\x02\0\0", "3 bytes"), (b"\x02\0\0\0" + bytes(7), "11 bytes"),
    (b"\x01\0\0\0" + bytes(8), "ACL version 1"), (b"\x02\0\0\x01", "ACL version 16777218"),
])
def test_decode_refuses_what_the_kernel_would_not_parse(value, why):
    with pytest.raises(ValueError, match=why):
        acl.decode_posix_acl(value)


def test_text_is_the_long_form_with_numeric_ids():
    assert acl.posix_acl_text(ENTRIES) == ("user::rw-\nuser:0:r--\nuser:4242:rwx\ngroup::r-x\n"
                                           "group:100:--x\nmask::rwx\nother::---\n")
    assert acl.posix_acl_text([]) == ""


@pytest.mark.parametrize("entry,why", [((0x40, 4, U), "unknown ACL tag 0x40"),
                                       ((acl.ACL_OTHER, 8, U), "bits 0x8 beyond r, w, x")])
def test_text_refuses_what_it_cannot_express(entry, why):
    with pytest.raises(ValueError, match=why):
        acl.posix_acl_text(ENTRIES[:-1] + [entry])
