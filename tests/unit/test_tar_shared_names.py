"""A tar's entries of one name share one bytes object (tarsource.read_tar_tree): the name
each file keeps (`where`) and its directory's key for it, whichever directory it is in; the
paths and the tree stay what they were."""
from __future__ import annotations

import io
import tarfile

from mkerofs.writer.spool import Spool
from mkerofs.writer.tarsource import _NAMES_KEPT, TarTreeOptions, read_tar_tree
from mkerofs.writer.tarstream import TarReader


def _tar(names: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = 1, 0o644
                tf.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


def _children(tmp_path, names: list[str]):
    options = TarTreeOptions(root_uid=0, root_gid=0, build_time=10**9)
    tmp_path.mkdir(exist_ok=True)
    with Spool(tmp_path) as spool:
        root, _count = read_tar_tree(TarReader(io.BytesIO(_tar(names))), options, spool)
    found = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        for name, child in directory.entries:
            found[child.path] = (name, child)
            if child.entries is not None:
                pending.append(child)
    return found


def test_files_of_one_name_share_it(tmp_path):
    found = _children(tmp_path / "a", ["p/", "p/__init__.py", "q/", "q/__init__.py",
                                        "q/r/", "q/r/__init__.py", "p/other.py"])
    inits = [found[p] for p in (b"p/__init__.py", b"q/__init__.py", b"q/r/__init__.py")]
    first_name, first = inits[0]
    for name, node in inits:
        assert name == b"__init__.py" and name is first_name and node.where is first.where
    assert found[b"p/other.py"][0] == b"other.py"
    assert {p for p in found} == {b"p", b"q", b"q/r", b"p/__init__.py", b"q/__init__.py",
                                  b"q/r/__init__.py", b"p/other.py"}


def test_names_shared_past_the_kept_count(tmp_path):
    # (more distinct names than are kept: the table starts afresh, the tree is still whole)
    many = [f"d/f{i}" for i in range(_NAMES_KEPT + 10)]
    found = _children(tmp_path / "b", ["d/", *many, "e/", "e/f1"])
    assert len(found) == len(many) + 3
    assert found[b"e/f1"][1].path == b"e/f1" and found[b"d/f1"][0] == b"f1"
