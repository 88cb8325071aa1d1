"""Unit tests of the xattr byte layout (mkerofs/xattrs.py) and file_contexts labels (mkerofs/selinux.py).

No kernel needed: every expectation is computed by hand from the on-disk format
(fs/erofs/erofs_fs.h) or from mkfs.erofs 1.9.3 / libselinux behaviour.
"""
from __future__ import annotations

import errno
import os
import stat
import struct

import pytest
import xxhash

from mkerofs.ondisk import format as fmt
from mkerofs.writer.selinux import FileContexts, fs_path, with_label
from mkerofs.util import read_xattrs
from mkerofs.ondisk.xattr import name_filter_bit, pack_entry, short_prefix
from mkerofs.writer.xattrs import XATTR_IBODY_MAX, XattrLayout, XattrOptions

SEED = 0x25BBE08F


def layout(**kw) -> XattrLayout:
    return XattrLayout(XattrOptions(**kw), 4096)


def header(ibody: bytes) -> tuple[int, int]:
    name_filter, shared_count, reserved = struct.unpack_from("<IB7s", ibody)
    assert reserved == bytes(7)
    return name_filter, shared_count


def entries(raw: bytes, pos: int = 0, end: int | None = None) -> list[tuple[int, bytes, bytes]]:
    """Decode consecutive erofs_xattr_entry records (each 4-byte aligned)."""
    end = len(raw) if end is None else end
    out = []
    while pos < end:
        nlen, index, vsize = struct.unpack_from("<BBH", raw, pos)
        out.append((index, raw[pos + 4:pos + 4 + nlen], raw[pos + 4 + nlen:pos + 4 + nlen + vsize]))
        pos += (4 + nlen + vsize + 3) // 4 * 4
    assert pos == end, "entries overrun the area"
    return out


# -- entry encoding --------------------------------------------------------------------------------

def test_entry_encoding_by_hand():
    # e_name_len=1, e_name_index=1 (user.), e_value_size=1 (le16), "a", "1", 2 bytes padding
    assert pack_entry(1, b"a", b"1") == b"\x01\x01\x01\x00a1\x00\x00"
    # exactly aligned: no padding
    assert pack_entry(4, b"ab", b"cd") == b"\x02\x04\x02\x00abcd"
    # an ACL: empty name, index 2; a 300-byte value has e_value_size 0x012c little-endian
    raw = pack_entry(2, b"", b"v" * 300)
    assert raw[:4] == b"\x00\x02\x2c\x01" and len(raw) == 304


@pytest.mark.parametrize("nlen,vlen", [(0, 0), (1, 0), (0, 3), (5, 6), (255, 65535)])
def test_entry_is_4_byte_aligned_and_zero_padded(nlen, vlen):
    raw = pack_entry(1, b"n" * nlen, b"v" * vlen)
    assert len(raw) % 4 == 0
    assert len(raw) - (4 + nlen + vlen) in range(4)
    assert raw[4 + nlen + vlen:] == bytes(len(raw) - 4 - nlen - vlen)


# -- prefixes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    (b"user.x", (1, 5)),
    (b"trusted.overlay.opaque", (4, 8)),
    (b"security.selinux", (6, 9)),
    (b"system.posix_acl_access", (2, 23)),
    (b"system.posix_acl_default", (3, 24)),
    (b"system.posix_acl_access_not", (0, 0)),   # the ACL indexes are whole names only
    (b"system.nfs4_acl", (0, 0)),               # unknown namespace: stored whole, index 0
    (b"lustre.lov", (0, 0)),                    # as mkfs.erofs: nothing reads index 5
    (b"user", (0, 0)),
])
def test_short_prefix(name, expected):
    assert short_prefix(name) == expected


def test_unknown_namespace_is_stored_whole_with_index_0():
    lay = layout()
    h = lay.add([(b"system.foo", b"x")])
    lay.finalize()
    body = lay.ibody(h)
    assert entries(body, 12) == [(0, b"system.foo", b"x")]


def test_long_prefix_longest_match_and_record_table():
    lay = layout(long_prefixes=[b"trusted.", b"trusted.overlay.", b"user.attr_", b"foo."])
    assert lay.name_index(b"trusted.overlay.opaque") == (0x80 | 1, b"opaque")   # longest wins
    assert lay.name_index(b"trusted.other") == (0x80 | 0, b"other")
    assert lay.name_index(b"user.attr_7") == (0x80 | 2, b"7")
    assert lay.name_index(b"user.other") == (1, b"other")                      # no long match
    assert lay.name_index(b"security.x") == (6, b"x")
    # a long prefix only applies to names of its own short prefix
    assert lay.name_index(b"foo.bar") == (0x80 | 3, b"bar")
    # records: le16 (1 + infix length), u8 base index, infix, padded to 4 bytes
    assert lay.prefix_records == (
        b"\x01\x00\x04\x00"                               # trusted. : empty infix
        b"\x09\x00\x04overlay.\x00"                       # trusted.overlay.
        b"\x06\x00\x01attr_"                               # user.attr_: 8 bytes, no padding
        b"\x05\x00\x00foo.\x00")                          # foo.: no short prefix, base 0
    assert lay.xattr_prefix_count == 4
    assert lay.feature_incompat == fmt.EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES
    assert lay.feature_compat & fmt.EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX
    fields = lay.superblock_fields(0, 1152)
    assert fields["xattr_prefix_start"] == 1152 // 4 and fields["xattr_prefix_count"] == 4


def test_long_prefix_entry_in_ibody():
    lay = layout(long_prefixes=[b"trusted.overlay."])
    h = lay.add([(b"trusted.overlay.opaque", b"y")])
    lay.finalize()
    assert entries(lay.ibody(h), 12) == [(0x80, b"opaque", b"y")]


def test_no_prefix_table_without_prefixes():
    lay = layout()
    assert lay.prefix_records == b"" and lay.xattr_prefix_count == 0
    assert lay.feature_incompat == 0
    assert lay.superblock_fields(0, 0)["xattr_prefix_start"] == 0


@pytest.mark.parametrize("prefixes", [[b"x" * 256], [b""], [b"user.%d" % i for i in range(129)]])
def test_bad_long_prefixes(prefixes):
    with pytest.raises(ValueError):
        layout(long_prefixes=prefixes)


# -- name filter ------------------------------------------------------------------------------------

def test_filter_bit_is_the_kernels_hash():
    # the kernel hashes the name after the handler's prefix, seeded with SEED + index
    assert name_filter_bit(b"user.a") == xxhash.xxh32_intdigest(b"a", seed=SEED + 1) & 31 == 21
    assert name_filter_bit(b"system.posix_acl_access") == xxhash.xxh32_intdigest(b"", seed=SEED + 2) & 31
    # a long-prefixed name still hashes from its *short* prefix: the infix is part of the suffix
    assert name_filter_bit(b"trusted.overlay.opaque") == (
        xxhash.xxh32_intdigest(b"overlay.opaque", seed=SEED + 4) & 31)


def test_ibody_header_filter_and_size():
    lay = layout()
    h = lay.add([(b"user.a", b"1")])
    lay.finalize()
    body = lay.ibody(h)
    assert len(body) == 12 + 8
    assert fmt.xattr_icount(len(body)) == 3 and fmt.xattr_ibody_size(3) == len(body)
    name_filter, shared = header(body)
    assert shared == 0
    assert name_filter == 0xFFFFFFFF & ~(1 << 21)      # bit 1 = "not present"
    assert entries(body, 12) == [(1, b"a", b"1")]
    assert lay.feature_compat & fmt.EROFS_FEATURE_COMPAT_XATTR_FILTER
    assert lay.xattr_filter_reserved == 0


def test_filter_covers_shared_xattrs_too():
    lay = layout(tolerance=0)
    h = lay.add([(b"user.a", b"1"), (b"trusted.t", b"2")])
    lay.finalize()
    body = lay.ibody(h)
    name_filter, shared = header(body)
    assert shared == 2 and len(body) == 12 + 8
    assert name_filter == 0xFFFFFFFF & ~((1 << name_filter_bit(b"user.a")) | (1 << name_filter_bit(b"trusted.t")))


def test_filter_off():
    lay = layout(name_filter=False)
    h = lay.add([(b"user.a", b"1")])
    lay.finalize()
    assert header(lay.ibody(h))[0] == 0
    assert not lay.feature_compat & fmt.EROFS_FEATURE_COMPAT_XATTR_FILTER


def test_no_filter_feature_without_xattrs():
    lay = layout()
    h = lay.add([])
    lay.finalize()
    assert lay.ibody(h) == b""
    assert lay.feature_compat == 0


# -- order --------------------------------------------------------------------------------------------

def test_inline_entries_sorted_by_name_whatever_the_input_order():
    lay = layout()
    h1 = lay.add([(b"user.b", b"2"), (b"trusted.z", b""), (b"user.a", b"1"), (b"security.m", b"3")])
    h2 = lay.add([(b"user.a", b"1"), (b"security.m", b"3"), (b"trusted.z", b""), (b"user.b", b"2")])
    lay.finalize()
    assert h1 is h2                                # identical sets are one handle
    names = [(i, n) for i, n, _ in entries(lay.ibody(h1), 12)]
    assert names == [(6, b"m"), (4, b"z"), (1, b"a"), (1, b"b")]


# -- sharing -------------------------------------------------------------------------------------------

def test_shared_when_count_exceeds_tolerance():
    lay = layout()                                  # -x 2
    hs = [lay.add([(b"user.three", b"v"), (b"user.own", b"%d" % i)]) for i in range(3)]
    h2 = [lay.add([(b"user.two", b"w")]) for _ in range(2)]
    lay.finalize()
    assert entries(lay.shared_area) == [(1, b"three", b"v")]
    body = lay.ibody(hs[0])
    assert header(body)[1] == 1
    assert struct.unpack_from("<I", body, 12)[0] == 0          # id 0: offset 0 / 4
    assert entries(body, 16) == [(1, b"own", b"0")]
    assert header(lay.ibody(h2[0]))[1] == 0                    # count 2 is not > 2


def test_weight_counts_paths_and_root_counts_zero():
    lay = layout()
    h = lay.add([(b"user.hard", b"x")], weight=3)              # one inode, three links
    r = lay.add([(b"user.root", b"y")], weight=0)              # the root is never counted
    lay.add([(b"user.root", b"y")])
    lay.add([(b"user.root", b"y")])
    lay.finalize()
    assert header(lay.ibody(h))[1] == 1
    assert header(lay.ibody(r, is_root=True))[1] == 0         # counted twice only: inline


def test_tolerance_extremes():
    for tol, shared in ((0, True), (2**31 - 1, False)):
        lay = layout(tolerance=tol)
        h = [lay.add([(b"user.x", b"v")]) for _ in range(10)][0]
        lay.finalize()
        assert bool(lay.shared_area) is shared
        assert header(lay.ibody(h))[1] == (1 if shared else 0)
        assert lay.superblock_fields(7, 0)["xattr_blkaddr"] == (7 if shared else 0)


def test_negative_tolerance_disables_xattrs():
    lay = layout(tolerance=-1)
    h = lay.add([(b"user.x", b"v")])
    lay.finalize()
    assert lay.ibody(h) == b"" and lay.shared_area == b""


def test_shared_area_sorted_and_ids_are_offsets():
    lay = layout(tolerance=0)
    lay.add([(b"user.b", b"1"), (b"trusted.a", b"long value here")])
    h = lay.add([(b"user.a", b"2"), (b"user.a.b", b"")])
    lay.finalize(shared_base=1152)
    # name, NUL, value order: trusted.a < user.a < user.a.b < user.b
    assert [n for _, n, _ in entries(lay.shared_area)] == [b"a", b"a", b"a.b", b"b"]
    body = lay.ibody(h)
    ids = struct.unpack_from("<2I", body, 12)
    first = len(pack_entry(4, b"a", b"long value here"))
    assert ids == ((1152 + first) // 4, (1152 + first + 8) // 4)


def test_at_most_255_shared_ids_rest_inline():
    lay = layout(tolerance=0)
    pairs = [(b"trusted.w%03d" % i, b"x") for i in range(300)]
    h = lay.add(pairs)
    lay.finalize()
    body = lay.ibody(h)
    assert header(body)[1] == 255
    inline = entries(body, 12 + 4 * 255)
    assert [n for _, n, _ in inline] == [b"w%03d" % i for i in range(255, 300)]


# -- --root-xattr-isize ----------------------------------------------------------------------------------

def test_root_padding():
    lay = layout(root_isize=101)
    h = lay.add([(b"user.a", b"1")])
    lay.finalize()
    root = lay.ibody(h, is_root=True)
    assert len(root) == 104 and root[20:] == bytes(84)     # padded with empty (index 0) entries
    assert root[:20] == lay.ibody(h)                        # others are not padded
    assert entries(root, 12)[0] == (1, b"a", b"1")


def test_root_padding_without_xattrs_never_leaves_a_bare_header():
    for isize, expected in ((12, 16), (13, 16), (16, 16), (17, 20)):
        lay = layout(root_isize=isize)
        h = lay.add([])
        lay.finalize()
        body = lay.ibody(h, is_root=True)
        assert len(body) == expected, isize
        assert header(body) == (0xFFFFFFFF, 0)
        assert lay.ibody(h) == b""


def test_root_isize_limit():
    layout(root_isize=65532)
    with pytest.raises(ValueError):
        layout(root_isize=65533)


# -- limits -----------------------------------------------------------------------------------------------

def test_value_too_large_names_the_attribute():
    lay = layout()
    lay.add([(b"trusted.ok", b"v" * 65535)])
    with pytest.raises(ValueError, match=r"/some/file: xattr trusted\.big: value of 65536 bytes"):
        lay.add([(b"trusted.big", b"v" * 65536)], where="/some/file")


def test_name_suffix_too_long():
    lay = layout()
    lay.add([(b"user." + b"n" * 255, b"")])
    with pytest.raises(ValueError, match="name too long"):
        lay.add([(b"system." + b"n" * 249, b"")])          # index 0: the whole 256-byte name


def test_duplicate_name_rejected():
    with pytest.raises(ValueError, match="user.a given twice"):
        layout().add([(b"user.a", b"1"), (b"user.a", b"2")])


def test_inline_body_limit_names_the_attribute_and_file():
    lay = layout()
    big = [(b"trusted.v%d" % i, bytes(65000)) for i in range(5)]     # ~325 KB inline
    lay.add(big, where="dir/file")
    with pytest.raises(ValueError, match=r"dir/file: xattr trusted\.v4: .*262148"):
        lay.finalize()


def test_inline_body_limit_spared_by_sharing():
    lay = layout()
    big = [(b"trusted.v%d" % i, bytes(65000)) for i in range(5)]
    for _ in range(3):
        h = lay.add(big)
    lay.finalize()                                                     # all shared: fits
    assert len(lay.ibody(h)) == 12 + 4 * 5 <= XATTR_IBODY_MAX


# -- reading ------------------------------------------------------------------------------------------------

def test_read_xattrs(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"")
    try:
        os.setxattr(f, "user.b", b"2")
        os.setxattr(f, "user.a", b"\0binary\xff")
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip("no user xattrs here")
        raise
    assert read_xattrs(os.fsencode(f)) == [(b"user.a", b"\0binary\xff"), (b"user.b", b"2")]
    link = tmp_path / "link"
    os.symlink(f, link)
    assert read_xattrs(str(link)) == []                # the link itself, not its target
    with pytest.raises(OSError):
        read_xattrs(str(tmp_path / "missing"))


# -- file_contexts ------------------------------------------------------------------------------------------

FC = r"""
# comment line

/.*                         u:object_r:default_t:s0
/system(/.*)?               u:object_r:system_file:s0
/system/bin/sh      --      u:object_r:shell_exec:s0
/system/bin/.*      -l      u:object_r:bin_link:s0
/system/lib\.so             u:object_r:exact_libso:s0
/system/etc/hosts           u:object_r:hosts_first:s0
/system/etc/hosts           u:object_r:hosts_last:s0
/system/etc(/.*)?           u:object_r:etc_later_regex:s0
/data/[[:digit:]]+          u:object_r:num:s0
/nolabel(/.*)?              <<none>>
/nolabel/keep               u:object_r:literal:s0
/a/b|/c/d                   u:object_r:alt:s0
/                           u:object_r:root_t:s0
"""


@pytest.fixture
def fc() -> FileContexts:
    return FileContexts.from_text(FC, "fc")


@pytest.mark.parametrize("path,mode,label", [
    ("/", stat.S_IFDIR, b"u:object_r:root_t:s0"),                 # literal beats /.*
    ("/system", stat.S_IFDIR, b"u:object_r:system_file:s0"),
    ("/system/bin/sh", stat.S_IFREG, b"u:object_r:shell_exec:s0"),
    ("/system/bin/sh", stat.S_IFLNK, b"u:object_r:bin_link:s0"),  # -- does not apply to a link
    ("/system/bin/ls", stat.S_IFREG, b"u:object_r:system_file:s0"),
    ("/system/lib.so", stat.S_IFREG, b"u:object_r:exact_libso:s0"),
    ("/system/libXso", stat.S_IFREG, b"u:object_r:system_file:s0"),   # \. is a literal dot
    ("/system/etc/hosts", stat.S_IFREG, b"u:object_r:hosts_last:s0"),   # last literal wins,
    ("/system/etc/other", stat.S_IFREG, b"u:object_r:etc_later_regex:s0"),  # over any regex
    ("/data/123", stat.S_IFREG, b"u:object_r:num:s0"),             # POSIX class
    ("/data/12a", stat.S_IFREG, b"u:object_r:default_t:s0"),       # anchored at both ends
    ("/nolabel/x", stat.S_IFREG, None),                            # <<none>>: no label
    ("/nolabel/keep", stat.S_IFREG, b"u:object_r:literal:s0"),
    ("/a/bzz", stat.S_IFREG, b"u:object_r:alt:s0"),                # "^/a/b|/c/d$": libselinux's
    ("/c/d", stat.S_IFREG, b"u:object_r:default_t:s0"),            # anchoring and stem quirks
    ("//system//bin/sh/", stat.S_IFREG, b"u:object_r:shell_exec:s0"),   # slashes cleaned
    ("/system/bin/sh", 0, b"u:object_r:shell_exec:s0"),            # mode 0: any type
    (b"/system/\xff", stat.S_IFREG, b"u:object_r:system_file:s0"),  # non-UTF-8 paths
])
def test_lookup(fc, path, mode, label):
    assert fc.lookup(path, mode) == label


def test_last_regex_wins():
    fc = FileContexts.from_text("/x(/.*)? a:b:c:s0\n/x/.* d:e:f:s0\n/x(/.*)? g:h:i:s0\n")
    assert fc.lookup("/x/y") == b"g:h:i:s0"
    fc = FileContexts.from_text("/x(/.*)? a:b:c:s0\n/x/.* d:e:f:s0\n")
    assert fc.lookup("/x/y") == b"d:e:f:s0" and fc.lookup("/x") == b"a:b:c:s0"


@pytest.mark.parametrize("text,line,reason", [
    ("/ok u:r:t:s0\n/missing\n", 2, "missing fields"),
    ("# c\n\n/x -q u:r:t:s0\n", 3, "invalid file type"),
    ("/x(  u:r:t:s0\n", 1, "invalid regex"),
    ("/caf\xe9 u:r:t:s0\n", 1, "non-ASCII"),
    ("/x u:r:t:s0 extra\n", 1, "invalid file type"),     # 3 fields: the 2nd is the type
])
def test_bad_lines(text, line, reason):
    with pytest.raises(ValueError, match=rf"^fc:{line}: {reason}"):
        FileContexts.from_text(text.encode("latin-1"), "fc")


def test_fields_after_the_third_are_ignored():
    assert FileContexts.from_text("/x -- u:r:t:s0 trailing words\n").lookup("/x", stat.S_IFREG) == b"u:r:t:s0"


def test_load_with_companions(tmp_path):
    path = tmp_path / "file_contexts"
    path.write_text("/.* u:r:default:s0\n/sys(/.*)? u:r:sys:s0\n")
    (tmp_path / "file_contexts.local").write_text("/sys/local u:r:local:s0\n")
    (tmp_path / "file_contexts.subs").write_text("/vendor /sys\n")
    fc = FileContexts.load(path)
    assert fc.lookup("/sys/local") == b"u:r:local:s0"
    assert fc.lookup("/vendor/x") == b"u:r:sys:s0"             # looked up as /sys/x
    assert fc.lookup("/vendorx") == b"u:r:default:s0"          # only whole components
    assert FileContexts.load(path, companions=False).lookup("/sys/local") == b"u:r:sys:s0"
    bad = tmp_path / "bad"
    bad.write_text("/a u:r:t:s0\n/b\n")
    with pytest.raises(ValueError, match=rf"^{bad}:2: "):
        FileContexts.load(bad)


def test_fs_path_and_with_label():
    assert fs_path(b"") == b"/"
    assert fs_path(b"a/b", "/") == b"/a/b"
    assert fs_path(b"a/b", "/vendor/") == b"/vendor/a/b"
    assert fs_path(b"", "vendor") == b"/vendor"
    xs = [(b"security.selinux", b"old\0"), (b"user.a", b"1")]
    assert with_label(xs, b"u:r:new:s0") == [(b"security.selinux", b"u:r:new:s0"), (b"user.a", b"1")]
    assert with_label(xs, None) == [(b"user.a", b"1")]          # <<none>> drops the source's label


def test_indexed_lookup_agrees_with_a_backwards_scan():
    """lookup() indexes specs by literal prefix and joins regexes into alternations; it must pick
    exactly the spec a plain newest-first scan picks (libselinux's own algorithm)."""
    import random
    rnd = random.Random(20240601)
    atoms = ["a", "b", "ab", "/", ".*", "[ab]", "(a|b)", "b?", "a+", "\\.", ".", "(/.*)?",
             "[^/]*", "|", "\\d", "(x)\\1", "[[:digit:]]", "1", "{2}", "[(]", "((a)|b)"]
    kinds = ["", "--", "-d", "-l", "-c"]
    lookups = 0
    for _ in range(300):
        lines = []
        for k in range(rnd.randint(1, 30)):
            regex = "/" + "".join(rnd.choice(atoms) for _ in range(rnd.randint(0, 5)))
            kind = rnd.choice(kinds)
            lines.append(f"{regex} {kind} c{k}" if kind else f"{regex} c{k}")
        try:
            fc = FileContexts.from_text("\n".join(lines))
        except ValueError:
            continue
        for _ in range(40):
            path = "/" + "".join(rnd.choice(["a", "b", "/", "1", ".", "ab", "x", "("])
                                 for _ in range(rnd.randint(0, 6)))
            mode = rnd.choice([0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR])
            assert fc.match(path, mode) is fc.match_slowly(path, mode), (lines, path, mode)
            lookups += 1
    assert lookups > 5000
