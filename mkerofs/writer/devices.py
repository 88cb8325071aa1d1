"""The device table: extra devices whose blocks chunk-based files point into.

The kernel's rules (fs/erofs/super.c erofs_scan_devices / erofs_init_device, data.c
erofs_map_dev):

* The superblock's extra_devices counts the slots and devt_slotoff says where they are (in
  EROFS_DEVT_SLOT_SIZE units from the start of the image); EROFS_FEATURE_INCOMPAT_DEVICE_TABLE
  is set.  A chunk index's device_id n (1-based) names slot n.
* Mounted with one `-o device=PATH` per slot, the kernel reads each device from its path.
  Mounted with none, it reads device n from the image itself, starting at block uniaddr of
  slot n ("flatdev"): an image followed by its devices, in order, with each uniaddr the sum of
  the primary device's blocks and the blocks of the devices before it, mounts as one file.
  That is what containerd's tar-index layers do: metadata, then the raw tar appended.
* The superblock's `blocks` counts the primary device only.

mkerofs writes the slots with an empty tag and uniaddr as above (as mkfs.erofs does), so both
ways to mount work.  The table follows the superblock and its compression configurations, which
the kernel expects right after the superblock.

--blobdev=FILE (BlobFile) is such a device, written during the build: the chunks of chunk-based
files go there, block after block from block 0, and the image holds metadata only.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from ..errors import BuildError
from ..ondisk import format as fmt
from ..util import pwrite_all


@dataclass
class ExtraDevice:
    """One device of the table; `blocks` may be learned late (a blob written during the
    build, the size of a tar read to its end)."""
    name: str                       # for messages: the blob or tar it stands for
    blocks: int = 0
    tag: bytes = b""


@dataclass
class DeviceTable:
    devices: list[ExtraDevice] = field(default_factory=list)

    def add(self, device: ExtraDevice) -> int:
        """Add a device; its device_id for chunk indexes."""
        self.devices.append(device)
        return len(self.devices)

    def __bool__(self) -> bool:
        return bool(self.devices)

    @property
    def size(self) -> int:
        return len(self.devices) * fmt.EROFS_DEVT_SLOT_SIZE

    def slots(self, primary_blocks: int) -> bytes:
        """The packed slots, each device mapped right after the primary device and the
        devices before it."""
        out = []
        uniaddr = primary_blocks
        for dev in self.devices:
            out.append(fmt.DeviceSlot(dev.blocks, uniaddr, dev.tag).pack())
            uniaddr += dev.blocks
        return b"".join(out)

    @property
    def wide(self) -> bool:
        """True if a slot needs the 48-bit format's high halves."""
        total = sum(d.blocks for d in self.devices)
        return total >= 1 << 32


class BlobFile:
    """--blobdev=FILE: the extra device that chunks are written to (a chunks.ChunkSink).  A
    file is created or truncated, a block device written from its start; a file this build
    created is removed again if the build fails."""

    def __init__(self, path: str, block_size: int):
        self.path = path
        self.block_size = block_size
        self.next_block = 0
        self.device = ExtraDevice(path)     # its slot in the device table
        self.created = not os.path.lexists(path)
        self.is_device = False
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            st = os.fstat(self.fd)
            self.is_device = stat.S_ISBLK(st.st_mode)
            self.identity = (st.st_dev, st.st_ino)     # the walk leaves it out of the image
            if not self.is_device:
                os.ftruncate(self.fd, 0)
        except OSError as err:
            self.abort()
            raise BuildError(f"--blobdev {path}: cannot create it: {err.strerror}") from None

    def allocate(self, nblocks: int) -> int:
        start = self.next_block
        self.next_block += nblocks
        self.device.blocks = self.next_block
        return start

    def pwrite(self, data, pos: int) -> None:
        try:
            pwrite_all(self.fd, data, pos)
        except OSError as err:
            raise BuildError(f"--blobdev {self.path}: {err.strerror}") from None

    @property
    def blocks(self) -> int:
        return self.next_block

    def finish(self) -> None:
        """Close it, a file cut at its last block (chunks skipped nothing, but be exact)."""
        try:
            if self.is_device:
                os.fsync(self.fd)
            else:
                os.ftruncate(self.fd, self.next_block * self.block_size)
            os.close(self.fd)
        except OSError as err:
            raise BuildError(f"--blobdev {self.path}: {err.strerror}") from None
        finally:
            self.fd = -1

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.created:
            self._remove()

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
