"""Read EROFS images without mounting them: superblock, inodes, directories, data, xattrs, verify.

    from mkerofs.reader import Image, ImageError
    with Image.open("image.erofs") as img:
        for path, inode in img.walk():
            ...
        data = img.read(img.lookup("/etc/passwd"))

Everything an image can say is distrusted: every offset is checked against the image before it
is read, every loop is bounded by the image's size, and every problem surfaces as ImageError
naming the nid, path or byte offset.  Compressed data is decoded one pcluster at a time (never
more than Z_EROFS_PCLUSTER_MAX_DSIZE bytes), so iter_data() streams files of any size.

Notes on the API (beyond the names agreed with the front end):

* A bad superblock checksum does not stop Image(): ``checksum_ok`` is False and verify() lists
  it; pass ``require_checksum=True`` to make opening fail instead (as the kernel does).
* Extent.kind is one of "plain", "interlaced", "inline", "compressed", "ztailpacking",
  "fragment", "hole"; a fragment's ``physical`` is its offset in the packed inode's data.
* xattrs() lists what the kernel's listxattr lists: entries whose name index has no known prefix
  (0, lustre., a long prefix beyond the table) are skipped; verify() mentions the latter.
* walk(top) takes an Inode or a path; it yields absolute image paths (b"/" for the root).
* read() refuses to build more than READ_LIMIT bytes in one call; iter_data() streams.
* lookup() raises NotFoundError (an ImageError and a FileNotFoundError) for missing names.
* Inode.is_dir(), is_reg() ... are methods, as on os.DirEntry; major/minor are properties.
* verify(progress) calls progress(inodes checked, superblock inode count) after each inode;
  verify_report() also says how many inodes and bytes of file data it checked.
* Extras: Image.root_nid, blocks, build_time, epoch, image_size, packed_inode,
  long_xattr_prefixes(), compression_configs(); Extent.interlaced.
* Extra devices: Image.device_table (a format.DeviceSlot per slot), flatdev (no devices were
  given), device_problems(); Extent.device (0: the image).

Extra devices (the device table, EROFS_FEATURE_INCOMPAT_DEVICE_TABLE), as the kernel reads them
(fs/erofs/super.c erofs_scan_devices, data.c erofs_map_dev):

* A chunk index's device_id, masked with roundup_pow_of_two(extra_devices + 1) - 1, names slot n
  (1-based); 0 is the image itself.  A masked id beyond the table is an error.
* ``Image(..., devices=[...])`` (mount -o device=, one per slot, in order; their number must be
  the table's) reads device n from its own file, from byte 0.  Then an address on the image
  (block maps, device_id 0, flat and compressed data; not metadata or inline tails) that falls
  in [uniaddr, uniaddr + blocks) of a slot with a nonzero uniaddr is read from that device
  instead ("unified addressing").
* Without devices ("flatdev"), device n is read from the image itself from block uniaddr of its
  slot on: the devices appended to the image, as containerd does with tar index layers.  A slot
  with uniaddr 0 (mkfs.erofs 1.5 writes that) places its device nowhere, so its chunks cannot be
  read this way (the kernel would read the image's own first blocks; this reader refuses).
* A slot's blocks_hi/uniaddr_hi and a chunk index's startblk_hi count only with the 48-bit
  format (EROFS_FEATURE_INCOMPAT_48BIT, EROFS_CHUNK_FORMAT_48BIT).
Data missing from a device (or from the image, for flatdev) is an ImageError saying which
device and what to pass, when the file's extents are mapped.

An Image is not thread-safe (it caches directories and decoded pclusters): open one per thread.
Images are mmap()ed: a file truncated by someone else while it is read crashes the process
(SIGBUS), as with any mmap reader.
"""
from __future__ import annotations

import copy
import io
import mmap
import os
import stat
from bisect import bisect_right
from collections import Counter, OrderedDict
from dataclasses import dataclass, fields
from functools import partial
from typing import TYPE_CHECKING, Callable, Container, Iterator

from ..ondisk import format as fmt
from ..ondisk import index
from ..ondisk import xattr as ondisk_xattr
from . import zmap
from ..errors import ImageError
from .zmap import Extent

if TYPE_CHECKING:       # (loaded by _codec, for an image with compressed data only)
    from ..codecs.base import Codec

__all__ = ["Image", "Inode", "INODE_FIELDS", "Extent", "ImageError", "NotFoundError",
           "VerifyReport", "READ_LIMIT"]

READ_LIMIT = 1 << 31             # read() builds at most this many bytes; iter_data() streams
MAX_DEPTH = 4096                 # walk(): deeper trees are refused (paths would exceed PATH_MAX)
DIR_LIMIT = 1 << 28              # bytes of directory entries read for one directory
SYMLINK_MAX = 4095               # the kernel reads at most PAGE_SIZE - 1 bytes of a target
_DECODED_CACHE_BYTES = 48 << 20  # decoded pclusters kept (fragments, dedupe, small reads)
_DIR_CACHE_ENTRIES = 32
_DOTS = frozenset((b".", b".."))
_DIRENT_HEAD, _DIRENT_SIZE = fmt.EROFS_DIRENT.unpack_from, fmt.EROFS_DIRENT_SIZE
_DIRENT_HEADS = fmt.unpack_dirent_heads
_NAME_LEN = fmt.EROFS_NAME_LEN

_FT_OF_MODE = fmt.EROFS_FT_OF_MODE
_COMPRESSED = (fmt.EROFS_INODE_COMPRESSED_FULL, fmt.EROFS_INODE_COMPRESSED_COMPACT)
_ADDR32 = (1 << 32) - 1
_ADDR48 = (1 << 48) - 1
# Image.inode's constants, bound once
_NID_METABOX_BIT = fmt.EROFS_DIRENT_NID_METABOX_BIT
_ISLOTBITS = fmt.EROFS_ISLOTBITS
_COMPACT_SIZE, _EXTENDED_SIZE = fmt.EROFS_INODE_COMPACT_SIZE, fmt.EROFS_INODE_EXTENDED_SIZE
_COMPACT, _EXTENDED = fmt.EROFS_INODE_COMPACT.unpack_from, fmt.EROFS_INODE_EXTENDED.unpack_from
_I_ALL, _I_VERSION_MASK = fmt.EROFS_I_ALL, fmt.EROFS_I_VERSION_MASK
_I_DATALAYOUT_BIT, _I_DATALAYOUT_MASK = fmt.EROFS_I_DATALAYOUT_BIT, fmt.EROFS_I_DATALAYOUT_MASK
_I_NLINK_1_BIT, _I_DOT_OMITTED_BIT = fmt.EROFS_I_NLINK_1_BIT, fmt.EROFS_I_DOT_OMITTED_BIT
_DATALAYOUT_MAX = fmt.EROFS_INODE_DATALAYOUT_MAX
_FLAT_PLAIN, _CHUNK_BASED = fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_INODE_CHUNK_BASED
_FLAT_INLINE = fmt.EROFS_INODE_FLAT_INLINE
_NULL_ADDR = fmt.EROFS_NULL_ADDR
_S_IFMT, _S_IFDIR = fmt.S_IFMT, stat.S_IFDIR
_BLOCK_KINDS = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK))    # i_u: a block address
_DEVICE_KINDS = frozenset((stat.S_IFCHR, stat.S_IFBLK))                  # i_u: the device
_SPECIAL_KINDS = frozenset((stat.S_IFIFO, stat.S_IFSOCK))
# what an inode's i_u holds, by its kind and layout (Image._inode_shape)
_FLAT_BLOCKS, _BLOCKS, _CHUNKS, _DEVICE, _SPECIAL, _BOGUS = range(6)
_SHAPES_KEPT = 4096             # (i_format, i_mode) pairs kept: a hostile image may have many
# what unified addressing moves to an extra device: data read through erofs_map_dev (inline
# tails are read as metadata, from the image)
_UNIFIED_KINDS = ("plain", "compressed", "interlaced")


class NotFoundError(ImageError, FileNotFoundError):
    """lookup(): a path component does not exist."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "not found"


@dataclass(slots=True)
class Inode:
    nid: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    mtime: int
    mtime_nsec: int
    rdev: int                  # the encoded device number (new_encode_dev); 0 unless a device
    ino: int
    datalayout: int
    extended: bool
    xattr_icount: int
    pos: int = 0               # byte offset of the on-disk inode in the image
    startblk: int = 0          # flat: first data block (fmt.EROFS_NULL_ADDR: none); else i_u
    dot_omitted: bool = False  # directories without a "." entry (48-bit images)

    @property
    def isize(self) -> int:
        return fmt.EROFS_INODE_EXTENDED_SIZE if self.extended else fmt.EROFS_INODE_COMPACT_SIZE

    @property
    def xattr_isize(self) -> int:
        return fmt.xattr_ibody_size(self.xattr_icount)

    @property
    def data_pos(self) -> int:
        """Where inline data, chunk indexes or the compression map begin."""
        return self.pos + self.isize + fmt.xattr_ibody_size(self.xattr_icount)

    @property
    def major(self) -> int:
        return fmt.new_decode_dev(self.rdev)[0]

    @property
    def minor(self) -> int:
        return fmt.new_decode_dev(self.rdev)[1]

    @property
    def file_type(self) -> int:
        return _FT_OF_MODE.get(stat.S_IFMT(self.mode), fmt.EROFS_FT_UNKNOWN)

    @property
    def compressed(self) -> bool:
        return self.datalayout in _COMPRESSED

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def is_chr(self) -> bool:
        return stat.S_ISCHR(self.mode)

    def is_blk(self) -> bool:
        return stat.S_ISBLK(self.mode)

    def is_fifo(self) -> bool:
        return stat.S_ISFIFO(self.mode)

    def is_sock(self) -> bool:
        return stat.S_ISSOCK(self.mode)


# Image.inode_fields(): what it returns, in this order
INODE_FIELDS = tuple(f.name for f in fields(Inode))[1:]


def _source_name(source, default: str) -> str:
    """A path's or a file object's name, for messages."""
    name = getattr(source, "name", source)
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else default


def _with_nid(nid: int, error: ImageError) -> ImageError:
    msg = str(error)
    if msg.startswith("nid "):
        return error
    return ImageError(f"nid {nid}: {msg}")


@dataclass(slots=True)
class _Device:
    """Where an extra device's bytes are: `size` bytes of `data` from byte `base` on (data None:
    nowhere)."""
    name: str
    data: object
    base: int
    size: int


class Image:
    """An EROFS image in a file, block device, bytes or mmap, `offset` bytes in; `devices`: its
    extra devices, one per slot of its device table (paths, files or bytes), or None to read
    them from the image itself (flatdev)."""

    def __init__(self, source, offset: int = 0, *, require_checksum: bool = False,
                 devices=None):
        self._mmaps: list[mmap.mmap] = []
        self._closed = False
        self._data, self._size = self._attach(source, offset)
        self._base = offset
        self._decoded: OrderedDict = OrderedDict()
        self._decoded_bytes = 0
        self._dir_cache: OrderedDict = OrderedDict()
        # inode_fields' reading of each (i_format, i_mode) pair met (_inode_shape), and each
        # distinct i_mode as one int object (at most 2^16): a caller keeping the modes of many
        # inodes (rebuild mode) keeps an int a mode, not one an inode (28 bytes)
        self._shapes: dict[int, tuple] = {}
        self._modes: dict[int, int] = {}
        self._zcache: OrderedDict = OrderedDict()
        self._packed: Inode | None = None
        self._prefixes: list[tuple[int, bytes]] | None = None
        try:
            self._read_superblock()
            self._attach_devices(devices)
        except ImageError:
            self.close()
            raise
        if require_checksum and self.checksum_ok is False:
            self.close()
            raise ImageError(self._checksum_problem())

    @classmethod
    def open(cls, path, offset: int = 0, **kw) -> "Image":
        try:
            with open(path, "rb") as f:
                return cls(f, offset, **kw)
        except OSError as e:
            raise ImageError(f"cannot open {os.fsdecode(path)}: {e.strerror or e}") from None

    def _attach(self, source, offset: int):
        if offset < 0:
            raise ImageError(f"negative image offset {offset}")
        if isinstance(source, (bytes, mmap.mmap)):
            data = source
        elif isinstance(source, (bytearray, memoryview)):
            data = bytes(source)
        else:
            data = self._load(source, "the image", offset)
        size = len(data) - offset
        if size <= 0:
            raise ImageError(f"the image is empty ({len(data)} bytes, offset {offset})")
        return data, size

    def _load(self, source, what: str, offset: int = 0):
        """The bytes of a file object or path, mmap()ed when it is a real file or block
        device (pipes, BytesIO: read whole)."""
        if hasattr(source, "read"):
            return self._map_file(source, what, offset)
        if isinstance(source, (str, os.PathLike)):
            try:
                with open(source, "rb") as f:
                    return self._map_file(f, what, offset)
            except OSError as e:
                raise ImageError(f"cannot open {os.fsdecode(source)}: {e.strerror or e}") \
                    from None
        raise TypeError(f"cannot read {what} from {type(source).__name__}")

    def _map_file(self, f, what: str, offset: int):
        try:
            fd = f.fileno()
            end = os.lseek(fd, 0, os.SEEK_END)
        except (OSError, ValueError, io.UnsupportedOperation):
            fd = None
        if fd is not None:
            if end <= offset:
                raise ImageError(f"{what} is empty ({end} bytes, offset {offset})")
            try:
                self._mmaps.append(mmap.mmap(fd, end, prot=mmap.PROT_READ))
                return self._mmaps[-1]
            except (OSError, ValueError):
                pass
        try:
            f.seek(0)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        try:
            data = f.read()
        except OSError as e:
            raise ImageError(f"cannot read {what}: {e.strerror or e}") from None
        return bytes(data)

    def drop_pages(self) -> None:
        """Give the pages of the mapped image (and devices) read so far back to the kernel:
        a caller done with most of the metadata keeps its resident size down.  Nothing is
        lost: a page read again comes back from the page cache."""
        if self._closed:
            return
        for mm in self._mmaps:
            mm.madvise(mmap.MADV_DONTNEED)

    def forget_listings(self) -> None:
        """Let go of the directory listings kept for a second look (listdir's): a caller
        done with the directories keeps its resident size down."""
        self._dir_cache.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._decoded.clear()
        self._dir_cache.clear()
        self._zcache.clear()
        for mm in self._mmaps:
            try:
                mm.close()
            except BufferError:     # a caller still holds a view; the mapping goes with it
                pass
        self._data = b""
        self._size = 0              # every read now fails
        self._devs = [_Device(d.name, None, 0, 0) for d in getattr(self, "_devs", ())]

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw access ------------------------------------------------------------------------------

    def _get(self, pos: int, n: int) -> bytes:
        if pos < 0 or n < 0 or pos + n > self._size:
            if self._closed:
                raise ImageError("the image is closed")
            raise ImageError(f"{n} bytes at byte {pos} are past the end of the image "
                             f"({self._size} bytes)")
        start = self._base + pos
        return self._data[start:start + n]

    def _check_range(self, pos: int, n: int, what: str) -> None:
        if pos + n > self._size:
            bs = self.block_size
            raise ImageError(f"{what} extends past the end of the image (block "
                             f"{(pos + n - 1) // bs} of {-(-self._size // bs)})")

    # -- superblock ------------------------------------------------------------------------------

    def _read_superblock(self) -> None:
        end = fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE
        if self._size < end:
            raise ImageError(f"the image is {self._size} bytes, too short for a superblock "
                             f"(needs {end})")
        raw = self._get(fmt.EROFS_SUPER_OFFSET, fmt.EROFS_SB_SIZE)
        sb = fmt.SuperBlock.unpack(raw)
        self.superblock = sb
        if sb.magic != fmt.EROFS_SUPER_MAGIC_V1:
            raise ImageError(f"bad magic 0x{sb.magic:08x} at byte {fmt.EROFS_SUPER_OFFSET}: not "
                             f"an EROFS image (expected 0x{fmt.EROFS_SUPER_MAGIC_V1:08x})")
        if not fmt.EROFS_MIN_BLOCK_SIZE_BITS <= sb.blkszbits <= fmt.EROFS_MAX_BLOCK_SIZE_BITS:
            raise ImageError(f"bad block size bits {sb.blkszbits} in the superblock (9 to "
                             f"{fmt.EROFS_MAX_BLOCK_SIZE_BITS})")
        self.block_size = bs = 1 << sb.blkszbits
        self._blkszbits = sb.blkszbits
        unknown = sb.feature_incompat & ~fmt.EROFS_ALL_FEATURE_INCOMPAT
        if unknown:
            raise ImageError(f"unknown incompatible features 0x{unknown:x}")
        if sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_METABOX:
            raise ImageError("metadata in a metabox inode (mkfs.erofs -m) is not supported")
        self._sb_size = fmt.EROFS_SB_SIZE + sb.sb_extslots * fmt.EROFS_SB_EXTSLOT_SIZE
        if self._sb_size > max(bs, 4096) - fmt.EROFS_SUPER_OFFSET:
            raise ImageError(f"bad sb_extslots {sb.sb_extslots}")
        if sb.dirblkbits:
            raise ImageError(f"directory block bits {sb.dirblkbits} are not supported")
        self._48bit = bool(sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_48BIT)
        self.root_nid = sb.root_nid
        self.blocks = sb.blocks
        if self._48bit:
            off, st = fmt.EROFS_SB_ROOTNID_8B
            rootnid_8b = st.unpack_from(raw, off)[0]
            if rootnid_8b:
                self.root_nid = rootnid_8b
                off, st = fmt.EROFS_SB_BLOCKS_HI
                self.blocks |= st.unpack_from(raw, off)[0] << 32
        if sb.packed_nid >> fmt.EROFS_DIRENT_NID_METABOX_BIT:
            raise ImageError(f"bad packed nid 0x{sb.packed_nid:x}")
        off, st = fmt.EROFS_SB_BUILD_TIME
        self.epoch = sb.epoch - (1 << 64) if sb.epoch >> 63 else sb.epoch
        self.build_time = self.epoch + st.unpack_from(raw, off)[0]
        self._meta = sb.meta_blkaddr << sb.blkszbits
        self._xattr_base = sb.xattr_blkaddr << sb.blkszbits
        self.checksum_ok = self._verify_checksum()
        self._read_compr_cfgs()
        self._read_device_table()

    def _verify_checksum(self) -> bool | None:
        sb = self.superblock
        if not sb.feature_compat & fmt.EROFS_FEATURE_COMPAT_SB_CHKSUM:
            return None
        span = fmt.sb_checksum_span(self.block_size)
        if fmt.EROFS_SUPER_OFFSET + span > self._size:
            raise ImageError(f"the image is truncated: {self._size} bytes, but the superblock "
                             f"checksum covers bytes up to {fmt.EROFS_SUPER_OFFSET + span}")
        raw = bytearray(self._get(fmt.EROFS_SUPER_OFFSET, span))
        raw[fmt.SB_CHECKSUM_OFFSET:fmt.SB_CHECKSUM_OFFSET + 4] = bytes(4)
        self._computed_checksum = fmt.erofs_crc32c(bytes(raw))
        return self._computed_checksum == sb.checksum

    def _read_device_table(self) -> None:
        sb = self.superblock
        count = sb.extra_devices if sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE \
            else 0
        self._devmask = (1 << count.bit_length()) - 1      # roundup_pow_of_two(count + 1) - 1
        pos = sb.devt_slotoff * fmt.EROFS_DEVT_SLOT_SIZE
        try:
            raw = self._get(pos, count * fmt.EROFS_DEVT_SLOT_SIZE)
        except ImageError as e:
            raise ImageError(f"device table of {count} slots: {e}") from None
        self.device_table = [
            fmt.DeviceSlot.unpack(raw[at:at + fmt.EROFS_DEVT_SLOT_SIZE], self._48bit)
            for at in range(0, len(raw), fmt.EROFS_DEVT_SLOT_SIZE)]

    def _attach_devices(self, devices) -> None:
        """Where each slot's device is read: the given files, else the image itself."""
        table, bs = self.device_table, self.block_size
        self.flatdev = devices is None
        self._unified: list[tuple[int, int, int]] = []
        if self.flatdev:
            self._devs = [_Device(f"device {n}", self._data if slot.uniaddr else None,
                                  self._base + slot.uniaddr * bs,
                                  max(self._size - slot.uniaddr * bs, 0))
                          for n, slot in enumerate(table, 1)]
            return
        devices = list(devices)
        if len(devices) != len(table):
            raise ImageError(f"{len(devices)} device(s) given, but the image's device table "
                             f"has {len(table)} slot(s): give one device per slot, in order")
        self._devs = []
        for n, (slot, source) in enumerate(zip(table, devices), 1):
            if isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)):
                name, data = f"device {n}", source
            else:
                name = _source_name(source, f"device {n}")
                data = self._load(source, f"device {n} ({name})")
            self._devs.append(_Device(name, data, 0, len(data)))
            if slot.uniaddr:
                self._unified.append((slot.uniaddr * bs, (slot.uniaddr + slot.blocks) * bs, n))

    def device_problems(self) -> list[str]:
        """Extra devices missing or shorter than their slots say (a partial last block is
        fine: a tar need not end on a block boundary)."""
        out = []
        bs = self.block_size
        for n, (slot, d) in enumerate(zip(self.device_table, self._devs), 1):
            if d.data is None:
                out.append(f"device {n} ({slot.blocks} blocks) is not in the image (its slot's "
                           "uniaddr is 0): pass --device=FILE")
            elif -(-d.size // bs) < slot.blocks:
                where = f"{d.name}" if not self.flatdev else \
                    f"from block {slot.uniaddr} of the image"
                out.append(f"device {n} ({where}) has {d.size} bytes, its slot says "
                           f"{slot.blocks} blocks of {bs}" +
                           (": append it whole, or pass --device=FILE" if self.flatdev else ""))
        return out

    def _checksum_problem(self) -> str:
        return (f"superblock checksum 0x{self.superblock.checksum:08x} does not match the "
                f"computed 0x{self._computed_checksum:08x}")

    def _read_compr_cfgs(self) -> None:
        sb = self.superblock
        self._cfgs: dict[int, bytes] = {}
        zero_padding = bool(sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_LZ4_0PADDING)
        if not sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_COMPR_CFGS:
            # the kernel reads lz4 without configurations (u1 is then lz4_max_distance)
            self._algs = 1 << fmt.Z_EROFS_COMPRESSION_LZ4
            self._announced = self._algs if (sb.u1 or zero_padding) else 0
            self._set_codecs(zero_padding)
            return
        algs = sb.u1
        if algs & ~fmt.Z_EROFS_ALL_COMPR_ALGS:
            raise ImageError(f"unknown compression algorithms 0x{algs & ~15:x} in the "
                             "superblock")
        self._algs = self._announced = algs
        pos = fmt.EROFS_SUPER_OFFSET + self._sb_size
        for alg in range(fmt.Z_EROFS_COMPRESSION_MAX):
            if algs >> alg & 1:
                payload, pos = self._metadata_record(pos, self._get)
                self._cfgs[alg] = payload
        lzma_dict = zstd_window = None
        cfg = self._cfgs.get(fmt.Z_EROFS_COMPRESSION_LZMA)
        if cfg is not None:
            if len(cfg) < fmt.Z_EROFS_LZMA_CFGS.size:
                raise ImageError(f"lzma configuration of {len(cfg)} bytes is too short")
            lzma_dict = fmt.Z_EROFS_LZMA_CFGS.unpack_from(cfg)[0]
            if lzma_dict > fmt.Z_EROFS_LZMA_MAX_DICT_SIZE:
                raise ImageError(f"lzma dictionary of {lzma_dict} bytes is too large")
        cfg = self._cfgs.get(fmt.Z_EROFS_COMPRESSION_ZSTD)
        if cfg is not None:
            if len(cfg) < fmt.Z_EROFS_ZSTD_CFGS.size:
                raise ImageError(f"zstd configuration of {len(cfg)} bytes is too short")
            windowlog = fmt.Z_EROFS_ZSTD_CFGS.unpack_from(cfg)[1] + fmt.Z_EROFS_ZSTD_WINDOWLOG_MIN
            if 1 << windowlog > fmt.Z_EROFS_ZSTD_MAX_DICT_SIZE:
                raise ImageError(f"zstd window of 2^{windowlog} bytes is too large")
            zstd_window = 1 << windowlog
        self._set_codecs(zero_padding, lzma_dict, zstd_window)

    def _set_codecs(self, zero_padding: bool, lzma_dict: int | None = None,
                    zstd_window: int | None = None) -> None:
        """Note the windows of the compression configurations: a decoder per algorithm is
        made when the image first decodes (_codec)."""
        self._zero_padding = zero_padding
        self._windows = {fmt.Z_EROFS_COMPRESSION_LZMA: lzma_dict,
                         fmt.Z_EROFS_COMPRESSION_ZSTD: zstd_window}
        self._codecs: dict[str, Codec] | None = None

    def _codec(self, name: str) -> Codec:
        """The decoder of algorithm `name`.  (The codecs, and ctypes under them, load only for
        an image with compressed data: rebuild mode and --incremental read most images
        without them.)"""
        if self._codecs is None:
            from ..codecs import registry
            self._codecs = {n: registry.decoder(alg, self._windows.get(alg))
                            for alg, n in registry.ALGORITHM_NAMES.items()}
        return self._codecs[name]

    @staticmethod
    def _metadata_record(pos: int, get: Callable[[int, int], bytes]) -> tuple[bytes, int]:
        """A variable-size record (compression configurations, long xattr prefixes): 4-byte
        aligned le16 length, then that many bytes."""
        pos = fmt.round_up(pos, 4)
        length = fmt.EROFS_METADATA_RECORD_LEN
        n = length.unpack(get(pos, length.size))[0]
        if n == 0:
            raise ImageError(f"empty metadata record at byte {pos}")
        pos += length.size
        return get(pos, n), pos + n

    def features(self) -> list[str]:
        sb = self.superblock
        return [name for compat, bit, name in fmt.EROFS_FEATURE_NAMES
                if (sb.feature_compat if compat else sb.feature_incompat) & bit]

    def algorithms(self) -> list[str]:
        return [name for i, name in enumerate(fmt.Z_EROFS_COMPRESSION_NAMES)
                if self._announced >> i & 1]

    def compression_configs(self) -> dict[str, bytes]:
        """Raw configuration records by algorithm name (empty without COMPR_CFGS)."""
        return {fmt.Z_EROFS_COMPRESSION_NAMES[a]: v for a, v in self._cfgs.items()}

    @property
    def image_size(self) -> int:
        return self._size

    # -- inodes ----------------------------------------------------------------------------------

    @property
    def root(self) -> Inode:
        return self.inode(self.root_nid)

    def inode(self, nid: int) -> Inode:
        return Inode(nid, *self.inode_fields(nid))

    def inode_fields(self, nid: int) -> tuple:
        """inode(nid) without the object: the Inode's fields after its nid, in order
        (INODE_FIELDS), checked as inode() checks them; Inode(nid, *fields) is inode(nid).
        (For a caller that reads every inode and keeps few of them: rebuild mode.)"""
        # (read for every entry of every directory walked: the constants are bound once,
        # module-level, and a compact inode, i_format included, is unpacked in one call)
        if nid < 0 or nid >> _NID_METABOX_BIT:
            raise ImageError(f"nid {nid}: not a valid inode number")
        pos = self._meta + (nid << _ISLOTBITS)
        size_ = self._size
        if pos + _COMPACT_SIZE > size_:
            if self._closed:
                raise ImageError("the image is closed")
            raise ImageError(f"nid {nid}: inode at byte {pos} is past the end of the image "
                             f"({size_} bytes)")
        data, at = self._data, self._base + pos
        compact = _COMPACT(data, at)
        # (i_format and i_mode, at the same place in both forms, read once for each pair)
        shape = self._shapes.get(compact[0] << 16 | compact[2])
        if shape is None:
            shape = self._inode_shape(nid, compact[0], compact[2])
        mode, layout, extended, nlink_1, what, dots = shape
        if extended:
            if pos + _EXTENDED_SIZE > size_:
                raise ImageError(f"nid {nid}: extended inode at byte {pos} is past the end of "
                                 f"the image ({size_} bytes)")
            (_, icount, _mode, nb, size, i_u, ino, uid, gid, mtime, nsec, nlink,
             _r) = _EXTENDED(data, at)
            hi, mask = nb, _ADDR48
        else:
            (_, icount, _mode, nb, size, mtime, i_u, ino, uid, gid, _r) = compact
            mtime, nsec = self.epoch + mtime, self.superblock.fixed_nsec
            if nlink_1:
                nlink, hi, mask = 1, nb, _ADDR48
            else:
                nlink, hi, mask = nb, 0, _ADDR32
        rdev = 0
        startblk = 0
        if what == _FLAT_BLOCKS:
            startblk = i_u | (hi << 32)
            # a flat inode without blocks: all ones in the address bits this form has
            if not (startblk ^ _NULL_ADDR) & mask:
                startblk = _NULL_ADDR
        elif what == _BLOCKS:
            startblk = i_u | (hi << 32)
        elif what == _CHUNKS:
            startblk = i_u
            if i_u & 0xFFFF & ~fmt.EROFS_CHUNK_FORMAT_ALL:
                raise ImageError(f"nid {nid}: unsupported chunk format 0x{i_u & 0xFFFF:x}")
        elif what == _DEVICE:
            rdev = i_u
        elif what == _BOGUS:
            raise ImageError(f"nid {nid}: bogus i_mode 0o{mode:o}")
        return (mode, uid, gid, nlink, size, mtime, nsec, rdev, ino, layout, extended, icount,
                pos, startblk, dots)

    def _inode_shape(self, nid: int, ifmt: int, mode: int) -> tuple:
        """What an inode's i_format and i_mode say (inode_fields), kept for the next inode
        with both the same: (i_mode, one int object for each; data layout; extended; nlink 1
        (a compact non-directory's flag); what i_u holds (_FLAT_BLOCKS ... _BOGUS); "." left
        out (a directory's flag)).  An i_format or layout the reader does not know raises."""
        if ifmt & ~_I_ALL:
            raise ImageError(f"nid {nid}: unsupported i_format 0x{ifmt:x}")
        layout = (ifmt >> _I_DATALAYOUT_BIT) & _I_DATALAYOUT_MASK
        if layout >= _DATALAYOUT_MAX:
            raise ImageError(f"nid {nid}: unknown data layout {layout}")
        kind = mode & _S_IFMT
        extended = bool(ifmt & _I_VERSION_MASK)
        if kind in _BLOCK_KINDS:
            what = _FLAT_BLOCKS if layout == _FLAT_PLAIN else \
                _CHUNKS if layout == _CHUNK_BASED else _BLOCKS
        else:
            what = _DEVICE if kind in _DEVICE_KINDS else \
                _SPECIAL if kind in _SPECIAL_KINDS else _BOGUS
        shapes = self._shapes
        if len(shapes) >= _SHAPES_KEPT:
            shapes.clear()
        shape = shapes[ifmt << 16 | mode] = (
            self._modes.setdefault(mode, mode), layout, extended,
            not extended and kind != _S_IFDIR and bool(ifmt >> _I_NLINK_1_BIT & 1), what,
            kind == _S_IFDIR and bool(ifmt >> _I_DOT_OMITTED_BIT & 1))
        return shape

    # -- data layout -----------------------------------------------------------------------------

    def extents(self, inode: Inode) -> list[Extent]:
        """How the file's bytes are stored, in order and without gaps (copies: the reader
        keeps its own)."""
        return [copy.copy(e) for e in self._extents(inode)]

    def _extents(self, inode: Inode) -> list[Extent]:
        try:
            if inode.compressed or inode.datalayout == fmt.EROFS_INODE_CHUNK_BASED:
                return self._mapped(inode)[0]
            return self._flat_extents(inode)
        except ImageError as e:
            raise _with_nid(inode.nid, e) from None

    def _extents_and_starts(self, inode: Inode) -> tuple[list[Extent], list[int]]:
        """Extents with their logical starts (for bisect), cached for indexed layouts."""
        try:
            if inode.compressed or inode.datalayout == fmt.EROFS_INODE_CHUNK_BASED:
                mapped = self._mapped(inode)
                return mapped[0], mapped[3]
            extents = self._flat_extents(inode)
        except ImageError as e:
            raise _with_nid(inode.nid, e) from None
        return extents, [e.logical for e in extents]

    def _flat_extents(self, inode: Inode) -> list[Extent]:
        size, bs = inode.size, self.block_size
        if size <= 0:
            return []
        nblocks = -(-size // bs)
        if inode.datalayout == fmt.EROFS_INODE_FLAT_PLAIN:
            if inode.startblk == fmt.EROFS_NULL_ADDR:
                return [Extent(0, size, None, 0, None, "hole")]
            ext = Extent(0, size, inode.startblk * bs, nblocks * bs)
            self._check_data(ext, f"data of {size} bytes at block {inode.startblk}")
            return [ext]
        tail_start = (nblocks - 1) * bs
        out = []
        if tail_start:
            ext = Extent(0, tail_start, inode.startblk * bs, tail_start)
            self._check_data(ext, f"data of {tail_start} bytes at block {inode.startblk}")
            out.append(ext)
        tail, tpos = size - tail_start, inode.data_pos
        if tpos % bs + tail > bs:
            raise ImageError(f"inline data of {tail} bytes at byte {tpos} crosses a block "
                             "boundary")
        self._check_range(tpos, tail, f"inline data at byte {tpos}")
        out.append(Extent(tail_start, tail, tpos, tail, None, "inline"))
        return out

    def chunk_map(self, inode: Inode) -> tuple[int, list[tuple[int, int] | None]]:
        """A chunk-based file's chunk bits and, per chunk, (device, block) as stored: device 0
        is the image (unified addressing not applied), None a hole.  Nothing is read from the
        devices, so this works without them."""
        if inode.datalayout != fmt.EROFS_INODE_CHUNK_BASED:
            raise ImageError(f"nid {inode.nid}: not a chunk-based file")
        try:
            chunkbits, addrs, devs = self._chunk_entries(inode)
        except ImageError as e:
            raise _with_nid(inode.nid, e) from None
        return chunkbits, [None if blk is None else (devs[i] if devs else 0, blk)
                           for i, blk in enumerate(addrs)]

    def _chunk_entries(self, inode: Inode
                       ) -> tuple[int, list[int | None], list[int] | None]:
        """Chunk bits, each chunk's block (None: a hole) and, for chunk indexes, device."""
        chunkfmt = inode.startblk & 0xFFFF
        chunkbits = self._blkszbits + (chunkfmt & fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK)
        count = -(-inode.size >> chunkbits) if inode.size > 0 else 0
        indexes = bool(chunkfmt & fmt.EROFS_CHUNK_FORMAT_INDEXES)
        raw = self._get(fmt.chunk_map_start(inode.data_pos, chunkfmt),
                        count * fmt.chunk_map_unit(chunkfmt))
        devs = None                 # the device of each chunk (None: all on the image)
        if indexes:
            mask = (1 << (48 if chunkfmt & fmt.EROFS_CHUNK_FORMAT_48BIT else 32)) - 1
            devmask = self._devmask
            addrs = []
            devs = []
            for hi, dev, lo in fmt.EROFS_INODE_CHUNK_INDEX.iter_unpack(raw):
                blk = ((hi << 32) | lo) & mask
                addrs.append(blk if (blk ^ fmt.EROFS_NULL_ADDR) & mask else None)
                devs.append(dev & devmask)
        else:
            addrs = [None if a == fmt.EROFS_NULL_ADDR_32 else a
                     for (a,) in fmt.EROFS_BLOCK_MAP_ENTRY.iter_unpack(raw)]
        return chunkbits, addrs, devs

    def _chunk_extents(self, inode: Inode) -> list[Extent]:
        size, bs = inode.size, self.block_size
        if size <= 0:
            return []
        chunkbits, addrs, devs = self._chunk_entries(inode)
        chunksize = 1 << chunkbits
        unified = bool(self._unified)
        out: list[Extent] = []
        for i, blk in enumerate(addrs):
            la = i << chunkbits
            length = min(chunksize, size - la)
            if blk is None:
                if out and out[-1].kind == "hole":
                    out[-1].length += length
                else:
                    out.append(Extent(la, length, None, 0, None, "hole"))
                continue
            plen = min(chunksize, fmt.round_up(size - la, bs))
            pa = blk << self._blkszbits
            dev = devs[i] if devs else 0
            if dev or unified:
                dev, pa = self._map_dev(dev, pa, f"chunk {i}")
            if dev:
                self._check_device(dev, pa, length, f"chunk {i}")
            else:
                self._check_range(pa, plen, f"chunk {i} at block {blk}")
            last = out[-1] if out else None
            if last is not None and last.kind == "plain" and last.length == last.physical_length \
                    and last.physical + last.physical_length == pa and last.device == dev:
                last.length += length
                last.physical_length += plen
            else:
                out.append(Extent(la, length, pa, plen, device=dev))
        return out

    def _map_dev(self, dev: int, pa: int, what: str) -> tuple[int, int]:
        """(device, byte offset in it) of an address on device `dev` (erofs_map_dev)."""
        if dev:
            if dev > len(self._devs):
                raise ImageError(f"{what} names device {dev}, but the image has "
                                 f"{len(self._devs)} extra device(s)")
            return dev, pa
        for start, end, n in self._unified:
            if start <= pa < end:
                return n, pa - start
        return 0, pa

    def _check_device(self, dev: int, pa: int, n: int, what: str) -> None:
        """`n` bytes at byte `pa` of extra device `dev` must be there."""
        d = self._devs[dev - 1]
        if d.data is not None and pa + n <= d.size:
            return
        if self._closed:
            raise ImageError("the image is closed")
        slot = self.device_table[dev - 1]
        blk = pa >> self._blkszbits
        if not self.flatdev:
            raise ImageError(f"{what} is at block {blk} of device {dev} ({d.name}), past its end "
                             f"({d.size} bytes; its slot says {slot.blocks} blocks of "
                             f"{self.block_size})")
        if not slot.uniaddr:
            raise ImageError(f"{what} is on device {dev} ({slot.blocks} blocks), which its slot "
                             "does not place in the image (uniaddr 0): pass --device=FILE")
        raise ImageError(f"{what} is at block {blk} of device {dev} ({slot.blocks} blocks from "
                         f"block {slot.uniaddr} of the image), past the end of the image "
                         f"({self._size} bytes): pass --device=FILE or append the device to "
                         "the image")

    def _check_data(self, ext: Extent, what: str) -> None:
        """Check that an extent's stored bytes are there, first moving it to an extra device
        if unified addressing puts it there."""
        if self._unified and ext.kind in _UNIFIED_KINDS:
            ext.device, ext.physical = self._map_dev(0, ext.physical, what)
        if ext.device:
            self._check_device(ext.device, ext.physical,
                               ext.length if ext.kind == "plain" else ext.physical_length, what)
        else:
            self._check_range(ext.physical, ext.physical_length, what)

    def _stored(self, ext: Extent, pos: int, n: int) -> bytes:
        """`n` bytes at byte `pos` of the device holding `ext`."""
        if not ext.device:
            return self._get(pos, n)
        self._check_device(ext.device, pos, n, f"{n} bytes at byte {pos}")
        d = self._devs[ext.device - 1]
        return d.data[d.base + pos:d.base + pos + n]

    def map_header(self, inode: Inode) -> index.MapHeader | None:
        """A compressed inode's map header (None for any other inode, or an empty file)."""
        return self._compressed(inode)[1] if inode.compressed else None

    def _compressed(self, inode: Inode):
        """(extents, header, lclusters) of a compressed inode."""
        return self._mapped(inode)[:3]

    def _mapped(self, inode: Inode):
        """(extents, map header, lclusters, extent starts) of a compressed or chunk-based inode,
        cached for a few inodes: their indexes are parsed whole, and reads come in series."""
        key = inode.pos
        stamp = (inode.size, inode.datalayout, inode.xattr_icount, inode.startblk)
        hit = self._zcache.get(key)
        if hit is not None and hit[0] == stamp:
            self._zcache.move_to_end(key)
            return hit[1]
        if inode.compressed:
            extents, header, lc = self._map_compressed(inode)
        else:
            extents, header, lc = self._chunk_extents(inode), None, None
        result = (extents, header, lc, [e.logical for e in extents])
        self._zcache[key] = (stamp, result)
        if len(self._zcache) > 64:
            # the packed inode stays: every fragment read goes through its map
            oldest = next(iter(self._zcache))
            if self._packed is not None and oldest == self._packed.pos:
                self._zcache.move_to_end(oldest)
            self._zcache.popitem(last=False)
        return result

    def _map_compressed(self, inode: Inode):
        size = inode.size
        if size <= 0:
            return [], None, None
        end = inode.data_pos
        sb = self.superblock
        header = zmap.read_map_header(
            self._get(fmt.z_erofs_map_header_pos(end), fmt.Z_EROFS_MAP_HEADER_SIZE),
            self._blkszbits, inode.datalayout,
            bool(sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER))
        if header.whole_fragment:
            extents = [Extent(0, size, header.fragmentoff, size, None, "fragment")]
            self._check_fragments(inode, extents)
            return extents, header, None
        if header.records:
            extents = zmap.decode_records(self._get, end, header, size, self._blkszbits,
                                          self._algs)
            self._check_physical(extents)
            self._check_fragments(inode, extents)
            return extents, header, None
        lcbits = header.lclusterbits
        count = -(-size >> lcbits)
        if inode.datalayout == fmt.EROFS_INODE_COMPRESSED_FULL:
            big = bool(header.advise & (fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1 |
                                        fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2))
            lc = index.decode_full(self._get, fmt.z_erofs_full_index_start(end), count, lcbits,
                                   big)
        else:
            lc = index.decode_compact(self._get, fmt.z_erofs_compact_index_start(end), count,
                                      size, self._blkszbits, lcbits, header.advise)
        extents = zmap.build_extents(lc, header, inode.datalayout, size, self._blkszbits,
                                     self._algs)
        self._check_physical(extents)
        self._check_fragments(inode, extents)
        return extents, header, lc

    def _check_physical(self, extents: list[Extent]) -> None:
        for ext in extents:
            if ext.physical is not None and ext.kind != "fragment":
                self._check_data(ext, f"{ext.kind} pcluster of the extent at {ext.logical}")

    def _check_fragments(self, inode: Inode, extents: list[Extent]) -> None:
        for ext in extents:
            if ext.kind != "fragment":
                continue
            packed = self.packed_inode
            if packed is None:
                raise ImageError("a fragment, but the image has no packed inode")
            if inode.nid == packed.nid:
                raise ImageError("the packed inode refers to fragments of itself")
            if ext.physical + ext.length > packed.size:
                raise ImageError(f"fragment of {ext.length} bytes at {ext.physical} is past the "
                                 f"end of the packed inode ({packed.size} bytes)")

    @property
    def packed_inode(self) -> Inode | None:
        """The inode holding fragments (and maybe the long xattr prefixes), if any."""
        sb = self.superblock
        if not sb.packed_nid or not sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_FRAGMENTS:
            return None
        if self._packed is None:
            packed = self.inode(sb.packed_nid)
            if not packed.is_reg():
                raise ImageError(f"nid {packed.nid}: the packed inode is not a regular file")
            self._packed = packed
        return self._packed

    # -- reading data ----------------------------------------------------------------------------

    def read(self, inode: Inode, offset: int = 0, length: int | None = None) -> bytes:
        end = inode.size if length is None else min(inode.size, offset + max(length, 0))
        if offset < 0:
            raise ValueError("negative offset")
        if end - offset > READ_LIMIT:
            raise ImageError(f"nid {inode.nid}: refusing to read {end - offset} bytes at once; "
                             "use iter_data()")
        if end <= offset:
            return b""
        return b"".join(self._iter_range(inode, offset, end - offset, 1 << 24))

    def iter_data(self, inode: Inode, chunk: int = 1 << 20) -> Iterator[bytes]:
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        return self._iter_range(inode, 0, inode.size, chunk)

    def _iter_range(self, inode: Inode, offset: int, length: int, chunk: int) -> Iterator[bytes]:
        if length <= 0:
            return
        if not (inode.is_reg() or inode.is_dir() or inode.is_lnk()):
            return
        extents, starts = self._extents_and_starts(inode)
        end = offset + length
        pos = offset
        i = max(bisect_right(starts, offset) - 1, 0)
        while pos < end:
            ext = extents[i] if i < len(extents) else None
            if ext is None or ext.logical > pos:
                raise ImageError(f"nid {inode.nid}: no extent maps byte {pos} of "
                                 f"{inode.size}")
            stop = min(end, ext.end)
            if stop > pos:
                yield from self._extent_pieces(inode, ext, pos - ext.logical, stop - pos, chunk)
                pos = stop
            i += 1

    def _extent_pieces(self, inode: Inode, ext: Extent, skip: int, n: int, chunk: int
                       ) -> Iterator[bytes]:
        kind = ext.kind
        if kind == "hole":
            zeros = bytes(min(chunk, n))
            while n > 0:
                yield zeros if n >= len(zeros) else zeros[:n]
                n -= len(zeros)
            return
        if kind == "plain" or kind == "inline":
            # raw pclusters of compressed files are "shifted": the extent from their start
            pos = ext.physical + skip
            get = self._get if not ext.device else partial(self._stored, ext)
            while n > 0:
                k = min(chunk, n)
                yield get(pos, k)
                pos += k
                n -= k
            return
        if kind == "fragment":
            packed = self.packed_inode
            yield from self._iter_range(packed, ext.physical + skip, n, chunk)
            return
        data = self._decode(inode, ext)
        for at in range(skip, skip + n, chunk):
            yield data[at:min(at + chunk, skip + n)]

    def _decode(self, inode: Inode, ext: Extent, want: bool = True) -> bytes | None:
        """All `length` bytes of a pcluster-backed extent, through a small cache (fragments and
        deduplicated pclusters are read again and again)."""
        key = (ext.physical, ext.physical_length, ext.length, ext.kind, ext.algorithm,
               ext.partial, ext.logical % self.block_size if ext.interlaced else 0, ext.device)
        data = self._decoded.get(key)
        if data is not None:
            self._decoded.move_to_end(key)
            return data
        raw = self._stored(ext, ext.physical, ext.physical_length)
        if not want and ext.algorithm is not None:      # verify: decode, keep nothing
            try:
                zmap.decode_pcluster(self._codec(ext.algorithm), raw, ext, self._zero_padding,
                                     want=False)
            except ImageError as e:
                raise ImageError(f"nid {inode.nid}: extent at {ext.logical} ({ext.length} "
                                 f"bytes, {ext.kind} at byte {ext.physical}): {e}") from None
            return None
        try:
            if ext.algorithm is None:
                data = zmap.unpack_plain(raw, ext, self.block_size)
            else:
                data = zmap.decode_pcluster(self._codec(ext.algorithm), raw, ext,
                                            self._zero_padding)
        except ImageError as e:
            raise ImageError(f"nid {inode.nid}: extent at {ext.logical} ({ext.length} bytes, "
                             f"{ext.kind} at byte {ext.physical}): {e}") from None
        if len(data) != ext.length:
            raise ImageError(f"nid {inode.nid}: extent at {ext.logical} decodes to {len(data)} "
                             f"bytes, not {ext.length}")
        self._decoded[key] = data
        self._decoded_bytes += len(data)
        while self._decoded_bytes > _DECODED_CACHE_BYTES and len(self._decoded) > 1:
            self._decoded_bytes -= len(self._decoded.popitem(last=False)[1])
        return data

    def readlink(self, inode: Inode) -> bytes:
        if not inode.is_lnk():
            raise ImageError(f"nid {inode.nid}: not a symlink")
        if inode.size > SYMLINK_MAX:
            raise ImageError(f"nid {inode.nid}: symlink target of {inode.size} bytes is longer "
                             f"than {SYMLINK_MAX}")
        return self.read(inode)

    # -- directories -----------------------------------------------------------------------------

    def listdir(self, inode: Inode) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of every entry but "." and ".."."""
        return [e for e in self._dirents(inode) if e[0] not in _DOTS]

    def _dirents(self, inode: Inode) -> list[tuple[bytes, int, int]]:
        if inode.mode & _S_IFMT != _S_IFDIR:
            raise ImageError(f"nid {inode.nid}: not a directory")
        cache = self._dir_cache
        key = inode.pos
        hit = cache.get(key)
        if hit is not None and hit[0] == inode.size:
            cache.move_to_end(key)
            return hit[1]
        entries = self._read_dir(inode)
        cache[key] = (inode.size, entries, None)
        if len(cache) > _DIR_CACHE_ENTRIES:
            cache.popitem(last=False)
        return entries

    def _read_dir(self, inode: Inode) -> list[tuple[bytes, int, int]]:
        size, bs = inode.size, self.block_size
        out: list[tuple[bytes, int, int]] = []
        if size <= 0:
            raise ImageError(f"nid {inode.nid}: empty directory (size {size})")
        if size > DIR_LIMIT:
            raise ImageError(f"nid {inode.nid}: directory of {size} bytes (more than "
                             f"{DIR_LIMIT})")
        try:
            blk = self._inline_dir_block(inode)
            if blk is not None:         # the common case: the whole directory inline
                self._parse_dir_block(blk, 0, out)
                return out
            extents = self._extents(inode)
            flat = [e for e in extents if e.kind in ("plain", "inline")]
            direct = not inode.compressed and len(flat) == len(extents)
            for lblk, at in enumerate(range(0, size, bs)):
                n = min(bs, size - at)
                if direct:
                    blk = self._flat_block(extents, at, n)
                else:
                    blk = b"".join(self._iter_range(inode, at, n, bs))
                self._parse_dir_block(blk, lblk, out)
        except ImageError as e:
            raise _with_nid(inode.nid, e) from None
        return out

    def listdir_fields(self, nid: int, fields: tuple) -> list[tuple[bytes, int, int]]:
        """listdir of inode `nid` given its inode_fields, without making its Inode or keeping
        its entries for a second look (for a caller that reads each directory once: rebuild
        mode); a directory held whole in its inline tail (nearly every one) is parsed in
        place."""
        if fields[0] & _S_IFMT != _S_IFDIR or fields[4] <= 0:       # (mode, size)
            return self.listdir(Inode(nid, *fields))        # (its error)
        blk = self._inline_tail(fields[4], fields[9], fields[10], fields[11], fields[12])
        if blk is None:
            # (not kept in the cache of directories: read once, and ~50 bytes an entry)
            return [e for e in self._read_dir(Inode(nid, *fields)) if e[0] not in _DOTS]
        entries = self._sound_entries(blk, False)
        if entries is None:
            entries = []
            try:
                self._parse_dir_block(blk, 0, entries)
            except ImageError as e:
                raise _with_nid(nid, e) from None
            return [e for e in entries if e[0] not in _DOTS]
        return entries

    def _sound_entries(self, blk: bytes, dots: bool = True
                       ) -> list[tuple[bytes, int, int]] | None:
        """The entries (name, nid, file type) of directory block `blk` (without "." and ".."
        unless `dots`) if it passes every check at once: its heads in the block, every name
        1..EROFS_NAME_LEN bytes (each runs up to the next one's start, the last up to the
        first NUL after the names' start), without "/" (nearly every block); None if not
        (_parse_dir_block then says which entry fails)."""
        n = len(blk)
        if n < _DIRENT_SIZE:
            return None
        nameoff = _DIRENT_HEAD(blk)[1]
        count = -(-nameoff // _DIRENT_SIZE)
        if nameoff < _DIRENT_SIZE or nameoff >= self.block_size or count * _DIRENT_SIZE > n:
            return None
        heads = _DIRENT_HEADS(blk, count)        # (nid, nameoff, file type) * count
        # a NUL before the last name's start ends a name early: some name is then empty
        end = blk.find(b"\0", nameoff)
        bounds = heads[1::3]
        bounds += (n if end < 0 else end,)
        names = [blk[a:b] for a, b in zip(bounds, bounds[1:])]
        # (a name past the block's end, or ending before it starts, is empty too; all of
        # them are short when their run is)
        if b"" in names or blk.find(b"/", nameoff, bounds[-1]) >= 0 or \
                (bounds[-1] - nameoff > _NAME_LEN and max(map(len, names)) > _NAME_LEN):
            return None
        if dots:
            return list(zip(names, heads[0::3], heads[2::3]))
        if count > 1 and names[0] == b"." and names[1] == b"..":     # (they sort first, mostly)
            return list(zip(names[2:], heads[6::3], heads[8::3]))
        return [e for e in zip(names, heads[0::3], heads[2::3]) if e[0] not in _DOTS]

    def _inline_dir_block(self, inode: Inode) -> bytes | None:
        """The bytes of a directory held whole in its inline tail (no data blocks), without
        mapping its extents; None if it is not one or if a check fails (the extents say
        which)."""
        return self._inline_tail(inode.size, inode.datalayout, inode.extended,
                                 inode.xattr_icount, inode.pos)

    def _inline_tail(self, size: int, layout: int, extended: bool, icount: int,
                     pos: int) -> bytes | None:
        """_inline_dir_block of the inode at byte `pos` with these fields."""
        bs = self.block_size
        if layout != _FLAT_INLINE or size > bs:
            return None
        tpos = pos + (_EXTENDED_SIZE if extended else _COMPACT_SIZE) + \
            (fmt.xattr_ibody_size(icount) if icount else 0)
        if tpos % bs + size > bs or tpos + size > self._size:
            return None
        start = self._base + tpos
        return self._data[start:start + size]

    def _flat_block(self, extents: list[Extent], at: int, n: int) -> bytes:
        for ext in extents:
            if ext.logical <= at < ext.end:
                if at + n <= ext.end:
                    return self._stored(ext, ext.physical + at - ext.logical, n)
                break
        raise ImageError(f"directory block at {at} is not mapped by one extent")

    def _parse_dir_block(self, blk: bytes, lblk: int, out: list) -> None:
        entries = self._sound_entries(blk)
        if entries is not None:
            out += entries
            return
        maxsize = len(blk)
        if maxsize < fmt.EROFS_DIRENT_SIZE:
            raise ImageError(f"directory block {lblk} is only {maxsize} bytes")
        nameoff = fmt.EROFS_DIRENT.unpack_from(blk)[1]
        if nameoff < fmt.EROFS_DIRENT_SIZE or nameoff >= self.block_size:
            raise ImageError(f"directory block {lblk}: invalid first nameoff {nameoff}")
        count = -(-nameoff // fmt.EROFS_DIRENT_SIZE)
        if count * fmt.EROFS_DIRENT_SIZE > maxsize:
            raise ImageError(f"directory block {lblk}: {count} entries do not fit in "
                             f"{maxsize} bytes")
        nids, offs, ftypes = fmt.unpack_dirents(blk, count)
        last = blk.find(b"\0", offs[-1], maxsize)
        bounds = offs + (maxsize if last < 0 else last,)
        # (each name runs up to the next one's start)
        for i, (nid, off, ftype) in enumerate(zip(nids, offs, ftypes)):
            end = bounds[i + 1]
            if end <= off or end - off > fmt.EROFS_NAME_LEN or end > maxsize:
                raise ImageError(f"directory block {lblk}, entry {i}: bad name length "
                                 f"{end - off}")
            name = blk[off:end]
            if b"/" in name or b"\0" in name:
                raise ImageError(f"directory block {lblk}, entry {i}: illegal name {name!r}")
            out.append((name, nid, ftype))

    def lookup(self, path) -> Inode:
        raw = os.fsencode(path)
        cur = self.root
        walked = b""
        for part in raw.split(b"/"):
            if not part:
                continue
            if not cur.is_dir():
                raise ImageError(f"{os.fsdecode(raw)}: {os.fsdecode(walked or b'/')} is not "
                                 "a directory")
            nid = self._find(cur, part)
            walked += b"/" + part
            if nid is None:
                raise NotFoundError(f"{os.fsdecode(walked)}: no such file or directory")
            cur = self.inode(nid)
        return cur

    def _find(self, directory: Inode, name: bytes) -> int | None:
        entries = self._dirents(directory)
        hit = self._dir_cache.get(directory.pos)
        index = hit[2] if hit is not None else None
        if index is None:
            index = {n: nid for n, nid, _ in entries}
            if hit is not None:
                self._dir_cache[directory.pos] = (hit[0], hit[1], index)
        return index.get(name)

    def walk(self, top=None) -> Iterator[tuple[bytes, Inode]]:
        """Every path below `top` (the root by default) with its inode, depth first, each
        directory's entries in their (sorted) on-disk order."""
        if top is None or isinstance(top, Inode):
            start = self.root if top is None else top
            prefix = b"/"
        else:
            start = self.lookup(top)
            prefix = b"/" + os.fsencode(top).strip(b"/")
            if prefix != b"/":
                prefix = b"/" + b"/".join(p for p in prefix.split(b"/") if p)
        yield prefix, start
        if not start.is_dir():
            return
        seen = {start.nid: prefix}
        stack = [(prefix, iter(self.listdir(start)))]
        while stack:
            base, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            name, nid, _ftype = entry
            path = (base if base != b"/" else b"") + b"/" + name
            child = self.inode(nid)
            yield path, child
            if child.is_dir():
                if nid in seen:
                    raise ImageError(f"{os.fsdecode(path)}: directory nid {nid} is also "
                                     f"{os.fsdecode(seen[nid])} (a directory loop)")
                if len(stack) >= MAX_DEPTH:
                    raise ImageError(f"{os.fsdecode(path)}: directories nested more than "
                                     f"{MAX_DEPTH} deep")
                seen[nid] = path
                stack.append((path, iter(self.listdir(child))))

    # -- xattrs ----------------------------------------------------------------------------------

    def xattrs(self, inode: Inode) -> list[tuple[bytes, bytes]]:
        """(full name, value) of every xattr the kernel lists: inline ones, then shared ones."""
        if not inode.xattr_icount:
            return []
        try:
            return [(name, value) for name, value, _i, _s in self._xattr_entries(inode)
                    if name is not None]
        except ImageError as e:
            raise _with_nid(inode.nid, e) from None

    def _xattr_entries(self, inode: Inode) -> list[tuple[bytes | None, bytes, int, bytes]]:
        """(full name or None, value, name index, stored name) of every entry."""
        isize = inode.xattr_isize
        if not isize:
            return []
        start = inode.pos + inode.isize
        body = self._get(start, isize)
        _filter, shared = ondisk_xattr.unpack_ibody_header(body)
        pos = ondisk_xattr.inline_entries_start(shared)
        if pos > isize:
            raise ImageError(f"{shared} shared xattr ids do not fit in the {isize}-byte xattr "
                             "area")
        ids = ondisk_xattr.shared_ids(body, shared)
        out = []
        while pos < isize:
            entry, size = self._xattr_entry(body, pos, isize, f"inline xattr at byte "
                                                              f"{start + pos}")
            out.append(entry)
            pos += size
        for xid in ids:
            at = self._xattr_base + xid * fmt.EROFS_XATTR_SHARED_ID_SIZE
            head = self._get(at, fmt.EROFS_XATTR_ENTRY_SIZE)
            raw = self._get(at, ondisk_xattr.entry_size(head))
            out.append(self._xattr_entry(raw, 0, len(raw), f"shared xattr {xid}")[0])
        return out

    def _xattr_entry(self, raw: bytes, pos: int, limit: int, where: str):
        try:
            index, suffix, value, size = ondisk_xattr.unpack_entry(raw, pos, limit)
        except ImageError as e:
            raise ImageError(f"{where}: {e}") from None
        name = ondisk_xattr.full_name(index, suffix, self.long_xattr_prefixes()
                                      if ondisk_xattr.long_prefix_slot(index) is not None else ())
        return (name, value, index, suffix), size

    def long_xattr_prefixes(self) -> list[tuple[int, bytes]]:
        """The long xattr name prefix table: (base name index, infix) per entry."""
        if self._prefixes is None:
            self._prefixes = self._read_prefixes()
        return self._prefixes

    def _read_prefixes(self) -> list[tuple[int, bytes]]:
        sb = self.superblock
        count = sb.xattr_prefix_count
        if not count or not sb.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES:
            return []
        get = self._get
        if not sb.feature_compat & fmt.EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX:
            packed = self.packed_inode
            if packed is not None:
                def get(pos: int, n: int, packed=packed) -> bytes:
                    data = self.read(packed, pos, n)
                    if len(data) != n:
                        raise ImageError(f"long xattr prefixes past the end of the packed "
                                         f"inode ({packed.size} bytes)")
                    return data
        pos = sb.xattr_prefix_start * 4
        out = []
        for i in range(count):
            try:
                payload, pos = self._metadata_record(pos, get)
            except ImageError as e:
                raise ImageError(f"long xattr prefix {i}: {e}") from None
            if len(payload) > fmt.EROFS_NAME_LEN + 1:
                raise ImageError(f"long xattr prefix {i} is {len(payload)} bytes long")
            out.append(ondisk_xattr.unpack_long_prefix(payload))
        return out

    # -- verification ----------------------------------------------------------------------------

    def verify(self, progress: Callable[[int, int], None] | None = None, *,
               own_links: Container[int] = ()) -> list[str]:
        """Every problem found, as readable lines ([] = clean).  Reads every inode reachable
        from the root (and the packed inode), every directory, every xattr, decodes every
        pcluster and cross-checks link counts (except those of the nids in `own_links`: an
        increment keeps its base's inodes with their own).  `progress(done, total)` is called
        after each inode with the number checked and the superblock's inode count."""
        return self.verify_report(progress, own_links=own_links).problems

    def verify_report(self, progress: Callable[[int, int], None] | None = None, *,
                      own_links: Container[int] = ()) -> VerifyReport:
        """verify(), with what it covered: inodes checked and bytes of file data."""
        verifier = _Verifier(self, progress, own_links)
        problems = verifier.run()
        return VerifyReport(problems, verifier.done, verifier.data_bytes)


@dataclass
class VerifyReport:
    problems: list[str]     # [] = clean
    inodes: int             # inodes checked (the packed inode included)
    data_bytes: int         # sizes of the regular files reached, each inode once


class _Verifier:
    PROBLEM_LIMIT = 1000

    def __init__(self, img: Image, progress, own_links: Container[int] = ()):
        self.img = img
        self.progress = progress
        self.own_links = own_links
        self.problems: list[str] = []
        self.done = 0
        self.data_bytes = 0
        self.fs_end = img.blocks * img.block_size
        sb = img.superblock
        self.decoded: set = set()
        self.filter_on = bool(sb.feature_compat & fmt.EROFS_FEATURE_COMPAT_XATTR_FILTER) and \
            not sb.xattr_filter_reserved

    def report(self, msg: str) -> None:
        if len(self.problems) < self.PROBLEM_LIMIT:
            self.problems.append(msg)
        elif len(self.problems) == self.PROBLEM_LIMIT:
            self.problems.append("(more problems not listed)")

    def run(self) -> list[str]:
        img = self.img
        if img.checksum_ok is False:
            self.report(img._checksum_problem())
        if self.fs_end > img.image_size:
            self.report(f"the image is truncated: {img.image_size} bytes, but the superblock "
                        f"says {img.blocks} blocks of {img.block_size}")
        for problem in img.device_problems():
            self.report(problem)
        try:
            root = img.inode(img.root_nid)
        except ImageError as e:
            self.report(f"/: {e}")
            return self.problems
        if not root.is_dir():
            self.report(f"/: the root (nid {root.nid}) is not a directory")
            return self.problems
        self.check_tree(root)
        self.check_packed()
        return self.problems

    def check_tree(self, root: Inode) -> None:
        img = self.img
        dirs = {root.nid: b"/"}
        links: Counter = Counter()
        first: dict[int, tuple[bytes, int]] = {}
        stack = [(b"/", root, root.nid)]
        while stack:
            path, d, parent = stack.pop()
            self.check_inode(d, path)
            try:
                entries = img._dirents(d)
            except ImageError as e:
                self.report(f"{_show(path)}: {e}")
                continue
            self.check_dir_entries(path, d, parent, entries)
            subdirs = 0
            children = []
            for name, nid, ftype in entries:
                if name == b"." or name == b"..":
                    continue
                cpath = (path if path != b"/" else b"") + b"/" + name
                try:
                    child = img.inode(nid)
                except ImageError as e:
                    self.report(f"{_show(cpath)}: {e}")
                    continue
                if ftype != child.file_type:
                    self.report(f"{_show(cpath)}: directory entry says file type {ftype}, the "
                                f"inode (nid {nid}) is type {child.file_type}")
                if child.is_dir():
                    subdirs += 1
                    if nid in dirs:
                        self.report(f"{_show(cpath)}: directory nid {nid} is also "
                                    f"{_show(dirs[nid])} (a directory loop or a hard-linked "
                                    "directory)")
                        continue
                    if path.count(b"/") >= MAX_DEPTH:
                        self.report(f"{_show(cpath)}: directories nested more than "
                                    f"{MAX_DEPTH} deep")
                        continue
                    dirs[nid] = cpath
                    children.append((cpath, child, d.nid))
                    continue
                links[nid] += 1
                if nid not in first:
                    first[nid] = (cpath, child.nlink)
                    self.check_inode(child, cpath)
                    if child.is_reg():
                        self.data_bytes += child.size
            if d.nlink != 2 + subdirs:
                self.report(f"{_show(path)}: nlink {d.nlink}, but the directory has {subdirs} "
                            f"subdirectories (expected {2 + subdirs})")
            stack.extend(reversed(children))
        for nid, count in links.items():
            path, nlink = first[nid]
            if nlink != count and nid not in self.own_links:
                self.report(f"{_show(path)}: nlink {nlink}, but {count} directory "
                            f"entr{'y names' if count == 1 else 'ies name'} nid {nid}")

    def check_dir_entries(self, path: bytes, d: Inode, parent: int, entries) -> None:
        names = [e[0] for e in entries]
        for i in range(1, len(names)):
            if names[i - 1] >= names[i]:
                what = "twice" if names[i - 1] == names[i] else "out of order"
                self.report(f"{_show(path)}: entry {names[i]!r} {what} (after "
                            f"{names[i - 1]!r}); lookups by name would miss entries")
                break
        dots = {name: nid for name, nid, _ in entries if name in (b".", b"..")}
        if b"." not in dots:
            if not d.dot_omitted:
                self.report(f"{_show(path)}: no '.' entry")
        elif dots[b"."] != d.nid:
            self.report(f"{_show(path)}: '.' names nid {dots[b'.']}, not the directory's "
                        f"{d.nid}")
        if b".." not in dots:
            self.report(f"{_show(path)}: no '..' entry")
        elif dots[b".."] != parent:
            self.report(f"{_show(path)}: '..' names nid {dots[b'..']}, not the parent's "
                        f"{parent}")

    def check_inode(self, inode: Inode, path: bytes) -> None:
        img = self.img
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, img.superblock.inos)
        where = f"{_show(path)} (nid {inode.nid})"
        if inode.pos + inode.isize > self.fs_end:
            self.report(f"{where}: the inode is past the end of the filesystem")
        self.check_xattrs(inode, where)
        if inode.is_lnk():
            if inode.size == 0:
                self.report(f"{where}: empty symlink")
            elif inode.size > SYMLINK_MAX:
                self.report(f"{where}: symlink target of {inode.size} bytes")
        if not (inode.is_reg() or inode.is_dir() or inode.is_lnk()):
            return
        try:
            extents = img._extents(inode)
        except ImageError as e:
            self.report(f"{where}: {_detail(e)}")
            return
        self.check_extents(inode, extents, where)
        if inode.compressed and inode.size > 0:
            _ext, header, lc = img._compressed(inode)
            if lc is not None:
                for msg in zmap.check_deltas(lc, header.lclusterbits, inode.size):
                    self.report(f"{where}: {msg}")

    def check_extents(self, inode: Inode, extents: list[Extent], where: str) -> None:
        img = self.img
        pos = 0
        for ext in extents:
            if ext.logical != pos:
                self.report(f"{where}: bytes {pos} to {ext.logical} are not mapped")
                return
            pos = ext.end
            if ext.kind == "hole":
                continue
            if ext.kind != "fragment" and not ext.device:    # mapping checked device data
                end = ext.physical + ext.physical_length
                if end > self.fs_end:
                    self.report(f"{where}: {ext.kind} data at byte {ext.physical} extends past "
                                f"the end of the filesystem (block "
                                f"{(end - 1) // img.block_size} of {img.blocks})")
                    continue
            if ext.kind in ("compressed", "ztailpacking", "interlaced"):
                key = (ext.physical, ext.physical_length, ext.length, ext.algorithm,
                       ext.partial, ext.logical % img.block_size if ext.interlaced else 0,
                       ext.device)
                if key in self.decoded:      # deduplicated pclusters are checked once
                    continue
                try:
                    img._decode(inode, ext, want=False)
                    self.decoded.add(key)
                except ImageError as e:
                    self.report(f"{where}: {_detail(e)}")
        if pos != inode.size:
            self.report(f"{where}: extents end at {pos}, the size is {inode.size}")

    def check_xattrs(self, inode: Inode, where: str) -> None:
        if not inode.xattr_icount:
            return
        img = self.img
        if inode.xattr_isize == fmt.EROFS_XATTR_IBODY_HEADER.size:
            self.report(f"{where}: a 12-byte xattr area (the kernel refuses xattr calls on it)")
        try:
            entries = img._xattr_entries(inode)
            prefixes = img.long_xattr_prefixes()
        except ImageError as e:
            self.report(f"{where}: xattrs: {_detail(e)}")
            return
        head = img._get(inode.pos + inode.isize, fmt.EROFS_XATTR_IBODY_HEADER.size)
        name_filter = ondisk_xattr.unpack_ibody_header(head)[0]
        for name, _value, name_index, suffix in entries:
            slot = ondisk_xattr.long_prefix_slot(name_index)
            if slot is not None and slot >= len(prefixes):
                self.report(f"{where}: xattr {suffix!r} uses long prefix {slot}, the table has "
                            f"{len(prefixes)}")
                continue
            if name is None or not self.filter_on:
                continue
            bit = ondisk_xattr.entry_filter_bit(name_index, suffix, prefixes)
            if name_filter >> bit & 1:
                self.report(f"{where}: the xattr name filter hides {name!r} (bit {bit} set)")

    def check_packed(self) -> None:
        img = self.img
        try:
            packed = img.packed_inode
        except ImageError as e:
            self.report(f"packed inode: {e}")
            return
        if packed is None:
            return
        self.check_inode(packed, b"(packed inode)")


def _detail(error: ImageError) -> str:
    """The message without its "nid N: " prefix (the verifier names path and nid itself)."""
    msg = str(error)
    head, sep, rest = msg.partition(": ")
    return rest if sep and head.startswith("nid ") and head[4:].isdigit() else msg


def _show(path: bytes) -> str:
    return os.fsdecode(path)
