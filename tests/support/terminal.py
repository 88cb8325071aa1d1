"""Running a command with its stderr on a pseudo-terminal, as a person at a terminal runs it
(progress bars are drawn only there), and its stdout captured apart."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading

from .run import mkerofs_env


def run_on_terminal(cmd: list, *, stdin=None, timeout: float = 600, rows: int = 40,
                    cols: int = 120) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, what the terminal received on stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    received = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:             # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([os.fsencode(str(c)) if not isinstance(c, bytes) else c
                               for c in cmd], env=mkerofs_env(), stdin=stdin,
                              stdout=subprocess.PIPE, stderr=slave, timeout=timeout)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, proc.stdout, bytes(received)
