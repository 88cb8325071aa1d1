"""Image.inode_fields reads what an inode's i_format and i_mode say once for each pair met
(Image._inode_shape) and keeps it for the next inode with the same pair: the fields must not
depend on what was read before (nor on the table being full and let go), and a pair that
fails must fail again, for every inode that has it, with its nid in the message."""
from __future__ import annotations

import os
import stat

import pytest

from support.run import build_image
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image, ImageError
from mkerofs.reader import image as reader


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    src = root / "src"
    (src / "d" / "e").mkdir(parents=True)
    for i, mode in enumerate((0o644, 0o755, 0o600, 0o4755)):
        f = src / "d" / f"f{i}"
        f.write_bytes(b"x" * (i * 3000))
        os.chmod(f, mode)
    os.link(src / "d" / "f1", src / "d" / "e" / "link")
    os.symlink("f0", src / "d" / "s")
    os.mkfifo(src / "d" / "p")
    os.mknod(src / "d" / "c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    out = root / "img.erofs"
    build_image(out, src, "-T0", "--quiet")
    return out.read_bytes()


def _all_fields(data: bytes) -> dict[int, tuple]:
    with Image(data) as img:
        return {inode.nid: img.inode_fields(inode.nid) for _path, inode in img.walk()}


def test_fields_do_not_depend_on_the_order_read(image):
    forward = _all_fields(image)
    assert len({fields[0] for fields in forward.values()}) > 5
    with Image(image) as img:
        backward = {nid: img.inode_fields(nid) for nid in sorted(forward, reverse=True)}
    assert backward == forward


def test_a_full_table_is_let_go(image, monkeypatch):
    want = _all_fields(image)
    monkeypatch.setattr(reader, "_SHAPES_KEPT", 2)
    with Image(image) as img:
        for _ in range(3):
            assert {nid: img.inode_fields(nid) for nid in want} == want
        assert len(img._shapes) <= 2


def test_a_bad_pair_fails_for_every_inode_that_has_it(image):
    fields = _all_fields(image)
    files = [nid for nid, f in fields.items() if stat.S_ISREG(f[0])][:2]
    assert len(files) == 2
    with Image(image) as img:
        meta = img._meta
    data = bytearray(image)
    for nid in files:
        at = meta + (nid << fmt.EROFS_ISLOTBITS)
        data[at + 4:at + 6] = (0o170644).to_bytes(2, "little")     # an i_mode of no kind
    with Image(bytes(data)) as img:
        for _ in range(2):
            for nid in files:
                with pytest.raises(ImageError, match=f"nid {nid}: bogus i_mode"):
                    img.inode_fields(nid)
