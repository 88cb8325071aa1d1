"""mkerofs --tar with compression: files go to the compression workers as the tar is read
(CompressionPool.offer), before the tree is final.  A later entry can still drop an offered
file (the same path again, a directory or a whiteout in its place, --exclude-path): the pool
then discards its result.  The image must not depend on it: byte-identical to a build with
one worker (no early offers), every file read back as the tar's last entry has it."""
from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from mkerofs.reader import Image
from mkerofs.reader.extract import extract
from support.run import run_mkerofs

T = 1_700_000_000


def _payload(tag: str, size: int) -> bytes:
    line = f"{tag}: compressible line of text\n".encode()
    return (line * (size // len(line) + 1))[:size]


def _tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = T, 0o644
            if what is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(what, tuple):
                info.type, info.linkname = tarfile.LNKTYPE, what[1]
                tf.addfile(info)
            else:
                info.size = len(what)
                tf.addfile(info, io.BytesIO(what))
    return buf.getvalue()


ENTRIES = [
    ("a", _payload("a1", 40000)),
    ("b", _payload("b1", 30000)),
    ("d/x", _payload("dx", 25000)),
    ("e", _payload("e1", 20000)),
    ("k", _payload("k", 20000)),
    ("k2", ("link", "k")),
    ("ex", _payload("ex", 20000)),
    ("a", _payload("a2", 35000)),           # replaces a
    ("b/", None),                           # a directory in place of the file b
    ("b/c", _payload("bc", 20000)),
    ("d", _payload("d", 22000)),            # a file in place of the directory d (and d/x)
    (".wh.e", b""),                         # --aufs: a whiteout in place of e
    ("tail", _payload("tail", 50000)),
]
EXPECTED = {"a": _payload("a2", 35000), "b/c": _payload("bc", 20000),
            "d": _payload("d", 22000), "k": _payload("k", 20000), "k2": _payload("k", 20000),
            "tail": _payload("tail", 50000)}


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_dropped_offers_change_nothing(source, tmp_path):
    data = _tar(ENTRIES)
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(data)
    images = {}
    for workers in (1, 2):
        image = tmp_path / f"w{workers}.erofs"
        args = ["--tar=f", "--aufs", "-zlz4hc", f"--workers={workers}", "--exclude-path=ex",
                "-T", str(T), "--mkfs-time", "-Uclear", image]
        if source == "file":
            run_mkerofs(*args, tarball)
        else:
            run_mkerofs(*args, input=data)
        images[workers] = image.read_bytes()
    assert images[1] == images[2]
    out = tmp_path / "x"
    with Image.open(tmp_path / "w2.erofs") as img:
        extract(img, out)
    for name, content in EXPECTED.items():
        assert (out / name).read_bytes() == content, name
    assert not (out / "ex").exists() and not (out / "d").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "d", "e", "k", "k2", "tail"]
    r = subprocess.run(["fsck.erofs", str(tmp_path / "w2.erofs")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_whole_batch_of_offers_dropped(tmp_path):
    """More files than one batch of offers takes, all replaced later: the workers let go of
    every result of the first batch (CompressionPool.discard_offers -> forget)."""
    names = [f"f{i:03d}" for i in range(300)]
    data = _tar([(n, _payload(n + "-old", 9000)) for n in names]
                + [(n, _payload(n + "-new", 7000)) for n in names])
    images = {}
    for workers in (1, 2):
        image = tmp_path / f"w{workers}.erofs"
        run_mkerofs("--tar=f", "-zlz4hc", f"--workers={workers}", "-T", str(T), "-Uclear",
                    image, input=data)
        images[workers] = image.read_bytes()
    assert images[1] == images[2]
    out = tmp_path / "x"
    with Image.open(tmp_path / "w2.erofs") as img:
        extract(img, out)
    for n in names:
        assert (out / n).read_bytes() == _payload(n + "-new", 7000), n
