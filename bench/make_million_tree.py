"""Make the many-small-files tree for the benchmark: DIRS directories of FILES files each, every
file 0 to 200 bytes (the default: 1,000 x 1,000 = 1,000,000 files, about 100 MB of data).

Per-inode costs dominate such a tree (walk, plan, inode and directory metadata), so it measures
time and memory per inode rather than compression.  The tree is the same on every run: names,
sizes and contents come from a fixed seed.

    python3 bench/make_million_tree.py DIR [--dirs 1000] [--files 1000]
    python3 bench/bench.py --sets million,million-lz4
"""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

SEED = 15
MAX_SIZE = 200


def make_tree(root: Path, dirs: int, files: int) -> None:
    rng = random.Random(SEED)
    # One pool of bytes to slice contents from: text-like, so -z has something to compress.
    pool = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 \n") for _ in range(4096))
    for d in range(dirs):
        directory = root / f"d{d:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            size = rng.randint(0, MAX_SIZE)
            start = rng.randrange(len(pool) - MAX_SIZE)
            fd = os.open(directory / f"f{f:04d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, pool[start:start + size])
            finally:
                os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--files", type=int, default=1000, help="files per directory")
    args = p.parse_args()
    make_tree(args.dir, args.dirs, args.files)


if __name__ == "__main__":
    main()
