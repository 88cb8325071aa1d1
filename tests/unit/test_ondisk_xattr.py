"""Unit tests of mkerofs.ondisk.xattr: what the writer stores reads back as the same names."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkerofs.errors import ImageError
from mkerofs.ondisk import format as fmt
from mkerofs.ondisk import xattr

NAMES = [b"user.a", b"user.", b"trusted.overlay.opaque", b"security.selinux",
         b"system.posix_acl_access", b"system.posix_acl_default", b"system.posix_acl_accessx",
         b"system.nfs4_acl", b"lustre.x", b"userx"]


@pytest.mark.parametrize("name", NAMES)
def test_short_prefix_round_trip(name):
    index, plen = xattr.short_prefix(name)
    shown = xattr.full_name(index, name[plen:], ())
    if index:
        assert shown == name
    else:
        assert plen == 0 and shown is None      # stored whole under index 0: not listed


def test_lustre_index_is_not_listed():
    assert xattr.full_name(fmt.EROFS_XATTR_INDEX_LUSTRE, b"x", ()) is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(NAMES), st.binary(max_size=40), st.binary(max_size=40),
       st.integers(0, 127))
def test_long_prefix_names_and_filter_bits(base_name, infix, rest, slot):
    """A name stored under a long prefix shows and hashes as the same whole name."""
    base, plen = xattr.short_prefix(base_name)
    record = xattr.pack_long_prefix(base, infix)
    assert len(record) % 4 == 0
    n = fmt.EROFS_METADATA_RECORD_LEN.unpack_from(record)[0]
    table = [(0, b"")] * slot + [xattr.unpack_long_prefix(record[2:2 + n])]
    index = xattr.long_prefix_index(slot)
    assert xattr.long_prefix_slot(index) == slot
    name = xattr.full_name(index, rest, table)
    prefix = xattr.SHORT_PREFIXES.get(base)
    assert name == (None if prefix is None else prefix + infix + rest)
    whole = base in (fmt.EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, fmt.EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT)
    if name is not None and not (whole and infix + rest):
        # (an ACL index stands for a whole name: nothing longer is stored under it)
        assert xattr.entry_filter_bit(index, rest, table) == xattr.name_filter_bit(name)
    assert xattr.full_name(xattr.long_prefix_index(slot + 1), rest, table) is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 255), st.binary(max_size=255), st.binary(max_size=600))
def test_entry_round_trip(index, suffix, value):
    raw = xattr.pack_entry(index, suffix, value)
    assert len(raw) % 4 == 0
    assert xattr.entry_size(raw[:4]) == 4 + len(suffix) + len(value)
    assert xattr.unpack_entry(b"\0" * 8 + raw, 8, 8 + len(raw)) == (index, suffix, value,
                                                                    len(raw))
    with pytest.raises(ImageError):
        xattr.unpack_entry(raw, 0, 4 + len(suffix) + len(value) - 1)


def test_ibody_header_round_trip():
    body = xattr.pack_ibody_header(0xFFFF0F0F, [3, 70000, 9])
    assert len(body) == xattr.inline_entries_start(3) == 12 + 12
    assert xattr.unpack_ibody_header(body) == (0xFFFF0F0F, 3)
    assert xattr.shared_ids(body, 3) == [3, 70000, 9]
