"""--incremental through the Python API, read back with mkerofs.reader: the base's inodes that
stay keep their nids, new ones count from the base's inode count, the base's epoch and UUID
stay (unless a UUID is given), and a missing base creates nothing."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import uuid as uuidlib
from pathlib import Path

import pytest

from mkerofs import BuildError, BuildOptions, build
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image
from mkerofs.writer import incremental
from mkerofs.writer.incremental import InPlaceOutput
from mkerofs.writer.options import IncrementalOptions
from mkerofs.writer.plan import WrittenInode, plan_inodes
from mkerofs.writer.walk import walk_source


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _opts(**kw) -> BuildOptions:
    return BuildOptions(timestamp=1000000000, **kw)


def test_kept_inodes_keep_their_nids(tmp_path):
    lower = _tree(tmp_path / "lower", {"keep": b"k", "d/sub/f": b"f", "gone": b"g"})
    upper = _tree(tmp_path / "upper", {"new": b"n" * 5000, "d/g": b"g2"})
    base = tmp_path / "base.erofs"
    build(base, lower, _opts())
    with Image.open(base) as img:
        keep_nid = img.lookup("/keep").nid
        sub_nid = img.lookup("/d/sub").nid
        base_inos, epoch, uuid = img.superblock.inos, img.epoch, img.superblock.uuid
        base_size = img.image_size
    image = tmp_path / "inc.erofs"
    shutil.copy(base, image)
    result = build(image, upper, _opts(incremental=IncrementalOptions()))
    with Image.open(image) as img:
        assert img.lookup("/keep").nid == keep_nid
        sub = img.lookup("/d/sub")
        assert sub.nid == sub_nid
        assert dict((n, nid) for n, nid, _t in img._dirents(sub))[b".."] == \
            img.lookup("/d").nid
        assert img.read(img.lookup("/new")) == b"n" * 5000
        assert img.read(img.lookup("/d/sub/f")) == b"f"
        assert img.lookup("/new").ino > base_inos
        assert img.epoch == epoch and img.superblock.uuid == uuid
        assert img.image_size > base_size and img.verify() == []
        assert sorted(n for n, _nid, _t in img.listdir(img.root)) == [b"d", b"gone", b"keep",
                                                                       b"new"]
    assert result.uuid == uuid
    given = uuidlib.uuid4().bytes
    build(image, upper, _opts(incremental=IncrementalOptions(), uuid=given))
    with Image.open(image) as img:
        assert img.superblock.uuid == given and img.verify() == []


def test_missing_base_creates_nothing(tmp_path):
    upper = _tree(tmp_path / "upper", {"a": b"a"})
    with pytest.raises(BuildError, match="does not exist"):
        build(tmp_path / "none.erofs", upper, _opts(incremental=IncrementalOptions()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upper"]


def test_opaque_directory_source_is_honoured(tmp_path):
    """(mkfs.erofs 1.9.3 ignores a directory source's trusted.overlay.opaque.)"""
    lower = _tree(tmp_path / "lower", {"opq/old": b"o"})
    upper = _tree(tmp_path / "upper", {"opq/new": b"n"})
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts())
    build(image, upper, _opts(incremental=IncrementalOptions(ovlfs_strip=True)))
    with Image.open(image) as img:
        assert [n for n, _nid, _t in img.listdir(img.lookup("/opq"))] == [b"new"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _base_and_upper(tmp_path: Path) -> tuple[Path, Path]:
    lower = _tree(tmp_path / "lower", {"keep": b"k", "d/sub/f": b"f"})
    upper = _tree(tmp_path / "upper", {"new": b"n" * 50000, "d/g": b"g2"})
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts())
    with open(image, "ab") as f:        # a base longer than its blocks (a killed increment)
        f.write(b"\xee" * 3000)
    return image, upper


@pytest.mark.parametrize("stage", ["first write over the base", "superblock"])
def test_failure_after_the_base_was_written_puts_it_back(tmp_path, monkeypatch, stage):
    """An error once the new part is appended and the writes over the base's own bytes (the
    '..' entries, the superblock) are being made: IMAGE gets its bytes and size back.  (They
    are held back until the end: test_incremental_verify has an error among them.)"""
    image, upper = _base_and_upper(tmp_path)
    before, size, ino = _digest(image), image.stat().st_size, image.stat().st_ino
    written = []
    real_pwrite = InPlaceOutput.pwrite

    def pwrite(self, data, pos):
        written.append((pos, self.start))
        real_pwrite(self, data, pos)
        if pos < self.start and stage != "superblock":
            raise BuildError("injected")
    monkeypatch.setattr(InPlaceOutput, "pwrite", pwrite)
    real_superblock = incremental.superblock

    def superblock(*args, **kw):
        real_superblock(*args, **kw)
        raise BuildError("injected")
    if stage == "superblock":
        monkeypatch.setattr(incremental, "superblock", superblock)
    with pytest.raises(BuildError, match="injected"):
        build(image, upper, _opts(incremental=IncrementalOptions()))
    assert any(pos >= start for pos, start in written)      # appended
    assert any(pos < start for pos, start in written)       # and written over the base
    assert image.stat().st_size == size and _digest(image) == before
    assert image.stat().st_ino == ino and sorted(p.name for p in tmp_path.iterdir()) == \
        ["inc.erofs", "lower", "upper"]
    monkeypatch.undo()
    build(image, upper, _opts(incremental=IncrementalOptions()))   # the longer file is fine
    with Image.open(image) as img:
        assert img.read(img.lookup("/new")) == b"n" * 50000 and img.verify() == []
        assert img.read(img.lookup("/d/sub/f")) == b"f"


def test_interrupt_while_appending_puts_it_back(tmp_path, monkeypatch):
    """Ctrl-C while the new data is written: IMAGE as it was."""
    image, upper = _base_and_upper(tmp_path)
    before, size = _digest(image), image.stat().st_size
    real_pwrite = InPlaceOutput.pwrite

    def pwrite(self, data, pos):
        real_pwrite(self, data, pos)
        raise KeyboardInterrupt
    monkeypatch.setattr(InPlaceOutput, "pwrite", pwrite)
    with pytest.raises(KeyboardInterrupt):
        build(image, upper, _opts(incremental=IncrementalOptions()))
    assert image.stat().st_size == size and _digest(image) == before


def test_a_locked_image_is_refused(tmp_path):
    """Another build holding IMAGE: refused, nothing written."""
    image, upper = _base_and_upper(tmp_path)
    before = _digest(image)
    with open(image, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BuildError, match="another build"):
            build(image, upper, _opts(incremental=IncrementalOptions()))
    assert _digest(image) == before


def test_report_and_summary_say_base_and_new(tmp_path):
    image, upper = _base_and_upper(tmp_path)
    with Image.open(image) as img:
        base_inos, base_blocks = img.superblock.inos, img.superblock.blocks
    result = build(image, upper, _opts(incremental=IncrementalOptions()))
    report = result.report.to_dict()
    new = report["inodes"]["total"]
    assert new == 4                     # the root, /d (rewritten), /new, /d/g
    assert report["increment"] == {"base_inodes": base_inos, "base_blocks": base_blocks,
                                   "new_inodes": new, "total_inodes": base_inos + new}
    with Image.open(image) as img:
        assert img.superblock.inos == base_inos + new == result.inodes
    lines = dict(line.split(": ", 1) for line in result.report.summary_lines())
    assert lines["Filesystem total inodes"] == str(base_inos + new)
    assert lines["Filesystem new inodes"] == str(new)
    assert int(lines["Filesystem new metadata blocks"]) >= 1
    plain = build(tmp_path / "plain.erofs", upper, _opts()).report
    assert plain.to_dict()["increment"] is None
    assert "Filesystem total metadata blocks" in dict(
        line.split(": ", 1) for line in plain.summary_lines())


def _inodes_read(monkeypatch, image: Path, upper: Path, inc: IncrementalOptions) -> list[int]:
    """Put `upper` on `image`; the nids of the base inodes the build read."""
    read = []
    real_fields = Image.inode_fields        # (Image.inode reads through it too)

    def inode_fields(self, nid):
        read.append(nid)
        return real_fields(self, nid)
    monkeypatch.setattr(Image, "inode_fields", inode_fields)
    build(image, upper, _opts(incremental=inc))
    monkeypatch.undo()
    return read


def test_only_the_reached_base_directories_are_read(tmp_path, monkeypatch):
    """The base's inodes read are the reached directories' and their subdirectories': the
    files of directories the increment does not reach are never read, and keep their nids."""
    files = {f"d{i}/f{j}": b"x" * j for i in range(8) for j in range(4)}
    lower = _tree(tmp_path / "lower", files)
    upper = _tree(tmp_path / "upper", {"d0/new": b"n"})
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts())
    with Image.open(image) as img:
        nids = {name: img.lookup("/" + name).nid for name in files}
    read = _inodes_read(monkeypatch, image, upper, IncrementalOptions())
    unreached = {nids[name] for name in files if not name.startswith("d0/")}
    assert read and not unreached & set(read)
    with Image.open(image) as img:
        assert {name: img.lookup("/" + name).nid for name in files} == nids
        assert img.read(img.lookup("/d0/new")) == b"n" and img.verify() == []
        assert img.lookup("/d0").nlink == 2 and img.root.nlink == 10


def test_what_the_increment_hides_is_not_read(tmp_path, monkeypatch):
    """The base is merged as it is read: nothing below a directory the increment marks
    opaque, nor a base directory where the increment has a file, is read."""
    lower = _tree(tmp_path / "lower", {"opq/a/f": b"f", "opq/g": b"g", "hid/x/f": b"f",
                                       "d/f": b"f"})
    upper = _tree(tmp_path / "upper", {"opq/new": b"n", "hid": b"a file", "d/new": b"n"})
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts())
    with Image.open(image) as img:
        hidden = {img.lookup(path).nid for path in ("/opq/a", "/opq/a/f", "/opq/g", "/hid",
                                                    "/hid/x", "/hid/x/f")}
    read = _inodes_read(monkeypatch, image, upper, IncrementalOptions(ovlfs_strip=True))
    assert read and not hidden & set(read)
    with Image.open(image) as img:
        assert [n for n, _nid, _t in img.listdir(img.lookup("/opq"))] == [b"new"]
        assert img.read(img.lookup("/hid")) == b"a file"
        assert [n for n, _nid, _t in img.listdir(img.lookup("/d"))] == [b"f", b"new"]
        assert img.verify() == []


def test_only_new_inodes_are_planned(tmp_path):
    """plan_inodes leaves the inodes the image holds already (WrittenInodes in the tree,
    with `written`) out of the plan; their directory entries name them by nid."""
    root, _count = walk_source(os.fsencode(_tree(tmp_path / "t", {"old": b"o", "new": b"n"})),
                               _opts())
    root.entries = [(name, WrittenInode(77, fmt.EROFS_FT_REG_FILE) if name == b"old" else child)
                    for name, child in root.entries]
    plan = plan_inodes(root, _opts(), 0, written=True)
    assert [node.path.rsplit(b"/", 1)[-1] for node in plan.inodes[1:]] == [b"new"]
    shape = plan.root.dir_shape
    target = shape.targets[shape.names.index(b"old")]
    assert (target.nid, target.ftype) == (77, fmt.EROFS_FT_REG_FILE)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a whiteout needs root")
def test_strip_drops_base_whiteouts_only_where_the_increment_reaches(tmp_path):
    """--ovlfs-strip: a base whiteout in a directory the increment reaches is dropped (the
    merge sees it); one elsewhere is not read, so it stays (as mkfs.erofs 1.9.3 does)."""
    lower = _tree(tmp_path / "lower", {"u/f": b"f", "r/f": b"f"})
    for d in ("u", "r"):
        os.mknod(lower / d / "w", stat.S_IFCHR | 0o644, os.makedev(0, 0))
    names = _stripped_increment(tmp_path, lower, {"r/new": b"n"})
    assert names("/r") == [b"f", b"new"] and names("/u") == [b"f", b"w"]


def test_strip_sees_xwhiteouts_of_a_reached_base_directory(tmp_path):
    """A reached base subdirectory marked opaque "x": its regular files with
    trusted.overlay.whiteout are whiteouts to the merge (its marks are read with it), so
    --ovlfs-strip drops them as overlayfs hides them."""
    lower = _tree(tmp_path / "lower", {"d/f": b"f", "d/gone": b""})
    os.setxattr(lower / "d", "trusted.overlay.opaque", b"x")
    os.setxattr(lower / "d" / "gone", "trusted.overlay.whiteout", b"")
    names = _stripped_increment(tmp_path, lower, {"d/new": b"n"})
    assert names("/d") == [b"f", b"new"]


def _stripped_increment(tmp_path, lower, upper_files):
    """Build an image of `lower`, put `upper_files` on it with --ovlfs-strip; returns a
    function listing a directory of the result (sorted names)."""
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts())
    build(image, _tree(tmp_path / "upper", upper_files),
          _opts(incremental=IncrementalOptions(ovlfs_strip=True)))

    def names(path):
        with Image.open(image) as img:
            return sorted(n for n, _nid, _t in img.listdir(img.lookup(path)))
    return names
