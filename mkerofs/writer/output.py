"""Where the image goes: a temporary file renamed into place, or a block device written in place."""
from __future__ import annotations

import errno
import os
import stat

from ..errors import BuildError
from ..util import create_exclusive, pwrite_all


def _describe(path: str, err: OSError) -> BuildError:
    if err.errno == errno.ENOSPC:
        return BuildError(f"{path}: no space left on device")
    return BuildError(f"{path}: {err.strerror or err}")


class Output:
    """A random-access sink for the image, `offset` bytes into the target."""

    def __init__(self, path: str, offset: int = 0):
        self.path = path
        self.offset = offset
        self.fd = -1
        self.tmp_path: str | None = None
        self.is_device = False
        self.capacity: int | None = None
        self._open()

    def _open(self) -> None:
        path = self.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise _describe(path, err) from None
        if st is not None and stat.S_ISBLK(st.st_mode):
            self._open_device()
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise BuildError(f"{path}: is a directory")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise BuildError(f"{path}: output folder {folder} does not exist")
        try:
            self.fd, self.tmp_path = create_exclusive(folder, f".{os.path.basename(path)}.", ".tmp")
        except OSError as err:
            raise _describe(path, err) from None

    def _open_device(self) -> None:
        # O_EXCL on a block device fails with EBUSY while it is mounted or held open exclusively
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise BuildError(f"{self.path}: device is mounted or in use") from None
            raise _describe(self.path, err) from None
        self.is_device = True
        self.capacity = os.lseek(self.fd, 0, os.SEEK_END)

    def identity(self) -> set[tuple[int, int]]:
        """(dev, ino) of what we write, so the walker never takes the image into itself."""
        ids = set()
        for p in (self.tmp_path, self.path):
            try:
                st = os.stat(p) if p else None
            except OSError:
                continue
            if st is not None and stat.S_ISREG(st.st_mode):
                ids.add((st.st_dev, st.st_ino))
        return ids

    def check_fits(self, image_size: int) -> None:
        if self.capacity is not None and self.offset + image_size > self.capacity:
            raise BuildError(f"{self.path}: image of {image_size} bytes does not fit on the device "
                             f"({self.capacity - self.offset} bytes available)")

    def pwrite(self, data, pos: int) -> None:
        view = memoryview(data)
        if self.capacity is not None and self.offset + pos + view.nbytes > self.capacity:
            # compressed images learn their size only while being written
            raise BuildError(f"{self.path}: the image does not fit on the device "
                             f"({self.capacity - self.offset} bytes available)")
        try:
            pwrite_all(self.fd, view, pos + self.offset)
        except OSError as err:
            raise _describe(self.path, err) from None

    def pread(self, n: int, pos: int) -> bytes:
        """The image's bytes at `pos` as written so far."""
        return os.pread(self.fd, n, pos + self.offset)

    def finish(self, image_size: int) -> None:
        try:
            if self.is_device:
                os.fsync(self.fd)          # a device is used right away; a file is renamed first
            else:
                os.ftruncate(self.fd, self.offset + image_size)
            os.close(self.fd)
            self.fd = -1
            if self.tmp_path:
                os.chmod(self.tmp_path, 0o644 & ~umask())
                os.replace(self.tmp_path, self.path)
                self.tmp_path = None
        except OSError as err:
            raise _describe(self.path, err) from None

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp_path:
            try:
                os.unlink(self.tmp_path)
            except OSError:
                pass
            self.tmp_path = None


def umask() -> int:
    """The process's umask (read by setting it and back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
