"""Build options: what a caller (the CLI or Python code) asks of a build."""
from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field

from ..errors import BuildError
from ..ondisk import format as fmt
from ..util import posix_ere_to_python
from .compress import check_pcluster_size
from .xattrs import XattrLayout, XattrOptions


class TimeInherit(enum.Enum):
    """Which mtime an inode gets, as mkfs.erofs's c_timeinherit."""
    SOURCE = "source"       # each file keeps its own mtime
    FIXED = "fixed"         # every file gets the build time (-T with --all-time)
    CLAMP = "clamp"         # mtimes newer than the build time are clamped (SOURCE_DATE_EPOCH)


MAX_DSUNIT = 2**32 - 1
MAX_FSALIGNBLKS = 2**31          # rounded up to a power of two, it stays within 32 bits

TAR_MODES = ("f", "headerball", "i")
SORT_ORDERS = ("path", "none")


@dataclass
class TarOptions:
    """--tar and the options that go with it: SOURCE is a tar stream (a path or a binary file
    object such as stdin), plain or compressed (gzip, xz, lzma, zstd, bzip2: recognised by its
    first bytes, with or without --ungzip/--unxz/--unlzma)."""
    mode: str = "f"                 # f: full; headerball: headers only, files read as zeros;
                                    # i: tar index, metadata pointing into the tar
                                    # (writer/chunks.py)
    mapfile: str | None = None      # --tar=i,MAPFILE: no device, a blob to fill from the tar
                                    # (ignored with the other modes)
    aufs: bool = False              # --aufs: .wh. names are overlayfs whiteouts/opaque marks
    ovlfs_strip: bool = False       # --ovlfs-strip: drop whiteouts and overlay xattrs
    decompress: str | None = None   # the decoder asked for: "gzip", "xz" or "lzma" (a hint)
    dump: str | None = None         # --ungzip=FILE etc.: a copy of the decompressed stream
    sort: str = "path"              # --sort: "none" puts file data in tar order (see build)

    def validate(self) -> None:
        if self.mode not in TAR_MODES:
            raise BuildError(f"invalid tar mode {self.mode!r}")
        if self.mapfile == "":
            raise BuildError("--tar=X,MAPFILE: the MAPFILE needs a name")
        if self.sort not in SORT_ORDERS:
            raise BuildError(f"invalid sort order {self.sort!r}")


CLEAN_MODES = ("data", "rvsp")


@dataclass
class RebuildOptions:
    """Rebuild mode: SOURCE is one or more EROFS images, stacked as overlayfs layers, the last
    on top (writer/layers.py)."""
    clean: str | None = None        # None: the files point into the images (a device table);
                                    # "data": their bytes are copied; "rvsp": they read as zeros
    ovlfs_strip: bool = False       # --ovlfs-strip: apply whiteouts and opaque directories
    devices: tuple[str, ...] = ()   # --device: the extra devices of the images that have one
                                    # not appended to them, in order (layers.LayerStack)

    def validate(self) -> None:
        if self.clean is not None and self.clean not in CLEAN_MODES:
            raise BuildError(f"invalid --clean mode {self.clean!r}: rebuild mode copies the "
                             "data (--clean=data), reserves room for it (--clean=rvsp) or, "
                             "without --clean, points into the source images")


INCREMENTAL_MODES = ("data", "rvsp")


@dataclass
class IncrementalOptions:
    """--incremental[=data|rvsp]: IMAGE is an existing EROFS image, SOURCE (a directory or,
    with --tar=f, a tar) goes on top of it as an overlayfs upper layer (writer/incremental.py)."""
    mode: str = "data"              # "data": the new files' bytes; "rvsp": room, no bytes
    ovlfs_strip: bool = False       # --ovlfs-strip: apply whiteouts and opaque directories

    def validate(self) -> None:
        if self.mode not in INCREMENTAL_MODES:
            raise BuildError(f"invalid --incremental mode {self.mode!r}: data or rvsp")


@dataclass
class BuildOptions:
    block_size: int = 4096
    # build time: -T, else SOURCE_DATE_EPOCH, else now
    timestamp: int | None = None
    time_inherit: TimeInherit | None = None     # None: derived from how the build time was given
    source_date_epoch: int | None = None
    ignore_mtime: bool = False
    uuid: bytes | None = None                   # None: random (or derived, with SOURCE_DATE_EPOCH)
    label: bytes = b""
    force_uid: int | None = None
    force_gid: int | None = None
    uid_offset: int = 0
    gid_offset: int = 0
    exclude_paths: list[str] = field(default_factory=list)
    exclude_regexes: list[str] = field(default_factory=list)
    inline_data: bool = True
    force_inode: str | None = None              # None, "compact" or "extended"
    sb_checksum: bool = True
    hard_dereference: bool = False
    offset: int = 0
    mount_point: str = "/"
    quiet: bool = True
    verify: bool = False                        # --verify: read the image back, compare with SOURCE
                                                # (with --tar: with the tree the tar gave)
    debug: int = 2
    workers: int | None = None
    # compression (-z, -C, -Elegacy-compress, -Eztailpacking); compressor None: no compression
    compressor: str | None = None
    pcluster_size: int | None = None
    legacy_compress: bool = False
    ztailpacking: bool = False
    fragments: bool = False                     # -Efragments[=SIZE]
    all_fragments: bool = False                 # -Eall-fragments
    packed_pcluster_size: int | None = None     # SIZE of -Efragments=SIZE
    fragdedupe: str = "full"                    # -Efragdedupe=full|inode, -E^fragdedupe: "off"
    dedupe: bool | None = None                  # -Ededupe True, -E^dedupe False: with -z, share
                                                # identical pclusters; without, chunks of a block
                                                # (see chunkbits); off: chunks are not shared
    max_extent_bytes: int | None = None         # --max-extent-bytes
    compress_hints: str | None = None           # --compress-hints=FILE
    # extended attributes: -x, -E[^]xattr-name-filter, --xattr-prefix, -Eplain-xattr-prefixes,
    # --root-xattr-isize, --file-contexts
    xattr_tolerance: int = 2                    # < 0: store no xattrs (nor SELinux labels)
    xattr_name_filter: bool = True
    xattr_prefixes: list[str] = field(default_factory=list)
    plain_xattr_prefixes: bool = False
    root_xattr_isize: int = 0
    file_contexts: str | None = None
    tar: TarOptions | None = None               # --tar: SOURCE is a tar stream, not a directory
    # --dsunit: each file's data begins at a multiple of this many blocks (0, 1: anywhere;
    # see data.DataArea)
    dsunit: int = 0
    # --fsalignblks: the image's size in blocks is a multiple of this, rounded up to a power
    # of two (0, 1: any size)
    fsalignblks: int = 0
    # chunk-based files (writer/chunks.py)
    chunk_size: int | None = None               # --chunksize: uncompressed files in chunks
    blobdev: str | None = None                  # --blobdev=FILE: the chunks go to FILE
    chunk_format: str | None = None             # -Eforce-chunk-indexes: "indexes",
                                                # -Eforce-inode-blockmap: "blockmap"
    rebuild: RebuildOptions | None = None       # SOURCE is EROFS images (writer/layers.py)
    vmdk_desc: str | None = None                # --vmdk-desc=FILE: a VMDK descriptor of the
                                                # image and its devices (writer/vmdk.py)
    incremental: IncrementalOptions | None = None   # IMAGE is the base: SOURCE goes on top
    # -E48bit: EROFS_FEATURE_INCOMPAT_48BIT, so block addresses of chunks (--blobdev, --tar=i,
    # rebuild mode) and extra devices may pass 2^32 blocks; only for uncompressed images whose
    # own blocks fit 32 bits (see chunks.py)
    format_48bit: bool = False

    def validate(self) -> None:
        bs = self.block_size
        if bs < fmt.EROFS_MIN_BLOCK_SIZE or bs > fmt.EROFS_MAX_BLOCK_SIZE or bs & (bs - 1):
            raise BuildError(f"invalid block size {bs}: a power of two from "
                             f"{fmt.EROFS_MIN_BLOCK_SIZE} to {fmt.EROFS_MAX_BLOCK_SIZE}")
        label_max = fmt.EROFS_SB_VOLUME_NAME_SIZE - 1
        if len(self.label) > label_max:
            raise BuildError(f"invalid volume label {self.label!r}: at most {label_max} bytes")
        if self.uuid is not None and len(self.uuid) != fmt.EROFS_SB_UUID_SIZE:
            raise BuildError(f"invalid UUID: {fmt.EROFS_SB_UUID_SIZE} bytes expected")
        if self.force_inode not in (None, "compact", "extended"):
            raise BuildError(f"invalid inode form {self.force_inode!r}")
        if self.offset < 0:
            raise BuildError(f"invalid offset {self.offset}")
        for name in ("force_uid", "force_gid"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32 - 1:
                raise BuildError(f"invalid {name.replace('_', '-')} {value}")
        try:
            XattrLayout(self.xattr_options(), bs)
        except ValueError as err:
            raise BuildError(str(err)) from None
        if self.pcluster_size is not None:
            try:
                check_pcluster_size(self.pcluster_size, bs)
            except ValueError as err:
                raise BuildError(str(err)) from None
        for pattern in self.exclude_regexes:
            try:
                re.compile(posix_ere_to_python(pattern))
            except re.error as err:
                raise BuildError(f"invalid exclude regex {pattern!r}: {err}") from None
        if self.tar is not None:
            self.tar.validate()
        if self.rebuild is not None:
            self._validate_rebuild()
        if self.incremental is not None:
            self._validate_incremental()
        # (the ranges of mkfs.erofs's unsigned ints; the image's size in blocks bounds both
        # further, see build)
        if not 0 <= self.dsunit <= MAX_DSUNIT:
            raise BuildError(f"invalid dsunit {self.dsunit}: a number of blocks from 0 to "
                             f"{MAX_DSUNIT}")
        if not 0 <= self.fsalignblks <= MAX_FSALIGNBLKS:
            raise BuildError(f"invalid fsalignblks {self.fsalignblks}: a number of blocks "
                             f"from 0 to {MAX_FSALIGNBLKS}")
        self._validate_chunks()
        if self.format_48bit:
            self._validate_48bit()

    def _validate_48bit(self) -> None:
        refused = {"compression (-z): the 48-bit compressed extent format":
                   self.compressor is not None,
                   "--incremental": self.incremental is not None}
        for what, given in refused.items():
            if given:
                raise BuildError(f"-E48bit with {what} is not implemented in mkerofs")

    def _validate_chunks(self) -> None:
        """The option checks of mkfs.erofs for --chunksize and --blobdev."""
        size = self.chunk_size
        if size is not None:
            if size <= 0 or size & (size - 1):
                raise BuildError(f"invalid chunk size {size}: a power of two expected")
            if size < self.block_size:
                raise BuildError(f"invalid chunk size {size}: smaller than the block size "
                                 f"{self.block_size}")
        if self.blobdev is not None:
            if size is None:
                raise BuildError("--blobdev must be used together with --chunksize")
            if self.chunk_format == "blockmap":
                raise BuildError("--blobdev cannot work with block map "
                                 "(-Eforce-inode-blockmap): chunks on an extra device need "
                                 "chunk indexes")
            if self.tar is not None and self.tar.mode == "i":
                # (mkfs.erofs 1.9.3 accepts it, leaves FILE empty and gives the tar's slot
                # FILE's size: see README)
                raise BuildError("--blobdev cannot be used with --tar=i: --tar=i writes no file "
                                 "data (the tar itself is the image's extra device)")
        if self.chunk_format not in (None, "indexes", "blockmap"):
            raise BuildError(f"invalid chunk format {self.chunk_format!r}")

    def _validate_rebuild(self) -> None:
        self.rebuild.validate()
        if self.tar is not None:
            raise BuildError("--tar takes one tar stream, not EROFS images")
        if self.blobdev is not None:
            raise BuildError("--blobdev cannot be used in rebuild mode: the source images are "
                             "the image's extra devices")

    def _validate_incremental(self) -> None:
        self.incremental.validate()
        refused = {"EROFS images as SOURCE (rebuild mode)": self.rebuild is not None,
                   "--tar=i or --tar=headerball": self.tar is not None and self.tar.mode != "f",
                   "--blobdev": self.blobdev is not None, "--vmdk-desc": self.vmdk_desc is not None,
                   "--offset": self.offset != 0,
                   "--xattr-prefix": bool(self.xattr_prefixes)}
        for what, given in refused.items():
            if given:
                raise BuildError(f"--incremental cannot be used with {what} in mkerofs")

    @property
    def chunkbits(self) -> int | None:
        """log2 of the size of the chunks files with data are cut into; None: no chunks.
        -Ededupe without compression means chunks of one block, whatever --chunksize says
        (as in mkfs.erofs)."""
        blkszbits = fmt.blksz_bits(self.block_size)
        if self.dedupe and not self.compressor:
            return blkszbits
        if self.chunk_size is None:
            return None
        return min(self.chunk_size.bit_length() - 1,
                   blkszbits + fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK)

    def xattr_options(self) -> XattrOptions:
        return XattrOptions(tolerance=self.xattr_tolerance, name_filter=self.xattr_name_filter,
                            long_prefixes=[os.fsencode(p) for p in self.xattr_prefixes],
                            plain_prefixes=self.plain_xattr_prefixes,
                            root_isize=self.root_xattr_isize)

    @property
    def fs_align_blocks(self) -> int:
        """What the image's size in blocks is a multiple of: fsalignblks rounded up to a
        power of two, as mkfs.erofs does (1 when not given)."""
        return 1 << (self.fsalignblks - 1).bit_length() if self.fsalignblks > 1 else 1

    @property
    def build_time(self) -> int | None:
        if self.timestamp is not None:
            return self.timestamp
        return self.source_date_epoch

    @property
    def effective_time_inherit(self) -> TimeInherit:
        if self.time_inherit is not None:
            return self.time_inherit
        if self.timestamp is not None:
            return TimeInherit.FIXED
        if self.source_date_epoch is not None:
            return TimeInherit.CLAMP
        return TimeInherit.SOURCE
