"""mkerofs-read for scripts and people: `info --json`, `ls --json` (checked against `ls -l`
and the superblock), `stats` (text tables and --json), and the progress bars of `extract` and
`verify` (on a terminal only, never with -q)."""
from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from support.run import build_image
from support.terminal import run_on_terminal
from support.trees import make_full_tree, write_file

from reader.test_readcli import run_read

UUID = "12345678-1234-5678-1234-567812345678"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    work = tmp_path_factory.mktemp("readjson")
    src = work / "src"
    make_full_tree(src)
    built = {}
    for name, opts in {"plain": [], "lz4": ["-zlz4"], "zstd-ztail": ["-zzstd", "-Eztailpacking"]
                       }.items():
        image = work / f"{name}.erofs"
        build_image(image, src, "-T1700000000", "--mkfs-time", "-U", UUID, "-Ljson", *opts)
        built[name] = image
    return src, built


def test_info_json(images):
    _src, built = images
    for image in built.values():
        info = json.loads(run_read("info", "--json", image).stdout)
        assert info["image_bytes"] == os.path.getsize(image) == info["blocks"] * info["block_size"]
        assert (info["uuid"], info["label"], info["build_time"], info["checksum"]) == \
            (UUID, "json", 1700000000, "ok")
        assert "sb_csum" in info["features"]
        text = run_read("info", image).stdout
        assert f"inodes:         {info['inodes']}" in text
    assert json.loads(run_read("info", "--json", built["lz4"]).stdout)["algorithms"] == ["lz4"]
    assert json.loads(run_read("info", "--json", built["plain"]).stdout)["algorithms"] == []


def _ls_l_lines(image) -> dict[str, tuple[list[str], str | None]]:
    """`ls -R -l --full-time`: each line's fields and symlink target, by path."""
    rows = {}
    for line in run_read("ls", "-R", "-l", "--full-time", image).stdout.splitlines():
        line, _arrow, target = line.partition(" -> ")
        fields = line.split(maxsplit=7)
        if fields[0].startswith(("c", "b")):        # 'major, minor': one more field
            fields = line.split(maxsplit=8)
            fields[4:6] = [fields[4] + " " + fields[5]]
        rows[fields[7]] = (fields, target if _arrow else None)
    return rows


@pytest.mark.parametrize("name", ["plain", "lz4"])
def test_ls_json_agrees_with_ls_l(images, name):
    _src, built = images
    image = built[name]
    entries = json.loads(run_read("ls", "--json", "-R", image).stdout)
    long = _ls_l_lines(image)
    assert [e["path"] for e in entries] == list(long)
    for e in entries:
        fields, target = long[e["path"]]
        mode_type = {"file": stat.S_IFREG, "directory": stat.S_IFDIR, "symlink": stat.S_IFLNK,
                     "char_device": stat.S_IFCHR, "block_device": stat.S_IFBLK,
                     "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK}[e["type"]]
        assert stat.filemode(mode_type | e["mode"]) == fields[0]
        assert [str(e["nlink"]), str(e["uid"]), str(e["gid"])] == fields[1:4]
        if "major" in e:
            assert fields[4] == f"{e['major']}, {e['minor']}"
        else:
            assert fields[4] == str(e["size"])
        assert fields[6].endswith(f".{e['mtime_nsec']:09d}")
        assert e.get("target") == target
    # one directory: names, not paths
    top = json.loads(run_read("ls", "--json", image).stdout)
    assert sorted(e["path"] for e in top) == sorted(
        p[1:] for p in long if p.count("/") == 1)
    one = json.loads(run_read("ls", "--json", image, "/files/text").stdout)
    assert len(one) == 1 and one[0]["type"] == "file" and one[0]["size"] == 5000


def test_stats_tables_and_json(images):
    src, built = images
    for image in built.values():
        found = json.loads(run_read("stats", "--json", image).stdout)
        info = json.loads(run_read("info", "--json", image).stdout)
        assert found["inodes"]["total"] == info["inodes"]
        files = found["inodes"]["file"]
        assert sum(b["files"] for b in found["file_sizes"]) == files
        assert sum(a["files"] for a in found["data"]["algorithms"].values()) == files
        text = run_read("stats", image).stdout
        assert "regular file sizes:" in text and "data by algorithm:" in text
        total = [l.split() for l in text.splitlines() if l.strip().startswith("total ")]
        assert total[0] == ["total", str(info["inodes"])]           # the inodes table
        assert total[1][1:4] == [str(files), str(found["data"]["bytes_in"]),
                                           str(found["data"]["bytes_out"])]
    lz4 = json.loads(run_read("stats", "--json", built["lz4"]).stdout)["data"]["algorithms"]
    assert lz4["lz4"]["bytes_out"] < lz4["lz4"]["bytes_in"]
    assert json.loads(run_read("stats", "--json", built["plain"]).stdout)["data"][
        "algorithms"].keys() == {"none"}


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    """An image that takes extract and verify a moment: many files, zstd."""
    work = tmp_path_factory.mktemp("bars")
    src = work / "src"
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(100):
            write_file(src / f"d{d}" / f"f{f}", 20000, pattern=b"%d %d\n" % (d, f))
    image = work / "big.erofs"
    build_image(image, src, "--quiet", "-T0", "-zzstd")
    return work, image


def read_cmd(*args) -> list:
    return [sys.executable, "-m", "mkerofs.cli.read", *map(str, args)]


def test_extract_and_verify_bars_on_a_terminal(big_image):
    work, image = big_image
    status, out, terminal = run_on_terminal(read_cmd("extract", image, work / "x1"))
    assert status == 0 and b"extracting" in terminal and b"entries" in terminal, terminal
    assert b"extracted 2021 entries" in out
    status, out, terminal = run_on_terminal(read_cmd("verify", image))
    assert status == 0 and b"verifying" in terminal and b"inodes" in terminal, terminal
    assert b"clean" in out


def test_no_bars_when_quiet_or_piped(big_image):
    work, image = big_image
    status, out, terminal = run_on_terminal(read_cmd("extract", "-q", image, work / "x2"))
    assert (status, out, terminal) == (0, b"", b"")
    status, out, terminal = run_on_terminal(read_cmd("verify", "-q", image))
    assert (status, out, terminal) == (0, b"", b"")
    r = run_read("extract", image, work / "x3")
    assert r.stderr == "" and "extracted" in r.stdout
    assert run_read("verify", image).stderr == ""
