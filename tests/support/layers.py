"""Layer trees for rebuild mode (``mkerofs OUT L1.erofs L2.erofs ...``) and a comparable
snapshot of a mounted (or read) tree.

The three layers follow tools/layers-notes.md section 0 (L3 on top): a file replaced, a file
turning into a directory, whiteouts (``c 0:0``) of a file and of a directory, an opaque
directory, hard links, xattrs, a symlink, a device and a fifo; plus the xwhiteout case: ``x``
(opaque "x" with a zero-size file carrying trusted.overlay.whiteout, which hides the lower
``x/a`` and keeps ``x/b``) and ``y`` (opaque "y").
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .compare import host_content
from .trees import write_file

MTIME = 1600000000
OVERLAY_PREFIX = b"trusted.overlay."


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(0, 0))


def make_layer_trees(root: Path) -> list[Path]:
    """Create L1, L2, L3 under `root` (bottom first) and return them."""
    l1, l2, l3 = (root / n for n in ("L1", "L2", "L3"))
    for d in ("a/sub", "b", "dir_to_del", "opq", "emptyd", "x", "y"):
        (l1 / d).mkdir(parents=True)
    (l1 / "a/f1").write_bytes(b"f1\n")
    (l1 / "a/sub/deep").write_bytes(b"deep\n")
    (l1 / "b/x").write_bytes(b"x\n")
    (l1 / "c").write_bytes(b"c\n")
    (l1 / "hl1").write_bytes(b"hard\n")
    os.link(l1 / "hl1", l1 / "hl2")
    os.symlink("a/f1", l1 / "sym")
    write_file(l1 / "big", 10000, seed=1)
    write_file(l1 / "huge", 3 * 4096 + 100, seed=2)
    write_file(l1 / "text", 20000, pattern=b"compressible ")
    (l1 / "gone").write_bytes(b"g\n")
    (l1 / "dir_to_del/y").write_bytes(b"y\n")
    (l1 / "opq/old1").write_bytes(b"o1\n")
    (l1 / "opq/old2").write_bytes(b"o2\n")
    (l1 / "keep").write_bytes(b"k\n")
    os.setxattr(l1 / "keep", "user.k", b"1")
    os.setxattr(l1 / "keep", "trusted.t", b"2")
    os.mknod(l1 / "cdev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mkfifo(l1 / "fifo")
    for name in ("x/a", "x/b", "y/g"):
        (l1 / name).write_bytes(name.encode())

    for d in ("a", "opq", "c", "newdir", "x", "y"):
        (l2 / d).mkdir(parents=True)
    (l2 / "a/f1").write_bytes(b"f1 new\n")
    (l2 / "a/f2").write_bytes(b"f2\n")
    _whiteout(l2 / "a/nothere")
    _whiteout(l2 / "gone")
    _whiteout(l2 / "dir_to_del")
    os.setxattr(l2 / "opq", "trusted.overlay.opaque", b"y")
    (l2 / "opq/new1").write_bytes(b"n1\n")
    (l2 / "c/inner").write_bytes(b"inner\n")
    (l2 / "newdir/n").write_bytes(b"n\n")
    write_file(l2 / "big2", 5000, seed=3)
    os.setxattr(l2 / "x", "trusted.overlay.opaque", b"x")
    (l2 / "x/a").write_bytes(b"")
    os.setxattr(l2 / "x/a", "trusted.overlay.whiteout", b"")
    (l2 / "x/new").write_bytes(b"new\n")
    os.setxattr(l2 / "y", "trusted.overlay.opaque", b"y")
    (l2 / "y/h").write_bytes(b"h\n")

    (l3 / "a").mkdir(parents=True)
    (l3 / "b").mkdir()
    _whiteout(l3 / "a/f2")
    (l3 / "b/x").write_bytes(b"x new\n")
    os.symlink("../keep", l3 / "b/ks")
    (l3 / "hl2").write_bytes(b"not a link any more\n")
    for layer in (l1, l2, l3):
        set_times(layer)
    return [l1, l2, l3]


def set_times(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(top, (MTIME, MTIME))


def snapshot(top: Path, *, root: bool = True) -> dict[str, tuple]:
    """{path: what a user sees}: type and mode, owner, mtime, content (sha256 of a file, a
    symlink's target, a device's numbers), non-directories' link counts and the xattrs outside
    trusted.overlay. (which overlayfs hides).  `root` False leaves the root out."""
    top_b = os.fsencode(top)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top_b):
        dirnames.sort()
        for name in [b""] + sorted(dirnames + filenames):
            if not name and (dirpath != top_b or not root):
                continue
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            mode = st.st_mode
            content = host_content(path, st)
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)
                                  if not os.fsencode(n).startswith(OVERLAY_PREFIX)))
            nlink = None if stat.S_ISDIR(mode) else st.st_nlink
            rel = "/" + os.fsdecode(os.path.relpath(path, top_b)).removeprefix(".")
            out[rel.replace("//", "/")] = (oct(mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                                           content, nlink, xattrs)
    return out


def differences(want: dict, got: dict) -> list[str]:
    """Readable differences between two snapshots."""
    diffs = [f"{p}: missing" for p in sorted(set(want) - set(got))]
    diffs += [f"{p}: unexpected" for p in sorted(set(got) - set(want))]
    diffs += [f"{p}: {got[p]} != {want[p]}" for p in sorted(set(want) & set(got))
              if want[p] != got[p]]
    return diffs
