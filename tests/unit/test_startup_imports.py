"""What a build loads: the modules a run of the command line imports are part of every row's
start-up time and of its peak RSS, so what a given build does not use stays unloaded (the
codecs and their native libraries without -z, the tar decoders for a plain tar, tempfile
without a spool, the index code without -z or a report, tqdm without a bar, multiprocessing
without compression workers)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile

import pytest

from support.run import REPO, mkerofs_env
from support.trees import write_files

from mkerofs.util import create_exclusive
from mkerofs.writer.decompress import DECODE_ERRORS, DecodeError, open_input

# run main() as `python -m mkerofs` does, then list the modules loaded since start-up
_LIST_MODULES = """
import sys
before = set(sys.modules)
from mkerofs.cli.mkfs import main
code = main(sys.argv[1:])
import json
print(json.dumps([code, sorted(set(sys.modules) - before)]))
"""

NOT_FOR_A_PLAIN_BUILD = {"tempfile", "shutil", "random", "bz2", "lzma", "gzip", "zstandard",
                         "lz4", "multiprocessing", "concurrent.futures", "tqdm", "hashlib",
                         "tarfile", "mkerofs.ondisk.index", "mkerofs.writer.compress",
                         "mkerofs.writer.workers", "mkerofs.codecs.registry"}


def modules_of_a_build(args: list[str], stdin=None) -> set[str]:
    r = subprocess.run([sys.executable, "-c", _LIST_MODULES, *args], env=mkerofs_env(),
                       cwd=REPO, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    code, loaded = json.loads(r.stdout.splitlines()[-1])
    assert code == 0, r.stderr
    return set(loaded)


@pytest.fixture
def tree(tmp_path):
    return write_files(tmp_path / "tree", {"a/hello.txt": b"hello\n" * 1000,
                                           "b": os.urandom(10000)})


def test_a_directory_build_without_z_loads_no_codec_nor_tempfile(tree, tmp_path):
    loaded = modules_of_a_build(["-T0", "--quiet", str(tmp_path / "img"), str(tree)])
    assert "mkerofs.writer.build" in loaded            # the listing does see the build
    assert sorted(loaded & NOT_FOR_A_PLAIN_BUILD) == []
    assert not [m for m in loaded if m.startswith("mkerofs.codecs")]


def test_a_chunked_build_loads_no_codec_nor_tempfile(tree, tmp_path):
    loaded = modules_of_a_build(["-T0", "--quiet", "--chunksize=1048576",
                                 str(tmp_path / "img"), str(tree)])
    assert "mkerofs.writer.chunks" in loaded
    assert sorted(loaded & NOT_FOR_A_PLAIN_BUILD) == []


def test_a_plain_tar_read_in_place_loads_no_decoder(tree, tmp_path):
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        t.add(tree, arcname=".")
    with open(tar, "rb") as stdin:
        loaded = modules_of_a_build(["--tar=f", "--aufs", "--quiet", "-Enoinline_data",
                                     "-U", "00000000-0000-0000-0000-000000000000",
                                     str(tmp_path / "img")], stdin)
    assert "mkerofs.writer.decompress" in loaded
    assert sorted(loaded & (NOT_FOR_A_PLAIN_BUILD - {"tarfile"})) == []


def test_a_compressed_build_does_load_what_it_needs(tree, tmp_path):
    """The other side: the lazy imports still happen where they are needed."""
    loaded = modules_of_a_build(["-T0", "--quiet", "-zlz4", "--report",
                                 str(tmp_path / "r.json"), str(tmp_path / "img"), str(tree)])
    assert {"mkerofs.writer.compress", "mkerofs.ondisk.index"} <= loaded
    # forked workers (or one in this process): no thread pool, so no concurrent.futures and
    # the logging it brings
    assert not loaded & {"concurrent.futures", "logging"}
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["data"]["algorithms"]) == {"lz4", "none"}       # hello.txt, b


# -- what replaced the imports -------------------------------------------------------------

def test_create_exclusive_makes_a_new_private_file(tmp_path):
    fd, path = create_exclusive(str(tmp_path), ".img.", ".tmp")
    try:
        name = os.path.basename(path)
        assert os.path.dirname(path) == str(tmp_path)
        assert name.startswith(".img.") and name.endswith(".tmp") and len(name) > 9
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600 & ~_umask()
        os.write(fd, b"x")
        assert os.pread(fd, 1, 0) == b"x"                  # open for reading and writing
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    fd2, path2 = create_exclusive(str(tmp_path), ".img.", ".tmp")
    os.close(fd2)
    assert path2 != path


def test_create_exclusive_never_opens_an_existing_name(tmp_path, monkeypatch):
    taken = tmp_path / ".p.000000000000.s"
    taken.write_bytes(b"keep")
    draws = iter([bytes(6), bytes(6), b"\1" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    fd, path = create_exclusive(str(tmp_path), ".p.", ".s")
    os.close(fd)
    assert path == str(tmp_path / ".p.010101010101.s")
    assert taken.read_bytes() == b"keep"


def test_create_exclusive_reports_a_folder_that_refuses(tmp_path):
    with pytest.raises(OSError):
        create_exclusive(str(tmp_path / "missing"), "p", "s")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("kind,payload", [
    ("xz", bytes.fromhex("fd377a585a000004e6d6b4460200210116000000742fe5a3") + b"\0" * 64),
    ("zstd", bytes.fromhex("28b52ffd0458") + b"\xff" * 64),
])
def test_a_damaged_stream_raises_what_decode_errors_names(tmp_path, kind, payload):
    """lzma's and zstandard's own errors come out as DecodeError (a ValueError), so the tar
    reader can name them without importing those modules up front."""
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with open_input(str(path)) as inp:
        assert inp.kind == kind
        with pytest.raises(DecodeError) as caught:
            while inp.stream.read(1 << 16):
                pass
    assert isinstance(caught.value, DECODE_ERRORS)
    assert type(caught.value.__cause__).__name__ == {"xz": "LZMAError", "zstd": "ZstdError"}[kind]
    assert str(caught.value) == str(caught.value.__cause__)            # its text unchanged
