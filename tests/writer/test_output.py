"""Bad inputs and output targets: missing/invalid source, missing output
folder, unreadable source files, a full disk, failed builds that must not
destroy an existing image, block devices (loop) as targets - mounted ones
refused, too small ones refused - and --offset.

Every failure must follow the error contract: non-zero exit, one line on
stderr naming the path and the reason, no traceback, no image (nor
temporary file) left behind, an existing image of that name untouched.
"""
from __future__ import annotations

import builtins
import io
import os
import stat
from pathlib import Path

import pytest

from support.compare import compare_trees
from support.mounts import bind_mount, block_device_size, file_digest, kernel_mount, tmpfs_mount
from support.oracle import read_superblock
from support.run import assert_clean_failure, build_image, leftovers, run_mkerofs
from support.trees import FIXED_T, make_full_tree, set_tree_times, write_file

UUID1 = "0123abcd-4567-89ef-0123-456789abcdef"
OLD = b"an existing image that must survive\n" * 50


@pytest.fixture
def small_src(src):
    write_file(src / "a", 100)
    write_file(src / "b", 70000)
    os.mkdir(src / "d")
    write_file(src / "d" / "c", 3)
    os.symlink("a", src / "l")
    set_tree_times(src)
    return src


def existing(image: Path, present: bool):
    if present:
        image.write_bytes(OLD)
        return OLD
    return None


# ---------------------------------------------------------------------------
# bad sources and destinations
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("present", [False, True], ids=["no-image", "existing-image"])
def test_missing_source(present, tmp_path, image):
    before = existing(image, present)
    r = run_mkerofs(image, tmp_path / "no-such-dir", check=False)
    assert_clean_failure(r, mentions=["no-such-dir"], image=image, image_before=before)
    assert leftovers(tmp_path, keep=[image.name]) == []


@pytest.mark.parametrize("present", [False, True], ids=["no-image", "existing-image"])
def test_source_is_a_file(present, tmp_path, image):
    before = existing(image, present)
    write_file(tmp_path / "plainfile", 10)
    r = run_mkerofs(image, tmp_path / "plainfile", check=False)
    assert_clean_failure(r, mentions=["plainfile"], mentions_any=["directory"],
                         image=image, image_before=before)
    assert leftovers(tmp_path, keep=[image.name, "plainfile"]) == []


def test_source_is_a_dangling_symlink(tmp_path, image):
    os.symlink("nowhere", tmp_path / "dangling")
    r = run_mkerofs(image, tmp_path / "dangling", check=False)
    assert_clean_failure(r, mentions=["dangling"], image=image)


@pytest.mark.kernel
def test_source_is_a_symlink_to_a_directory(tmp_path, small_src, image):
    """A symlink to a directory is built as that directory (mkfs.erofs 1.9.3 takes such a
    SOURCE for an image to rebuild from and fails: README, rebuild-mode differences)."""
    os.symlink(small_src, tmp_path / "srclink")
    build_image(image, tmp_path / "srclink")
    with kernel_mount(image) as mnt:
        compare_trees(small_src, mnt)


@pytest.mark.kernel
def test_non_utf8_image_and_source_paths(tmp_path, kernel):
    base = os.fsencode(tmp_path)
    src = os.path.join(base, b"src\xff\xfe")
    os.mkdir(src)
    write_file(os.path.join(src, b"f\xe9"), 100)
    set_tree_times(src)
    image = os.path.join(base, b"img\xfa.erofs")
    build_image(image, src)
    with kernel(image) as mnt:
        compare_trees(src, mnt)


def test_non_utf8_missing_source_message(tmp_path, image):
    missing = os.path.join(os.fsencode(tmp_path), b"no\xffsuch")
    r = run_mkerofs(image, missing, check=False)
    assert_clean_failure(r, mentions=["no"], mentions_any=["such"], image=image)


@pytest.mark.kernel
def test_relative_paths_and_image_inside_cwd_source(tmp_path, small_src, kernel):
    """`cd SRC && mkerofs img.erofs .`: the image lies in the source and
    must not be included."""
    run_mkerofs("-T", FIXED_T, "img.erofs", ".", cwd=small_src)
    image = small_src / "img.erofs"
    with kernel(image) as mnt:
        assert not (Path(mnt) / "img.erofs").exists()
        compare_trees(small_src, mnt, timestamp=FIXED_T, exclude_paths=["img.erofs"])
    # built elsewhere, the first image is an ordinary file of the source
    run_mkerofs("-T", FIXED_T, "../img2.erofs", "./", cwd=small_src)
    with kernel(tmp_path / "img2.erofs") as mnt:
        assert (Path(mnt) / "img.erofs").read_bytes() == image.read_bytes()
        compare_trees(small_src, mnt, timestamp=FIXED_T)


def test_output_folder_missing(tmp_path, small_src):
    image = tmp_path / "missing-folder" / "img.erofs"
    r = run_mkerofs(image, small_src, check=False)
    assert_clean_failure(r, mentions=["missing-folder"], image=image)
    assert not (tmp_path / "missing-folder").exists()


def test_image_path_is_a_directory(tmp_path, small_src):
    target = tmp_path / "adir"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    r = run_mkerofs(target, small_src, check=False)
    assert_clean_failure(r, mentions=["adir"])
    assert os.listdir(target) == ["keep"]


def test_image_in_read_only_folder(tmp_path, small_src):
    """A folder that cannot be written to (a read-only bind mount also stops root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        try:
            ctx = bind_mount(ro, ro)
            ctx.__enter__()
        except Exception as e:          # pragma: no cover
            pytest.skip(f"cannot bind-mount: {e}")
        import subprocess
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    else:
        os.chmod(ro, 0o555)
        ctx = None
    try:
        r = run_mkerofs(ro / "img.erofs", small_src, check=False)
        assert_clean_failure(r, mentions=["img.erofs"], image=ro / "img.erofs")
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


@pytest.mark.root
@pytest.mark.parametrize("present", [False, True], ids=["no-image", "existing-image"])
def test_unreadable_file_in_source(present, tmp_path, small_src, image):
    """As root, mode 000 does not stop reads: bind-mount a write-only sysfs
    attribute (open(O_RDONLY) fails with EACCES even for root) over a file."""
    candidates = [p for p in ("/sys/bus/acpi/drivers_probe", "/sys/bus/pci/drivers_probe",
                              "/sys/bus/platform/drivers_probe", "/sys/bus/cpu/drivers_probe")
                  if os.path.exists(p)]
    if not candidates:
        pytest.skip("no write-only sysfs attribute to bind-mount")
    try:
        open(candidates[0], "rb").close()
        pytest.skip(f"{candidates[0]} is readable here")
    except PermissionError:
        pass
    before = existing(image, present)
    victim = small_src / "d" / "unreadable"
    victim.write_bytes(b"x")
    with bind_mount(candidates[0], victim):
        with pytest.raises(PermissionError):
            open(victim, "rb")
        r = run_mkerofs(image, small_src, check=False)
    assert_clean_failure(r, mentions=["unreadable"],
                         mentions_any=["permission", "denied", "read"],
                         image=image, image_before=before)
    assert leftovers(tmp_path, keep=[image.name, "src"]) == []


def test_unreadable_file_via_api(tmp_path, small_src, image, monkeypatch):
    """Same failure through the Python API, simulated by making every way
    of opening one source file raise PermissionError."""
    from mkerofs import BuildOptions, build
    victim = os.fsencode(small_src / "d" / "c")
    image.write_bytes(OLD)

    def is_victim(p):
        try:
            return os.fsencode(p) == victim if not isinstance(p, int) else False
        except TypeError:
            return False

    real_os_open, real_open, real_io_open = os.open, builtins.open, io.open

    def fake_os_open(path, flags, *a, **kw):
        if is_victim(path):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_os_open(path, flags, *a, **kw)

    def fake_open(file, *a, **kw):
        if is_victim(file):
            raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    with pytest.raises(Exception) as exc:
        build(image, small_src, BuildOptions())
    monkeypatch.undo()
    msg = str(exc.value)
    assert "d/c" in msg, f"error does not name the file: {msg!r}"
    assert "\n" not in msg.strip()
    assert not isinstance(exc.value, (AssertionError, TypeError, AttributeError, KeyError))
    assert image.read_bytes() == OLD, "existing image modified by a failed API build"
    assert leftovers(tmp_path, keep=[image.name, "src"]) == []


# ---------------------------------------------------------------------------
# full disk
# ---------------------------------------------------------------------------

@pytest.mark.root
def test_full_disk(tmp_path, small_src):
    write_file(small_src / "big", 3 * 1024 * 1024)          # random: not compressible, no holes
    with tmpfs_mount("1m") as fs:
        image = fs / "img.erofs"
        r = run_mkerofs(image, small_src, check=False)
        assert_clean_failure(r, mentions_any=["no space", "space left", "enospc", "disk full"],
                             image=image)
        assert leftovers(fs) == [], "temporary files left on the full filesystem"


@pytest.mark.root
def test_full_disk_keeps_existing_image(tmp_path, small_src):
    write_file(small_src / "big", 3 * 1024 * 1024)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    write_file(tiny / "f", 10)
    with tmpfs_mount("1m") as fs:
        image = fs / "img.erofs"
        build_image(image, tiny)
        before = image.read_bytes()
        r = run_mkerofs(image, small_src, check=False)
        assert_clean_failure(r, mentions_any=["no space", "space left", "enospc"],
                             image=image, image_before=before)
        assert leftovers(fs) == ["img.erofs"]
        with kernel_mount(image) as mnt:
            compare_trees(tiny, mnt)


# ---------------------------------------------------------------------------
# block devices
# ---------------------------------------------------------------------------

@pytest.mark.kernel
def test_build_onto_loop_device(tmp_path, src, loop):
    make_full_tree(src)
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    with loop(backing) as dev:
        build_image(dev, src, "-T", FIXED_T)
        assert stat.S_ISBLK(os.stat(dev).st_mode), "the device node was replaced"
        sb = read_superblock(dev)
        assert sb.magic == 0xE0F5E1E2
        assert sb.blocks * sb.block_size <= block_device_size(dev)
        with kernel_mount(dev) as mnt:
            compare_trees(src, mnt, timestamp=FIXED_T)
    assert os.path.getsize(backing) == 64 << 20


@pytest.mark.kernel
def test_device_image_matches_file_image(tmp_path, src, loop):
    make_full_tree(src)
    plain = tmp_path / "plain.erofs"
    build_image(plain, src, "-T", FIXED_T, "-U", UUID1, "-b", "1024")
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    with loop(backing) as dev:
        build_image(dev, src, "-T", FIXED_T, "-U", UUID1, "-b", "1024")
        with open(dev, "rb") as d:
            assert d.read(os.path.getsize(plain)) == plain.read_bytes()


@pytest.mark.kernel
def test_mounted_loop_device_refused(tmp_path, small_src, loop):
    first = tmp_path / "first.erofs"
    build_image(first, small_src, "-T", FIXED_T)
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.write(first.read_bytes())
        f.truncate(16 << 20)
    other = tmp_path / "other"
    other.mkdir()
    write_file(other / "x", 5000)
    with loop(backing) as dev:
        before = file_digest(dev)
        with kernel_mount(dev) as mnt:
            r = run_mkerofs(dev, other, check=False)
            assert_clean_failure(r, mentions=[dev], mentions_any=["mount", "busy", "in use"])
            assert file_digest(dev) == before, "a mounted device was written to"
            compare_trees(small_src, mnt, timestamp=FIXED_T)
        assert file_digest(dev) == before
        assert stat.S_ISBLK(os.stat(dev).st_mode)


@pytest.mark.kernel
def test_image_bigger_than_device_refused(tmp_path, small_src, loop):
    write_file(small_src / "big", 2 * 1024 * 1024)
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.write(b"\xa5" * (512 * 1024))
    with loop(backing) as dev:
        assert block_device_size(dev) == 512 * 1024
        before = file_digest(dev)
        r = run_mkerofs(dev, small_src, check=False)
        assert_clean_failure(r, mentions=[dev])
        assert file_digest(dev) == before, "device modified by a refused build"
        assert stat.S_ISBLK(os.stat(dev).st_mode)


def test_compressed_image_bigger_than_device_refused(tmp_path, small_src, loop):
    """A compressed image's size is known only while it is written: the build stops with a
    clear message at the first write that would not fit (the device is being overwritten, as
    with any build onto a device)."""
    (small_src / "random").write_bytes(os.urandom(2 * 1024 * 1024))
    backing = tmp_path / "backing"
    backing.write_bytes(b"\xa5" * (512 * 1024))
    with loop(backing) as dev:
        r = run_mkerofs("-zlz4hc", dev, small_src, check=False)
        assert_clean_failure(r, mentions=[dev, "does not fit"])


@pytest.mark.kernel
def test_image_exactly_filling_device(tmp_path, small_src, loop):
    plain = tmp_path / "plain.erofs"
    build_image(plain, small_src, "-T", FIXED_T, "-U", UUID1)
    size = os.path.getsize(plain)
    backing = tmp_path / "backing"
    with open(backing, "wb") as f:
        f.truncate(size)
    with loop(backing) as dev:
        build_image(dev, small_src, "-T", FIXED_T, "-U", UUID1)
        with open(dev, "rb") as d:
            assert d.read() == plain.read_bytes()
        with kernel_mount(dev) as mnt:
            compare_trees(small_src, mnt, timestamp=FIXED_T)


# ---------------------------------------------------------------------------
# --offset
# ---------------------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.parametrize("offset", [4096, 1 << 20, 8192 + 512])
def test_offset_in_file(offset, tmp_path, src):
    make_full_tree(src)
    plain, shifted = tmp_path / "plain.erofs", tmp_path / "shifted.erofs"
    build_image(plain, src, "-T", FIXED_T, "-U", UUID1)
    run_mkerofs(f"--offset={offset}", "-T", FIXED_T, "-U", UUID1, shifted, src)
    data = shifted.read_bytes()
    assert len(data) == offset + os.path.getsize(plain)
    assert data[offset:] == plain.read_bytes()
    assert data[:offset] == bytes(offset)
    assert read_superblock(shifted, offset).magic == 0xE0F5E1E2
    if offset % 512 == 0:
        with kernel_mount(shifted, offset=offset) as mnt:
            compare_trees(src, mnt, timestamp=FIXED_T)


@pytest.mark.kernel
def test_offset_on_device_keeps_leading_bytes(tmp_path, small_src, loop):
    offset = 1 << 20
    plain = tmp_path / "plain.erofs"
    build_image(plain, small_src, "-T", FIXED_T, "-U", UUID1)
    backing = tmp_path / "backing"
    lead = bytes(range(256)) * (offset // 256)
    with open(backing, "wb") as f:
        f.write(lead)
        f.truncate(16 << 20)
    with loop(backing) as dev:
        run_mkerofs("--offset", offset, "-T", FIXED_T, "-U", UUID1, dev, small_src)
        with open(dev, "rb") as d:
            assert d.read(offset) == lead, "bytes before --offset were changed"
            assert d.read(os.path.getsize(plain)) == plain.read_bytes()
        with kernel_mount(dev, offset=offset) as mnt:
            compare_trees(small_src, mnt, timestamp=FIXED_T)


def test_rebuild_replaces_existing_image(tmp_path, small_src, image):
    image.write_bytes(OLD * 1000)
    build_image(image, small_src, "-T", FIXED_T)
    data = image.read_bytes()
    assert OLD not in data
    assert read_superblock(image).magic == 0xE0F5E1E2
    assert len(data) % 4096 == 0
    assert leftovers(tmp_path, keep=[image.name, "src"]) == []


def _big_source(src: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    with open(src / "big", "wb") as f:
        for i in range(mib):
            f.write(block[i % 997:] + block[:i % 997])     # no two blocks alike
    set_tree_times(src)


@pytest.mark.parametrize("present", [False, True], ids=["no-image", "existing-image"])
def test_interrupted_build_leaves_nothing(present, tmp_path, small_src, image):
    """Ctrl-C (SIGINT) in the middle of copying data: non-zero exit, no
    traceback, no temporary file, an existing image untouched, and the
    process exits promptly (no hang on worker threads)."""
    import signal
    import subprocess
    from support.run import mkerofs_command, mkerofs_env, wait_until_writing
    _big_source(small_src, 1024)
    # (under load the build can end between the last poll and the signal: it then exits 0
    # with a whole image, which says nothing about an interruption; such a run is retried)
    for _attempt in range(3):
        if not present and image.exists():
            image.unlink()
        before = existing(image, present)
        p = subprocess.Popen(mkerofs_command() + [str(image), str(small_src)],
                             env=mkerofs_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        wait_until_writing(p, tmp_path, ("src", image.name))
        if p.poll() is not None:
            pytest.fail("the build finished before it could be interrupted; enlarge the source")
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail("mkerofs did not exit within 30 s of SIGINT")
        if p.returncode != 0:
            break
    else:
        pytest.fail("three builds ended before SIGINT reached them; enlarge the source")
    assert p.returncode != 0
    assert "Traceback" not in err, err
    assert len([l for l in err.splitlines() if l.strip()]) == 1, err
    assert leftovers(tmp_path, keep=["src"] + ([image.name] if present else [])) == []
    if present:
        assert image.read_bytes() == before
