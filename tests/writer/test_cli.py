"""Command-line parsing of mkerofs (mkfs.erofs compatible): attached values,
options after positionals, '--', negative values, -E forms, --help,
--version, --quiet, and the error contract for invalid or unimplemented
options (non-zero exit, one line on stderr, no traceback, no image left,
an existing image untouched).

These tests only read the image bytes (superblock and inode table via
support.oracle.ErofsImage); none needs root.
"""
from __future__ import annotations

import os
import re
import stat
import uuid as uuidlib

import pytest

from support.oracle import image_inodes, read_superblock
from support.run import assert_clean_failure, run_mkerofs
from support.trees import FIXED_T, make_full_tree, set_tree_times, write_file

UUID1 = "0123abcd-4567-89ef-0123-456789abcdef"


@pytest.fixture
def small_src(src):
    write_file(src / "a", 100)
    write_file(src / "b", 5000)
    os.mkdir(src / "d")
    write_file(src / "d" / "c", 3)
    os.symlink("a", src / "l")
    set_tree_times(src)
    return src


# ---------------------------------------------------------------------------
# accepted forms
# ---------------------------------------------------------------------------

def test_attached_short_option_values(small_src, image):
    run_mkerofs("-b1024", "-T0", "-Eforce-inode-compact", "-Lxyz", f"-U{UUID1}", "-d2",
                image, small_src)
    sb = read_superblock(image)
    assert sb.block_size == 1024
    assert sb.mkfs_time == 0
    assert sb.label == b"xyz"
    assert sb.uuid == uuidlib.UUID(UUID1).bytes
    inodes = image_inodes(image)
    assert all(not i.extended for i in inodes.values())
    assert all(i.mtime == 0 for i in inodes.values())


def test_separate_short_option_values(small_src, image):
    run_mkerofs("-b", "2048", "-T", "77", "-E", "nosbcrc", "-L", "lbl", "-U", UUID1,
                image, small_src)
    sb = read_superblock(image)
    assert (sb.block_size, sb.mkfs_time, sb.label) == (2048, 77, b"lbl")
    assert not sb.has_sb_checksum


def test_options_after_positionals(small_src, image):
    run_mkerofs(image, small_src, "-b", "512", "-T", "5", "--all-root")
    sb = read_superblock(image)
    assert (sb.block_size, sb.mkfs_time) == (512, 5)
    assert all(i.uid == 0 and i.gid == 0 for i in image_inodes(image).values())


def test_options_between_positionals(small_src, image):
    run_mkerofs("-b", "2048", image, "-T9", small_src, "--force-uid=3")
    sb = read_superblock(image)
    assert (sb.block_size, sb.mkfs_time) == (2048, 9)
    assert {i.uid for i in image_inodes(image).values()} == {3}


def test_double_dash_ends_options(tmp_path, small_src):
    os.rename(small_src, tmp_path / "-src")
    run_mkerofs("-T", "3", "--", "-img.erofs", "-src", cwd=tmp_path)
    img = tmp_path / "-img.erofs"
    assert img.is_file()
    assert read_superblock(img).mkfs_time == 3
    assert b"/d/c" in image_inodes(img)


def test_double_dash_then_option_like_names_are_positionals(tmp_path, small_src):
    os.rename(small_src, tmp_path / "-b")
    run_mkerofs("--", "-T", "-b", cwd=tmp_path)
    assert (tmp_path / "-T").is_file()
    assert read_superblock(tmp_path / "-T").block_size == 4096


def test_lone_dash_is_a_file_name(tmp_path, small_src):
    """getopt treats a lone '-' as a positional: mkfs.erofs writes a file named '-'."""
    os.rename(small_src, tmp_path / "s")
    run_mkerofs("-T1", "-", "s", cwd=tmp_path)
    assert read_superblock(tmp_path / "-").mkfs_time == 1


@pytest.mark.parametrize("args", [["-x", "-1"], ["-x-1"], ["-x", "2"], ["-x0"]])
def test_xattr_tolerance_values(args, small_src, image):
    run_mkerofs(*args, image, small_src)
    assert read_superblock(image).magic == 0xE0F5E1E2


def test_numbers_as_strtoul_base_0(small_src, image):
    """mkfs.erofs reads numbers with strtoull(..., 0): hex and octal work."""
    run_mkerofs("-b", "0x400", "-T0x10", "--force-uid=010", image, small_src)
    sb = read_superblock(image)
    assert (sb.block_size, sb.mkfs_time) == (1024, 16)
    assert {i.uid for i in image_inodes(image).values()} == {8}


@pytest.mark.parametrize("value,bs", [("1k", 1024), ("2K", 2048), ("4k", 4096), ("0x200", 512)])
def test_block_size_suffixes(value, bs, small_src, image):
    """mkfs.erofs parses -b with erofs_mkfs_strtol: k/m/g suffixes work."""
    run_mkerofs("-b", value, image, small_src)
    assert read_superblock(image).block_size == bs


def test_uppercase_uuid_accepted(small_src, image):
    run_mkerofs("-U", UUID1.upper(), image, small_src)
    assert read_superblock(image).uuid == uuidlib.UUID(UUID1).bytes


def _mtimes(image):
    return {i.mtime for p, i in image_inodes(image).items()}


@pytest.mark.parametrize("order,fixed", [(["--mkfs-time", "--all-time"], True),
                                         (["--all-time", "--mkfs-time"], False)])
def test_all_time_mkfs_time_last_one_wins(order, fixed, small_src, image):
    """mkfs.erofs sets c_timeinherit as the options come: the last wins."""
    run_mkerofs("-T", FIXED_T, *order, image, small_src)
    if fixed:
        assert _mtimes(image) == {FIXED_T}
    else:
        mt = _mtimes(image)
        assert FIXED_T not in mt and len(mt) > 1, "per-file mtimes not kept with --mkfs-time"


@pytest.mark.parametrize("order,ignore", [(["--preserve-mtime", "--ignore-mtime"], True),
                                          (["--ignore-mtime", "--preserve-mtime"], False)])
def test_ignore_preserve_mtime_last_one_wins(order, ignore, small_src, image):
    run_mkerofs("-T", FIXED_T, "--mkfs-time", *order, image, small_src)
    mt = _mtimes(image)
    if ignore:
        assert mt == {FIXED_T}, "--ignore-mtime given last was not applied"
    else:
        assert FIXED_T not in mt and len(mt) > 1, "--preserve-mtime given last was not applied"


@pytest.mark.parametrize("order,uid", [(["--all-root", "--force-uid=5"], 5),
                                       (["--force-uid=5", "--all-root"], 0)])
def test_all_root_force_uid_last_one_wins(order, uid, small_src, image):
    """mkfs.erofs: --all-root sets fixed uid/gid 0, --force-uid sets the
    uid; whichever comes last decides the uid."""
    run_mkerofs(*order, image, small_src)
    inodes = image_inodes(image).values()
    assert {i.uid for i in inodes} == {uid}
    assert {i.gid for i in inodes} == {0}


def test_long_option_unique_prefixes(tmp_path, small_src):
    """getopt_long (mkfs.erofs) accepts any unambiguous prefix of a long option."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_mkerofs("-T", FIXED_T, "-U", UUID1, "--all-root", "--exclude-path=d/c",
                "--hard-dereference", a, small_src)
    run_mkerofs("-T", FIXED_T, "-U", UUID1, "--all-ro", "--exclude-p=d/c", "--hard-d",
                b, small_src)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("prefix", ["--exclude=d/c", "--force=1", "--all"])
def test_ambiguous_long_option_prefix_refused(prefix, small_src, image):
    r = run_mkerofs(prefix, image, small_src, check=False)
    assert_clean_failure(r, image=image)


def test_long_options_with_and_without_equals(tmp_path, small_src):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-T", FIXED_T, "-U", UUID1]
    run_mkerofs(*common, "--force-uid=5", "--gid-offset=7", "--exclude-path=d/c", a, small_src)
    run_mkerofs(*common, "--force-uid", "5", "--gid-offset", "7", "--exclude-path", "d/c",
                b, small_src)
    assert a.read_bytes() == b.read_bytes()
    inodes = image_inodes(a)
    assert b"/d/c" not in inodes and b"/d" in inodes
    assert {i.uid for i in inodes.values()} == {5}


@pytest.mark.root          # the full tree has devices and chowned files
def test_noinline_data_same_as_caret_inline_data(tmp_path, src):
    make_full_tree(src)
    imgs = {}
    for name, flags in {"caret": ["-E^inline_data"], "no": ["-Enoinline_data"],
                        "sep": ["-E", "^inline_data"], "default": [],
                        "on": ["-Einline_data"], "off_on": ["-E^inline_data,inline_data"],
                        "on_off": ["-Einline_data", "-Enoinline_data"]}.items():
        img = tmp_path / f"{name}.erofs"
        run_mkerofs("-T", FIXED_T, "-U", UUID1, *flags, img, src)
        imgs[name] = img.read_bytes()
    assert imgs["caret"] == imgs["no"] == imgs["sep"] == imgs["on_off"]
    assert imgs["default"] == imgs["on"] == imgs["off_on"]
    assert imgs["caret"] != imgs["default"]


def test_multiple_extended_options(tmp_path, small_src):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    common = ["-T", FIXED_T, "-U", UUID1]
    run_mkerofs(*common, "-Eforce-inode-extended,nosbcrc,^inline_data", a, small_src)
    run_mkerofs(*common, "-Eforce-inode-extended", "-Enosbcrc", "-E^inline_data", b, small_src)
    run_mkerofs(*common, "-E", "nosbcrc", "-E", "force-inode-extended,noinline_data", c, small_src)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert not read_superblock(a).has_sb_checksum
    inodes = image_inodes(a)
    assert all(i.extended for i in inodes.values())
    assert all(i.layout != 2 for i in inodes.values() if stat.S_ISREG(i.mode))


def test_last_force_inode_option_wins(tmp_path, small_src):
    run_mkerofs("-T1", "-Eforce-inode-extended,force-inode-compact", tmp_path / "c", small_src)
    assert not any(i.extended for i in image_inodes(tmp_path / "c").values())
    run_mkerofs("-T1", "-Eforce-inode-compact", "-Eforce-inode-extended", tmp_path / "e",
                small_src)
    assert all(i.extended for i in image_inodes(tmp_path / "e").values())


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(flag):
    r = run_mkerofs(flag)
    assert r.returncode == 0
    assert "Traceback" not in r.stderr
    for opt in ("-b", "-T", "-U", "-E", "--exclude-path", "--exclude-regex", "--all-root",
                "--force-uid", "--hard-dereference"):
        assert opt in r.stdout, f"{opt} not in --help output"


def test_help_wins_over_other_arguments(tmp_path):
    r = run_mkerofs("-b", "1024", "--help", tmp_path / "img", tmp_path / "nosuchdir")
    assert r.returncode == 0 and "--exclude-path" in r.stdout
    assert not (tmp_path / "img").exists()


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    r = run_mkerofs(flag)
    assert r.returncode == 0
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert re.search(r"\d+\.\d+", lines[0])
    # then each -z algorithm and what serves it (a library and its version, or "unavailable")
    served = dict(l.strip().split(": ", 1) for l in lines[1:])
    assert sorted(served) == sorted(["lz4", "lz4hc", "lzma", "deflate", "libdeflate", "zstd"])
    assert all(v.startswith("unavailable") or re.search(r"\d", v) or ".so" in v
               for v in served.values()), served
    assert r.stderr.strip() == ""


def test_success_writes_nothing_to_stderr(small_src, image):
    """No warnings (e.g. Python FutureWarnings from regex compilation) on a
    successful build."""
    r = run_mkerofs("--exclude-regex=^[[:digit:]]+$", "--exclude-regex=[[:alpha:]]{9}",
                    "--exclude-path=zz", "-E^inline_data", image, small_src)
    assert r.stderr == ""


def test_quiet_prints_nothing(small_src, image):
    r = run_mkerofs("--quiet", image, small_src)
    assert r.stdout == "" and r.stderr == ""
    assert read_superblock(image).magic == 0xE0F5E1E2


@pytest.mark.parametrize("level", ["0", "9"])
def test_debug_levels(level, small_src, image):
    r = run_mkerofs(f"-d{level}", image, small_src)
    assert r.returncode == 0 and image.is_file()


def test_ignored_compat_options_accepted(small_src, image):
    """Options that only matter for features mkerofs does as mkfs.erofs:
    --mount-point, --preserve-mtime, --all-time."""
    run_mkerofs("--mount-point=/system", "--preserve-mtime", image, small_src)
    assert read_superblock(image).magic == 0xE0F5E1E2


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

BAD_OPTIONS = [
    # (id, args, mentions_any)
    ("bs-3000", ["-b", "3000"], ["3000"]),
    ("bs-8192", ["-b8192"], ["8192"]),
    ("bs-65536", ["-b", "65536"], ["65536"]),
    ("bs-256", ["-b", "256"], ["256"]),
    ("bs-0", ["-b", "0"], ["block size", "-b"]),
    ("bs-abc", ["-b", "abc"], ["abc"]),
    ("bs-empty", ["-b", ""], ["block size", "-b"]),
    ("label-16", ["-L", "0123456789abcdef"], ["label", "-L"]),
    ("label-16-utf8", ["-L", "\u00e9" * 8], ["label", "-L"]),
    ("uuid-junk", ["-U", "xyz"], ["xyz"]),
    ("uuid-short", ["-U", "0123abcd-4567-89ef-0123-456789abcde"], ["uuid"]),
    ("uuid-long", ["-U", UUID1 + "0"], ["uuid"]),
    ("uuid-nonhex", ["-U", "0123abcd-4567-89ef-0123-456789abcdeg"], ["uuid"]),
    # libuuid's uuid_parse (mkfs.erofs) takes only the 36-character form
    ("uuid-nohyphens", ["-U", "0123abcd456789ef0123456789abcdef"], ["uuid"]),
    ("uuid-braces", ["-U", "{" + UUID1 + "}"], ["uuid"]),
    ("uuid-urn", ["-U", "urn:uuid:" + UUID1], ["uuid"]),
    ("uuid-space", ["-U", " " + UUID1], ["uuid"]),
    ("E-unknown", ["-Efoo"], ["foo"]),
    ("E-unknown-in-list", ["-Eforce-inode-compact,bar"], ["bar"]),
    ("E-unknown-second", ["-Enosbcrc", "-Ebaz"], ["baz"]),
    ("E-value", ["-Einline_data=1"], ["inline_data"]),
    ("T-junk", ["-T", "abc"], ["abc", "timestamp"]),
    ("T-suffix", ["-T", "12x"], ["12x", "timestamp"]),
    ("T-neg", ["-T", "-1"], ["-1", "timestamp"]),
    ("force-uid-junk", ["--force-uid=abc"], ["abc", "uid"]),
    ("force-uid-neg", ["--force-uid=-1"], ["-1", "uid"]),
    ("force-uid-max", ["--force-uid=4294967295"], ["4294967295", "uid"]),
    ("force-gid-max", ["--force-gid=4294967295"], ["4294967295", "gid"]),
    ("force-gid-junk", ["--force-gid", "1.5"], ["1.5", "gid"]),
    ("uid-offset-junk", ["--uid-offset=x"], ["uid"]),
    ("gid-offset-junk", ["--gid-offset=y"], ["gid"]),
    ("offset-junk", ["--offset=abc"], ["offset", "abc"]),
    ("debug-10", ["-d10"], ["10", "debug"]),
    ("debug-junk", ["-d", "x"], ["debug", "-d"]),
    ("regex-bad", ["--exclude-regex=("], ["regex", "("]),
    ("unknown-long", ["--bogus-option"], ["bogus"]),
    ("unknown-short", ["-q"], ["-q"]),
    ("missing-value", ["@end", "-b"], ["-b"]),
    ("missing-value-long", ["@end", "--force-uid"], ["force-uid"]),
    ("aufs-without-tar", ["--aufs"], ["aufs"]),
    ("sort-without-tar", ["--sort=none"], ["sort"]),
    ("clean-without-images", ["--clean=data"], ["clean"]),
]

# mkfs.erofs options outside mkerofs's scope (for now): refused, never ignored.
# Keep this list to options nobody is implementing, or update it when one lands.
UNIMPLEMENTED = [
    ("oci", ["--oci"], ["oci"]),
    ("gzinfo", ["--gzinfo"], ["gzinfo"]),
]


def _run_bad(args, image, src):
    if args and args[0] == "@end":             # options after the positionals
        return run_mkerofs(image, src, *args[1:], check=False)
    return run_mkerofs(*args, image, src, check=False)


@pytest.mark.parametrize("existing", [False, True], ids=["no-image", "existing-image"])
@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_invalid_option_values(case, existing, small_src, image):
    _, args, mentions_any = case
    before = None
    if existing:
        image.write_bytes(b"precious old image\n" * 100)
        before = image.read_bytes()
    r = _run_bad(args, image, small_src)
    assert_clean_failure(r, mentions_any=mentions_any, image=image, image_before=before)


@pytest.mark.parametrize("case", UNIMPLEMENTED, ids=[c[0] for c in UNIMPLEMENTED])
def test_unimplemented_options_refused(case, small_src, image):
    _, args, mentions_any = case
    r = _run_bad(args, image, small_src)
    assert_clean_failure(r, mentions=["not implemented"], mentions_any=mentions_any, image=image)


def test_unimplemented_option_keeps_existing_image(small_src, image):
    image.write_bytes(b"old")
    r = _run_bad(["--oci"], image, small_src)
    assert_clean_failure(r, mentions=["not implemented"], image=image, image_before=b"old")


def test_valid_15_byte_label_accepted_16_refused(small_src, image):
    run_mkerofs("-L", "0123456789abcde", image, small_src)
    assert read_superblock(image).label == b"0123456789abcde"
    image.unlink()
    r = _run_bad(["-L", "0123456789abcdef"], image, small_src)
    assert_clean_failure(r, mentions_any=["label"], image=image)


@pytest.mark.parametrize("bs", [512, 1024, 2048, 4096])
def test_all_supported_block_sizes_accepted(bs, small_src, image):
    run_mkerofs("-b", bs, image, small_src)
    assert read_superblock(image).block_size == bs


@pytest.mark.parametrize("args", [[], ["only-image.erofs"]], ids=["none", "image-only"])
def test_missing_positionals(args, tmp_path):
    r = run_mkerofs(*args, check=False, cwd=tmp_path)
    assert_clean_failure(r, mentions_any=["image", "source", "missing", "argument"])
    assert os.listdir(tmp_path) == []


def test_extra_positional_refused(tmp_path, small_src, image):
    r = run_mkerofs(image, small_src, small_src, check=False)
    assert_clean_failure(r, image=image)


def test_invalid_source_date_epoch(small_src, image):
    r = run_mkerofs(image, small_src, check=False, env={"SOURCE_DATE_EPOCH": "soon"})
    assert_clean_failure(r, mentions=["SOURCE_DATE_EPOCH"], image=image)


# --exclude-regex against the real thing: glibc's regcomp(REG_EXTENDED) in the C locale
REGEX_NAMES = [b"d1", b"x9", b"ABC", b"abc", b"new\nline", b"tail\n", b"back\\slash",
               b"br]ket", b"dot.txt", b"dotXtxt", b"aa{2}", b"caf\xe9", b"\xff\xfe", b"d",
               b"under_score", b"sp ace", b"aa", b"-dash"]
REGEXES = ["[[:digit:]]", "^r/[[:upper:]]+$", "new.line", "tail$", "[]]", "[\\]", "\\.txt$",
           "a{2}", "(abc|ABC)$", "\\d", "\\w{6}", "^r/[^[:alnum:]/]", "[[:space:]]",
           "^r/.{3}$", "^r/.*e$", "[[:punct:]]", "[^[:print:]]", "^r/(a|d)+$", "x|9", "^r$"]


@pytest.mark.parametrize("rx", REGEXES)
def test_exclude_regex_matches_glibc(rx, src, image):
    from support.oracle import posix_regex_search
    r_dir = os.path.join(os.fsencode(src), b"r")
    os.mkdir(r_dir)
    for nm in REGEX_NAMES:
        write_file(os.path.join(r_dir, nm), 1)
    verdicts = {nm: posix_regex_search(rx, b"r/" + nm) for nm in REGEX_NAMES}
    dir_excluded = posix_regex_search(rx, b"r")
    run_mkerofs(f"--exclude-regex={rx}", image, src)
    present = {p for p in image_inodes(image) if p.startswith(b"/r/")}
    if dir_excluded:
        assert b"/r" not in image_inodes(image)
        return
    expected = {b"/r/" + nm for nm, hit in verdicts.items() if not hit}
    assert present == expected, (f"regex {rx!r}: excluded by mkerofs but not glibc: "
                                 f"{sorted(expected - present)}; excluded by glibc only: "
                                 f"{sorted(present - expected)}")


# ---------------------------------------------------------------------------
# integers, exit statuses and -d9/--debug (the runner shared with mkerofs-read)
# ---------------------------------------------------------------------------

# C syntax, as mkfs.erofs's strtoull(..., 0): test_readcli.py checks mkerofs-read takes the same
OFFSET_FORMS = [("8", 8), ("010", 8), ("0x400", 1024), ("0X400", 1024), ("0", 0)]
BAD_OFFSETS = ["1k", "-1", "junk", "0x", "08", "", "1.5", "0x1g"]


@pytest.mark.parametrize("text,value", OFFSET_FORMS)
def test_offset_in_c_syntax(text, value, small_src, image):
    run_mkerofs(f"--offset={text}", image, small_src)
    data = image.read_bytes()
    assert data[:value] == bytes(value)
    sb = read_superblock(image, value)
    assert sb.magic == 0xE0F5E1E2
    assert len(data) == value + sb.blocks * sb.block_size


@pytest.mark.parametrize("text", BAD_OFFSETS)
def test_offset_refused(text, small_src, image):
    r = _run_bad([f"--offset={text}"], image, small_src)
    assert r.returncode == 2, (r.returncode, r.stderr)
    msg = assert_clean_failure(r, mentions=["--offset", "invalid offset"], image=image)
    assert msg.startswith("mkerofs: ") and msg.endswith("(try 'mkerofs --help')"), msg


@pytest.mark.parametrize("args,check", [
    (["-b1k"], lambda sb, img: sb.block_size == 1024),          # a size: k/m/g taken
    (["-b0x200"], lambda sb, img: sb.block_size == 512),
    (["-b01000"], lambda sb, img: sb.block_size == 512),
    (["-T0x10"], lambda sb, img: sb.mkfs_time == 16),
    (["-T010"], lambda sb, img: sb.mkfs_time == 8),
    (["-T0", "--force-uid=0x3e8", "--force-gid=01750"],
     lambda sb, img: {(i.uid, i.gid) for i in image_inodes(img).values()} == {(1000, 1000)}),
    (["-T0", "--uid-offset=010", "--all-root"],
     lambda sb, img: {i.uid for i in image_inodes(img).values()} == {8}),
], ids=["b1k", "b0x200", "b-octal", "T-hex", "T-octal", "force-ids", "uid-offset-octal"])
def test_numeric_options_in_c_syntax(args, check, small_src, image):
    run_mkerofs(*args, image, small_src)
    assert check(read_superblock(image), image)


@pytest.mark.parametrize("args,what", [
    (["-T1k"], "timestamp"),                    # not a size: no multiplier
    (["--force-uid=1k"], "uid"),
    (["--uid-offset=-1"], "uid offset"),
    (["--workers=0"], "workers"),
    (["-d0x0a"], "debug level"),
    (["--zfeature-bits=0x"], "zfeature"),
])
def test_numeric_options_refused(args, what, small_src, image):
    r = _run_bad(args, image, small_src)
    assert r.returncode == 2
    assert_clean_failure(r, mentions=[what], image=image)


def test_build_error_is_one_line_with_status_1(tmp_path, image):
    r = run_mkerofs(image, tmp_path / "missing", check=False)
    assert r.returncode == 1
    msg = assert_clean_failure(r, mentions=["missing", "does not exist"], image=image)
    assert msg.startswith("mkerofs: ") and "--help" not in msg


def test_os_error_is_one_line_with_status_1(small_src, tmp_path):
    r = run_mkerofs(tmp_path / "no" / "such" / "dir" / "img", small_src, check=False)
    assert r.returncode == 1
    assert_clean_failure(r, mentions=["no/such/dir"])


@pytest.mark.parametrize("flag", [["-d9"], ["-d", "9"], ["--debug"], ["-d011"]],
                         ids=["d9", "d-9", "debug", "d-octal-9"])
def test_debug_shows_the_traceback(flag, tmp_path, image):
    r = run_mkerofs(*flag, image, tmp_path / "missing", check=False)
    assert r.returncode == 1                            # the status does not change
    assert "Traceback" in r.stderr and "BuildError" in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == f"mkerofs: {tmp_path / 'missing'}: source does not exist"


def test_lower_debug_level_keeps_it_short(tmp_path, image):
    r = run_mkerofs("-d8", image, tmp_path / "missing", check=False)
    assert r.returncode == 1
    assert_clean_failure(r, mentions=["does not exist"])


def test_debug_shows_no_traceback_for_usage_errors(small_src, image):
    for args in (["-d9", "--offset=junk"], ["--debug", "-b", "abc"], ["--debug", "--bogus"]):
        r = _run_bad(args, image, small_src)
        assert r.returncode == 2
        assert_clean_failure(r, image=image)
