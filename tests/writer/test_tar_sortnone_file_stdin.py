"""--sort=none from a plain tar file on stdin (``mkerofs --tar=f --sort=none IMG < layer.tar``):
the files' bytes are copied from the tar into the image by a forked process (spool.TarCopier),
not read through the parser; the image is byte for byte the one the same tar gives through a
pipe (read, and written as it passes by another forked process: spool._ForkedGather).  A
write that fails in either process fails the build as any other."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import tarfile

import pytest

from support.mounts import tmpfs_mount
from support.run import assert_clean_failure, leftovers, mkerofs_command, mkerofs_env
from support.tars import END, entry, oldgnu_sparse

T = 1_700_000_000
ARGS = ["--tar=f", "--aufs", "--quiet", "-Enoinline_data", "--sort=none", "-T", str(T),
        "-U", "11111111-2222-3333-4444-555555555555"]


def _tar() -> bytes:
    """Small, block-sized, 64 KiB+ and multi-MiB files, an empty one, a replaced one (its
    blocks stay in the image), a whiteout, hundreds of small files, a hard link, then an
    old-GNU sparse entry (copied by the parser itself) between other files."""
    rnd = os.urandom(3 << 20)
    # (several batches of the copier's queue: the build's process takes the last ones too)
    many = [(f"many/{i}", bytes([i % 251]) * (i * 37 % 9000 + 1)) for i in range(700)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [("a", b"A" * 5000), ("big", rnd), ("b", b"B" * 4096),
                           ("empty", b""), ("mid", rnd[:70001]), ("a", b"new a" * 999),
                           ("d/.wh.gone", b""), ("d/x", b"x" * 12345)] + many:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.size = T, 0o644, len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("d/link")
        link.type, link.linkname, link.mtime = tarfile.LNKTYPE, "b", T
        tf.addfile(link)
    body = buf.getvalue().rstrip(b"\0")
    body += bytes(-len(body) % 512)
    sparse = entry(b"sp", b"abc", typeflag=b"S", magic=b"ustar  \0",
                   prefix=oldgnu_sparse([(0, 3)], 10000), mtime=T)
    return body + sparse + entry(b"z", b"Z" * 9000, mtime=T) + END


def _build(image, stdin, tmp_path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(mkerofs_command() + ARGS + [*extra, str(image)], stdin=stdin,
                          env=mkerofs_env({"TMPDIR": tmp_path / "no-tmp"}),
                          capture_output=True)


def _piped(tar_bytes: bytes, image, *extra) -> bytes:
    """The image of the tar through a pipe (read by the parser, written as it passes)."""
    r = subprocess.run(mkerofs_command() + ARGS + [*extra, str(image)], input=tar_bytes,
                       env=mkerofs_env(), capture_output=True)
    assert r.returncode == 0, r.stderr
    return image.read_bytes()


@pytest.fixture(scope="module")
def tar_bytes() -> bytes:
    return _tar()


@pytest.fixture
def piped(tar_bytes, tmp_path) -> bytes:
    return _piped(tar_bytes, tmp_path / "piped.erofs")


@pytest.mark.parametrize("extra", [[], ["--offset=8192"], ["--dsunit=4"], ["-b", "1024"]])
def test_tar_file_on_stdin_gives_the_piped_image(extra, tar_bytes, tmp_path):
    """--offset shifts every write; --dsunit leaves gaps between files (a run of files
    copied together ends at one); other block sizes pad differently."""
    piped = _piped(tar_bytes, tmp_path / "piped.erofs", *extra)
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(tar_bytes)
    image = tmp_path / "file.erofs"
    with open(tarball, "rb") as f:
        r = _build(image, f, tmp_path, *extra)
    assert r.returncode == 0, r.stderr
    got = image.read_bytes()
    assert len(got) == len(piped)
    assert got == piped
    if not extra:
        # the replaced "a" keeps its blocks, right after the superblock's: copied too
        assert got[4096:4096 + 5000] == b"A" * 5000


def test_stdin_read_from_where_it_stands(tar_bytes, piped, tmp_path):
    """Stdin left at byte N of a file (``{ head -c N; mkerofs ...; } < f``): the tar starts
    there, and so do the offsets the copy reads from."""
    tarball = tmp_path / "in.tar"
    junk = b"\xee" * 1000
    tarball.write_bytes(junk + tar_bytes)
    image = tmp_path / "file.erofs"
    with open(tarball, "rb") as f:
        f.seek(len(junk))
        r = _build(image, f, tmp_path)
    assert r.returncode == 0, r.stderr
    assert image.read_bytes() == piped


def test_truncated_tar_file_fails_cleanly(tar_bytes, tmp_path):
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(tar_bytes[:2 << 20])        # ends inside "big"
    image = tmp_path / "out.erofs"
    with open(tarball, "rb") as f:
        r = _build(image, f, tmp_path)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    assert_clean_failure(r, image=image)
    assert leftovers(tmp_path) == ["in.tar"]


def test_without_copy_file_range(tar_bytes, piped, tmp_path, monkeypatch):
    """Where copy_file_range is refused between the two files (EXDEV on old kernels), the
    copy goes through memory, to the same image."""
    from mkerofs import BuildOptions
    from mkerofs.writer.build import build
    from mkerofs.writer.options import TarOptions
    from mkerofs.writer import spool

    refused = tmp_path / "refused"          # (written by the forked copier)

    def refuse(*args):
        with open(refused, "a") as f:
            f.write(f"{os.getpid()}\n")
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(tar_bytes)
    image = tmp_path / "api.erofs"
    options = BuildOptions(tar=TarOptions(aufs=True, sort="none"), inline_data=False,
                           timestamp=T, uuid=bytes.fromhex("11111111222233334444555555555555"))
    started = []
    real_start = spool.TarCopier.start
    monkeypatch.setattr(spool.TarCopier, "start",
                        lambda self: (started.append(self), real_start(self))[1])
    with open(tarball, "rb") as f:
        build(image, f, options)
    assert started, "the copy was not forked"
    # (the forked copier and, at the end, the build's own process: each tries once)
    tries = refused.read_text().split()
    assert tries and len(tries) == len(set(tries)), "copy_file_range tried again after EXDEV"
    assert image.read_bytes() == piped


@pytest.mark.root
@pytest.mark.parametrize("stdin", ["file", "pipe"])
def test_full_disk_fails_cleanly(stdin, tar_bytes, tmp_path):
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(tar_bytes)
    with tmpfs_mount("1m") as fs, open(tarball, "rb") as f:
        image = fs / "img.erofs"
        if stdin == "file":
            r = _build(image, f, tmp_path)
        else:
            r = subprocess.run(mkerofs_command() + ARGS + [str(image)], input=tar_bytes,
                               env=mkerofs_env(), capture_output=True)
        r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
        assert_clean_failure(r, mentions_any=["no space left"], image=image)
        assert leftovers(fs) == []
