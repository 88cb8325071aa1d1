"""Tars mkerofs must refuse: a damaged header (checksum, a bad number, a bad PAX record length),
an archive cut short anywhere, a hard link to nothing or to a later entry, a file used as a
directory, a name component over 255 bytes, an unknown entry type, a device without numbers.

Each, from a file and from stdin, must end with a non-zero exit, one line on stderr naming the
entry and its byte offset in the tar, no traceback, no image under the final name (nor a
pre-existing one changed) and no temporary file left, neither beside the image nor in TMPDIR.
A TMPDIR too small for the data spooled from stdin is a clear error naming it.

mkfs.erofs 1.9.3 differs: it leaves IMAGE behind on failure (a 2 TiB sparse file was seen), ends
the archive silently at a device without numbers (keeping what came before, exit 0), and treats
a stream cut at a header boundary as a clean end.
"""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from support.mounts import tmpfs_mount
from support.run import assert_clean_failure, leftovers, run_mkerofs
from support.tars import END, entry, header, pax
from support.trees import write_file

BASE = ("--tar=f", "-T", "1000000000", "--mkfs-time", "-Uclear")
FIRST = entry(b"first", b"abc")         # bytes 0..1023: the victim's header is at byte 1024


def flipped(block: bytes, at: int) -> bytes:
    return block[:at] + bytes([block[at] ^ 1]) + block[at + 1:]


BAD_TARS = {
    # name: (tar bytes, words the message must hold)
    "checksum": (FIRST + flipped(header(b"second_entry"), 136) + END,
                 ["second_entry", "1024", "checksum"]),
    "bad-number": (FIRST + header(b"victim", fields={"uid": b"12x4567\0"}) + END,
                   ["victim", "1024", "uid"]),
    "bad-size": (FIRST + header(b"victim", fields={"size": b"1_2\0"}) + END, ["victim", "1024"]),
    "bad-pax-length": (FIRST + entry(b"PaxHeader", b"99 path=x\n", typeflag=b"x") +
                       entry(b"after_pax") + END, ["1024", "length"]),
    "unknown-type": (FIRST + entry(b"odd_type", typeflag=b"Z") + END, ["odd_type", "1024"]),
    "long-component": (FIRST + pax([(b"path", b"dir/" + b"n" * 256)]) + entry(b"x") + END,
                       ["1024", "255"]),
    "hardlink-to-nothing": (FIRST + entry(b"the_link", typeflag=b"1", linkname=b"missing_target")
                            + END, ["the_link", "missing_target", "1024"]),
    "forward-hardlink": (entry(b"the_link", typeflag=b"1", linkname=b"later_target") +
                         entry(b"later_target", b"tt") + END, ["the_link", "later_target", "at byte 0"]),
    "file-as-directory": (FIRST + entry(b"first/inside") + END, ["first/inside", "1024"]),
    "device-without-numbers": (FIRST + entry(b"cdev", typeflag=b"3", devmajor=bytes(8),
                                             devminor=bytes(8)) +
                               entry(b"b") + END, ["cdev", "1024"]),
}


def run_bad(tmp_path: Path, data: bytes, via: str, *opts, env=None):
    """Build from ``data``; returns (result, image path). TMPDIR is a fresh folder that must stay
    empty, so a temporary file left there is seen."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = {"TMPDIR": str(tmpdir), **(env or {})}
    image = tmp_path / "out.erofs"
    if via == "stdin":
        r = run_mkerofs(*BASE, *opts, image, input=data, check=False, env=env)
    else:
        (tmp_path / "in.tar").write_bytes(data)
        r = run_mkerofs(*BASE, *opts, image, tmp_path / "in.tar", check=False, env=env)
    assert leftovers(tmpdir) == [], "temporary files left in TMPDIR"
    return r, image


@pytest.mark.parametrize("via", ["file", "stdin"])
@pytest.mark.parametrize("case", list(BAD_TARS))
def test_bad_tar(case, via, tmp_path):
    data, words = BAD_TARS[case]
    r, image = run_bad(tmp_path, data, via)
    assert_clean_failure(r, mentions=words, image=image)
    assert leftovers(tmp_path, keep={"in.tar", "tmpdir"}) == []


def test_existing_image_is_left_alone(tmp_path):
    data, words = BAD_TARS["checksum"]
    before = os.urandom(8192)
    (tmp_path / "out.erofs").write_bytes(before)
    r, image = run_bad(tmp_path, data, "file")
    assert_clean_failure(r, mentions=words, image=image, image_before=before)


@pytest.fixture(scope="module")
def real_tar(tmp_path_factory) -> tuple[bytes, list[tarfile.TarInfo]]:
    """A GNU tar posix archive of a few files (PAX headers for the long name and the ns mtimes)."""
    d = tmp_path_factory.mktemp("trunc")
    src = d / "src"
    src.mkdir()
    write_file(src / "small", 100)
    write_file(src / "big", 70_000)
    (src / ("long" * 40)).mkdir()
    write_file(src / ("long" * 40) / "inner", 5000)
    subprocess.run(["tar", "--format=posix", "-cf", str(d / "t.tar"), "-C", str(src), "."],
                   check=True)
    raw = (d / "t.tar").read_bytes()
    with tarfile.open(d / "t.tar") as t:
        members = t.getmembers()
    return raw, members


@pytest.mark.parametrize("via", ["file", "stdin"])
@pytest.mark.parametrize("where", ["in-pax-header", "in-header", "in-data", "in-padding",
                                   "before-end-marker", "in-end-marker"])
def test_truncated_tar(where, via, real_tar, tmp_path):
    raw, members = real_tar
    big = next(m for m in members if m.name.endswith("/big"))
    inner = next(m for m in members if m.name.endswith("/inner"))
    last = members[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    cut = {"in-pax-header": inner.offset + 600,         # inside the PAX payload (long name)
           "in-header": big.offset_data - 300,
           "in-data": big.offset_data + 30_000,
           "in-padding": big.offset_data + big.size + 10,
           "before-end-marker": end,
           "in-end-marker": end + 100}[where]
    assert inner.offset_data - inner.offset > 1024, "the long name needs a PAX header"
    r, image = run_bad(tmp_path, raw[:cut], via)
    # a header cut short cannot name its own entry: the offset says where
    named = {"in-data": "big", "in-padding": "big"}.get(where)
    assert_clean_failure(r, mentions=["at byte"] + ([named] if named else []), image=image)


@pytest.mark.root
def test_full_tmpdir_while_spooling_stdin(tmp_path, as_root):
    """Data read from stdin is spooled to TMPDIR until the image is laid out: a TMPDIR that fills
    up must give an error naming it (or the spool), with no image and no spool file left."""
    src = tmp_path / "src"
    src.mkdir()
    write_file(src / "big", 4 << 20)
    subprocess.run(["tar", "--format=posix", "-cf", str(tmp_path / "t.tar"), "-C", str(src), "."],
                   check=True)
    image = tmp_path / "out.erofs"
    with tmpfs_mount("1m") as spool:
        r = run_mkerofs(*BASE, image, input=(tmp_path / "t.tar").read_bytes(), check=False,
                        env={"TMPDIR": str(spool)})
        assert_clean_failure(r, mentions_any=[str(spool), "TMPDIR", "spool"], image=image)
        assert leftovers(spool) == [], "the spool file was left in TMPDIR"


def test_help_mentions_tar():
    """containerd's SupportGenerateFromTar greps the help for --tar=."""
    r = run_mkerofs("--help")
    assert r.returncode == 0 and "--tar=" in r.stdout
