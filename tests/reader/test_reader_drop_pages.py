"""Image.drop_pages gives the mapped pages back to the kernel (rebuild mode does so once its
layers' metadata is read): the image reads the same afterwards, the resident size goes
down, and a closed image ignores it."""
from __future__ import annotations

import os

from mkerofs.reader import Image
from support.run import run_mkerofs


def _resident_file_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_drop_pages_keeps_contents(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(1 << 22)
    (src / "f").write_bytes(data)
    (src / "g").write_bytes(b"small\n")
    out = tmp_path / "i.erofs"
    run_mkerofs("-Enoinline_data", out, src)
    img = Image.open(out)
    try:
        assert img.read(img.lookup("/f")) == data
        before = _resident_file_kb()
        img.drop_pages()
        assert _resident_file_kb() < before
        assert img.read(img.lookup("/f")) == data
        assert img.read(img.lookup("/g")) == b"small\n"
    finally:
        img.close()
    img.drop_pages()                # (closed: nothing to give back, no error)
