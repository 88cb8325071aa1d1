#!/usr/bin/env python3
"""Time mkerofs against mkfs.erofs on the same tree with the same options.

For every option set (uncompressed, -zlz4, -zlz4hc, -zzstd, -zdeflate, -zlzma, --chunksize=1M,
-Ededupe without compression, the tar rows, and the sparse rows: sparse, sparse-lz4,
sparse-chunks-1m on a tree of two sparse files of --sparse-gib GiB, made once in --workdir)
both tools build an image of the same source tree; the script reports the median wall time, CPU
time, peak RSS and image size of each tool and the ratio mkerofs / mkfs.erofs.

The tar rows (tar, tar-lz4hc, tar-containerd, tar-containerd-sortnone, tar-containerd-index) feed the same tree as one
POSIX tar (made once with GNU tar --format=posix, cached in --workdir) on standard input, IMAGE
being the only operand: stdin is the tar file itself (--tar-stdin=file, the default) or a pipe
the tar is written into (--tar-stdin=pipe, as containerd feeds a layer); the time includes
reading it.  The tar-containerd rows are containerd's own command line (`--tar=f --aufs --quiet
-Enoinline_data -U UUID`, its erofs differ; `--tar=i --aufs --quiet -U UUID`, its tar-index
mode, whose image is metadata only): -T 0 is not added to them (--extra still is).

The layer rows stack the tree split into 4 layers (made once in --workdir: directories of hard
links to the tree's files, and their images, built flat with -Enoinline_data so that mkfs.erofs
can point into them; layer 1 holds half the files, 2 and 3 the other half and some of layer 1's
again, 4 a few more and whiteouts of some of layer 1's files).  rebuild: `IMAGE L1 L2 L3 L4`
(the image points into the layers); rebuild-clean: the same with --clean=data (the data copied).
incremental: `--incremental IMAGE layer2-dir` over a base image of layer 1 built by the same
tool (a fresh copy of it before each run, outside the timed part).

The million rows (million, million-lz4) build another tree instead: 1,000 directories of 1,000
files of 0 to 200 bytes (bench/make_million_tree.py, made once in --workdir: about a minute and
4 GiB of page cache), where the cost per inode dominates; they add a "bytes per inode" row,
each tool's peak RSS divided by the tree's inodes.

    python bench/bench.py                  # default tree (stdlib + site-packages copy), all sets
    python bench/bench.py --sets lz4,zstd --runs 5 --json out.json
    python bench/bench.py --sets tar,tar-containerd --tar-stdin=pipe
    python bench/bench.py --sets rebuild,rebuild-clean,incremental
    python bench/bench.py --tree /some/dir --check

mkerofs is timed as a user installs it: a virtual environment made once in --workdir (python -m
venv with this Python, then `pip install` of the project, not editable, its dependencies from the
package registry), whose `mkerofs` console script runs each build.  Its directory is named after
a hash of mkerofs/, pyproject.toml and README.md (the package's long description) and of this
Python, so a change to the sources makes a new one (the old ones are removed).  No sandbox .pth of the base Python, no editable-install finder
and no PYTHONPATH reach that build.  If the environment cannot be made (no network, no venv
module), the script says so and runs `python -m mkerofs` from this repository instead, as
--mkerofs can also ask for any command line.

Only the standard library is used.  A tool that is missing, or that rejects an option set
(non-zero exit), is reported as such; the script still exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A fixed build time and UUID make both tools' images reproducible run after run, so sizes are
# comparable and a rerun builds the very same bytes.
FIXED_UUID = "00000000-0000-0000-0000-000000000000"
COMMON_ARGS = ["-T", "0", "-U", FIXED_UUID]



@dataclass(frozen=True)
class OptionSet:
    """The options one row gives both tools, and how the tree reaches them."""
    options: list[str]
    tar: bool = False        # the tree as one tar on stdin; IMAGE is the only operand
    verbatim: bool = False   # options are a whole command line: no COMMON_ARGS, no --quiet added
    self_contained: bool = True     # False: the image needs its devices (the tar of --tar=i,
                                    # the layers of rebuild mode): fsck alone fails
    layers: bool = False     # the tree as layer images: IMAGE L1 L2 L3 L4 (rebuild mode)
    incremental: bool = False       # IMAGE: a fresh copy of a base built from layer 1,
                                    # SOURCE: layer 2's directory
    million: bool = False    # the generated 1,000,000-file tree instead (make_million_tree.py)

    def argv(self, quiet: bool, extra: list[str]) -> list[str]:
        if self.verbatim:
            return self.options + extra
        return COMMON_ARGS + (["--quiet"] if quiet else []) + self.options + extra


# containerd's erofs differ converts each layer with this command line (stdin: the layer's tar).
CONTAINERD_ARGS = ["--tar=f", "--aufs", "--quiet", "-Enoinline_data", "-U", FIXED_UUID]
# ... and its tar-index mode this one (the image is metadata only; the tar is appended after).
CONTAINERD_INDEX_ARGS = ["--tar=i", "--aufs", "--quiet", "-U", FIXED_UUID]

# Row name -> options given to both tools.
OPTION_SETS: dict[str, OptionSet] = {
    "uncompressed": OptionSet([]),
    "lz4": OptionSet(["-zlz4"]),
    "lz4hc": OptionSet(["-zlz4hc"]),
    "zstd": OptionSet(["-zzstd"]),
    "deflate": OptionSet(["-zdeflate"]),
    "lzma": OptionSet(["-zlzma"]),
    # chunk-based files: 1 MiB chunks, and -Ededupe without compression (block-sized chunks,
    # each hashed and looked up)
    "chunks-1m": OptionSet(["--chunksize=1048576"]),
    "chunk-dedupe": OptionSet(["-Ededupe"]),
    "tar": OptionSet(["--tar=f"], tar=True),
    "tar-lz4hc": OptionSet(["--tar=f", "-zlz4hc"], tar=True),
    "tar-containerd": OptionSet(CONTAINERD_ARGS, tar=True, verbatim=True),
    # containerd's documented way to keep a layer's data in tar order (mkfs_options).
    "tar-containerd-sortnone": OptionSet(CONTAINERD_ARGS + ["--sort=none"], tar=True,
                                         verbatim=True),
    "tar-containerd-index": OptionSet(CONTAINERD_INDEX_ARGS, tar=True, verbatim=True,
                                      self_contained=False),
    "rebuild": OptionSet([], layers=True, self_contained=False),
    "rebuild-clean": OptionSet(["--clean=data"], layers=True),
    "incremental": OptionSet(["--incremental"], incremental=True),
    # 1,000 directories of 1,000 files of 0 to 200 bytes: the cost per inode
    "million": OptionSet([], million=True),
    "million-lz4": OptionSet(["-zlz4"], million=True),
}

# Sparse files (issue #15): their own tree (sparse_tree), holes that neither tool should read.
SPARSE_SETS: dict[str, OptionSet] = {
    "sparse": OptionSet([]),
    "sparse-lz4": OptionSet(["-zlz4"]),
    "sparse-chunks-1m": OptionSet(["--chunksize=1048576"]),
}
OPTION_SETS.update(SPARSE_SETS)

LAYER_COUNT = 4
# (mkfs.erofs points into flat files only: no inline tails in the layers)
LAYER_ARGS = ["--quiet", "-Enoinline_data"]

# The locally built erofs-utils (newest release) is preferred over Debian's older one on PATH.
LOCAL_MKFS = "/work/erofs-utils-install/bin/mkfs.erofs"

MKEROFS = "mkerofs"
MKFS = "mkfs.erofs"


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class Tool:
    name: str
    argv: list[str]          # command prefix; options, IMAGE and SOURCE are appended
    available: bool = True
    note: str = ""           # why it is unavailable, or what was noticed while probing
    version: str = ""
    quiet_ok: bool = False   # accepts --quiet
    from_repo: bool = True   # runs this repository's mkerofs/ (PYTHONPATH), not an installed copy

    def env(self) -> dict[str, str]:
        return child_env(self.from_repo)


@dataclass
class Run:
    wall_s: float
    cpu_s: float             # user + system of the child and its waited-for descendants
    maxrss_kib: int          # peak RSS of the largest single process of the build (see SPAWNER)
    exit_code: int
    timed_out: bool = False
    image_bytes: int = 0
    alloc_bytes: int = 0     # blocks actually allocated on disk (sparse images are smaller)
    load1: float = 0.0       # 1-minute load average when the run started: other work skews times

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class Outcome:
    """All runs of one tool on one option set."""
    status: str = "ok"       # ok | rejected (non-zero exit) | timeout | missing | no tar |
                             # no layers
    error: str = ""          # last lines of the tool's output when it failed
    runs: list[Run] = field(default_factory=list)
    fsck: str = ""           # pass | FAIL | "" (not checked)

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if r.ok]
        return statistics.median(values) if values else None


@dataclass
class Inputs:
    """The tree, and for the tar rows the same tree as a tar on stdin."""
    tree: Path
    tar_stdin: Stdin
    tar_error: str = ""      # why there is no tar (the tar rows report it instead of running)
    layers: "Layers | None" = None
    layers_error: str = ""   # why there are no layers (the layer rows report it)
    million: Path | None = None     # the million sets' tree (made once in --workdir)
    million_stats: TreeStats | None = None

    @property
    def million_inodes(self) -> int:
        """The million tree's inodes (root included): peak RSS is divided by them."""
        return self.million_stats.entries + 1 if self.million_stats else 0


@dataclass
class Layers:
    """The tree split into layers: their directories and their images, bottom first."""
    dirs: list[Path]
    images: list[Path]


@dataclass
class TreeStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    other: int = 0
    bytes: int = 0

    @property
    def entries(self) -> int:
        return self.files + self.dirs + self.symlinks + self.other


# --------------------------------------------------------------------------------------------
# The source tree


def default_workdir() -> Path:
    tmp = os.environ.get("TMPDIR")
    return Path(tmp) / "mkerofs-bench" if tmp else REPO / "build" / "bench"


def tree_sources() -> list[tuple[str, Path]]:
    """The running Python's stdlib and site-packages, each once (site-packages usually lives
    inside the stdlib directory and must not be copied twice)."""
    paths = sysconfig.get_paths()
    sources: list[tuple[str, Path]] = []
    for label, key in (("stdlib", "stdlib"), ("site-packages", "purelib")):
        p = Path(paths[key]).resolve()
        if p.is_dir() and all(p != q for _, q in sources):
            sources.append((label, p))
    return sources


def ignore_nested(roots: list[Path]):
    """copytree ignore callback that skips the other source roots nested inside this one."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        d = Path(directory)
        return {n for n in names if d / n in roots}
    return ignore


def scan_tree(root: Path) -> TreeStats:
    stats = TreeStats()
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_symlink():
                    stats.symlinks += 1
                elif e.is_dir():
                    stats.dirs += 1
                    stack.append(Path(e.path))
                elif e.is_file():
                    stats.files += 1
                    stats.bytes += e.stat().st_size
                else:
                    stats.other += 1
    return stats


def build_default_tree(workdir: Path) -> Path:
    """Copy stdlib + site-packages under workdir once; later calls reuse the copy.

    The copy is made under a temporary name and renamed when complete, so an interrupted copy
    is never mistaken for a finished one.
    """
    sources = tree_sources()
    ident = repr((sys.version, [str(p) for _, p in sources])).encode()
    key = hashlib.sha256(ident).hexdigest()[:10]
    tree = workdir / f"tree-py{sys.version_info[0]}.{sys.version_info[1]}-{key}"
    if tree.is_dir():
        return tree
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    roots = [p for _, p in sources]
    log(f"building the benchmark tree {tree} from {', '.join(str(p) for p in roots)} (once) ...")
    for label, src in sources:
        try:
            shutil.copytree(src, partial / label, symlinks=True, ignore_dangling_symlinks=True,
                            ignore=ignore_nested([r for r in roots if r != src]))
        except shutil.Error as exc:
            # Unreadable or vanished files: the rest of the copy is still a fine benchmark tree.
            log(f"  note: {len(exc.args[0])} entries of {src} could not be copied")
    partial.rename(tree)
    return tree


MILLION_GENERATOR = Path(__file__).resolve().parent / "make_million_tree.py"


def million_tree_path(workdir: Path) -> Path:
    """Where the million sets' tree is kept: the name carries a digest of the generator, so a
    changed generator makes a new tree."""
    key = hashlib.sha256(MILLION_GENERATOR.read_bytes()).hexdigest()[:10]
    return workdir / f"million-{key}"


def build_million_tree(workdir: Path) -> Path:
    """The million sets' tree (bench/make_million_tree.py), made once in workdir."""
    tree = million_tree_path(workdir)
    if tree.is_dir():
        return tree
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"making the 1,000,000-file tree {tree} (once; a minute or two) ...")
    subprocess.run([sys.executable, str(MILLION_GENERATOR), str(partial)], check=True,
                   stdin=subprocess.DEVNULL)
    partial.rename(tree)
    return tree


def prepare_million(inputs: Inputs, workdir: Path) -> None:
    """Make (or find) the million sets' tree, count its inodes and warm the page cache."""
    # (resolved: mkfs.erofs takes a SOURCE that is a symlink for an image to rebuild from)
    inputs.million = build_million_tree(workdir).resolve()
    inputs.million_stats = scan_tree(inputs.million)
    warm_page_cache(inputs.million)


def bytes_per_inode(out: Outcome, inodes: int) -> float | None:
    rss = out.median("maxrss_kib")
    return rss * 1024 / inodes if rss is not None and inodes else None


def format_per_inode(outcomes: dict[str, Outcome], inodes: int) -> str:
    """The million sets' extra row: peak RSS divided by the tree's inodes."""
    a, b = (bytes_per_inode(outcomes[t], inodes) for t in (MKEROFS, MKFS))
    cells = [f"{v:.0f}" if v is not None else "-" for v in (a, b)]
    return f"\n  {'bytes per inode':<18}{cells[0]:>14}{cells[1]:>14}{ratio(a, b):>10}"


def build_tar(tree: Path, stats: TreeStats, workdir: Path) -> Path:
    """The tree as one POSIX tar (GNU tar --format=posix), made once and kept in workdir.

    The name carries the tree's path and counts, so a tree that changed gets a new tar.  Members
    are the tree's top-level entries by name (no "./" prefix, as in a container layer), in name
    order, so the tar is the same whenever it is made from the same tree.
    """
    ident = repr((str(tree), astuple(stats))).encode()
    tar = workdir / f"{tree.name}-{hashlib.sha256(ident).hexdigest()[:10]}.tar"
    if tar.is_file():
        return tar
    gnu_tar = shutil.which("tar")
    if not gnu_tar:
        raise OSError("GNU tar not found on PATH: it makes the tar rows' input")
    partial = tar.with_name(tar.name + ".partial")
    log(f"making the benchmark tar {tar} from {tree} (once) ...")
    members = sorted(os.listdir(tree))
    r = subprocess.run([gnu_tar, "--format=posix", "--sort=name", "-cf", str(partial),
                        "-C", str(tree), "--", *members], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Exit 1 is "some files changed while being read": the tar is still whole.
    if r.returncode not in (0, 1):
        partial.unlink(missing_ok=True)
        raise OSError(f"tar failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    partial.rename(tar)
    return tar


def _layer_of(i: int) -> list[int | str]:
    """Which layers (0-based) file number `i` (in path order) goes to; "w": a whiteout of it in
    the top layer.  Layer 0 takes half the files; 1 and 2 the other half, and every 10th / 7th
    file of layer 0 again (they replace it); 3 every 13th file, and whiteouts of every 20th file
    of layer 0."""
    base = i % 4
    where: list[int | str] = [0] if base < 2 else [base - 1]
    if base < 2 and i % 10 == 0:
        where.append(1)
    if base < 2 and i % 7 == 0:
        where.append(2)
    if i % 13 == 0:
        where.append(3)
    elif base < 2 and i % 20 == 1:
        where.append("w")
    return where


def build_layers(tree: Path, stats: TreeStats, workdir: Path, tool: "Tool") -> Layers:
    """The tree as LAYER_COUNT layers (module docstring), made once and kept in workdir: each a
    directory of hard links to the tree's files (symlinks copied, into layer 0), and its image
    built by `tool` (-Enoinline_data, a fixed time and UUID).  Whiteouts (character devices
    0:0) need root: without it the top layer has none."""
    ident = repr((str(tree), astuple(stats), LAYER_ARGS)).encode()
    top = workdir / f"layers-{tree.name}-{hashlib.sha256(ident).hexdigest()[:10]}"
    dirs = [top / f"L{n}" for n in range(1, LAYER_COUNT + 1)]
    images = [top / f"L{n}.erofs" for n in range(1, LAYER_COUNT + 1)]
    if all(p.is_file() for p in images):
        return Layers(dirs, images)
    log(f"making the benchmark layers under {top} (once) ...")
    shutil.rmtree(top, ignore_errors=True)
    for d in dirs:
        d.mkdir(parents=True)
    entries = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        entries += sorted(os.path.join(dirpath, n) for n in filenames)
    whiteouts = True
    for i, path in enumerate(entries):
        rel = os.path.relpath(path, tree)
        for layer in _layer_of(i) if not os.path.islink(path) else [0]:
            dest = dirs[-1 if layer == "w" else layer] / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.islink(path):
                os.symlink(os.readlink(path), dest)
            elif layer != "w":
                os.link(path, dest)
            elif whiteouts:
                try:
                    os.mknod(dest, 0o644 | stat.S_IFCHR, os.makedev(0, 0))
                except PermissionError:
                    whiteouts = False
                    log("  note: no whiteouts in the top layer (making them needs root)")
    for d, image in zip(dirs, images):
        partial = image.with_name(image.name + ".partial")
        argv = tool.argv + COMMON_ARGS + LAYER_ARGS + [str(partial), str(d)]
        r = subprocess.run(argv, capture_output=True, text=True, env=tool.env())
        if r.returncode:
            raise OSError(f"building layer {image.name} failed (exit {r.returncode}): "
                          f"{r.stderr.strip()[-300:]}")
        partial.rename(image)
    return Layers(dirs, images)


def sparse_tree(workdir: Path, gib: int) -> Path:
    """The sparse sets' tree (made once per size): a `gib` GiB file with two small data
    extents, and one with eight data extents between holes, at unaligned offsets.  (mkfs.erofs
    writes the holes of an uncompressed image: it needs 2 * `gib` GiB of free space.)"""
    root = workdir / f"sparse-tree-{gib}g"
    done = root / ".complete"
    if done.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    size = gib << 30
    layouts = {"two-extents": [(size // 5, 200_000), (size * 3 // 5 + 12345, 120_000)],
               "several-holes": [(k * (size // 9) + 777, 1 << 20) for k in range(8)]}
    seed = 0
    for name, extents in layouts.items():
        with open(root / name, "wb") as f:
            f.truncate(size)
            for off, n in extents:
                seed += 1
                block = hashlib.sha256(str(seed).encode()).digest() * (n // 64)
                f.seek(off)
                f.write(block[:n // 2] + b"sparse data " * (n // 24))
    done.touch()
    return root


def warm_file(path: str | Path) -> None:
    try:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except OSError:
        pass


def warm_page_cache(root: Path) -> None:
    """Read every file once so the first timed run does not pay for a cold cache."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                warm_file(path)


# --------------------------------------------------------------------------------------------
# Running one build


def child_env(from_repo: bool = True) -> dict[str, str]:
    # The repository goes on PYTHONPATH so `python -m mkerofs` finds the package whatever the
    # current directory and whether or not it is installed; it does not affect mkfs.erofs.
    # The installed copy (installed_mkerofs) gets no PYTHONPATH: nothing may shadow it.
    env = dict(os.environ)
    if from_repo:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    else:
        env.pop("PYTHONPATH", None)
    # an installed package runs from compiled bytecode (compile_bytecode() makes it): without
    # it every run would also compile the whole package, ~0.2 s no user pays
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_bytecode() -> None:
    """Compile the package once, as pip does when it installs it."""
    import compileall
    compileall.compile_dir(str(REPO / "mkerofs"), quiet=1)


# Linux starts a child's peak RSS at the RSS of the process that forked it (exec keeps the
# pre-exec high-water mark), so a build forked straight from this script would never show less
# than this script's own ~20 MiB.  Builds are therefore forked from a minimal Python (-S -I,
# ~5 MiB) that times the build, reaps it with os.wait4 and writes the numbers to a pipe.
# Given a file to pipe (argv[2], "" for none), the spawner writes it into a pipe that is the
# build's stdin, within the timed span; that copying is the spawner's CPU, not the build's.
SPAWNER = r"""
import os, signal, sys, time
fd, feed, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
start = time.perf_counter()
if feed:
    src = os.open(feed, os.O_RDONLY)
    r, w = os.pipe()
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # Python ignores it; a build should not
    if feed:
        os.dup2(r, 0)
        os.close(r), os.close(w), os.close(src)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, ("cannot run %s: %s\n" % (argv[0], exc)).encode())
    os._exit(127)
if feed:
    os.close(r)
    try:
        while os.splice(src, w, 1 << 20):
            pass
    except BrokenPipeError:   # the build stopped reading (it failed): its exit code says why
        pass
    os.close(w)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - start
os.write(fd, ("%r %d %r %d" % (wall, os.waitstatus_to_exitcode(status),
                               ru.ru_utime + ru.ru_stime, ru.ru_maxrss)).encode())
"""


@dataclass
class Stdin:
    """What a build reads on stdin: nothing, or a file given as the file or through a pipe."""
    path: Path | None = None
    pipe: bool = False

    def describe(self) -> str:
        how = "a pipe the tar is written into" if self.pipe else "the tar file (redirect)"
        size = self.path.stat().st_size if self.path else 0
        return f"{how}: {self.path} ({size / (1 << 20):.1f} MiB)"


NO_STDIN = Stdin()


def run_timed(argv: list[str], log_path: Path, timeout: float, stdin: Stdin = NO_STDIN,
              env: dict[str, str] | None = None) -> Run:
    """Run argv to completion through SPAWNER; wall time, CPU time and peak RSS of the build.

    The spawner gets its own session so a timeout (or Ctrl-C) kills the build and any helper
    processes it started, not just the top one.  A stdin file is opened afresh each run, so
    every build reads it from the start.
    """
    timed_out = threading.Event()
    rfd, wfd = os.pipe()
    feed = str(stdin.path) if stdin.path and stdin.pipe else ""
    try:
        with open(log_path, "wb") as out, \
                open(stdin.path if stdin.path and not feed else os.devnull, "rb") as source:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", SPAWNER, str(wfd), feed,
                                     *argv],
                                    stdin=source, stdout=out, stderr=subprocess.STDOUT,
                                    env=env or child_env(), start_new_session=True,
                                    pass_fds=(wfd,))
            os.close(wfd)
            wfd = -1

            def on_timeout() -> None:
                timed_out.set()
                kill_group(proc.pid)

            timer = threading.Timer(timeout, on_timeout)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                kill_group(proc.pid)
                proc.wait()
                raise
            finally:
                timer.cancel()
            wall = time.perf_counter() - start
        # Popen did not reap the child itself; tell it, so it never waits on a recycled pid.
        proc.returncode = os.waitstatus_to_exitcode(status)
        report = os.read(rfd, 4096).split()
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    if len(report) == 4:
        return Run(wall_s=float(report[0]), exit_code=int(report[1]), cpu_s=float(report[2]),
                   maxrss_kib=int(report[3]), timed_out=timed_out.is_set())
    # The spawner died before reporting (killed on timeout): fall back to its own numbers.
    return Run(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, maxrss_kib=usage.ru_maxrss,
               exit_code=proc.returncode or -1, timed_out=timed_out.is_set())


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def build_argv(tool: Tool, oset: OptionSet, extra: list[str], image: Path,
               source: Path | list[Path] | None) -> list[str]:
    sources = source if isinstance(source, list) else [source] if source is not None else []
    operands = [str(image)] + [str(s) for s in sources]
    return tool.argv + oset.argv(tool.quiet_ok, extra) + operands


def measure_build(tool: Tool, oset: OptionSet, extra: list[str], image: Path,
                  source: Path | list[Path] | None, log_path: Path, timeout: float,
                  stdin: Stdin = NO_STDIN, base: Path | None = None) -> Run:
    """One build of image; without a source, the tool reads stdin; several sources: layers.
    `base`: the image starts as a copy of it (--incremental), made before the clock starts."""
    if base is not None:
        shutil.copyfile(base, image)
    else:
        # A leftover image from the previous run would let a tool skip allocating blocks.
        image.unlink(missing_ok=True)
    load1 = os.getloadavg()[0]
    run = run_timed(build_argv(tool, oset, extra, image, source), log_path, timeout, stdin,
                    tool.env())
    run.load1 = load1
    if run.ok:
        try:
            st = image.stat()
            run.image_bytes, run.alloc_bytes = st.st_size, st.st_blocks * 512
        except FileNotFoundError:
            run.exit_code = -1   # "success" without an image is a failure
    return run


# --------------------------------------------------------------------------------------------
# Finding and probing the tools


def make_tiny_tree(parent: Path) -> Path:
    tiny = parent / "tiny"
    (tiny / "sub").mkdir(parents=True, exist_ok=True)
    (tiny / "hello.txt").write_text("hello erofs\n" * 100)
    (tiny / "sub" / "zeros").write_bytes(bytes(10000))
    link = tiny / "link"
    if not link.is_symlink():
        link.symlink_to("hello.txt")
    return tiny


def find_mkfs(arg: str | None) -> Tool:
    path = arg or os.environ.get("MKFS_EROFS")
    if not path:
        path = LOCAL_MKFS if os.access(LOCAL_MKFS, os.X_OK) else shutil.which("mkfs.erofs")
    if not path or not (shutil.which(path) or os.access(path, os.X_OK)):
        return Tool(MKFS, [], available=False,
                    note=f"mkfs.erofs not found: {path or 'not on PATH'}")
    return Tool(MKFS, [path])


def find_mkerofs(arg: str | None, workdir: Path | None = None) -> Tool:
    """--mkerofs's command line; else the console script of an installed copy made in workdir
    (installed_mkerofs); else, or if that cannot be made, `python -m mkerofs` from the repo."""
    if arg:
        argv = shlex.split(arg)
    else:
        script = installed_mkerofs(workdir) if workdir is not None else None
        if script is not None:
            return Tool(MKEROFS, [str(script)], from_repo=False)
        argv = [sys.executable, "-m", "mkerofs"]
    if not argv or not shutil.which(argv[0]):
        return Tool(MKEROFS, argv, available=False, note=f"command not found: {shlex.join(argv)}")
    return Tool(MKEROFS, argv)


# What the installed copy is made of: a change to any of them makes a new environment.
INSTALLED_SOURCES = ("mkerofs", "pyproject.toml", "README.md")
VENV_STAMP = "mkerofs-installed"     # written into the environment once pip has succeeded


def source_digest() -> str:
    """A hash of the package's files and of this Python (the environment is made with it)."""
    h = hashlib.sha256(f"{sys.executable}\0{sys.version}\0".encode())
    for name in INSTALLED_SOURCES:
        top = REPO / name
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            h.update(path.relative_to(REPO).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def installed_mkerofs(workdir: Path) -> Path | None:
    """mkerofs as a user installs it: `pip install` of the project (not editable) into a venv
    made once in workdir, named after source_digest(); its `mkerofs` console script.

    pip builds from a copy of the sources (an in-tree build would leave build/ in the repo, and
    setuptools packs whatever a stale build/lib still holds).  None, with a note, if it fails.
    """
    digest = source_digest()
    venv = workdir / f"venv-{digest}"
    script = venv / "bin" / MKEROFS
    if (venv / VENV_STAMP).exists() and os.access(script, os.X_OK):
        return script
    for old in workdir.glob("venv-*"):
        shutil.rmtree(old, ignore_errors=True)
    log(f"installing mkerofs into {venv} (once per change to its sources) ...")
    staging = workdir / "venv-src"
    try:
        for name in INSTALLED_SOURCES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, staging / name,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                staging.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, staging / name)
        for argv in ([sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      "--no-input", str(staging)]):
            r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               env=child_env(from_repo=False), timeout=1800)
            if r.returncode:
                raise OSError(f"{shlex.join(argv)} failed (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip()[-300:]}")
        if not os.access(script, os.X_OK):
            raise OSError(f"pip installed no {script}")
        (venv / VENV_STAMP).write_text(digest + "\n")
        return script
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"note: cannot install mkerofs into a venv ({exc}); timing "
            f"`{Path(sys.executable).name} -m mkerofs` from {REPO} instead")
        shutil.rmtree(venv, ignore_errors=True)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def probe(tool: Tool, workdir: Path, timeout: float) -> None:
    """Check the tool builds a trivial tree at all, and whether it takes --quiet.

    A tool that cannot build a three-file tree (for example mkerofs before it exists) is
    marked unavailable with its own error message, rather than failing every row.
    """
    if not tool.available:
        return
    tiny = make_tiny_tree(workdir)
    image = workdir / f"probe-{tool.name}.img"
    log_path = workdir / f"probe-{tool.name}.log"
    try:
        run = measure_build(tool, OptionSet([]), [], image, tiny, log_path, timeout)
    except OSError as exc:
        tool.available, tool.note = False, f"cannot run {shlex.join(tool.argv)}: {exc}"
        return
    if not run.ok:
        tool.available = False
        tool.note = (f"{shlex.join(tool.argv)} failed on a trivial tree (exit {run.exit_code}): "
                     f"{tail(log_path)}")
        return
    tool.quiet_ok = measure_build(tool, OptionSet(["--quiet"]), [], image, tiny, log_path,
                                  timeout).ok
    tool.version = tool_version(tool)
    image.unlink(missing_ok=True)


def tool_version(tool: Tool) -> str:
    try:
        out = subprocess.run(tool.argv + ["-V"], capture_output=True, text=True, timeout=30,
                             env=tool.env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else "version unknown: -V not supported"


# --------------------------------------------------------------------------------------------
# The benchmark proper


def run_fsck(fsck: str, image: Path, timeout: float) -> str:
    try:
        r = subprocess.run([fsck, str(image)], capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timeout"
    except OSError:
        return "n/a"
    return "pass" if r.returncode == 0 else "FAIL"


def absent_status(tool: Tool, args: argparse.Namespace) -> str:
    return "left out" if args.only and tool.name != args.only else "missing"


def bench_set(name: str, tools: list[Tool], inputs: Inputs, args: argparse.Namespace,
              fsck: str | None) -> dict[str, Outcome]:
    """Alternate the tools run by run (swapping who goes first) so drift in machine load or
    cache state does not favour one of them; a tool that fails once is not retried."""
    oset = OPTION_SETS[name]
    if oset.tar and inputs.tar_error:
        return {t.name: Outcome(status="no tar", error=inputs.tar_error) for t in tools}
    if (oset.layers or oset.incremental) and inputs.layers is None:
        return {t.name: Outcome(status="no layers", error=inputs.layers_error) for t in tools}
    source, stdin = (None, inputs.tar_stdin) if oset.tar else (inputs.tree, NO_STDIN)
    if oset.layers:
        source = inputs.layers.images
    elif oset.incremental:
        source = inputs.layers.dirs[1]
    elif oset.million:
        source = inputs.million
    elif name in SPARSE_SETS:
        source = sparse_tree(args.workdir, args.sparse_gib)
    outcomes = {t.name: Outcome() if t.available else Outcome(status=absent_status(t, args))
                for t in tools}
    images = {t.name: args.workdir / "images" / f"{name}-{t.name}.img" for t in tools}
    images[tools[0].name].parent.mkdir(parents=True, exist_ok=True)
    bases = {t.name: None for t in tools}
    if oset.incremental:
        for tool in tools:
            if outcomes[tool.name].status == "ok":
                bases[tool.name] = incremental_base(tool, inputs.layers, args, outcomes[tool.name])

    for i in range(args.runs):
        order = tools if i % 2 == 0 else tools[::-1]
        for tool in order:
            out = outcomes[tool.name]
            if out.status != "ok":
                continue
            log_path = args.workdir / f"{name}-{tool.name}.log"
            run = measure_build(tool, oset, args.extra, images[tool.name], source, log_path,
                                args.timeout, stdin, bases[tool.name])
            out.runs.append(run)
            if run.timed_out:
                out.status, out.error = "timeout", f"killed after {args.timeout:g} s"
            elif not run.ok:
                out.status, out.error = "rejected", f"exit {run.exit_code}: {tail(log_path)}"
            progress(name, i, args.runs, tool.name, run)

    if fsck:
        for tool in tools:
            out = outcomes[tool.name]
            if out.status == "ok":
                out.fsck = run_fsck(fsck, images[tool.name], args.timeout) \
                    if oset.self_contained else "n/a (devices)"
    if not args.keep_images:
        for image in [*images.values(), *bases.values()]:
            if image is not None:
                image.unlink(missing_ok=True)
    return outcomes


def incremental_base(tool: Tool, layers: Layers, args: argparse.Namespace,
                     out: Outcome) -> Path | None:
    """The tool's own image of layer 1 (untimed), which each incremental run copies."""
    base = args.workdir / "images" / f"incremental-{tool.name}-base.img"
    log_path = args.workdir / f"incremental-base-{tool.name}.log"
    run = measure_build(tool, OptionSet([]), args.extra, base, layers.dirs[0], log_path,
                        args.timeout)
    if not run.ok:
        out.status, out.error = "rejected", f"the base: exit {run.exit_code}: {tail(log_path)}"
        return None
    return base


# --------------------------------------------------------------------------------------------
# Reporting


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress(name: str, i: int, runs: int, tool: str, run: Run) -> None:
    state = "ok" if run.ok else ("timeout" if run.timed_out else f"exit {run.exit_code}")
    log(f"  [{name}] run {i + 1}/{runs} {tool:<10} {run.wall_s:8.2f} s  "
        f"{run.maxrss_kib / 1024:7.1f} MiB  {state}")


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


# (label, Run attribute, formatter) for the rows of each set's table.
METRICS = [
    ("wall time (s)", "wall_s", lambda v: f"{v:.2f}"),
    ("CPU time (s)", "cpu_s", lambda v: f"{v:.2f}"),
    ("peak RSS (MiB)", "maxrss_kib", lambda v: mib(v * 1024)),
    ("image size (MiB)", "image_bytes", mib),
    ("allocated (MiB)", "alloc_bytes", mib),
]


def cell(out: Outcome, attr: str, fmt, rss_floor_kib: int = 0) -> str:
    if out.status != "ok":
        return out.status
    value = out.median(attr)
    if value is None:
        return "-"
    # A peak RSS at the spawner's own floor only says "at most this much".
    if attr == "maxrss_kib" and value <= rss_floor_kib * 1.05:
        return "<=" + fmt(value)
    return fmt(value)


def describe_set(oset: OptionSet) -> str:
    opts = shlex.join(oset.options) or "(no -z)"
    if oset.verbatim:
        opts += "  (the whole command line: no -T 0)"
    if oset.tar:
        opts += "  [tree as tar on stdin]"
    if oset.layers:
        opts += f"  [IMAGE L1..L{LAYER_COUNT}: the tree as layer images]"
    if oset.incremental:
        opts += "  [IMAGE: a copy of a base of layer 1; SOURCE: layer 2's directory]"
    return opts


def format_set(name: str, outcomes: dict[str, Outcome], rss_floor_kib: int) -> str:
    a, b = outcomes[MKEROFS], outcomes[MKFS]
    opts = describe_set(OPTION_SETS[name])
    rows = [("", MKEROFS, MKFS, "ratio")]
    for label, attr, fmt in METRICS:
        rows.append((label, cell(a, attr, fmt, rss_floor_kib), cell(b, attr, fmt, rss_floor_kib),
                     ratio(a.median(attr), b.median(attr))))
    if a.fsck or b.fsck:
        rows.append(("fsck.erofs", a.fsck or "-", b.fsck or "-", ""))
    lines = [f"== {name}: {opts} =="]
    lines += [f"  {r[0]:<18}{r[1]:>14}{r[2]:>14}{r[3]:>10}" for r in rows]
    for tool, out in ((MKEROFS, a), (MKFS, b)):
        if out.error:
            lines.append(f"  {tool} {out.status}: {out.error}")
    busiest = max((r.load1 for out in (a, b) for r in out.runs), default=0.0)
    if busiest > 0.5:
        lines.append(f"  note: load average up to {busiest:.1f} when runs started: times skewed")
    if b.fsck == "FAIL":
        lines.append("  note: fsck.erofs rejects mkfs.erofs's image too: it is likely too old for "
                     "this set")
    return "\n".join(lines)


def format_summary(results: dict[str, dict[str, Outcome]]) -> str:
    head = f"{'set':<24}{'mkerofs s':>13}{'mkfs s':>13}{'time':>9}{'RSS':>9}{'size':>9}"
    lines = ["== summary (ratios are mkerofs / mkfs.erofs, medians) ==", head]
    for name, outcomes in results.items():
        a, b = outcomes[MKEROFS], outcomes[MKFS]
        lines.append(f"{name:<24}{cell(a, 'wall_s', lambda v: f'{v:.2f}'):>13}"
                     f"{cell(b, 'wall_s', lambda v: f'{v:.2f}'):>13}"
                     f"{ratio(a.median('wall_s'), b.median('wall_s')):>9}"
                     f"{ratio(a.median('maxrss_kib'), b.median('maxrss_kib')):>9}"
                     f"{ratio(a.median('image_bytes'), b.median('image_bytes')):>9}")
    return "\n".join(lines)


def write_json(path: Path, tools: list[Tool], inputs: Inputs, stats: TreeStats,
               results: dict[str, dict[str, Outcome]], args: argparse.Namespace,
               rss_floor_kib: int) -> None:
    data = {
        "tree": {"path": str(inputs.tree), **asdict(stats)},
        "tar": {"path": str(inputs.tar_stdin.path) if inputs.tar_stdin.path else None,
                "stdin": "pipe" if inputs.tar_stdin.pipe else "file", "error": inputs.tar_error},
        "rss_floor_kib": rss_floor_kib,
        "million": {"path": str(inputs.million) if inputs.million else None,
                    "inodes": inputs.million_inodes},
        "runs": args.runs,
        "common_args": COMMON_ARGS,
        "extra_args": args.extra,
        "tools": {t.name: asdict(t) for t in tools},
        "sets": {
            name: {
                **asdict(OPTION_SETS[name]),
                **{tool: {**asdict(out),
                          "median": {attr: out.median(attr) for _, attr, _ in METRICS},
                          "bytes_per_inode": bytes_per_inode(out, inputs.million_inodes)
                          if OPTION_SETS[name].million else None}
                   for tool, out in outcomes.items()},
            }
            for name, outcomes in results.items()
        },
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Entry point


def parse_sets(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in OPTION_SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown set(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(OPTION_SETS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, help="source tree to image (default: a cached copy of "
                   "this Python's stdlib + site-packages under --workdir)")
    p.add_argument("--workdir", type=Path, default=default_workdir(),
                   help="cache for the default tree, images and logs (default: %(default)s)")
    p.add_argument("--mkfs", help="mkfs.erofs to compare with (default: $MKFS_EROFS, else "
                   f"{LOCAL_MKFS} if present, else mkfs.erofs on PATH)")
    p.add_argument("--mkerofs", help="mkerofs command line (default: the console script of a "
                   "venv in --workdir that this repository is pip-installed into, else the running "
                   "Python with -m mkerofs); another checkout: "
                   "'env PYTHONPATH=DIR python3 -P -m mkerofs' "
                   "(-P keeps the current directory, maybe this one, off sys.path)")
    p.add_argument("--only", choices=[MKEROFS, MKFS],
                   help="time just this tool (e.g. to calibrate mkfs.erofs alone)")
    p.add_argument("--sets", type=parse_sets, default=list(OPTION_SETS),
                   help=f"comma-separated option sets (default: all: {','.join(OPTION_SETS)}); "
                   "the tar* sets read the tree as a tar on stdin, made once with GNU tar")
    p.add_argument("--tar-stdin", choices=["file", "pipe"], default="file",
                   help="the tar sets' stdin: the tar file itself, or a pipe the tar is written "
                   "into as it is read (default: %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="runs per tool and set; medians are "
                   "reported (default: %(default)s)")
    p.add_argument("--extra", type=shlex.split, default=[],
                   help="extra options for both tools, e.g. --extra='--workers=1'")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one build is "
                   "killed and reported as timeout (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="run fsck.erofs on each set's images "
                   "(informational)")
    p.add_argument("--fsck", default="fsck.erofs", help="fsck for --check (default: %(default)s "
                   "on PATH)")
    p.add_argument("--json", type=Path, help="write the raw numbers to this file")
    p.add_argument("--sparse-gib", type=int, default=5, help="size of each of the two files "
                   "of the sparse sets' tree, in GiB (default: %(default)s)")
    p.add_argument("--keep-images", action="store_true", help="keep the last image of each set")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def measure_rss_floor(workdir: Path) -> int:
    """Peak RSS that a build that does nothing would show (see SPAWNER), in KiB."""
    true = shutil.which("true") or "/bin/true"
    return run_timed([true], workdir / "floor.log", 60).maxrss_kib


def warn_if_busy() -> None:
    """Both tools use every core, so anything else running makes the times meaningless."""
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(f"warning: the 1-minute load average is {load1:.1f}: other processes are running "
            "and will skew the times (each run's load is in --json)")


def resolve_fsck(args: argparse.Namespace) -> str | None:
    if not args.check:
        return None
    fsck = shutil.which(args.fsck)
    if not fsck:
        log(f"note: --check asked for but {args.fsck} was not found; skipping fsck")
    return fsck


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    # (no environment is made for a run that leaves mkerofs out)
    mkerofs = find_mkerofs(args.mkerofs, args.workdir if args.only != MKFS else None)
    mkfs = find_mkfs(args.mkfs)
    tools = [mkerofs, mkfs]
    if mkerofs.from_repo:
        compile_bytecode()
    for tool in tools:
        if args.only and tool.name != args.only:
            tool.available, tool.note = False, f"left out (--only {args.only})"
        probe(tool, args.workdir, args.timeout)
        if not tool.available:
            log(f"note: {tool.name} unavailable: {tool.note}")
    if not any(t.available for t in tools):
        log("error: neither mkerofs nor mkfs.erofs can be run; nothing to benchmark")
        return 1
    if not all(t.available for t in tools):
        only = next(t.name for t in tools if t.available)
        log(f"note: timing {only} only, so the ratio columns stay empty")
    # --quiet only when every tool that runs takes it, so both see the same options.
    quiet = all(t.quiet_ok for t in tools if t.available)
    for t in tools:
        t.quiet_ok = quiet

    if args.tree:
        tree = args.tree.resolve()
        if not tree.is_dir():
            log(f"error: --tree {tree} is not a directory")
            return 2
    else:
        tree = build_default_tree(args.workdir)
    stats = scan_tree(tree)
    inputs = Inputs(tree, NO_STDIN)
    if any(OPTION_SETS[name].tar for name in args.sets):
        try:
            inputs.tar_stdin = Stdin(build_tar(tree, stats, args.workdir),
                                     pipe=args.tar_stdin == "pipe")
        except OSError as exc:
            inputs.tar_error = str(exc)
            log(f"note: the tar sets cannot run: {exc}")
    if any(OPTION_SETS[name].layers or OPTION_SETS[name].incremental for name in args.sets):
        maker = next((t for t in tools if t.available), None)
        try:
            inputs.layers = build_layers(tree, stats, args.workdir, maker)
        except OSError as exc:
            inputs.layers_error = str(exc)
            log(f"note: the layer sets cannot run: {exc}")
    # The tree first and then the tar: together they may not both fit in the page cache, and
    # the directory sets come first.
    warm_page_cache(tree)
    if inputs.tar_stdin.path:
        warm_file(inputs.tar_stdin.path)
    if inputs.layers is not None:
        for image in inputs.layers.images:
            warm_file(image)
    fsck = resolve_fsck(args)
    if any(OPTION_SETS[name].million for name in args.sets):
        prepare_million(inputs, args.workdir)
    rss_floor = measure_rss_floor(args.workdir)
    warn_if_busy()

    print(f"tree: {tree}")
    print(f"      {stats.files} files, {stats.dirs} dirs, {stats.symlinks} symlinks, "
          f"{mib(stats.bytes)} MiB of file data")
    if inputs.million_stats:
        m = inputs.million_stats
        print(f"million:    {inputs.million}: {m.files} files, {m.dirs} dirs, "
              f"{mib(m.bytes)} MiB of file data ({inputs.million_inodes} inodes)")
    for t in tools:
        desc = f"{shlex.join(t.argv)}  [{t.version}]" if t.available else f"unavailable ({t.note})"
        print(f"{t.name + ':':<12}{desc}")
    print(f"peak RSS:   of the build's largest process; {mib(rss_floor * 1024)} MiB is the "
          "floor of the measurement (a no-op measures that)")
    extra = " + " + shlex.join(args.extra) if args.extra else ""
    print(f"options:    {shlex.join(COMMON_ARGS + (['--quiet'] if quiet else []) + args.extra)} "
          f"+ set (tar-containerd sets: their line{extra} alone); {args.runs} run(s) each, "
          "medians")
    if inputs.tar_stdin.path:
        print(f"tar stdin:  {inputs.tar_stdin.describe()}; IMAGE is the only operand")
    print()

    results: dict[str, dict[str, Outcome]] = {}
    try:
        for name in args.sets:
            results[name] = bench_set(name, tools, inputs, args, fsck)
            per_inode = format_per_inode(results[name], inputs.million_inodes) \
                if OPTION_SETS[name].million else ""
            print(format_set(name, results[name], rss_floor) + per_inode + "\n", flush=True)
    except KeyboardInterrupt:
        log("interrupted; reporting the sets finished so far")
    if results:
        print(format_summary(results))
    if args.json:
        write_json(args.json, tools, inputs, stats, results, args, rss_floor)
        print(f"\nraw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
