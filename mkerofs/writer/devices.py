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

from dataclasses import dataclass, field

from ..errors import BuildError
from ..ondisk import format as fmt
from .output import Output


@dataclass
class ExtraDevice:
    """One device of the table; `blocks` may be learned late (a blob written during the
    build, the size of a tar read to its end)."""
    name: str                       # for messages: the blob or tar it stands for
    blocks: int = 0
    tag: bytes = b""
    src_path: str | None = None     # the file it is, as given (--vmdk-desc names it)


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

    def slots(self, primary_blocks: int, wide_ok: bool = False) -> bytes:
        """The packed slots, each device mapped right after the primary device and the
        devices before it.  A size or start of 2^32 blocks or more needs the slot's high
        halves, which only the 48-bit format has (`wide_ok`, -E48bit): refused otherwise."""
        out = []
        uniaddr = primary_blocks
        for dev in self.devices:
            if max(dev.blocks, uniaddr) > fmt.EROFS_MAX_BLOCKS_LO and not wide_ok:
                raise BuildError(f"{dev.name}: {dev.blocks} blocks from block {uniaddr} of "
                                 "the unified address space: more than 32 bits address "
                                 "(needs -E48bit)")
            out.append(fmt.DeviceSlot(dev.blocks, uniaddr, dev.tag).pack())
            uniaddr += dev.blocks
        return b"".join(out)


class BlobFile:
    """--blobdev=FILE: the extra device that chunks are written to (a chunks.ChunkSink).  Like
    the image (output.Output), a file is written under a temporary name and renamed into place
    when the build succeeds, so a failed build leaves an existing FILE as it was (mkfs.erofs
    has truncated it by then); a block device is opened exclusively (refused while mounted)
    and written from its start."""

    def __init__(self, path: str, block_size: int):
        self.path = path
        self.block_size = block_size
        self.next_block = 0
        self.device = ExtraDevice(path)     # its slot in the device table
        try:
            self._out = Output(path)
        except BuildError as err:
            raise BuildError(f"--blobdev {err}") from None
        self.identity = self._out.identity()   # the walk leaves it out of the image

    def allocate(self, nblocks: int) -> int:
        start = self.next_block
        self.next_block += nblocks
        self.device.blocks = self.next_block
        return start

    def align(self, nblocks: int) -> None:
        self.next_block = fmt.round_up(self.next_block, nblocks)

    def pwrite(self, data, pos: int) -> None:
        try:
            self._out.pwrite(data, pos)
        except BuildError as err:
            raise BuildError(f"--blobdev {err}") from None

    def pread(self, n: int, pos: int) -> bytes:
        return self._out.pread(n, pos)

    @property
    def blocks(self) -> int:
        return self.next_block

    def finish(self) -> None:
        """Put the blob in place, a file cut at its last block."""
        try:
            self._out.finish(self.next_block * self.block_size)
        except BuildError as err:
            raise BuildError(f"--blobdev {err}") from None

    def abort(self) -> None:
        self._out.abort()
