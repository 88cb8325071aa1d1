"""The full test tree (support.trees.make_full_tree) as GNU tar archives it, and an aufs
whiteout appended to such a layer: the inputs of the kernel tests of ``mkerofs --tar``."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .trees import make_full_tree

# GNU tar drops sockets ("socket ignored") and records no hard links between devices or fifos
NOT_IN_TAR = ("special/socket", "links/b/dev_2", "links/b/fifo_2")


def archive_full_tree(base: Path) -> tuple[Path, bytes]:
    """(tree, tar bytes): the full tree made in base/tree without what GNU tar leaves out,
    archived by GNU tar (POSIX format, --sparse, numeric owners)."""
    tree = make_full_tree(base / "tree")
    for rel in NOT_IN_TAR:
        os.unlink(tree / rel)
    # (the links above changed some ctimes only; the mtimes set by make_full_tree stay)
    tarball = base / "tree.tar"
    subprocess.run(["tar", "--format=posix", "--sparse", "--numeric-owner", "-C", str(tree),
                    "-cf", str(tarball), "."], check=True, stderr=subprocess.PIPE)
    return tree, tarball.read_bytes()


def with_whiteout(data: bytes, scratch: Path) -> bytes:
    """The tar `data` with ./files/.wh.gone (an aufs whiteout of files/gone) appended by GNU
    tar, as a layer of a container image would have it; `scratch` is a folder to work in."""
    layer = scratch / "layer.tar"
    layer.write_bytes(data)
    (scratch / "extra" / "files").mkdir(parents=True)
    (scratch / "extra" / "files" / ".wh.gone").write_bytes(b"")
    subprocess.run(["tar", "--format=posix", "-C", str(scratch / "extra"), "-rf", str(layer),
                    "./files/.wh.gone"], check=True)
    return layer.read_bytes()
