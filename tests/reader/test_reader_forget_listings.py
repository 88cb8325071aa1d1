"""Image.forget_listings lets go of the directory listings listdir keeps for a second look
(--incremental reads each base directory once): the directories list the same afterwards."""
from __future__ import annotations

from mkerofs.reader import Image
from support.run import run_mkerofs


def test_forget_listings_keeps_contents(tmp_path):
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    names = sorted(f"file-with-a-long-name-{i:04d}" for i in range(300))   # several blocks
    for name in names:
        (big / name).write_bytes(b"")
    out = tmp_path / "i.erofs"
    run_mkerofs(out, src)
    with Image.open(out) as img:
        inode = img.lookup("/big")
        first = img.listdir(inode)
        assert [n.decode() for n, _nid, _ftype in first] == names
        assert img._dir_cache              # (kept: a multi-block directory)
        img.forget_listings()
        assert not img._dir_cache
        assert img.listdir(inode) == first
