"""EROFS on-disk format: every structure, offset and constant lives here once.

Names follow the kernel's fs/erofs/erofs_fs.h so that a reader of both can match them line by line.
All integers are little-endian.
"""
from __future__ import annotations

import stat
import struct
from itertools import chain
from dataclasses import dataclass
from typing import Sequence

EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2
EROFS_SUPER_OFFSET = 1024          # room for boot sectors before the superblock
EROFS_SB_SIZE = 128                # with sb_extslots == 0
EROFS_SB_EXTSLOT_SIZE = 16

EROFS_MIN_BLOCK_SIZE = 512
EROFS_MAX_BLOCK_SIZE = 4096        # the kernel needs blocksize <= PAGE_SIZE

# feature_compat
EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x00000001
EROFS_FEATURE_COMPAT_MTIME = 0x00000002
EROFS_FEATURE_COMPAT_XATTR_FILTER = 0x00000004
EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX = 0x00000010

# feature_incompat
EROFS_FEATURE_INCOMPAT_LZ4_0PADDING = 0x00000001   # a.k.a. ZERO_PADDING
EROFS_FEATURE_INCOMPAT_COMPR_CFGS = 0x00000002
EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER = 0x00000002
EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x00000004
EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x00000008
EROFS_FEATURE_INCOMPAT_COMPR_HEAD2 = 0x00000008
EROFS_FEATURE_INCOMPAT_ZTAILPACKING = 0x00000010
EROFS_FEATURE_INCOMPAT_FRAGMENTS = 0x00000020
EROFS_FEATURE_INCOMPAT_DEDUPE = 0x00000020
EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES = 0x00000040
EROFS_FEATURE_INCOMPAT_48BIT = 0x00000080

# inode data layouts (i_format bits 1-3)
EROFS_INODE_FLAT_PLAIN = 0
EROFS_INODE_COMPRESSED_FULL = 1
EROFS_INODE_FLAT_INLINE = 2
EROFS_INODE_COMPRESSED_COMPACT = 3
EROFS_INODE_CHUNK_BASED = 4

EROFS_INODE_LAYOUT_COMPACT = 0
EROFS_INODE_LAYOUT_EXTENDED = 1
EROFS_I_VERSION_BIT = 0
EROFS_I_DATALAYOUT_BIT = 1
EROFS_I_NLINK_1_BIT = 4

EROFS_ISLOTBITS = 5                # inodes are addressed in 32-byte slots (nid)
EROFS_ISLOT_SIZE = 1 << EROFS_ISLOTBITS

# the 32-bit "no block" address of a flat inode whose data is only an inline tail
EROFS_NULL_ADDR_32 = 0xFFFFFFFF

# directory entry file types
EROFS_FT_UNKNOWN = 0
EROFS_FT_REG_FILE = 1
EROFS_FT_DIR = 2
EROFS_FT_CHRDEV = 3
EROFS_FT_BLKDEV = 4
EROFS_FT_FIFO = 5
EROFS_FT_SOCK = 6
EROFS_FT_SYMLINK = 7
# (the kernel's fs_umode_to_ftype)
# i_mode's file type bits (stat.S_IFMT(mode) is mode & S_IFMT: the hot loops mask, not call)
S_IFMT = 0o170000

EROFS_FT_OF_MODE = {
    stat.S_IFREG: EROFS_FT_REG_FILE, stat.S_IFDIR: EROFS_FT_DIR,
    stat.S_IFCHR: EROFS_FT_CHRDEV, stat.S_IFBLK: EROFS_FT_BLKDEV,
    stat.S_IFIFO: EROFS_FT_FIFO, stat.S_IFSOCK: EROFS_FT_SOCK,
    stat.S_IFLNK: EROFS_FT_SYMLINK,
}

EROFS_NAME_LEN = 255

# xattr name indexes
EROFS_XATTR_INDEX_USER = 1
EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2
EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3
EROFS_XATTR_INDEX_TRUSTED = 4
EROFS_XATTR_INDEX_LUSTRE = 5
EROFS_XATTR_INDEX_SECURITY = 6
EROFS_XATTR_LONG_PREFIX = 0x80
EROFS_XATTR_LONG_PREFIX_MASK = 0x7F
EROFS_XATTR_FILTER_BITS = 32
EROFS_XATTR_FILTER_DEFAULT = 0xFFFFFFFF
EROFS_XATTR_FILTER_SEED = 0x25BBE08F

# compression algorithms (h_algorithmtype, bits of available_compr_algs)
Z_EROFS_COMPRESSION_LZ4 = 0
Z_EROFS_COMPRESSION_LZMA = 1
Z_EROFS_COMPRESSION_DEFLATE = 2
Z_EROFS_COMPRESSION_ZSTD = 3
Z_EROFS_COMPRESSION_MAX = 4
Z_EROFS_ALL_COMPR_ALGS = (1 << Z_EROFS_COMPRESSION_MAX) - 1
# the name of each algorithm id, as dump.erofs and mkfs.erofs -z spell it
Z_EROFS_COMPRESSION_NAMES = ("lz4", "lzma", "deflate", "zstd")
assert Z_EROFS_COMPRESSION_NAMES.index("zstd") == Z_EROFS_COMPRESSION_ZSTD
Z_EROFS_PCLUSTER_MAX_SIZE = 1024 * 1024        # encoded bytes per pcluster
Z_EROFS_PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024  # decoded bytes per extent (the kernel refuses more)
LZ4_DISTANCE_MAX = 65535           # sb.u1 lz4_max_distance without COMPR_CFGS (liblz4's window)
Z_EROFS_LZMA_MAX_DICT_SIZE = 8 * Z_EROFS_PCLUSTER_MAX_SIZE
Z_EROFS_ZSTD_MAX_DICT_SIZE = Z_EROFS_PCLUSTER_MAX_SIZE
Z_EROFS_DEFLATE_MAX_DICT_SIZE = 1 << 15        # windowbits <= 15
Z_EROFS_ZSTD_WINDOWLOG_MIN = 10                # z_erofs_zstd_cfgs stores windowlog - 10

Z_EROFS_ADVISE_COMPACTED_2B = 0x0001
Z_EROFS_ADVISE_BIG_PCLUSTER_1 = 0x0002
Z_EROFS_ADVISE_BIG_PCLUSTER_2 = 0x0004
Z_EROFS_ADVISE_INLINE_PCLUSTER = 0x0008
Z_EROFS_ADVISE_INTERLACED_PCLUSTER = 0x0010
Z_EROFS_ADVISE_FRAGMENT_PCLUSTER = 0x0020
Z_EROFS_FRAGMENT_INODE_BIT = 7

Z_EROFS_LCLUSTER_TYPE_PLAIN = 0
Z_EROFS_LCLUSTER_TYPE_HEAD1 = 1
Z_EROFS_LCLUSTER_TYPE_NONHEAD = 2
Z_EROFS_LCLUSTER_TYPE_HEAD2 = 3
Z_EROFS_LI_PARTIAL_REF = 1 << 15
Z_EROFS_LI_D0_CBLKCNT = 1 << 11


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def blksz_bits(block_size: int) -> int:
    return block_size.bit_length() - 1


# ---------------------------------------------------------------------------
# superblock

EROFS_SB_UUID_SIZE = 16            # uuid[16]
EROFS_SB_VOLUME_NAME_SIZE = 16     # volume_name[16]: mkfs.erofs takes labels of at most 15 bytes

_SB = struct.Struct(
    "<I"    # 0   magic
    "I"     # 4   checksum
    "I"     # 8   feature_compat
    "B"     # 12  blkszbits
    "B"     # 13  sb_extslots
    "H"     # 14  rootnid_2b
    "Q"     # 16  inos
    "Q"     # 24  epoch (build time before the 48-bit format)
    "I"     # 32  fixed_nsec
    "I"     # 36  blocks_lo
    "I"     # 40  meta_blkaddr
    "I"     # 44  xattr_blkaddr
    "16s"   # 48  uuid
    "16s"   # 64  volume_name
    "I"     # 80  feature_incompat
    "H"     # 84  u1: available_compr_algs or lz4_max_distance
    "H"     # 86  extra_devices
    "H"     # 88  devt_slotoff
    "B"     # 90  dirblkbits
    "B"     # 91  xattr_prefix_count
    "I"     # 92  xattr_prefix_start
    "Q"     # 96  packed_nid
    "B"     # 104 xattr_filter_reserved
    "23s"   # 105 reserved (ishare prefix id, build_time, rootnid_8b ... in newer formats)
)
assert _SB.size == EROFS_SB_SIZE
SB_CHECKSUM_OFFSET = 4
EROFS_MAX_BLOCKS_LO = 0xFFFFFFFF   # blocks_lo: an image's size in blocks without the 48-bit format


@dataclass
class SuperBlock:
    blkszbits: int
    root_nid: int
    inos: int
    epoch: int
    blocks: int
    meta_blkaddr: int = 0
    xattr_blkaddr: int = 0
    feature_compat: int = 0
    feature_incompat: int = 0
    fixed_nsec: int = 0
    uuid: bytes = bytes(EROFS_SB_UUID_SIZE)
    volume_name: bytes = b""
    u1: int = 0
    xattr_prefix_count: int = 0
    xattr_prefix_start: int = 0
    packed_nid: int = 0
    xattr_filter_reserved: int = 0
    checksum: int = 0
    sb_extslots: int = 0
    extra_devices: int = 0
    devt_slotoff: int = 0
    dirblkbits: int = 0
    magic: int = EROFS_SUPER_MAGIC_V1

    def pack(self) -> bytes:
        return _SB.pack(
            self.magic, self.checksum, self.feature_compat, self.blkszbits, self.sb_extslots,
            self.root_nid, self.inos, self.epoch, self.fixed_nsec, self.blocks,
            self.meta_blkaddr, self.xattr_blkaddr, self.uuid,
            self.volume_name.ljust(EROFS_SB_VOLUME_NAME_SIZE, b"\0"),
            self.feature_incompat, self.u1, self.extra_devices, self.devt_slotoff,
            self.dirblkbits, self.xattr_prefix_count, self.xattr_prefix_start, self.packed_nid,
            self.xattr_filter_reserved, bytes(23))

    @classmethod
    def unpack(cls, raw: bytes) -> "SuperBlock":
        (magic, checksum, compat, blkszbits, extslots, root_nid, inos, epoch, fixed_nsec, blocks,
         meta_blkaddr, xattr_blkaddr, uuid, volume_name, incompat, u1, extra_devices,
         devt_slotoff, dirblkbits, prefix_count, prefix_start, packed_nid, filter_reserved,
         _reserved) = _SB.unpack_from(raw)
        return cls(blkszbits=blkszbits, root_nid=root_nid, inos=inos, epoch=epoch, blocks=blocks,
                   meta_blkaddr=meta_blkaddr, xattr_blkaddr=xattr_blkaddr, feature_compat=compat,
                   feature_incompat=incompat, fixed_nsec=fixed_nsec, uuid=uuid,
                   volume_name=volume_name.rstrip(b"\0"), u1=u1, xattr_prefix_count=prefix_count,
                   xattr_prefix_start=prefix_start, packed_nid=packed_nid,
                   xattr_filter_reserved=filter_reserved, checksum=checksum,
                   sb_extslots=extslots, extra_devices=extra_devices, devt_slotoff=devt_slotoff,
                   dirblkbits=dirblkbits, magic=magic)


# ---------------------------------------------------------------------------
# the device table (EROFS_FEATURE_INCOMPAT_DEVICE_TABLE): extra devices holding data that
# 8-byte chunk indexes name by device_id (1 = the first slot); superblock extra_devices slots
# of EROFS_DEVT_SLOT_SIZE bytes at byte devt_slotoff * EROFS_DEVT_SLOT_SIZE of the image

_DEVT_SLOT = struct.Struct(
    "<64s"  # 0   tag: what names the device (a path or a digest); may be empty
    "I"     # 64  blocks_lo: the device's size in blocks
    "I"     # 68  uniaddr_lo (mapped_blkaddr): where the device starts in the unified address
            #     space; with no device given at mount (flatdev), where it starts in the image
    "H"     # 72  blocks_hi (48-bit format only)
    "H"     # 74  uniaddr_hi (48-bit format only)
    "52x"   # 76  reserved
)
EROFS_DEVT_SLOT_SIZE = _DEVT_SLOT.size
assert EROFS_DEVT_SLOT_SIZE == 128


@dataclass
class DeviceSlot:
    """One erofs_deviceslot."""
    blocks: int
    uniaddr: int = 0
    tag: bytes = b""

    def pack(self) -> bytes:
        return _DEVT_SLOT.pack(self.tag.ljust(64, b"\0")[:64], self.blocks & 0xFFFFFFFF,
                               self.uniaddr & 0xFFFFFFFF, self.blocks >> 32, self.uniaddr >> 32)

    @classmethod
    def unpack(cls, raw: bytes, wide: bool) -> "DeviceSlot":
        """`wide`: the image has EROFS_FEATURE_INCOMPAT_48BIT (else the _hi halves are ignored,
        as the kernel ignores them)."""
        tag, blocks, uniaddr, blocks_hi, uniaddr_hi = _DEVT_SLOT.unpack_from(raw)
        if wide:
            blocks |= blocks_hi << 32
            uniaddr |= uniaddr_hi << 32
        return cls(blocks, uniaddr, tag.rstrip(b"\0"))


def devt_slotoff(pos: int) -> int:
    """The superblock's devt_slotoff for a device table at byte `pos` (a slot boundary)."""
    assert pos % EROFS_DEVT_SLOT_SIZE == 0
    return pos // EROFS_DEVT_SLOT_SIZE


def sb_checksum_span(block_size: int) -> int:
    """How many bytes from EROFS_SUPER_OFFSET the superblock checksum covers."""
    return block_size - EROFS_SUPER_OFFSET if block_size > EROFS_SUPER_OFFSET else block_size


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def erofs_crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C as EROFS stores it: seed ~0 and, unlike most libraries, no final inversion."""
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


# ---------------------------------------------------------------------------
# inodes

_INODE_COMPACT = struct.Struct(
    "<H"   # 0  i_format
    "H"    # 2  i_xattr_icount
    "H"    # 4  i_mode
    "H"    # 6  i_nb: nlink
    "I"    # 8  i_size
    "I"    # 12 i_mtime (seconds after sb.epoch; reserved before the 48-bit format)
    "I"    # 16 i_u: startblk_lo / blocks_lo / rdev / chunk format
    "I"    # 20 i_ino
    "H"    # 24 i_uid
    "H"    # 26 i_gid
    "I"    # 28 i_reserved
)
_INODE_EXTENDED = struct.Struct(
    "<H"   # 0  i_format
    "H"    # 2  i_xattr_icount
    "H"    # 4  i_mode
    "H"    # 6  i_nb: startblk_hi / blocks_hi (0 here)
    "Q"    # 8  i_size
    "I"    # 16 i_u
    "I"    # 20 i_ino
    "I"    # 24 i_uid
    "I"    # 28 i_gid
    "q"    # 32 i_mtime (signed: times before 1970 survive)
    "I"    # 40 i_mtime_nsec
    "I"    # 44 i_nlink
    "16s"  # 48 i_reserved2
)
EROFS_I_FORMAT = struct.Struct("<H")   # i_format opens both forms: which one this is
EROFS_INODE_COMPACT_SIZE = _INODE_COMPACT.size
EROFS_INODE_EXTENDED_SIZE = _INODE_EXTENDED.size
assert (EROFS_INODE_COMPACT_SIZE, EROFS_INODE_EXTENDED_SIZE) == (32, 64)


# what the compact form's fields hold (larger values need the extended form)
EROFS_COMPACT_INODE_MAX_SIZE = 0xFFFFFFFF     # le32 i_size
EROFS_COMPACT_INODE_MAX_ID = 0xFFFF           # le16 i_uid, i_gid
EROFS_COMPACT_INODE_MAX_NLINK = 0xFFFF        # le16 i_nb.nlink


def fits_compact_inode(size: int, uid: int, gid: int, nlink: int) -> bool:
    return (size <= EROFS_COMPACT_INODE_MAX_SIZE and uid <= EROFS_COMPACT_INODE_MAX_ID
            and gid <= EROFS_COMPACT_INODE_MAX_ID and nlink <= EROFS_COMPACT_INODE_MAX_NLINK)


def i_format(extended: bool, datalayout: int) -> int:
    return (int(extended) << EROFS_I_VERSION_BIT) | (datalayout << EROFS_I_DATALAYOUT_BIT)


def pack_inode_into(buf, at: int, extended: bool, datalayout: int, xattr_icount: int,
                    mode: int, nlink: int, size: int, i_u: int, ino: int, uid: int, gid: int,
                    mtime_ns: int, epoch: int) -> int:
    """Pack an on-disk inode into `buf` at `at`; return where it ends.  A compact one stores
    its mtime as seconds after the superblock epoch (and no nanoseconds)."""
    if extended:
        mtime, nsec = divmod(mtime_ns, 1_000_000_000)
        _INODE_EXTENDED.pack_into(buf, at, (datalayout << EROFS_I_DATALAYOUT_BIT) | 1,
                                  xattr_icount, mode, 0, size, i_u, ino, uid, gid, mtime, nsec,
                                  nlink, _ZERO16)
        return at + EROFS_INODE_EXTENDED_SIZE
    _INODE_COMPACT.pack_into(buf, at, datalayout << EROFS_I_DATALAYOUT_BIT, xattr_icount, mode,
                             nlink, size, mtime_ns // 1_000_000_000 - epoch, i_u, ino, uid, gid,
                             0)
    return at + EROFS_INODE_COMPACT_SIZE


def pack_inode(extended: bool, datalayout: int, xattr_icount: int, mode: int, nlink: int,
               size: int, i_u: int, ino: int, uid: int, gid: int, mtime_ns: int,
               epoch: int) -> bytes:
    """pack_inode_into a bytes of its own."""
    buf = bytearray(EROFS_INODE_EXTENDED_SIZE if extended else EROFS_INODE_COMPACT_SIZE)
    pack_inode_into(buf, 0, extended, datalayout, xattr_icount, mode, nlink, size, i_u, ino,
                    uid, gid, mtime_ns, epoch)
    return bytes(buf)


_ZERO16 = bytes(16)


def new_encode_dev(major: int, minor: int) -> int:
    """The kernel's new_encode_dev(): 12-bit major, 20-bit minor split around it."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def new_decode_dev(dev: int) -> tuple[int, int]:
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def xattr_ibody_size(icount: int) -> int:
    return 0 if icount == 0 else 12 + 4 * (icount - 1)


def xattr_icount(ibody_size: int) -> int:
    return 0 if ibody_size == 0 else (ibody_size - 12) // 4 + 1


# ---------------------------------------------------------------------------
# directories

EROFS_DIRENT = struct.Struct("<QHBB")   # nid, nameoff, file_type, reserved
EROFS_DIRENT_SIZE = EROFS_DIRENT.size
assert EROFS_DIRENT_SIZE == 12
# count -> Struct of count erofs_dirents, the reserved byte a pad (packed as zero, read past)
_DIRENT_RUNS: dict[int, struct.Struct] = {}
# (most directory blocks: one Struct per count up to here; a Struct per count up to a block's
# 341 would hold ~1 MiB)
_DIRENT_RUN_MAX = 32


def _dirent_run(count: int) -> struct.Struct:
    run = _DIRENT_RUNS.get(count)
    if run is None:
        run = _DIRENT_RUNS[count] = struct.Struct("<" + (EROFS_DIRENT.format[1:-1] + "x") * count)
    return run


def pack_dirents(nids, nameoffs, ftypes) -> bytes:
    """A run of erofs_dirents (EROFS_DIRENT each): a directory block's heads, in one call up
    to _DIRENT_RUN_MAX of them, in pieces of that many beyond."""
    count = len(nids)
    values = chain.from_iterable(zip(nids, nameoffs, ftypes))
    if count <= _DIRENT_RUN_MAX:
        return _dirent_run(count).pack(*values)
    flat = list(values)
    step = 3 * _DIRENT_RUN_MAX
    return b"".join([_dirent_run(min(_DIRENT_RUN_MAX, (len(flat) - i) // 3)).pack(
        *flat[i:i + step]) for i in range(0, len(flat), step)])


def unpack_dirents(block: bytes, count: int) -> tuple[tuple[int, ...], tuple[int, ...],
                                                      tuple[int, ...]]:
    """The first `count` erofs_dirents of a directory block: their nids, nameoffs and file
    types (unpack_dirent_heads)."""
    heads = unpack_dirent_heads(block, count)
    return tuple(heads[0::3]), tuple(heads[1::3]), tuple(heads[2::3])


def unpack_dirent_heads(block: bytes, count: int) -> tuple[int, ...] | list[int]:
    """The first `count` erofs_dirents of a directory block as one flat run of (nid,
    nameoff, file type) * count: in one call up to _DIRENT_RUN_MAX of them, in pieces of
    that many beyond."""
    run = _DIRENT_RUNS.get(count)
    if run is not None:
        return run.unpack_from(block)
    if count <= _DIRENT_RUN_MAX:
        return _dirent_run(count).unpack_from(block)
    whole = count - count % _DIRENT_RUN_MAX
    heads = list(chain.from_iterable(
        _dirent_run(_DIRENT_RUN_MAX).iter_unpack(block[:whole * EROFS_DIRENT_SIZE])))
    heads += _dirent_run(count - whole).unpack_from(block, whole * EROFS_DIRENT_SIZE)
    return heads


# ---------------------------------------------------------------------------
# xattrs

EROFS_XATTR_IBODY_HEADER = struct.Struct("<IB7s")    # h_name_filter, h_shared_count, reserved
EROFS_XATTR_ENTRY = struct.Struct("<BBH")            # e_name_len, e_name_index, e_value_size
EROFS_XATTR_ENTRY_SIZE = EROFS_XATTR_ENTRY.size


def xattr_align(size: int) -> int:
    return round_up(size, EROFS_XATTR_ENTRY_SIZE)


# ---------------------------------------------------------------------------
# compressed inodes

Z_EROFS_MAP_HEADER = struct.Struct("<IHBB")  # h_fragmentoff|(reserved,h_idata_size), h_advise, h_algorithmtype, h_clusterbits
Z_EROFS_MAP_HEADER_SIZE = 8
Z_EROFS_LCLUSTER_INDEX = struct.Struct("<HHI")  # di_advise, di_clusterofs, di_u (blkaddr | delta[0],delta[1])
Z_EROFS_LCLUSTER_INDEX_SIZE = 8
Z_EROFS_FULL_INDEX_GAP = 8                    # reserved bytes between map header and full indexes
Z_EROFS_LI_LCLUSTER_TYPE_MASK = 0x3


def z_erofs_map_header_pos(inode_end: int) -> int:
    """The map header starts at the end of inode + inline xattrs rounded up to 8 bytes."""
    return round_up(inode_end, 8)


# ---------------------------------------------------------------------------
# variable-size metadata records: compression configurations (right after the superblock, one
# per algorithm of available_compr_algs, in id order) and long xattr prefixes.  Each is a le16
# payload length and the payload, the next one starting 4-byte aligned.

EROFS_METADATA_RECORD_LEN = struct.Struct("<H")
Z_EROFS_LZ4_CFGS = struct.Struct("<HH10x")     # max_distance, max_pclusterblks
Z_EROFS_LZMA_CFGS = struct.Struct("<IH8x")     # dict_size, format
Z_EROFS_DEFLATE_CFGS = struct.Struct("<B5x")   # windowbits
Z_EROFS_ZSTD_CFGS = struct.Struct("<BB4x")     # format, windowlog - Z_EROFS_ZSTD_WINDOWLOG_MIN


def pack_metadata_record(payload: bytes) -> bytes:
    """One record: le16 length, the payload, zeros up to 4-byte alignment."""
    raw = EROFS_METADATA_RECORD_LEN.pack(len(payload)) + payload
    return raw + bytes(-len(raw) % 4)


# ===========================================================================
# reading images (mkerofs.reader, mkerofs.zmap): decoding helpers and the constants only a
# reader needs.  Names follow erofs_fs.h; nothing above this line depends on them.

EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX = 0x00000008
EROFS_FEATURE_COMPAT_ISHARE_XATTRS = 0x00000020
EROFS_FEATURE_INCOMPAT_METABOX = 0x00000100
EROFS_ALL_FEATURE_INCOMPAT = (EROFS_FEATURE_INCOMPAT_METABOX << 1) - 1

# feature names as dump.erofs prints them: (compat?, bit, name); one bit may have two names
EROFS_FEATURE_NAMES = (
    (True, EROFS_FEATURE_COMPAT_SB_CHKSUM, "sb_csum"),
    (True, EROFS_FEATURE_COMPAT_MTIME, "mtime"),
    (True, EROFS_FEATURE_COMPAT_XATTR_FILTER, "xattr_filter"),
    (True, EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX, "shared_ea_in_metabox"),
    (True, EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX, "plain_xattr_pfx"),
    (True, EROFS_FEATURE_COMPAT_ISHARE_XATTRS, "ishare_xattrs"),
    (False, EROFS_FEATURE_INCOMPAT_LZ4_0PADDING, "lz4_0padding"),
    (False, EROFS_FEATURE_INCOMPAT_COMPR_CFGS, "compr_cfgs"),
    (False, EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER, "big_pcluster"),
    (False, EROFS_FEATURE_INCOMPAT_CHUNKED_FILE, "chunked_file"),
    (False, EROFS_FEATURE_INCOMPAT_DEVICE_TABLE, "device_table"),
    (False, EROFS_FEATURE_INCOMPAT_ZTAILPACKING, "ztailpacking"),
    (False, EROFS_FEATURE_INCOMPAT_FRAGMENTS, "fragments"),
    (False, EROFS_FEATURE_INCOMPAT_DEDUPE, "dedupe"),
    (False, EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES, "xattr_prefixes"),
    (False, EROFS_FEATURE_INCOMPAT_48BIT, "48bit"),
    (False, EROFS_FEATURE_INCOMPAT_METABOX, "metabox"),
)

EROFS_MAX_BLOCK_SIZE_BITS = 16     # erofs-utils reads up to 64 KiB blocks (the kernel: PAGE_SIZE)
EROFS_MIN_BLOCK_SIZE_BITS = 9

# superblock fields past the 105 bytes SuperBlock.unpack() names (inside its "reserved" tail,
# and extension slot 1): (offset from the superblock start, struct)
EROFS_SB_ISHARE_XATTR_PREFIX_ID = (105, struct.Struct("<B"))
EROFS_SB_BUILD_TIME = (108, struct.Struct("<I"))
EROFS_SB_ROOTNID_8B = (112, struct.Struct("<Q"))     # (48BIT) the root nid
EROFS_SB_BLOCKS_HI = (14, struct.Struct("<H"))       # (48BIT, rootnid_8b != 0) shares rootnid_2b
EROFS_SB_METABOX_NID = (128, struct.Struct("<Q"))    # (METABOX) in extension slot 1

EROFS_DEVT_SLOT_SIZE = 128

EROFS_I_VERSION_MASK = 0x01
EROFS_I_DATALAYOUT_MASK = 0x07
EROFS_I_DOT_OMITTED_BIT = 4        # directories: no "." entry (shares the bit with NLINK_1)
EROFS_I_ALL = (1 << (EROFS_I_NLINK_1_BIT + 1)) - 1
EROFS_INODE_DATALAYOUT_MAX = 5

# public names for the two inode structs (same objects as above)
EROFS_INODE_COMPACT = _INODE_COMPACT
EROFS_INODE_EXTENDED = _INODE_EXTENDED

# chunk-based inodes: i_u holds erofs_inode_chunk_info.format
EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x001F
EROFS_CHUNK_FORMAT_INDEXES = 0x0020
EROFS_CHUNK_FORMAT_48BIT = 0x0040
EROFS_CHUNK_FORMAT_ALL = (EROFS_CHUNK_FORMAT_48BIT << 1) - 1
EROFS_BLOCK_MAP_ENTRY = struct.Struct("<I")            # le32 blkaddr per chunk
EROFS_BLOCK_MAP_ENTRY_SIZE = EROFS_BLOCK_MAP_ENTRY.size
EROFS_INODE_CHUNK_INDEX = struct.Struct("<HHI")        # startblk_hi, device_id, startblk_lo
EROFS_NULL_ADDR = (1 << 64) - 1                        # a hole (masked to the address width)


def pack_block_map(blkaddrs: Sequence[int]) -> bytes:
    """A chunk-based inode's 4-byte block map entries (EROFS_NULL_ADDR_32 for a hole)."""
    if len(blkaddrs) == 1:
        return EROFS_BLOCK_MAP_ENTRY.pack(blkaddrs[0])
    return struct.pack(f"<{len(blkaddrs)}I", *blkaddrs)


def pack_block_map_run(start: int, step: int, count: int) -> bytes:
    """The block map of `count` chunks at blocks start, start + step, ... (a file that is one
    run of blocks), packed at once."""
    if count == 1:
        return EROFS_BLOCK_MAP_ENTRY.pack(start)
    return struct.pack(f"<{count}I", *range(start, start + count * step, step))


def pack_chunk_index_run(start: int, step: int, count: int, device_id: int) -> bytes:
    """`count` chunk indexes naming blocks start, start + step, ... of device `device_id`.
    (Read as a le64, an entry is startblk_hi | device_id << 16 | startblk_lo << 32: while
    startblk_hi stays the same the entries are an arithmetic progression, packed at once.)"""
    if count == 1:
        return EROFS_INODE_CHUNK_INDEX.pack(start >> 32, device_id, start & 0xFFFFFFFF)
    last = start + (count - 1) * step
    if start >> 32 != last >> 32:
        return b"".join(EROFS_INODE_CHUNK_INDEX.pack(a >> 32, device_id, a & 0xFFFFFFFF)
                        for a in range(start, last + 1, step))
    word = start >> 32 | device_id << 16 | (start & 0xFFFFFFFF) << 32
    return struct.pack(f"<{count}Q", *range(word, word + (count * step << 32), step << 32))


def chunk_map_unit(chunkformat: int) -> int:
    """Bytes per chunk in a chunk-based inode's map: an erofs_inode_chunk_index with
    EROFS_CHUNK_FORMAT_INDEXES, else a block map entry."""
    if chunkformat & EROFS_CHUNK_FORMAT_INDEXES:
        return EROFS_INODE_CHUNK_INDEX.size
    return EROFS_BLOCK_MAP_ENTRY_SIZE


def chunk_map_start(inode_end: int, chunkformat: int) -> int:
    """Where a chunk-based inode's map begins (erofs_map_blocks): right after the inode and its
    xattrs (`inode_end`), rounded up to one entry; entry n is n entries further."""
    return round_up(inode_end, chunk_map_unit(chunkformat))

EROFS_DIRENT_NID_METABOX_BIT = 63
EROFS_DIRENT_NID_MASK = (1 << EROFS_DIRENT_NID_METABOX_BIT) - 1
EROFS_FT_MAX = 8

EROFS_XATTR_SHARED_ID_SIZE = 4     # h_shared_xattrs[] entries; also the shared id unit in bytes

Z_EROFS_ADVISE_EXTENTS = 0x0001               # (COMPRESSED_FULL) extent records, not lclusters
Z_EROFS_ADVISE_EXTRECSZ_BIT = 1
Z_EROFS_ADVISE_EXTRECSZ_MASK = 0x3

# extent records (COMPRESSED_FULL + Z_EROFS_ADVISE_EXTENTS): plen, pstart_lo, pstart_hi,
# lstart_lo, lstart_hi, 12 reserved; a record is the first 4 << EXTRECSZ bytes of it
Z_EROFS_EXTENT = struct.Struct("<IIIII12x")
Z_EROFS_EXTENT_RECORDS = {4: struct.Struct("<I"), 8: struct.Struct("<II"),
                          16: struct.Struct("<IIII"), 32: Z_EROFS_EXTENT}
Z_EROFS_EXTENT_PSTART_BASE = struct.Struct("<Q")   # before 4-byte records: the first pstart
Z_EROFS_EXTENT_PLEN_PARTIAL = 1 << 27
Z_EROFS_EXTENT_PLEN_FMT_BIT = 28
Z_EROFS_EXTENT_PLEN_MASK = (Z_EROFS_PCLUSTER_MAX_SIZE << 1) - 1


def z_erofs_full_index_start(inode_end: int) -> int:
    """COMPRESSED_FULL: the first 8-byte lcluster index (after the map header and 8 reserved)."""
    return round_up(inode_end, 8) + Z_EROFS_MAP_HEADER_SIZE + Z_EROFS_FULL_INDEX_GAP


def z_erofs_compact_index_start(inode_end: int) -> int:
    """COMPRESSED_COMPACT: where the packs of compact indexes begin (after the map header)."""
    return round_up(inode_end, 8) + Z_EROFS_MAP_HEADER_SIZE
