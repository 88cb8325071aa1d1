"""--incremental --verify: the image as the increment makes it is read back (no mount) before
IMAGE is changed and compared with the base and the source merged; a difference is an error
that leaves IMAGE byte-identical to what it was."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mkerofs import BuildError, BuildOptions, build
from mkerofs.reader import Image
from mkerofs.writer import build as build_module
from mkerofs.writer import incremental
from mkerofs.writer.options import IncrementalOptions, TarOptions
from mkerofs.writer.output import Output
from support.run import assert_clean_failure, mkerofs_env
from support.trees import write_files

_NEW = b"N" * 9000 + b"tail"


def _opts(**kw) -> BuildOptions:
    return BuildOptions(timestamp=1000000000, quiet=True, **kw)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _base(tmp_path: Path, **kw) -> Path:
    lower = write_files(tmp_path / "lower", {"keep": b"k" * 7000, "d/sub/f": b"f", "gone": b"g",
                                       "d/old": b"o" * 5000})
    os.link(lower / "keep", lower / "d/keep2")
    image = tmp_path / "inc.erofs"
    build(image, lower, _opts(**kw))
    return image


def _upper(tmp_path: Path, name: str = "upper") -> Path:
    upper = write_files(tmp_path / name, {"new": _NEW, "d/g": b"g2", "e/f": b"ef"})
    os.mknod(upper / "gone", 0o600 | 0o020000, 0)           # a whiteout (c 0:0)
    return upper


def _tar(tmp_path: Path, upper: Path) -> Path:
    path = tmp_path / "upper.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(upper)):
            tar.add(upper / name, arcname=name)
    return path


@pytest.mark.parametrize("case", ["dir", "tar", "strip", "rvsp", "compressed"])
def test_verify_passes_on_good_increments(tmp_path, case):
    base_kw = {"compressor": "lz4hc"} if case == "compressed" else {}
    image = _base(tmp_path, **base_kw)
    upper = _upper(tmp_path)
    inc = IncrementalOptions(mode="rvsp" if case == "rvsp" else "data",
                             ovlfs_strip=case == "strip")
    kw = dict(base_kw)
    source: Path = upper
    if case == "tar":
        source, kw["tar"] = _tar(tmp_path, upper), TarOptions(mode="f")
    build(image, source, _opts(incremental=inc, verify=True, **kw))
    with Image.open(image) as img:
        new = img.read(img.lookup("/new"))
        assert new == (bytes(len(_NEW)) if case == "rvsp" else _NEW)
        assert img.read(img.lookup("/d/old")) == b"o" * 5000
        names = [n for n, _nid, _t in img.listdir(img.root)]
        assert (b"gone" in names) == (case != "strip")
        assert img.verify() == []


def test_verify_passes_on_two_increments_in_a_row(tmp_path):
    image = _base(tmp_path)
    build(image, _upper(tmp_path), _opts(incremental=IncrementalOptions(), verify=True))
    second = write_files(tmp_path / "second", {"d/sub/more": b"m" * 4097, "new": b"replaced"})
    build(image, second, _opts(incremental=IncrementalOptions(), verify=True))
    with Image.open(image) as img:
        assert img.read(img.lookup("/new")) == b"replaced"
        assert img.read(img.lookup("/d/sub/f")) == b"f"
        assert img.read(img.lookup("/e/f")) == b"ef"


@pytest.mark.parametrize("kw", [{"force_uid": 4242}, {"xattr_tolerance": -1},
                                {"hard_dereference": True}, {"ignore_mtime": True}],
                         ids=["force-uid", "x-1", "hard-dereference", "ignore-mtime"])
def test_verify_compares_the_base_with_its_own_attributes(tmp_path, kw):
    """Options that change inodes apply to the new ones only: the kept ones stay as the base
    has them (owner, xattrs, hard links, mtime), and --verify expects exactly that."""
    image = _base(tmp_path)
    upper = _upper(tmp_path)
    os.link(upper / "new", upper / "new2")
    build(image, upper, _opts(incremental=IncrementalOptions(), verify=True, **kw))
    with Image.open(image) as img:
        new, new2 = img.lookup("/new"), img.lookup("/new2")
        assert (new.nid == new2.nid) != bool(kw.get("hard_dereference"))
        assert img.lookup("/keep").nid == img.lookup("/d/keep2").nid   # the base's, kept
        assert img.lookup("/keep").uid == os.getuid()
        assert new.uid == kw.get("force_uid", os.getuid())
        # (the root's empty trusted.overlay.origin: the whiteout below it)
        assert (img.xattrs(img.root) == []) == ("xattr_tolerance" in kw)


def _corrupt_new_file(monkeypatch) -> None:
    """A writer step that spoils one byte of the new file's data (in the appended part)."""
    real = build_module._write_image

    def write_image(plan, options, out, *args, **kw):
        result = real(plan, options, out, *args, **kw)
        size = os.fstat(out.fd).st_size
        data = os.pread(out.fd, size, 0)
        at = data.rindex(b"NNNNtail")
        Output.pwrite(out, b"X", at)
        return result
    monkeypatch.setattr(build_module, "_write_image", write_image)


def _corrupt_kept_dirent(monkeypatch) -> None:
    """The '..' entry of a kept directory made to name the wrong parent (the root)."""
    real = incremental.dotdot_patches

    def dotdot_patches(inc, written):
        root_nid = next(node.nid for node in written if node is inc.root)
        patches = []
        for pos, entry in real(inc, written):
            patches.append((pos, root_nid.to_bytes(8, "little") + entry[8:]))
        assert patches
        return patches
    monkeypatch.setattr(incremental, "dotdot_patches", dotdot_patches)


@pytest.mark.parametrize("fault, where", [(_corrupt_new_file, "/new: data differs at byte 8996"),
                                          (_corrupt_kept_dirent, "/d/sub")])
def test_a_failed_verification_leaves_the_image_as_it_was(tmp_path, monkeypatch, fault, where):
    image = _base(tmp_path)
    upper = _upper(tmp_path)
    before, size, ino = _digest(image), image.stat().st_size, image.stat().st_ino
    fault(monkeypatch)
    with pytest.raises(BuildError) as err:
        build(image, upper, _opts(incremental=IncrementalOptions(), verify=True))
    message = str(err.value)
    assert "verification failed" in message and where in message and "\n" not in message
    assert _digest(image) == before and image.stat().st_size == size
    assert image.stat().st_ino == ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inc.erofs", "lower", "upper"]
    # without --verify the same fault goes unnoticed (the test's fault is real)
    build(image, upper, _opts(incremental=IncrementalOptions()))
    assert _digest(image) != before


def test_a_failed_verification_is_one_line_and_exit_1(tmp_path):
    """Through the command line (the fault injected in a child Python)."""
    image = _base(tmp_path)
    upper = _upper(tmp_path)
    before = image.read_bytes()
    script = (
        "import sys\n"
        "from mkerofs.writer import verify\n"
        "from mkerofs.cli.mkfs import main\n"
        "real = verify.compare_build\n"
        "verify.compare_build = lambda *a, **kw: ['/e/f: injected difference'] + "
        "real(*a, **kw)\n"
        "sys.argv[0] = 'mkerofs'\n"
        "sys.exit(main())\n")
    r = subprocess.run([sys.executable, "-c", script, "--incremental", "--verify", "--quiet",
                        str(image), str(upper)], env=mkerofs_env(), capture_output=True,
                       text=True, timeout=300)
    msg = assert_clean_failure(r, mentions=["verification failed", "/e/f: injected"],
                               image=image, image_before=before)
    assert r.returncode == 1 and "IMAGE is as it was" in msg


def test_failure_while_writing_over_the_base_puts_it_back(tmp_path, monkeypatch):
    """The writes over the base's bytes are made at the end (finish): an error among them
    puts back those made already."""
    image = _base(tmp_path)
    upper = _upper(tmp_path)
    before, size = _digest(image), image.stat().st_size
    real = Output.pwrite
    over_base = []

    def pwrite(self, data, pos):
        if isinstance(self, incremental.InPlaceOutput) and pos < self.start:
            over_base.append(pos)
            if len(over_base) == 2:
                raise BuildError("injected")
        real(self, data, pos)
    monkeypatch.setattr(Output, "pwrite", pwrite)
    with pytest.raises(BuildError, match="injected"):
        build(image, upper, _opts(incremental=IncrementalOptions(), verify=True))
    assert len(over_base) == 2
    assert _digest(image) == before and image.stat().st_size == size
