"""--vmdk-desc=FILE: a VMDK descriptor that joins the image and its extra devices into one disk.

The format, as mkfs.erofs 1.9.3 writes it: a header (version 1, CID = the XOR of the image
UUID's four 32-bit words read in host byte order, in lowercase hex; parentCID ffffffff;
createType "twoGbMaxExtentFlat"), then one extent line ``RW <sectors> FLAT "<file>" 0`` for
the image (its blocks in 512-byte sectors, the file named as given) and one per extra device
in slot order (its source path as given; the slot's tag when it has none, as with --blobdev),
each cut into lines of at most 2 GiB, the offset counting the sectors before it; then the
disk database (geometry of 16 heads, 63 sectors a track, cylinders rounded up, adapter "ide").
The extents follow one another as the devices' uniaddr does, so the disk is the image with its
devices appended ("flatdev").

The file is written only when the build succeeds: under a temporary name beside it, renamed
into place (mkfs.erofs truncates it when it parses the option, leaving it empty on failure).
"""
from __future__ import annotations

import os
import sys
import tempfile

from ..errors import BuildError
from .output import umask

SECTOR = 512
_MAX_EXTENT_SECTORS = (2 << 30) // SECTOR
_HEADS = 16
_SECTORS_PER_TRACK = 63


def descriptor(uuid: bytes, extents: list[tuple[str, int]]) -> str:
    """The descriptor of a disk made of `extents`: (file name, length in bytes) in order."""
    cid = 0
    for at in range(0, 16, 4):
        cid ^= int.from_bytes(uuid[at:at + 4], sys.byteorder)
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid:x}", "parentCID=ffffffff",
             'createType="twoGbMaxExtentFlat"', "", "# Extent description"]
    total = 0
    for name, length in extents:
        sectors = length // SECTOR
        total += sectors
        offset = 0
        while sectors:
            count = min(sectors, _MAX_EXTENT_SECTORS)
            lines.append(f'RW {count} FLAT "{name}" {offset}')
            offset += count
            sectors -= count
    cylinders = -(-total // (_SECTORS_PER_TRACK * _HEADS))
    lines += ["", "# The Disk Data Base", "#DDB", "", 'ddb.virtualHWVersion = "4"',
              f'ddb.geometry.cylinders = "{cylinders}"', f'ddb.geometry.heads = "{_HEADS}"',
              f'ddb.geometry.sectors = "{_SECTORS_PER_TRACK}"', 'ddb.adapterType = "ide"']
    return "\n".join(lines) + "\n"


class VmdkDescriptor:
    """The descriptor file while the image is built: staged under a temporary name, then
    put in place (`commit`) or removed (`abort`)."""

    def __init__(self, path: str):
        self.path = path
        self._temp: str | None = None

    def stage(self, text: str) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, self._temp = tempfile.mkstemp(prefix=".mkerofs-vmdk-", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as err:
            self.abort()
            raise BuildError(f"failed to write the vmdk descriptor {self.path}: "
                             f"{err.strerror or err}") from None

    def commit(self) -> None:
        try:
            os.chmod(self._temp, 0o666 & ~umask())
            os.replace(self._temp, self.path)
        except OSError as err:
            self.abort()
            raise BuildError(f"failed to write the vmdk descriptor {self.path}: "
                             f"{err.strerror or err}") from None
        self._temp = None

    def abort(self) -> None:
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None
