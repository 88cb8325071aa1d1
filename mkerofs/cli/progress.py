"""Progress bars on a terminal (tqdm), for the builds and the long mkerofs-read commands.

A bar is shown only when stderr is a terminal and the command is not quiet.  The library never
calls the bar per file: a build fills a writer.report.BuildProgress (stage, total, a function
saying how far it got) and a thread here reads it a few times a second; extract's counters are
read the same way.  tqdm is imported only when a bar is actually shown.
"""
from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from typing import Callable, Iterator

REFRESH_SECONDS = 0.2

# what each build stage counts, as a person reads it
_STAGES = {"walk": ("walking the source", " entries"), "tar": ("reading the tar", "B"),
           "plan": ("planning", ""), "write": ("compressing and writing", "B"),
           "finish": ("finishing", ""), "verify": ("verifying", "")}


def wanted(quiet: bool, stream=None) -> bool:
    """A bar only for a person watching: stderr is a terminal and nobody asked for quiet."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _new_bar(desc: str, total: int | None, unit: str):
    from tqdm import tqdm
    try:
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):
        sized = False
    # a terminal that reports no size (a bare pty) gets 80 columns rather than an empty bar
    return tqdm(desc=desc, total=total, unit=unit or "it", unit_scale=unit == "B",
                unit_divisor=1024 if unit == "B" else 1000, file=sys.stderr, leave=False,
                dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
                mininterval=REFRESH_SECONDS,
                bar_format=None if unit else "{desc}: {elapsed}")


class _Poller:
    """A daemon thread that moves a bar to `read()` = (key, desc, total, unit, done) every
    REFRESH_SECONDS; a new key starts a new bar."""

    def __init__(self, read: Callable[[], tuple]):
        self.read = read
        self.bar = None
        self.key = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mkerofs-progress", daemon=True)

    def __enter__(self) -> "_Poller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        if self.bar is not None:
            self.bar.close()

    def _run(self) -> None:
        # the first drawing right away: a terminal always sees the bar, however short the work
        # (leave=False clears it again)
        try:
            self._refresh()
            while not self.stopped.wait(REFRESH_SECONDS):
                self._refresh()
        except Exception:               # a display problem never stops the work
            return

    def _refresh(self) -> None:
        key, desc, total, unit, done = self.read()
        if key != self.key:
            if self.bar is not None:
                self.bar.close()
            self.key = key
            self.bar = _new_bar(desc, total, unit) if desc else None
        if self.bar is None:
            return
        if total is not None and done > total:
            total = done
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)


def _bytes_read() -> Callable[[], int]:
    """Bytes this process read so far (/proc/self/io rchar): a tar stream's progress without
    any call from the reader; 0 where the kernel does not tell."""
    def rchar() -> int:
        try:
            with open("/proc/self/io", "rb") as f:
                for line in f:
                    if line.startswith(b"rchar:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0
    return rchar


def tar_size(source) -> int | None:
    """The bytes left in a tar input that is a regular file (a path, or stdin redirected from
    one; several tar layers: their sum); None for a pipe."""
    try:
        if isinstance(source, list):
            sizes = [tar_size(s) for s in source]
            return None if None in sizes else sum(sizes)
        if isinstance(source, (str, bytes, os.PathLike)):
            st = os.stat(source)
            return st.st_size if stat.S_ISREG(st.st_mode) else None
        fd = source.fileno()
        st = os.fstat(fd)
        return st.st_size - os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(st.st_mode) else None
    except (OSError, AttributeError, ValueError):
        return None


@contextlib.contextmanager
def build_bars(progress, source=None, tar: bool = False) -> Iterator[None]:
    """Show a build's progress (a writer.report.BuildProgress given to build(); None: no
    bar) as one bar per stage while the build runs.  The tar stage counts the bytes read
    against the tar's size.  (mkerofs-read, which shows bars too, loads nothing of the
    writer: the progress object comes from the caller.)"""
    if progress is None:
        yield
        return
    rchar = _bytes_read()
    tar_total = tar_size(source) if tar else None
    start = rchar()             # the tar is the first thing a build reads

    def read() -> tuple:
        name = progress.name
        desc, unit = _STAGES.get(name, (name, ""))
        total, done = progress.total, progress.done
        if name == "tar":
            total, done = tar_total, (lambda: rchar() - start)
        elif name == "walk":
            done = lambda: progress.entries     # noqa: E731
        return progress.serial, desc, total, unit, done() if done is not None else 0

    with _Poller(read):
        yield


@contextlib.contextmanager
def counting_bar(enabled: bool, desc: str, total: int | None, unit: str,
                 done: Callable[[], int]) -> Iterator[None]:
    """A bar that follows `done()` (polled) up to `total` while the block runs."""
    if not enabled:
        yield
        return
    with _Poller(lambda: (0, desc, total, unit, done())):
        yield


@contextlib.contextmanager
def callback_bar(enabled: bool, desc: str, total: int, unit: str
                 ) -> Iterator[Callable[[int, int], None] | None]:
    """A progress(done, total) callback moving a bar (None when no bar is wanted)."""
    if not enabled:
        yield None
        return
    bar = _new_bar(desc, total, unit)

    def progress(done: int, new_total: int) -> None:
        if new_total and new_total != bar.total:
            bar.total = new_total
        bar.update(done - bar.n)
    try:
        yield progress
    finally:
        bar.close()
