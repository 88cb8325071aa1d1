"""Make an xattr-heavy tree for the benchmark: every file with a few user xattrs and an access ACL,
every directory with a default ACL.

    python3 bench/make_xattr_tree.py DIR [--files N]
    python3 bench/bench.py --tree DIR --sets uncompressed,lz4
"""
from __future__ import annotations

import argparse
import os
import struct
from pathlib import Path

# POSIX ACL xattr value (as the kernel's posix_acl_xattr_* structs): a version header, then
# (tag, perm, id) entries sorted by tag
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


def acl_value(uid: int, gid: int) -> bytes:
    entries = [(_USER_OBJ, 6, _NO_ID), (_USER, 6, uid), (_GROUP_OBJ, 4, _NO_ID),
               (_GROUP, 4, gid), (_MASK, 6, _NO_ID), (_OTHER, 4, _NO_ID)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def make_tree(root: Path, files: int) -> None:
    per_dir = 200
    for i in range(files):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
            os.setxattr(d, "system.posix_acl_default", acl_value(1000, 1000))
        f = d / f"f{i:06d}"
        f.write_bytes(b"x" * (i % 3000))
        os.setxattr(f, "user.origin", b"benchmark")              # shared by every file
        os.setxattr(f, "user.index", str(i).encode())              # unique
        os.setxattr(f, "user.group", f"g{i % 16}".encode())        # shared by many
        os.setxattr(f, "system.posix_acl_access", acl_value(1000 + i % 8, 100))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--files", type=int, default=20000)
    args = p.parse_args()
    make_tree(args.dir, args.files)


if __name__ == "__main__":
    main()
