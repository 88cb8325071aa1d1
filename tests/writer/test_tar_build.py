"""mkerofs --tar: the build pipeline on tar input, checked without the kernel (the independent
parser in support.oracle reads the images): input from a file, stdin and compressed streams,
--sort=none placing data in tar order, headerball files left as holes, the options mkfs.erofs
ignores in tar mode (--exclude-*, --hard-dereference, -T), the command line (optional values,
stdin, --help), and failures (one line naming the entry, no image, no spool file left)."""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile

import pytest

from support.oracle import image_inodes, read_superblock
from support.run import assert_clean_failure, leftovers, mkerofs_command, mkerofs_env, run_mkerofs

T = 1_700_000_000


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime, info.mode = size, kind, kw.pop("mtime", T), kw.pop("mode", 0o644)
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def make_tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, bytes | None for a directory | ('link', target) | ('sym', target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, what in entries:
            if what is None:
                tf.addfile(_info(name, kind=tarfile.DIRTYPE, mode=0o755))
            elif isinstance(what, tuple):
                kind = tarfile.LNKTYPE if what[0] == "link" else tarfile.SYMTYPE
                tf.addfile(_info(name, kind=kind, linkname=what[1]))
            else:
                tf.addfile(_info(name, len(what)), io.BytesIO(what))
    return buf.getvalue()


ORDERED = [("z", None), ("z/1", b"Z" * 5000), ("b", b"B" * 100), ("a", b"A" * 3000),
           ("d", None), ("d/h", ("link", "a")), ("d/s", ("sym", "../b")), ("e", b"")]


def file_bytes(image, info) -> bytes:
    """A flat (plain or inline) regular file's data, read with the oracle's block address."""
    data = open(image, "rb").read()
    sb = read_superblock(image)
    if info.layout == 0:
        return data[info.raw_blkaddr * sb.block_size:][:info.size]
    raise AssertionError(f"layout {info.layout} not read by this helper")


@pytest.fixture
def tarball(tmp_path):
    path = tmp_path / "in.tar"
    path.write_bytes(make_tar(ORDERED))
    return path


def test_build_from_a_tar_file(tmp_path, tarball):
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", "-Enoinline_data", image, tarball)
    inodes = image_inodes(image)
    assert set(inodes) >= {b"/z/1", b"/b", b"/a", b"/d/h", b"/d/s", b"/e"}
    assert inodes[b"/a"].nid == inodes[b"/d/h"].nid and inodes[b"/a"].nlink == 2
    assert file_bytes(image, inodes[b"/z/1"]) == b"Z" * 5000
    assert file_bytes(image, inodes[b"/a"]) == b"A" * 3000
    assert inodes[b"/b"].mtime == T


def test_sort_none_places_data_in_tar_order(tmp_path, tarball):
    blocks = {}
    for sort in ("path", "none"):
        image = tmp_path / f"{sort}.erofs"
        run_mkerofs("--tar", f"--sort={sort}", "-Enoinline_data", image, tarball)
        inodes = image_inodes(image)
        blocks[sort] = [inodes[p].raw_blkaddr for p in (b"/z/1", b"/b", b"/a")]
        assert file_bytes(image, inodes[b"/b"]) == b"B" * 100
    z, b, a = blocks["path"]
    assert a < b < z, "path order: a, b, then z/1"
    z, b, a = blocks["none"]
    assert z < b < a, "--sort=none: tar order z/1, b, a"


def test_sort_none_needs_noinline_data_as_in_mkfs_erofs(tmp_path):
    tarball = tmp_path / "yx.tar"
    tarball.write_bytes(make_tar([("y", b"Y" * 9000), ("x", b"X" * 9000)]))
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", "--sort=none", image, tarball)
    inodes = image_inodes(image)
    assert inodes[b"/x"].raw_blkaddr < inodes[b"/y"].raw_blkaddr


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_stdin_compressed(tmp_path, compress):
    raw = make_tar(ORDERED)
    if compress == "gzip":
        stream = gzip.compress(raw)
    else:
        import zstandard
        stream = zstandard.ZstdCompressor().compress(raw)
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", "-Enoinline_data", image, input=stream)
    assert file_bytes(image, image_inodes(image)[b"/z/1"]) == b"Z" * 5000


def test_plain_tar_on_stdin_with_trailing_zeros_is_drained(tmp_path):
    image = tmp_path / "out.erofs"
    proc = subprocess.Popen(mkerofs_command() + ["--tar=f", "--quiet", str(image)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=mkerofs_env())
    proc.stdin.write(make_tar(ORDERED) + bytes(8 << 20))    # more than a pipe buffer
    proc.stdin.close()
    assert proc.wait() == 0, proc.stderr.read()
    assert image_inodes(image)[b"/b"].size == 100


def test_stdin_redirected_from_a_tar_file_is_read_in_place(tmp_path):
    """stdin that is a plain tar file (`< layer.tar`) is read in place as a TAR path is: no
    spool (an unusable TMPDIR does not matter), the same image as by path and through a pipe;
    a pipe still needs the spool.  Not so with --sort=none, whose layout differs for a stream."""
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(make_tar(ORDERED))
    args = ["--tar=f", "-T", str(T), "-U", "6a1b3e4f-0000-4000-8000-000000000001"]
    by_path, piped, redirected = (tmp_path / n for n in ("path.erofs", "pipe.erofs", "redir.erofs"))
    run_mkerofs(*args, by_path, tarball)
    run_mkerofs(*args, piped, input=tarball.read_bytes())
    no_tmp = {"TMPDIR": str(tmp_path / "missing")}
    with open(tarball, "rb") as f:
        r = subprocess.run(mkerofs_command() + [str(a) for a in args + [redirected]], stdin=f,
                           env=mkerofs_env(no_tmp), capture_output=True)
    assert r.returncode == 0, r.stderr
    assert redirected.read_bytes() == by_path.read_bytes() == piped.read_bytes()
    r = run_mkerofs(*args, tmp_path / "x.erofs", check=False, env=no_tmp,
                    input=tarball.read_bytes())
    assert r.returncode != 0 and "TMPDIR" in r.stderr
    with open(tarball, "rb") as f:
        r = subprocess.run(mkerofs_command() + [str(a) for a in args + [
            "--sort=none", "-Enoinline_data", tmp_path / "s.erofs"]], stdin=f,
            env=mkerofs_env(no_tmp), capture_output=True)
    assert r.returncode == 0, r.stderr      # (written into the image as read: no spool either)


def test_python_api_with_a_file_object(tmp_path):
    from mkerofs import BuildOptions
    from mkerofs.writer.build import build
    from mkerofs.writer.options import TarOptions
    image = tmp_path / "api.erofs"
    build(image, io.BytesIO(make_tar(ORDERED)),
          BuildOptions(tar=TarOptions(), inline_data=False, timestamp=T))
    assert image_inodes(image)[b"/a"].size == 3000


def test_headerball_files_are_holes(tmp_path):
    # headers only: the payloads of regular files are absent from the stream; each file becomes
    # chunk-based, one chunk (a power of two, at least a block) whose block map entry is a hole
    buf = io.BytesIO()
    for info in (_info("f", 5 * 4096 + 7), _info("g", 10), _info("e", 0)):
        buf.write(info.tobuf(tarfile.USTAR_FORMAT))
    buf.write(bytes(1024))
    tarball = tmp_path / "hb.tar"
    tarball.write_bytes(buf.getvalue())
    image = tmp_path / "hb.erofs"
    run_mkerofs("--tar=headerball", "-Enoinline_data", image, tarball)
    sb = read_superblock(image)
    assert sb.blocks == 1 and image.stat().st_size == 4096, "no data blocks"
    assert sb.feature_incompat & 0x4, "INCOMPAT_CHUNKED_FILE"
    inodes = image_inodes(image)
    raw = image.read_bytes()
    # chunk format = chunk bits - block bits: 2^15 bytes cover f, one block covers g
    for name, size, chunkformat in ((b"/f", 5 * 4096 + 7, 3), (b"/g", 10, 0)):
        ino = inodes[name]
        assert (ino.layout, ino.size, ino.raw_blkaddr) == (4, size, chunkformat), name
        map_pos = sb.meta_blkaddr * 4096 + ino.nid * 32 + (64 if ino.extended else 32)
        assert ino.xattr_icount == 0
        assert raw[map_pos:map_pos + 4] == b"\xff" * 4, f"{name}: a hole (EROFS_NULL_ADDR)"
    assert inodes[b"/e"].layout == 0 and inodes[b"/e"].size == 0, "empty files stay flat"


def test_exclusions_and_hard_dereference_apply_to_tar_paths(tmp_path, tarball):
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", "--exclude-path=z", "--exclude-regex=^d/s$", "--hard-dereference",
                image, tarball)
    inodes = image_inodes(image)
    assert b"/z" not in inodes and b"/z/1" not in inodes and b"/d/s" not in inodes
    assert inodes[b"/a"].nid != inodes[b"/d/h"].nid
    assert inodes[b"/a"].nlink == inodes[b"/d/h"].nlink == 1
    assert inodes[b"/"].nlink == 3      # z is gone: only d is a subdirectory


@pytest.mark.parametrize("args, want", [(["-T", "1000"], 1000), (["-T", "1000", "--mkfs-time"], T)])
def test_timestamp_options_on_tar_entries(tmp_path, tarball, args, want):
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", *args, image, tarball)
    inodes = image_inodes(image)
    assert {inodes[p].mtime for p in (b"/a", b"/z/1", b"/d")} == {want}


def test_source_date_epoch_clamps_tar_mtimes(tmp_path, tarball):
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", image, tarball, env={"SOURCE_DATE_EPOCH": T - 5})
    assert image_inodes(image)[b"/a"].mtime == T - 5


def test_bad_tar_names_the_entry_and_leaves_nothing(tmp_path):
    data = bytearray(make_tar(ORDERED, fmt=tarfile.USTAR_FORMAT))
    # the header of "b" (after z/, z/1 and its 5000 bytes of data): break its checksum
    offset = data.find(b"b\0\0\0")
    assert offset > 0 and offset % 512 == 0
    data[offset + 148:offset + 156] = b"0000000\0"
    tarball = tmp_path / "bad.tar"
    tarball.write_bytes(bytes(data))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    image = out / "bad.erofs"
    for source in (tarball, None):      # from the file, and through a pipe (spooled)
        args = ["--tar=f", image] + ([tarball] if source else [])
        r = run_mkerofs(*args, check=False, env={"TMPDIR": spool_dir},
                        input=None if source else bytes(data))
        msg = assert_clean_failure(r, image=image, mentions=[str(offset)])
        assert "checksum" in msg.lower()
        assert leftovers(out) == [] and leftovers(spool_dir) == []


def test_truncated_stream_fails_cleanly(tmp_path):
    data = make_tar(ORDERED)
    image = tmp_path / "cut.erofs"
    r = run_mkerofs("--tar=f", image, check=False, input=data[:3000])
    assert_clean_failure(r, image=image, mentions=["z/1"])


# -- the command line ------------------------------------------------------------------------

def test_help_lists_tar_for_containerd():
    r = run_mkerofs("--help")
    assert "--tar=" in r.stdout and "--aufs" in r.stdout and "--sort" in r.stdout


def test_tar_value_must_be_attached(tmp_path, tarball):
    # as getopt: `--tar i out.erofs` is --tar (full) with IMAGE=i and SOURCE=out.erofs
    r = run_mkerofs("--tar", "i", str(tmp_path / "missing.tar"), check=False, cwd=tmp_path)
    assert_clean_failure(r, mentions=["missing.tar"])
    assert not (tmp_path / "i").exists()


def test_tar_index_spellings(tmp_path, tarball):
    """--tar=0 is --tar=i, and a mode once i stays i (as mkfs.erofs): 512-byte blocks, a device
    table (tests/writer/test_tarindex.py checks these images in full)."""
    for n, values in enumerate((["0"], ["i", "f"])):
        image = tmp_path / f"out{n}.erofs"
        run_mkerofs(*(f"--tar={v}" for v in values), "--quiet", image, tarball)
        sb = read_superblock(image)
        assert sb.blkszbits == 9 and sb.feature_incompat & 0x8, values


def test_third_positional_and_tar_options_without_tar(tmp_path, tarball):
    image = tmp_path / "out.erofs"
    r = run_mkerofs("--tar=f", image, tarball, "extra", check=False)
    assert r.returncode != 0 and not image.exists()
    src = tmp_path / "dir"
    src.mkdir()
    for opt in ("--aufs", "--sort=none", "--ungzip", "--ovlfs-strip"):
        r = run_mkerofs(opt, image, src, check=False)
        assert_clean_failure(r, image=image, mentions=[opt.split("=")[0], "--tar"])


def test_ungzip_dump_writes_the_decompressed_stream(tmp_path):
    raw = make_tar(ORDERED)
    gz = tmp_path / "in.tar.gz"
    gz.write_bytes(gzip.compress(raw))
    dump = tmp_path / "dump.tar"
    image = tmp_path / "out.erofs"
    run_mkerofs("--tar=f", f"--ungzip={dump}", image, gz)
    assert dump.read_bytes() == raw
    assert image_inodes(image)[b"/z/1"].size == 5000


def test_containerd_command_line(tmp_path, tarball):
    image = tmp_path / "layer.erofs"
    uuid = "0123abcd-4567-89ef-0123-456789abcdef"
    r = run_mkerofs("--tar=f", "--aufs", "--quiet", "-Enoinline_data", "-U", uuid, image,
                    input=make_tar(ORDERED + [(".wh.gone", b"")]))
    assert r.stdout == "" and r.stderr == ""
    assert read_superblock(image).uuid == bytes.fromhex(uuid.replace("-", ""))
    assert b"/gone" in image_inodes(image)


def test_file_contexts_and_no_xattrs_on_tar_paths(tmp_path):
    tarball = tmp_path / "x.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = _info("a", 3)
        info.pax_headers = {"SCHILY.xattr.user.k": "v"}
        tf.addfile(info, io.BytesIO(b"aaa"))
        tf.addfile(_info("b", 3), io.BytesIO(b"bbb"))
    tarball.write_bytes(buf.getvalue())
    contexts = tmp_path / "file_contexts"
    contexts.write_text("/b\tu:object_r:b_t:s0\n")
    image = tmp_path / "fc.erofs"
    run_mkerofs("--tar=f", f"--file-contexts={contexts}", image, tarball)
    from mkerofs.reader import Image
    with Image.open(image) as img:
        assert img.xattrs(img.lookup(b"/b")) == [(b"security.selinux", b"u:object_r:b_t:s0")]
        assert img.xattrs(img.lookup(b"/a")) == [(b"user.k", b"v")]   # no label matches /a
    run_mkerofs("--tar=f", "-x-1", f"--file-contexts={contexts}", image, tarball)
    inodes = image_inodes(image)
    assert inodes[b"/b"].xattr_icount == 0 and inodes[b"/a"].xattr_icount == 0
    run_mkerofs("--tar=f", image, tarball)
    assert image_inodes(image)[b"/b"].xattr_icount == 0


@pytest.mark.parametrize("label, given, want", [
    (b"layer-7", None, b"layer-7"),                          # the tar names the image
    (b"0123456789abcdefXYZ", None, b"0123456789abcdef"),     # 16 bytes at most, as mkfs.erofs
    (b"from-tar", "cli-label", b"cli-label"),                # -L wins
])
def test_gnu_volume_header_labels_the_image(tmp_path, label, given, want):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    tar = tmp_path / "v.tar"
    subprocess.run(["tar", "-cf", str(tar), "-V", label.decode(), "-C", str(src), "."], check=True)
    image = tmp_path / "v.erofs"
    run_mkerofs("--tar=f", "--quiet", *(["-L", given] if given else []), image, tar)
    assert read_superblock(image).label == want
    assert image_inodes(image)[b"/f"].size == 4
