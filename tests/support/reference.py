"""The reference mkfs.erofs that some tests compare mkerofs with: $MKFS_EROFS_REF, else
/work/erofs-utils-install/bin/mkfs.erofs; without one those tests are skipped (a missing tool,
not a missing kernel)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

DEFAULT_REF = Path("/work/erofs-utils-install/bin/mkfs.erofs")


def reference_problem() -> tuple[str | None, str | None]:
    """(path of mkfs.erofs >= 1.9, None) or (None, why not)."""
    ref = os.environ.get("MKFS_EROFS_REF") or (str(DEFAULT_REF) if DEFAULT_REF.exists() else None)
    if not ref:
        return None, "needs mkfs.erofs >= 1.9 (set MKFS_EROFS_REF)"
    try:
        out = subprocess.run([ref, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=30).stdout
    except OSError as e:
        return None, f"needs mkfs.erofs >= 1.9 (set MKFS_EROFS_REF): {ref}: {e}"
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < (1, 9):
        return None, f"needs mkfs.erofs >= 1.9 (set MKFS_EROFS_REF): {ref} says {out.strip()!r}"
    return ref, None
