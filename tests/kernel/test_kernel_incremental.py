"""--incremental with Linux as the oracle: the base image and the increment (a directory or a
tar) stacked with overlayfs (``lowerdir=L2:L1``) show what the incremental image must show
(with --ovlfs-strip: alone; without it: itself stacked under overlayfs over an empty directory).

The layers are tests/support/layers.py's (L1 the base, L2 and L3 two successive increments).
One known difference: /hl1, whose other name L3 replaces, is a base inode kept as it was, so
it still counts 2 links, as overlayfs shows it (rebuild mode counts the names it has: 1).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from support.layers import differences, make_layer_trees, snapshot
from support.reference import reference_problem
from support.mounts import (MountError, fsck_erofs, fsck_unsupported, kernel_mount,
                            loop_fs_mount, overlay_mount, tmpfs_mount)
from support.run import mkerofs_command, mkerofs_env, run_mkerofs
from support.trees import write_file

pytestmark = [pytest.mark.kernel, pytest.mark.loop]

FIXED = ("-T", "1000000000", "--mkfs-time", "--quiet")
LOCAL_FSCK = Path("/work/erofs-utils-install/bin/fsck.erofs")


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> list[Path]:
    return make_layer_trees(tmp_path_factory.mktemp("incr"))


def _image(work: Path, tree: Path, name: str, *opts) -> Path:
    image = work / name
    run_mkerofs(*FIXED, *opts, image, tree)
    return image


@contextlib.contextmanager
def _stack_view(images: list[Path], uppers: list[Path] = ()):
    """overlayfs of the mounted images and the directories `uppers` (the last on top)."""
    with contextlib.ExitStack() as stack:
        lowers = [stack.enter_context(kernel_mount(i)) for i in images] + list(uppers)
        yield stack.enter_context(overlay_mount(*reversed(lowers)))


def _view(trees: list[Path], count: int) -> dict:
    with _stack_view([], trees[:count]) as ovl:
        return snapshot(ovl)


def _check_fsck(image: Path) -> None:
    r = fsck_erofs(image)
    assert r.returncode == 0 or fsck_unsupported(r), r.stdout + r.stderr
    if LOCAL_FSCK.exists():
        r = subprocess.run([LOCAL_FSCK, "--extract", image], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def _incremental(base: Path, out: Path, *args) -> Path:
    out.write_bytes(base.read_bytes())
    run_mkerofs(*FIXED, "--incremental", "--verify", *args[:-1], out, args[-1])
    return out


@pytest.mark.parametrize("base_opts,inc_opts", [
    ((), ()), (("-Enoinline_data",), ()), (("-zlz4",), ("-zlz4",)), (("-zlz4",), ()),
    ((), ("-zlz4",))], ids=["plain", "noinline", "lz4-lz4", "lz4-plain", "plain-lz4"])
def test_directory_increments_strip(trees, tmp_path, base_opts, inc_opts):
    """Two successive increments (L2, then L3) over L1, each compared with overlayfs."""
    base = _image(tmp_path, trees[0], "base.erofs", *base_opts)
    out = _incremental(base, tmp_path / "inc.erofs", *inc_opts, "--ovlfs-strip", trees[1])
    _check_fsck(out)
    with kernel_mount(out) as mnt:
        assert differences(_view(trees, 2), snapshot(mnt)) == []
    run_mkerofs(*FIXED, "--incremental", "--verify", *inc_opts, "--ovlfs-strip", out, trees[2])
    _check_fsck(out)
    with kernel_mount(out) as mnt:
        assert differences(_view(trees, 3), snapshot(mnt)) == []


def test_directory_increment_kept_whiteouts(trees, tmp_path):
    base = _image(tmp_path, trees[0], "base.erofs")
    out = _incremental(base, tmp_path / "inc.erofs", trees[1])
    empty = tmp_path / "empty"
    empty.mkdir()
    with kernel_mount(out) as mnt:
        assert snapshot(mnt)["/gone"][4] == (0, 0)
        with overlay_mount(mnt, empty) as ovl:
            assert differences(_view(trees, 2), snapshot(ovl)) == []


def _tar(tree: Path, out: Path) -> Path:
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix",
                    "--numeric-owner", "-C", tree, "-cf", out, "."], check=True)
    return out


def test_tar_increments(trees, tmp_path):
    base = _image(tmp_path, trees[0], "base.erofs", "-zlz4")
    out = tmp_path / "inc.erofs"
    out.write_bytes(base.read_bytes())
    for count, tree in ((2, trees[1]), (3, trees[2])):
        run_mkerofs(*FIXED, "--incremental", "--verify", "--tar=f", "--ovlfs-strip", out,
                    _tar(tree, tmp_path / f"{tree.name}.tar"))
        _check_fsck(out)
        with kernel_mount(out) as mnt:
            assert differences(_view(trees, count), snapshot(mnt)) == []


def test_tar_aufs_whiteouts_from_stdin(trees, tmp_path):
    """--aufs: .wh.NAME hides NAME, .wh..wh..opq makes its directory opaque; the tar read
    from stdin."""
    upper = tmp_path / "up"
    (upper / "opq").mkdir(parents=True)
    (upper / ".wh.gone").write_bytes(b"")
    (upper / "opq/.wh..wh..opq").write_bytes(b"")
    (upper / "opq/n").write_bytes(b"n\n")
    base = _image(tmp_path, trees[0], "base.erofs")
    out = tmp_path / "inc.erofs"
    out.write_bytes(base.read_bytes())
    tar = _tar(upper, tmp_path / "up.tar")
    run_mkerofs(*FIXED, "--incremental", "--verify", "--tar=f", "--aufs", "--ovlfs-strip", out,
                input=tar.read_bytes())
    with kernel_mount(out) as mnt:
        assert not (mnt / "gone").exists()
        assert sorted(os.listdir(mnt / "opq")) == ["n"]
        assert (mnt / "keep").read_bytes() == b"k\n"


def test_root_over_old_slot(trees, tmp_path):
    """A base of more than 2 MiB: the new root's nid would not fit 16 bits, so it goes over
    the old root's slot; a root with a large xattr does not fit there: a clear error."""
    big = tmp_path / "big"
    subprocess.run(["cp", "-a", trees[0], big], check=True)
    write_file(big / "huge3m", 3 << 20, seed=7)
    base = _image(tmp_path, big, "base.erofs")
    out = _incremental(base, tmp_path / "inc.erofs", "--ovlfs-strip", trees[1])
    assert int.from_bytes(out.read_bytes()[1024 + 14:1024 + 16], "little") == \
        int.from_bytes(base.read_bytes()[1024 + 14:1024 + 16], "little")
    _check_fsck(out)
    with _stack_view([base], [trees[1]]) as ovl:
        want = snapshot(ovl)
    with kernel_mount(out) as mnt:
        assert differences(want, snapshot(mnt)) == []
    fat = tmp_path / "fat"
    fat.mkdir()
    os.setxattr(fat, "user.big", b"v" * 400)
    (fat / "f").write_bytes(b"f")
    before = _digest(base)
    r = run_mkerofs(*FIXED, "--incremental", base, fat, check=False)
    assert r.returncode != 0 and "no room for the new root inode" in r.stderr
    assert _digest(base) == before and _leftovers(tmp_path) == []


def test_rvsp_new_files_read_as_zeros(trees, tmp_path):
    base = _image(tmp_path, trees[0], "base.erofs")
    out = _incremental(base, tmp_path / "inc.erofs", "--ovlfs-strip", trees[1])
    rv = tmp_path / "rv.erofs"
    rv.write_bytes(base.read_bytes())
    run_mkerofs(*FIXED, "--incremental=rvsp", "--verify", "--ovlfs-strip", rv, trees[1])
    with kernel_mount(rv) as mnt:
        big2 = (mnt / "big2").read_bytes()
        assert len(big2) == 5000 and big2 == bytes(5000)
        assert (mnt / "keep").read_bytes() == b"k\n"            # the base's data stays
        assert (mnt / "a/f1").read_bytes() == bytes(len(b"f1 new\n"))
    assert rv.stat().st_size >= out.stat().st_size


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failures_leave_the_base_as_it_was(trees, tmp_path):
    base = _image(tmp_path, trees[0], "base.erofs")
    before = _digest(base)
    good = _tar(trees[1], tmp_path / "l2.tar").read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(good[:2048] + b"\xff" * 512 + good[2560:])
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(good[:len(good) // 2 + 100])
    hl_tar = tmp_path / "hl.tar"
    with tarfile.open(hl_tar, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("hlnew")     # a hard link to a file only the base has
        info.type, info.linkname = tarfile.LNKTYPE, "hl1"
        tf.addfile(info)
    cases = [("--tar=f", bad), ("--tar=f", trunc), ("--tar=f", hl_tar), ("-zlzma", trees[1])]
    for opt, source in cases:
        r = run_mkerofs(*FIXED, "--incremental", opt, base, source, check=False)
        assert r.returncode != 0, (opt, source)
        assert _digest(base) == before, (opt, source, r.stderr)
        assert _leftovers(tmp_path) == []
    missing = tmp_path / "missing.erofs"
    r = run_mkerofs(*FIXED, "--incremental", missing, trees[1], check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert not missing.exists() and _leftovers(tmp_path) == []


def test_kill_while_appending_leaves_the_old_image(trees, tmp_path):
    """kill -9 while a big increment is appended in place: the bytes past the old end are
    ignored, the image mounts with the old content, and the next increment works."""
    base = _image(tmp_path, trees[0], "base.erofs")
    with kernel_mount(base) as mnt:
        want = snapshot(mnt)
    image = tmp_path / "inc.erofs"
    image.write_bytes(base.read_bytes())
    size = image.stat().st_size
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "f", "wb") as f:
        for _ in range(32):
            f.write(os.urandom(8 << 20))
    proc = subprocess.Popen(mkerofs_command() + [*FIXED, "--incremental", str(image), str(big)],
                            env=mkerofs_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while image.stat().st_size <= size + (1 << 20) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the increment ended before it was killed"
    assert image.stat().st_size > size                          # killed while appending
    with kernel_mount(image) as mnt:
        assert differences(want, snapshot(mnt)) == []
    run_mkerofs(*FIXED, "--incremental", "--ovlfs-strip", image, trees[1])
    _check_fsck(image)
    with _stack_view([base], [trees[1]]) as ovl:
        want2 = snapshot(ovl)
    with kernel_mount(image) as mnt:
        assert differences(want2, snapshot(mnt)) == []


def test_mounted_image_is_refused(trees, tmp_path):
    base = _image(tmp_path, trees[0], "base.erofs")
    before = _digest(base)
    with kernel_mount(base):
        r = run_mkerofs(*FIXED, "--incremental", base, trees[1], check=False)
    assert r.returncode != 0 and "is mounted" in r.stderr, r.stderr
    assert _digest(base) == before


@pytest.fixture
def reflink_dir(tmp_path):
    """A folder on a filesystem with reflinks: a loop-mounted XFS (or btrfs) made here."""
    backing = tmp_path / "reflink.img"
    for tool, args in (("mkfs.xfs", ["-q", "-m", "reflink=1"]), ("mkfs.btrfs", ["-q"])):
        if shutil.which(tool) is None:
            continue
        with open(backing, "wb") as f:
            f.truncate(512 << 20)
        r = subprocess.run([tool, *args, backing], capture_output=True, text=True)
        if r.returncode != 0:
            continue
        try:
            with loop_fs_mount(backing, tool.split(".")[1]) as mnt:
                yield mnt
                return
        except MountError:
            continue
    pytest.skip("no reflink filesystem to test on (neither mkfs.xfs nor mkfs.btrfs works here)")


def test_reflink_clone_replaces_the_image(trees, tmp_path, reflink_dir):
    """On a reflink filesystem the increment goes to a clone renamed over IMAGE (a new inode;
    the old one, still open or mounted, is untouched); a failure leaves IMAGE and no clone."""
    base = _image(tmp_path, trees[0], "base.erofs")
    image = reflink_dir / "inc.erofs"
    image.write_bytes(base.read_bytes())
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_tar(trees[1], tmp_path / "l2.tar").read_bytes()[:3000])
    before, ino = _digest(image), image.stat().st_ino
    r = run_mkerofs(*FIXED, "--incremental", "--tar=f", image, bad, check=False)
    assert r.returncode != 0 and _digest(image) == before and image.stat().st_ino == ino
    assert sorted(p.name for p in reflink_dir.iterdir() if p.name != "lost+found") == \
        ["inc.erofs"]
    with kernel_mount(image) as mnt:          # a mounted image is not written: it is replaced
        run_mkerofs(*FIXED, "--incremental", "--verify", "--ovlfs-strip", image, trees[1])
        assert (mnt / "gone").exists()
    assert image.stat().st_ino != ino
    _check_fsck(image)
    with kernel_mount(image) as mnt:
        assert differences(_view(trees, 2), snapshot(mnt)) == []


def test_no_space_while_appending_puts_the_image_back(trees, tmp_path):
    """ENOSPC in the middle of the new data (a small tmpfs): IMAGE as it was, same size."""
    base = _image(tmp_path, trees[0], "base.erofs")
    big = tmp_path / "big"
    big.mkdir()
    (big / "f").write_bytes(os.urandom(2 << 20))
    room = base.stat().st_size + (512 << 10)
    with tmpfs_mount(f"{room}") as small:
        image = small / "inc.erofs"
        image.write_bytes(base.read_bytes())
        before, size = _digest(image), image.stat().st_size
        r = run_mkerofs(*FIXED, "--incremental", image, big, check=False)
        assert r.returncode != 0 and "no space left" in r.stderr, r.stderr
        assert image.stat().st_size == size and _digest(image) == before
        assert sorted(p.name for p in small.iterdir()) == ["inc.erofs"]


def test_reflink_failed_verify_removes_the_clone(trees, tmp_path, reflink_dir, monkeypatch):
    """--verify reads the clone before it replaces IMAGE: a difference leaves IMAGE (same
    inode, same bytes) and no clone."""
    from mkerofs import BuildError, BuildOptions, build
    from mkerofs.writer import verify
    from mkerofs.writer.options import IncrementalOptions
    base = _image(tmp_path, trees[0], "base.erofs")
    image = reflink_dir / "inc.erofs"
    image.write_bytes(base.read_bytes())
    before, ino = _digest(image), image.stat().st_ino
    real = verify.compare_build
    monkeypatch.setattr(verify, "compare_build",
                        lambda *a, **kw: ["/x: injected"] + real(*a, **kw))
    with pytest.raises(BuildError, match="verification failed.*/x: injected"):
        build(image, trees[1], BuildOptions(timestamp=1000000000, quiet=True, verify=True,
                                            incremental=IncrementalOptions()))
    assert _digest(image) == before and image.stat().st_ino == ino
    assert sorted(p.name for p in reflink_dir.iterdir() if p.name != "lost+found") == \
        ["inc.erofs"]


@pytest.mark.parametrize("opts", [(), ("-zlz4",)], ids=["plain", "lz4"])
def test_tar_increments_like_mkfs_erofs_193(trees, tmp_path, opts):
    """The same base and tar increments given to mkfs.erofs 1.9.3: both images, mounted, show
    the same tree, but where 1.9.3 is wrong and README says so: it treats opaque "x" as
    opaque and keeps xwhiteouts (/x), and ignores a tar's trusted.overlay.opaque=y records in
    an increment, so the base's entries of /opq and /y stay (overlayfs hides them: we do)."""
    ref, why = reference_problem()
    if ref is None:
        pytest.skip(why)
    tars = [_tar(tree, tmp_path / f"{tree.name}.tar") for tree in trees[1:3]]
    views = []
    for name, command in (("ours", None), ("theirs", ref)):
        image = tmp_path / f"{name}.erofs"
        steps = [[*opts, image, trees[0]]] + \
            [["--incremental", "--tar=f", "--ovlfs-strip", *opts, image, tar] for tar in tars]
        for args in steps:
            if command is None:
                run_mkerofs(*FIXED, *args)
            else:
                r = subprocess.run([command, *FIXED, *map(str, args)], capture_output=True,
                                   text=True)
                assert r.returncode == 0, r.stderr
        with kernel_mount(image) as mnt:
            views.append({p: v for p, v in snapshot(mnt).items()
                          if not p.startswith(("/x/", "/opq/", "/y/"))})
    assert differences(views[1], views[0]) == []
