"""Running mkerofs as a user does (``python -m mkerofs``, or ``MKEROFS_CMD``) and checking the
error contract of a failed run (one line on stderr, no traceback, no image left behind)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .paths import PathLike, show

REPO = Path(__file__).resolve().parents[2]


def mkerofs_command() -> list[str]:
    """The command that runs mkerofs. ``MKEROFS_CMD`` overrides it (e.g. to
    point the suite at a real mkfs.erofs for cross-checking)."""
    override = os.environ.get("MKEROFS_CMD")
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "mkerofs"]


def mkerofs_env(env: Optional[dict] = None) -> dict:
    """Environment for a mkerofs run: the inherited one without
    SOURCE_DATE_EPOCH (tests must be deterministic), the repo on
    PYTHONPATH, then ``env`` on top (a value of None removes a variable)."""
    full = dict(os.environ)
    full.pop("SOURCE_DATE_EPOCH", None)
    pp = full.get("PYTHONPATH")
    full["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    return full


def run_mkerofs(*args, env: Optional[dict] = None, check: bool = True,
                cwd: Optional[PathLike] = None, timeout: float = 1800,
                input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run ``python -m mkerofs ARGS``; stdout/stderr are captured as text
    (undecodable bytes escaped). With check=True a non-zero exit raises an
    AssertionError that shows the command and its output."""
    cmd = mkerofs_command() + [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run(cmd, env=mkerofs_env(env), cwd=cwd, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       input=input)
    r.stdout = r.stdout.decode("utf-8", "backslashreplace")
    r.stderr = r.stderr.decode("utf-8", "backslashreplace")
    if check and r.returncode != 0:
        raise AssertionError(
            f"mkerofs failed (exit {r.returncode}): {shlex.join(map(os.fsdecode, cmd))}\n"
            f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}")
    return r


def build_image(image: PathLike, source: PathLike, *args, env=None,
                check=True, **kw) -> subprocess.CompletedProcess:
    """run_mkerofs(*args, IMAGE, SOURCE)."""
    return run_mkerofs(*args, image, source, env=env, check=check, **kw)


def assert_clean_failure(r: subprocess.CompletedProcess, *,
                         mentions: Sequence[str] = (),
                         mentions_any: Sequence[str] = (),
                         image: Optional[PathLike] = None,
                         image_before: Optional[bytes] = None) -> str:
    """Check the error contract: non-zero exit, exactly one non-empty line on
    stderr, no Python traceback, the message mentions every string of
    ``mentions`` and at least one of ``mentions_any`` (case-insensitive),
    and the image either does not exist (``image_before`` None) or still
    holds exactly ``image_before``. Returns the message line."""
    problems = []
    if r.returncode == 0:
        problems.append("exit status 0 for a failing build")
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        problems.append("a Python traceback was printed")
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    if len(lines) != 1:
        problems.append(f"expected exactly one line on stderr, got {len(lines)}")
    msg = lines[0] if lines else ""
    low = r.stderr.lower()
    for m in mentions:
        if m.lower() not in low:
            problems.append(f"stderr does not mention {m!r}")
    if mentions_any and not any(m.lower() in low for m in mentions_any):
        problems.append(f"stderr mentions none of {list(mentions_any)!r}")
    if image is not None:
        if image_before is None:
            if os.path.lexists(image):
                problems.append(f"image {show(image)} was left behind")
        else:
            try:
                now = Path(os.fsdecode(image)).read_bytes()
            except OSError as e:
                now = None
                problems.append(f"existing image {show(image)} is gone: {e}")
            if now is not None and now != image_before:
                problems.append(f"existing image {show(image)} was modified")
    if problems:
        raise AssertionError("; ".join(problems) +
                             f"\n--- exit {r.returncode} ---\n--- stdout ---\n"
                             f"{r.stdout}\n--- stderr ---\n{r.stderr}")
    return msg


def leftovers(folder: PathLike, keep: Iterable[str] = ()) -> list[str]:
    """Entries of ``folder`` other than ``keep`` (to spot temporary files)."""
    keep = set(keep)
    return sorted(n for n in os.listdir(os.fsdecode(folder)) if n not in keep)


def wait_until_writing(process: subprocess.Popen, folder: PathLike, keep: Iterable[str],
                       settle: float = 0.05, timeout: float = 60) -> None:
    """Wait until a file not in `keep` shows in `folder` (the build's temporary image: it is
    writing) or the process ends, then `settle` seconds more, so that a signal sent next
    comes in the middle of the build."""
    import time
    keep = set(keep)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if [n for n in os.listdir(folder) if n not in keep]:
            break
        time.sleep(0.005)
    time.sleep(settle)
