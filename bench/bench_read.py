#!/usr/bin/env python3
"""Time reading an image back: `mkerofs-read ls -R`, `ls -R -l` and `verify` against fsck.erofs.

mkerofs builds one image of a big tree (by default the same copy of this Python's standard
library and site-packages that bench.py uses) with 4 KiB blocks and lz4, which every fsck.erofs
reads (Debian's 1.5 included); then each command runs --runs times, the tools alternating, and
the script prints median wall time, CPU time and peak RSS, and the ratios to each fsck.erofs.
Each reader command is compared with the fsck.erofs mode that does the same work: plain
`fsck.erofs IMAGE` walks and checks the metadata without decompressing file data (a corrupted
pcluster passes it), like `ls -R`; `fsck.erofs --extract IMAGE` also decodes every file (writing
nothing), like `mkerofs-read verify`.

    python bench/bench_read.py                       # default tree, -zlz4, 3 runs
    python bench/bench_read.py --sets plain,lz4 --runs 5 --json out.json
    python bench/bench_read.py --tree /some/dir --fsck /usr/bin/fsck.erofs

Only the standard library is used.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (build_default_tree, default_workdir, log, measure_rss_floor,  # noqa: E402
                   mib, run_timed, scan_tree, tail, Run)

OPTION_SETS = {"plain": [], "lz4": ["-zlz4"], "lz4hc": ["-zlz4hc"]}
COMMON = ["-T", "0", "-U", "00000000-0000-0000-0000-000000000000", "--quiet"]
FSCKS = [("fsck.erofs (Debian)", "/usr/bin/fsck.erofs"),
         ("fsck.erofs (local)", "/work/erofs-utils-install/bin/fsck.erofs")]


@dataclass
class Job:
    name: str
    argv: list[str]                 # IMAGE is appended
    work: str                       # "meta" (walk the metadata) or "data" (decode all data)
    fsck: str = ""                  # for fsck.erofs jobs: which build
    runs: list[Run] = field(default_factory=list)
    error: str = ""
    version: str = ""

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if r.ok]
        return statistics.median(values) if values else None


def fsck_version(path: str) -> str:
    import subprocess
    try:
        r = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (r.stdout or r.stderr).strip().splitlines()
    return text[0] if text else ""


def make_jobs(args) -> list[Job]:
    read = shlex.split(args.mkerofs_read) if args.mkerofs_read else \
        [sys.executable, "-m", "mkerofs.cli.read"]
    jobs = [Job("mkerofs-read ls -R", read + ["ls", "-R"], "meta"),
            Job("mkerofs-read ls -R -l", read + ["ls", "-R", "-l"], "meta"),
            Job("mkerofs-read verify", read + ["verify", "--no-progress"], "data")]
    fscks = [(p, p) for p in args.fsck] if args.fsck else FSCKS
    for label, path in fscks:
        if not os.access(path, os.X_OK):
            log(f"note: {path} not found; left out")
            continue
        version = fsck_version(path) or label
        short = version.split()[-1] if version else label
        for suffix, extra, work in (("", [], "meta"), (" --extract", ["--extract"], "data")):
            job = Job(f"fsck.erofs {short}{suffix}", [path, *extra], work, fsck=short)
            job.version = version
            jobs.append(job)
    return jobs


def bench_image(image: Path, jobs: list[Job], args) -> None:
    for i in range(args.runs):
        order = jobs if i % 2 == 0 else jobs[::-1]
        for job in order:
            if job.error:
                continue
            logf = args.workdir / f"read-{job.name.replace(' ', '_').replace('/', '_')}.log"
            run = run_timed(job.argv + [str(image)], logf, args.timeout)
            if not run.ok:
                job.error = f"exit {run.exit_code}: {tail(logf)}"
            job.runs.append(run)
            log(f"  run {i + 1}/{args.runs} {job.name:<28} {run.wall_s:7.2f} s "
                f"{run.maxrss_kib / 1024:7.1f} MiB  {'ok' if run.ok else job.error}")


def report(name: str, image: Path, jobs: list[Job], floor_kib: int) -> str:
    def rss(kib: float) -> str:
        return mib(kib * 1024) if kib > floor_kib * 1.05 else "<=" + mib(kib * 1024)

    lines = [f"== {name}: {image.stat().st_size / (1 << 20):.1f} MiB image ==",
             f"  {'command':<32}{'wall s':>9}{'CPU s':>9}{'RSS MiB':>10}"]
    for j in jobs:
        if j.error:
            lines.append(f"  {j.name:<32} failed: {j.error}")
            continue
        lines.append(f"  {j.name:<32}{j.median('wall_s'):>9.2f}{j.median('cpu_s'):>9.2f}"
                     f"{rss(j.median('maxrss_kib')):>10}")
    refs = [j for j in jobs if j.fsck and not j.error]
    builds = list(dict.fromkeys(j.fsck for j in refs))
    if builds:
        lines.append("  ratios mkerofs-read / fsck.erofs doing the same work: time, peak RSS "
                     "(>=: fsck's RSS is under the floor, so the ratio is at least this)")
        lines.append(f"  {'':<38}" + "".join(f"{'vs ' + b:>20}" for b in builds))
        for j in jobs:
            if j.fsck or j.error:
                continue
            row = f"  {j.name + (' / fsck' if j.work == 'meta' else ' / fsck --extract'):<38}"
            for b in builds:
                ref = next((r for r in refs if r.fsck == b and r.work == j.work), None)
                if ref is None:
                    row += f"{'-':>20}"
                    continue
                t = j.median("wall_s") / ref.median("wall_s")
                under = ref.median("maxrss_kib") <= floor_kib * 1.05
                m = j.median("maxrss_kib") / max(ref.median("maxrss_kib"), floor_kib)
                row += f"{t:>11.1f}x {'>=' if under else '':>2}{m:.0f}x".ljust(20)
            lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, help="tree to image (default: bench.py's stdlib copy)")
    p.add_argument("--workdir", type=Path, default=default_workdir(),
                   help="cache for the tree, the image and logs (default: %(default)s)")
    p.add_argument("--sets", default="lz4", help=f"comma-separated: {', '.join(OPTION_SETS)} "
                   "(default: lz4)")
    p.add_argument("--runs", type=int, default=3, help="runs per command (default: 3)")
    p.add_argument("--fsck", action="append", help="fsck.erofs to compare with (repeatable; "
                   f"default: {', '.join(p for _, p in FSCKS)} when present)")
    p.add_argument("--mkerofs-read", help="reader command line (default: this Python "
                   "-m mkerofs.cli.read)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    for s in sets:
        if s not in OPTION_SETS:
            p.error(f"unknown set {s!r}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    tree = args.tree.resolve() if args.tree else build_default_tree(args.workdir)
    stats = scan_tree(tree)
    floor = measure_rss_floor(args.workdir)
    print(f"tree: {tree}\n      {stats.files} files, {stats.dirs} dirs, {stats.symlinks} "
          f"symlinks, {mib(stats.bytes)} MiB")
    print(f"peak RSS floor of the measurement: {mib(floor * 1024)} MiB; medians of {args.runs} "
          "run(s), commands alternating\n")
    results = {}
    for name in sets:
        image = args.workdir / f"read-{name}.erofs"
        build = run_timed([sys.executable, "-m", "mkerofs", *COMMON, *OPTION_SETS[name],
                           str(image), str(tree)], args.workdir / "read-build.log", args.timeout)
        if not build.ok:
            log(f"error: mkerofs failed: {tail(args.workdir / 'read-build.log')}")
            return 1
        # warm the page cache with the image so the first run does not pay for the disk
        with open(image, "rb") as f:
            while f.read(1 << 20):
                pass
        jobs = make_jobs(args)
        bench_image(image, jobs, args)
        print(report(name, image, jobs, floor) + "\n", flush=True)
        results[name] = {j.name: {"argv": j.argv, "error": j.error, "version": j.version,
                                  "runs": [asdict(r) for r in j.runs],
                                  "median": {a: j.median(a) for a in
                                             ("wall_s", "cpu_s", "maxrss_kib")}}
                         for j in jobs}
        image.unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps({"tree": str(tree), **asdict(stats), "sets": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
