"""--dsunit and --fsalignblks, as mkfs.erofs 1.9.3 has them, read back without a mount.

--dsunit=N: the data of every regular file and symlink (flat, compressed, stored flat after a
failed compression attempt, written while a tar streams by with --sort=none) begins at a block
that is a multiple of N; directories and shared xattrs are metadata to mkfs.erofs and are not
aligned; a compressed file that ends up with no block (all inline or in the packed inode)
takes no alignment either.  --fsalignblks=N: the image's size in blocks (the superblock's count
and the file's size) is a multiple of N rounded up to a power of two.  0 and 1 change nothing:
the image is byte-identical to one built without the option.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from mkerofs import BuildOptions, build
from mkerofs.errors import BuildError
from support.blocks import first_data_blocks, flat_start_blocks
from support.oracle import read_superblock
from support.run import assert_clean_failure, build_image, run_mkerofs
from support.trees import make_big_dir, make_symlinks, set_tree_times, write_file

BASE = ("--quiet", "-Uclear", "-T0")
DATA_TYPES = (stat.S_IFREG, stat.S_IFLNK)


def make_align_tree(root) -> None:
    """Files taking 1 to many blocks, compressible and not, a failed compression (random
    data), long symlinks (blocks at 1 KiB), a directory of several blocks, holes."""
    os.makedirs(root, exist_ok=True)
    for i, size in enumerate((1025, 4097, 5000, 9000, 16385, 70000, 300001)):
        write_file(root / f"random_{size}", size, seed=i)
        write_file(root / f"text_{size}", size, pattern=b"aligned erofs data %d\n" % i)
    write_file(root / "zeros", 20000, pattern=b"\0")
    write_file(root / "tiny", 3)
    write_file(root / "empty", 0)
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300000)
        f.write(b"middle")
    make_symlinks(root / "links", [10, 1500, 3000])
    make_big_dir(root / "big", 200)
    set_tree_times(root)


def data_starts(image) -> dict[bytes, int]:
    """{path: first block} of the regular files and symlinks with data in blocks."""
    return {p: blk for p, (kind, blk) in first_data_blocks(image).items() if kind in DATA_TYPES}


def misaligned(starts: dict[bytes, int], dsunit: int) -> dict[bytes, int]:
    return {p: blk for p, blk in starts.items() if blk % dsunit}


@pytest.fixture
def tree(src):
    make_align_tree(src)
    return src


@pytest.mark.parametrize("bs", [4096, 1024])
@pytest.mark.parametrize("dsunit", [2, 3, 16])
@pytest.mark.parametrize("zopts", [(), ("-zlz4hc",), ("-zlz4", "-Eztailpacking,fragments"),
                                   ("-zlz4hc", "-C16384", "-Elegacy-compress")],
                         ids=["flat", "lz4hc", "lz4-ztail-fragments", "lz4hc-C16k-legacy"])
def test_every_file_begins_at_a_multiple_of_dsunit(tree, image, bs, dsunit, zopts):
    build_image(image, tree, *BASE, f"-b{bs}", f"--dsunit={dsunit}", *zopts)
    starts = data_starts(image)
    assert len(starts) >= 6, f"too few files with blocks to tell anything: {starts}"
    assert not misaligned(starts, dsunit)
    if not zopts:       # the independent parser agrees on the flat ones
        flat = {p: blk for p, (kind, blk) in flat_start_blocks(image).items()
                if kind in DATA_TYPES}
        assert flat == starts
    sb = read_superblock(image)
    assert os.path.getsize(image) == sb.blocks * bs


def test_directories_are_not_aligned(tree, image):
    """As mkfs.erofs: directory blocks are metadata (its DIRA buffers), placed unaligned."""
    build_image(image, tree, *BASE, "-b1024", "--dsunit=16")
    dirs = {p: blk for p, (kind, blk) in first_data_blocks(image).items() if kind == stat.S_IFDIR}
    assert b"/big" in dirs
    assert any(blk % 16 for blk in dirs.values()), dirs


def test_without_dsunit_files_are_packed(tree, image):
    """The test tree would show misalignment: without --dsunit some file starts off a
    multiple of 16 (else the tests above prove nothing)."""
    build_image(image, tree, *BASE)
    assert misaligned(data_starts(image), 16)


@pytest.mark.parametrize("zopts", [(), ("-zlz4hc", "-Eztailpacking,fragments")],
                         ids=["flat", "lz4hc-ztail-fragments"])
def test_zero_and_one_change_nothing(tree, tmp_path, zopts):
    plain = tmp_path / "plain.erofs"
    build_image(plain, tree, *BASE, *zopts)
    want = plain.read_bytes()
    for opts in (["--dsunit=0"], ["--dsunit=1"], ["--fsalignblks=0"], ["--fsalignblks=1"],
                 ["--dsunit=1", "--fsalignblks=1"]):
        other = tmp_path / "other.erofs"
        build_image(other, tree, *BASE, *zopts, *opts)
        assert other.read_bytes() == want, opts


def test_files_without_blocks_take_no_alignment(src, tmp_path):
    """Compressed files that end up inline (ztailpacking) or in the packed inode take no block,
    so they must not push the next file's blocks further: with one big file after many small
    ones, --dsunit=16 costs at most the alignment of the files that have blocks."""
    for i in range(40):
        write_file(src / f"small_{i:02d}", 3000, pattern=b"tiny compressible %d " % i)
    write_file(src / "zz_big", 200000, seed=1)
    set_tree_times(src)
    sizes = {}
    for opts in ((), ("--dsunit=16",)):
        image = tmp_path / f"img{len(opts)}.erofs"
        build_image(image, src, *BASE, "-zlz4hc", "-Eztailpacking", *opts)
        sizes[opts] = read_superblock(image).blocks
        starts = data_starts(image)
    assert set(starts) == {b"/zz_big"}, "the small files should be inline only"
    assert starts[b"/zz_big"] % 16 == 0
    assert sizes[("--dsunit=16",)] - sizes[()] < 16


@pytest.mark.parametrize("fsalign,multiple", [(3, 4), (5, 8), (8, 8), (100, 128)])
@pytest.mark.parametrize("bs", [4096, 1024])
def test_image_size_is_a_multiple_of_fsalignblks(tree, tmp_path, fsalign, multiple, bs):
    plain = tmp_path / "plain.erofs"
    build_image(plain, tree, *BASE, f"-b{bs}")
    base_blocks = read_superblock(plain).blocks
    image = tmp_path / "aligned.erofs"
    build_image(image, tree, *BASE, f"-b{bs}", f"--fsalignblks={fsalign}")
    blocks = read_superblock(image).blocks
    assert blocks % multiple == 0
    assert base_blocks <= blocks < base_blocks + multiple
    assert os.path.getsize(image) == blocks * bs


def test_fsalignblks_with_dsunit_and_offset(tree, image):
    build_image(image, tree, *BASE, "--dsunit=4", "--fsalignblks=64", "--offset=8192")
    with open(image, "rb") as f:
        raw = f.read()
    sb = read_superblock(image, offset=8192)
    assert sb.blocks % 64 == 0
    assert len(raw) == 8192 + sb.blocks * 4096


def _tar_of(root) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(root)):
            tar.add(root / name, arcname=name, recursive=False)
    return buf.getvalue()


def test_sort_none_stream_is_aligned(src, image):
    """--tar --sort=none from a stream writes each file's data as the tar passes
    (spool.ImageSpool): it is aligned there."""
    for i, size in enumerate((1, 5000, 4096, 12289, 100)):
        write_file(src / f"f{i}", size, seed=i)
    set_tree_times(src)
    run_mkerofs(*BASE, "--tar=f", "--sort=none", "-Enoinline_data", "--dsunit=4", image,
                input=_tar_of(src))
    starts = data_starts(image)
    assert len(starts) == 5
    assert not misaligned(starts, 4)


def test_python_api(tree, image):
    result = build(image, tree, BuildOptions(dsunit=4, fsalignblks=10, uuid=bytes(16),
                                             timestamp=0))
    assert result.blocks % 16 == 0
    assert os.path.getsize(image) == result.size
    assert not misaligned(data_starts(image), 4)


@pytest.mark.parametrize("options,mentions", [
    (dict(dsunit=-1), "dsunit"), (dict(dsunit=2**32), "dsunit"),
    (dict(fsalignblks=-1), "fsalignblks"), (dict(fsalignblks=2**31 + 1), "fsalignblks")])
def test_python_api_refuses_invalid_values(tree, image, options, mentions):
    with pytest.raises(BuildError, match=mentions):
        build(image, tree, BuildOptions(**options))
    assert not image.exists()


@pytest.mark.parametrize("arg", ["--dsunit=abc", "--dsunit=-1", "--dsunit=4294967296",
                                 "--dsunit=16k", "--fsalignblks=x", "--fsalignblks=-3",
                                 "--fsalignblks=2147483649"])
def test_cli_refuses_invalid_values(tree, image, arg):
    r = run_mkerofs(*BASE, arg, image, tree, check=False)
    assert r.returncode == 2
    assert_clean_failure(r, mentions=[arg.split("=")[0].lstrip("-")], image=image)


def test_cli_accepts_c_syntax(tree, image):
    build_image(image, tree, *BASE, "--dsunit=0x10", "--fsalignblks=010")
    assert not misaligned(data_starts(image), 16)
    assert read_superblock(image).blocks % 8 == 0


def test_too_many_blocks_is_a_clear_error(tree, image):
    r = run_mkerofs(*BASE, "--dsunit=4294967295", image, tree, check=False)
    assert_clean_failure(r, mentions=["blocks"], image=image)


def test_help_lists_the_options():
    out = run_mkerofs("--help").stdout
    assert "--dsunit" in out and "--fsalignblks" in out
