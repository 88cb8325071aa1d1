"""The build report (`mkerofs --report`, `build().report`), the end-of-build summary and the
progress bar: the report's numbers checked against the image file, the source tree and what
`mkerofs-read stats` reads back; the bar shown on a terminal only, never with --quiet."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest

from support.run import mkerofs_command, mkerofs_env, run_mkerofs
from support.terminal import run_on_terminal
from support.trees import write_file

import mkerofs
from mkerofs import BuildOptions, build

REPORT_KEYS = {"report_version", "image", "options", "uuid", "block_size", "blocks",
               "image_bytes", "metadata_blocks", "inodes", "data", "dedupe", "fragments",
               "phases", "seconds", "peak_rss_bytes", "peak_rss_workers_bytes", "increment"}
TYPES = {"file", "directory", "symlink", "char_device", "block_device", "fifo", "socket",
         "total"}
UUID = "6b8b4567-327b-23c6-643c-986966334873"


def read_cmd(*args) -> list:
    return [sys.executable, "-m", "mkerofs.cli.read", *map(str, args)]


def run_read_json(*args) -> dict | list:
    r = subprocess.run(read_cmd(*args), env=mkerofs_env(), capture_output=True, check=True)
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Files of several sizes, duplicates (for dedupe and fragment sharing), a hard link,
    symlinks, a fifo, nested directories."""
    root = tmp_path_factory.mktemp("report") / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    write_file(root / "text", 40000, pattern=b"the quick brown fox\n")
    write_file(root / "a" / "copy-of-text", 40000, pattern=b"the quick brown fox\n")
    write_file(root / "a" / "random", 70000)
    write_file(root / "a" / "b" / "small", 100, pattern=b"x")
    write_file(root / "a" / "b" / "small-twin", 100, pattern=b"x")
    write_file(root / "zero", 0)
    os.link(root / "a" / "random", root / "random-link")
    os.symlink("text", root / "link")
    os.symlink("a/b", root / "dirlink")
    os.mkfifo(root / "fifo")
    return root


def source_counts(root) -> dict[str, int]:
    """Inodes of the tree by type, each inode once (hard links), the root included."""
    names = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
             stat.S_IFIFO: "fifo", stat.S_IFCHR: "char_device", stat.S_IFBLK: "block_device",
             stat.S_IFSOCK: "socket"}
    counts = dict.fromkeys(TYPES, 0)
    seen = set()
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        counts[names[stat.S_IFMT(st.st_mode)]] += 1
        counts["total"] += 1
    return counts


def data_rows(data: dict) -> dict:
    """{algorithm: (files, bytes in, bytes out)} of a report's or stats' "data"."""
    return {k: (v["files"], v["bytes_in"], v["bytes_out"]) for k, v in data["algorithms"].items()}


@pytest.mark.parametrize("opts", [[], ["-zlz4hc", "-Ededupe"], ["-zlz4", "-Efragments"],
                                  ["-zzstd", "-b1024", "-Eztailpacking"]],
                         ids=["plain", "lz4hc-dedupe", "lz4-fragments", "zstd-1k-ztail"])
def test_report_agrees_with_the_image_and_the_tree(tree, tmp_path, opts):
    image = tmp_path / "out.erofs"
    report_file = tmp_path / "report.json"
    run_mkerofs("--quiet", "-T0", "-U", UUID, f"--report={report_file}", *opts, image, tree)
    report = json.loads(report_file.read_text())
    assert set(report) == REPORT_KEYS
    assert report["report_version"] == 1
    assert report["uuid"] == UUID and report["options"]["uuid"] == UUID
    assert report["image_bytes"] == os.path.getsize(image)
    assert report["blocks"] * report["block_size"] == report["image_bytes"]
    assert 0 < report["metadata_blocks"] <= report["blocks"]
    assert report["inodes"] == source_counts(tree)
    # the reader finds the same numbers in the image
    info = run_read_json("info", "--json", image)
    assert (info["blocks"], info["block_size"], info["inodes"], info["uuid"]) == \
        (report["blocks"], report["block_size"], report["inodes"]["total"], UUID)
    found = run_read_json("stats", "--json", image)
    assert found["inodes"] == report["inodes"]
    assert data_rows(found["data"]) == data_rows(report["data"])
    assert found["data"]["bytes_in"] == report["data"]["bytes_in"] == \
        sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink()
            and f.name != "random-link")
    if opts:
        algorithm = opts[0][2:].replace("hc", "")
        assert report["data"]["algorithms"][algorithm]["files"] > 0
        assert report["options"]["compressor"] == opts[0][2:]
    else:
        assert set(report["data"]["algorithms"]) == {"none"}
    assert set(report["phases"]) >= {"walk", "plan", "write", "finish"}
    assert all(seconds >= 0 for seconds in report["phases"].values())
    assert report["peak_rss_bytes"] > 10 << 20


def test_dedupe_and_fragment_savings_are_counted(tree, tmp_path):
    report_file = tmp_path / "r.json"
    run_mkerofs("--quiet", "-T0", "-zlz4hc", "-Ededupe", f"--report={report_file}",
                tmp_path / "d.erofs", tree)
    deduped = json.loads(report_file.read_text())["dedupe"]
    # text and copy-of-text compress to identical clusters: all but the first are shared
    assert deduped["bytes"] > 0 and deduped["blocks"] > 0
    assert deduped["bytes_saved"] == deduped["blocks"] * 4096
    run_mkerofs("--quiet", "-T0", "-zlz4hc", "-Efragments", f"--report={report_file}",
                tmp_path / "f.erofs", tree)
    fragments = json.loads(report_file.read_text())["fragments"]
    # small and small-twin are whole-file fragments stored once
    assert fragments["shared_bytes"] >= 100
    assert fragments["bytes"] > 0
    run_mkerofs("--quiet", "-T0", f"--report={report_file}", tmp_path / "p.erofs", tree)
    plain = json.loads(report_file.read_text())
    assert plain["dedupe"]["bytes"] == 0 and plain["fragments"] == {"bytes": 0,
                                                                    "shared_bytes": 0}


def test_chunks_stored_once_are_counted_as_deduplicated(tmp_path):
    """--chunksize: a chunk found stored already counts as deduplicated bytes, and the image is
    smaller by exactly the blocks the report says were saved."""
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(5 * 4096 + 100)
    (src / "a").write_bytes(payload)
    (src / "b").write_bytes(payload)
    report_file = tmp_path / "r.json"
    sizes = {}
    for name, extra in (("dedupe", []), ("nodedupe", ["-E^dedupe"])):
        run_mkerofs("--quiet", "-T0", "--chunksize=4096", *extra, f"--report={report_file}",
                    tmp_path / f"{name}.erofs", src)
        sizes[name] = (tmp_path / f"{name}.erofs").stat().st_size
        deduped = json.loads(report_file.read_text())["dedupe"]
        if name == "dedupe":
            assert deduped["bytes"] == len(payload) and deduped["blocks"] == 6
        else:
            assert deduped == {"bytes": 0, "blocks": 0, "bytes_saved": 0}
    assert sizes["nodedupe"] - sizes["dedupe"] == 6 * 4096


def test_report_to_stdout_leaves_the_summary_on_stderr(tree, tmp_path):
    r = run_mkerofs("-T0", "--report=-", tmp_path / "o.erofs", tree)
    report = json.loads(r.stdout)            # nothing but the JSON on stdout
    assert report["image_bytes"] == os.path.getsize(tmp_path / "o.erofs")
    assert f"Filesystem total blocks: {report['blocks']} (of 4096-byte blocks)" in r.stderr
    quiet = run_mkerofs("-T0", "--report=-", "--quiet", tmp_path / "q.erofs", tree)
    assert json.loads(quiet.stdout)["blocks"] == report["blocks"] and quiet.stderr == ""


def test_unwritable_report_fails_before_the_build(tree, tmp_path):
    image = tmp_path / "o.erofs"
    r = run_mkerofs("-T0", f"--report={tmp_path / 'missing' / 'r.json'}", image, tree,
                    check=False)
    assert r.returncode == 1 and "missing/r.json" in r.stderr and "Traceback" not in r.stderr
    assert not image.exists()                # nothing was built


def test_report_of_a_failed_build_is_not_left_behind(tmp_path):
    old = tmp_path / "old.json"
    old.write_text("kept")
    for report in (tmp_path / "new.json", old):
        r = run_mkerofs("-T0", f"--report={report}", tmp_path / "o.erofs",
                        tmp_path / "no-such-dir", check=False)
        assert r.returncode == 1
    assert not (tmp_path / "new.json").exists() and old.read_text() == "kept"


def test_summary_like_mkfs_erofs(tree, tmp_path):
    r = run_mkerofs("-T0", "-U", UUID, "-zlz4hc", "-Ededupe", tmp_path / "s.erofs", tree)
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Build completed: ")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    blocks = os.path.getsize(tmp_path / "s.erofs") // 4096
    assert fields["Filesystem UUID"] == UUID
    assert fields["Filesystem total blocks"] == f"{blocks} (of 4096-byte blocks)"
    assert fields["Filesystem total inodes"] == str(source_counts(tree)["total"])
    assert 0 < int(fields["Filesystem total metadata blocks"]) <= blocks
    assert int(fields["Filesystem total deduplicated bytes (of source files)"]) > 0


def test_python_api_returns_the_report(tree, tmp_path):
    result = build(tmp_path / "api.erofs", tree, BuildOptions(timestamp=0, uuid=bytes(16),
                                                              compressor="lz4"))
    report = result.report
    assert report.to_dict()["image_bytes"] == result.size == os.path.getsize(tmp_path / "api.erofs")
    assert report.inodes == source_counts(tree)
    assert report.uuid == "00000000-0000-0000-0000-000000000000"
    assert mkerofs.BuildReport is type(report)


def test_tar_input_reports_its_phase(tmp_path):
    src = tmp_path / "t"
    src.mkdir()
    write_file(src / "f", 5000)
    with tarfile.open(tmp_path / "t.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=".")
    r = run_mkerofs("--tar=f", "--quiet", "--report=-", tmp_path / "t.erofs",
                    input=(tmp_path / "t.tar").read_bytes())
    report = json.loads(r.stdout)
    assert "tar" in report["phases"] and "walk" not in report["phases"]
    assert report["inodes"]["file"] == 1 and report["inodes"]["directory"] == 1
    assert report["options"]["tar"]["mode"] == "f"


# ---------------------------------------------------------------------------
# the progress bar

@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory):
    """Enough data for a build to take a second or so with -zlzma on one worker."""
    root = tmp_path_factory.mktemp("slow") / "src"
    root.mkdir()
    for i in range(6):
        write_file(root / f"f{i}", 1 << 20)
    return root


def test_progress_bar_on_a_terminal(slow_tree, tmp_path):
    status, out, terminal = run_on_terminal(
        mkerofs_command() + ["-T0", "-zlzma", "--workers=1", tmp_path / "p.erofs", slow_tree])
    assert status == 0, terminal
    text = terminal.decode("utf-8", "replace")
    assert "compressing and writing" in text and "%|" in text, text[-2000:]
    assert "B/s" in text                    # a rate (and an ETA once it knows one)
    assert b"Build completed" in out        # the summary stays on stdout


def test_no_progress_bar_when_quiet_or_piped(slow_tree, tmp_path):
    status, out, terminal = run_on_terminal(
        mkerofs_command() + ["--quiet", "-T0", "-zlzma", "--workers=1", tmp_path / "q.erofs",
                             slow_tree])
    assert status == 0 and terminal == b"" and out == b""
    r = run_mkerofs("-T0", "-zlzma", "--workers=1", tmp_path / "r.erofs", slow_tree)
    assert r.stderr == ""                   # stderr a pipe: no bar
    assert "Build completed" in r.stdout
