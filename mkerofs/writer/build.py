"""The build pipeline: walk the source -> plan inodes -> write data -> place metadata -> superblock."""
from __future__ import annotations

from bisect import bisect_left
import contextlib
import gc
from itertools import accumulate
import os
from operator import attrgetter
import stat
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO, Callable

from ..ondisk import format as fmt
from .chunks import (ChunkStore, ImageBlocks, PendingIndexes, TarIndex, index_layer_files,
                     defer_tar_indexes, index_tar_files, make_chunked, make_hole_files,
                     map_lines)
from .devices import BlobFile, DeviceTable, ExtraDevice
from .data import DataArea, FlatCopier, fork_copier, inline_fits, reap_copiers
from .dirs import render_directory
from .meta import (MetaAllocator, MetaImage, item_size, node_pos, place_inode, place_inodes,
                   put_inodes, serialize_inode)
from ..errors import BuildError, CompressorUnavailable
from ..util import can_fork
from .options import BuildOptions
from .output import Output
from .plan import Plan, plan_inodes, planned_isize
from .report import BuildProgress, BuildReport, options_dict, tally_inodes, watch_writing
from .walk import TreeInode, apply_walk_options, walk_source
from .xattrs import XattrLayout

if TYPE_CHECKING:       # (each loaded only where used: -z's modules are 20 ms of a plain build)
    from . import compress
    from .hints import CompressHints
    from .packed import PackedFile
    from .spool import ImageSpool
    from .vmdk import VmdkDescriptor
    from .workers import CompressionPool

_FLAT_CONTENT = {fmt.EROFS_FT_REG_FILE, fmt.EROFS_FT_SYMLINK, fmt.EROFS_FT_DIR}
_NID, _FTYPE = attrgetter("nid"), attrgetter("ftype")


@dataclass
class BuildResult:
    image: str
    blocks: int
    block_size: int
    inodes: int
    uuid: bytes
    root_nid: int
    metadata_blocks: int = 0        # blocks outside the data area
    report: BuildReport | None = None

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


def build(image: str | os.PathLike, source: str | os.PathLike | BinaryIO,
          options: BuildOptions | None = None,
          progress: BuildProgress | None = None, keep: list | None = None,
          tally: bool = True) -> BuildResult:
    """Build an EROFS image of the directory `source` into `image` (a file or a block device);
    with options.tar, `source` is a tar stream: a path or a binary file object (stdin); with
    options.rebuild, a list of paths of EROFS images, stacked as overlayfs layers (the last on
    top: writer/layers.py).
    The result's `report` says what the build did; `progress` (if given) follows it.
    `keep` (if given) is handed the build's tree of inodes instead of freeing it: a process
    about to exit can leave it unfreed (freeing ~120k objects one by one, for 60k files,
    takes ~40 ms).
    `tally=False` leaves the report's per-type inode counts and per-algorithm data out (a
    pass over every inode, for a caller that prints the summary at most): report.inodes then
    holds the total only, report.data nothing."""
    # The build makes a few long-lived objects per file and no garbage cycles worth collecting:
    # the cyclic collector would only rescan them again and again (a third of the run time).
    # It comes back on only once _build has returned and its objects are freed: the first
    # collection would otherwise scan every one of them (0.3 s for 100k files).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(image, source, options, progress, keep, tally)
    finally:
        if gc_was_enabled:
            gc.enable()


def _build(image, source, options: BuildOptions | None,
           progress: BuildProgress | None, keep: list | None, tally: bool) -> BuildResult:
    options = _checked(options or BuildOptions(), source)
    image = os.fspath(image)
    report = BuildReport(image=image, options=options_dict(options))       # report
    build_time = options.build_time if options.build_time is not None else int(time.time())
    # what a tar stream opened (its spool holds file data) stays open until --verify has read it
    with contextlib.ExitStack() as inputs:
        increment = None
        if options.incremental is not None:
            increment = _IncrementStep(image, options, inputs)
            options = increment.options
        sinks = _Sinks(increment.output() if increment else Output(image, options.offset))
        try:
            found = _read_source(source, options, build_time, sinks, inputs, report, progress)
            options = found.options
            root = increment.merge(found.root, options) if increment else found.root
            with report.phase("plan", progress):
                plan = increment.plan(root, options, build_time) if increment else \
                    plan_inodes(root, options, build_time)
                if found.tar is not None and found.tar.order is not None:
                    plan.data_order = _in_tar_order(plan, found.tar.order)
                    found.tar.order = None      # (an entry a file, not read again: let it go)
                xattrs = _plan_xattrs(plan, options)
            devices = _device_table(options, found, sinks.blob, source)
            with report.phase("write"):
                watch_writing(progress, plan.inodes, sinks.out, sinks.pool)      # report
                tar = found.tar
                result = _write_image(plan, options, sinks.out, xattrs, found.source_b,
                                      found.zcfg, found.hints, sinks.pool,
                                      tar.written if tar is not None else None, devices,
                                      tar.index if tar is not None else None, sinks.blob,
                                      increment.merged if increment else None)
            if increment and options.verify:
                with report.phase("verify", progress):      # (before IMAGE changes)
                    increment.verify(sinks.out, options, build_time)
            with report.phase("finish", progress):
                sinks.finish(result, lambda: _vmdk_extents(image, result, devices))
            _fill_report(report, result, plan, sinks.pool, tally)              # report
            if keep is not None:
                keep.append(plan)
            if increment:
                increment.note(report)                                         # report
        except BaseException:
            sinks.abort()
            raise
        if options.verify and not increment:
            from .verify import verify_build        # loads the reader only when asked to
            with report.phase("verify", progress):
                verify_build(image, found.verify_source, options)
    report.note_memory()
    return result


def _checked(options: BuildOptions, source) -> BuildOptions:
    """The options validated (the block size --tar=i forces applied); a SOURCE directory that
    does not exist is an error before anything is created."""
    options.validate()
    if _tar_device(options):
        from .tarstream import BLOCK as TAR_BLOCK     # loads the tar reader only for tar input
        # (as mkfs.erofs, whatever -b says) the image addresses the tar in the tar's own blocks
        options = replace(options, block_size=TAR_BLOCK)
    if options.rebuild is None and options.tar is None:
        path = os.fsencode(os.fspath(source))
        if not os.path.lexists(path):
            raise BuildError(f"{os.fsdecode(path)}: source does not exist")
    if options.dedupe and not options.compressor and not options.quiet:
        print("mkerofs: compression is not enabled: -Ededupe shares identical blocks of "
              "chunk-based files instead", file=sys.stderr)
    return options


@dataclass
class _Sinks:
    """What a build writes (the image, a --blobdev blob, a --vmdk-desc descriptor) and the
    workers writing into it: all put in place together at the end, or all undone."""
    out: Output
    blob: BlobFile | None = None
    vmdk: VmdkDescriptor | None = None
    pool: CompressionPool | None = None
    tar_writer: ImageSpool | None = None    # --sort=none from a stream: what writes the files'
                                            # data (its processes may still run)

    def finish(self, result: BuildResult,
               vmdk_extents: Callable[[], list[tuple[str, int]]]) -> None:
        if self.tar_writer is not None:
            self.tar_writer.finish()            # (the files' data: in the image before it is)
        if self.vmdk is not None:
            from .vmdk import descriptor        # (loaded only for --vmdk-desc)
            self.vmdk.stage(descriptor(result.uuid, vmdk_extents()))
        if self.blob is not None:
            self.blob.finish()
        self.out.finish(result.size)
        if self.vmdk is not None:
            self.vmdk.commit()

    def abort(self) -> None:
        if self.tar_writer is not None:
            self.tar_writer.close()
        for sink in (self.pool, self.blob, self.vmdk, self.out):
            if sink is not None:
                sink.abort()


@dataclass
class _Source:
    """What reading the source gave: the tree and what the rest of the build needs of it."""
    root: TreeInode
    options: BuildOptions               # as the source amends them (a tar's label, layers'
                                        # block size)
    source_b: bytes                     # a directory SOURCE (b"" otherwise): --compress-hints
                                        # patterns and --verify see paths below it
    verify_source: object               # what --verify compares the image with
    zcfg: compress.CompressConfig | None
    hints: CompressHints | None
    tar: "_TarTree | None" = None
    layers: object = None               # rebuild mode: the layers.LayerStack


def _read_source(source, options: BuildOptions, build_time: int, sinks: _Sinks,
                 inputs: contextlib.ExitStack, report: BuildReport,
                 progress: BuildProgress | None) -> _Source:
    """Walk the directory, read the tar or stack the layer images; the compression workers
    (started first, while this process is small) take files as they are found."""
    out = sinks.out
    layers = None
    if options.rebuild is not None:
        from .layers import LayerStack         # loads the reader only in rebuild mode
        layers = inputs.enter_context(LayerStack([os.fspath(s) for s in source],
                                                 out.identity(), options.rebuild.devices))
        # (as mkfs.erofs: the last source's block size, whatever -b says)
        options = replace(options, block_size=layers.block_size)
    zcfg, hints = _compress_config(options)
    if options.blobdev is not None:
        sinks.blob = BlobFile(options.blobdev, options.block_size)
    if options.vmdk_desc is not None:
        from .vmdk import VmdkDescriptor        # (loaded only for --vmdk-desc)
        sinks.vmdk = VmdkDescriptor(options.vmdk_desc)
    on_file = None
    if zcfg is not None:
        from .workers import CompressionPool      # loaded only when files are compressed
        sinks.pool = CompressionPool(zcfg, _workers(options), out, processes=True)
        if options.incremental is None:     # (an increment's inode forms are known later)
            on_file = _early_offers(sinks.pool, options, hints, build_time)
    if layers is not None:
        with report.phase("walk", progress):
            root, verify_source = _rebuild_tree(layers, options, inputs)
        return _Source(root, options, b"", verify_source, zcfg, hints, layers=layers)
    if options.tar is None:
        source_b = os.fsencode(os.fspath(source))
        skip = out.identity() | (sinks.blob.identity if sinks.blob is not None else set())
        with report.phase("walk", progress):
            root, _count = walk_source(source_b, options, skip=skip, on_file=on_file,
                                       progress=progress)
        return _Source(root, options, source_b, source_b, zcfg, hints)
    if isinstance(source, list):
        with report.phase("tar", progress):
            root = _stacked_tars(inputs, source, options, build_time, out, on_file)
        verify_source = b""
        if options.verify:
            from .verify import TarSource
            verify_source = TarSource.capture(root)
        return _Source(root, options, b"", verify_source, zcfg, hints)
    with report.phase("tar", progress):
        tar = _read_tar(inputs, source, options, build_time, out, on_file)
    sinks.tar_writer = tar.writer
    if tar.label and not options.label:
        # as mkfs.erofs: a GNU volume header names the image (16 bytes at most)
        options = replace(options, label=tar.label)
    verify_source = b""
    if options.verify and options.incremental is None:     # (an increment: copy_upper)
        from .verify import TarSource
        # (planning takes the tree apart: keep what the comparison needs)
        verify_source = TarSource.capture(tar.root, tar.device_path)
    return _Source(tar.root, options, b"", verify_source, zcfg, hints, tar=tar)


def _stacked_tars(inputs: contextlib.ExitStack, sources: list, options: BuildOptions,
                  build_time: int, out: Output, offer: Callable | None) -> TreeInode:
    """Several tar layers (--tar=f IMAGE L1.tar L2.tar ...): each read as one tar is, its
    whiteouts kept, then stacked as overlayfs stacks them, the last on top (layers.py), and
    with --ovlfs-strip the whiteouts applied.  Files hidden by an upper layer were offered to
    the compression workers like any other; the pool drops what the final tree lacks."""
    from .layers import merge_layers
    if options.tar.sort == "none":
        raise BuildError("--sort=none: one tar only (several tar layers are merged first)")
    one = replace(options, tar=replace(options.tar, ovlfs_strip=False))
    roots = [_read_tar(inputs, os.fspath(s), one, build_time, out, offer, merged=True).root
             for s in sources]
    root, _count = merge_layers(roots, options.tar.ovlfs_strip)
    return root


def _device_table(options: BuildOptions, found: _Source, blob: BlobFile | None,
                  source) -> DeviceTable:
    """The extra devices: the tar (--tar=i), the blob (--blobdev) or the layers (rebuild mode
    without --clean)."""
    devices = DeviceTable()
    if found.tar is not None and found.tar.index is not None and _tar_device(options):
        devices.add(_tar_as_device(found.tar.index, _path_given(source), options.format_48bit))
    if blob is not None:
        devices.add(blob.device)
    if found.layers is not None and options.rebuild.clean is None:
        for device in found.layers.devices():
            devices.add(device)
    return devices


def _rebuild_tree(layers, options: BuildOptions,
                  inputs: contextlib.ExitStack) -> tuple[TreeInode, object]:
    """Rebuild mode: the merged tree of the source images (`layers`, a layers.LayerStack),
    each regular file's data pointing into its image (no --clean: through the device table)
    or copied from it (decoded into a spool when its bytes are not one run of blocks there);
    and what --verify compares the image with (b"" without it)."""
    mode = options.rebuild.clean
    if mode is None:
        layers.check_block_sizes()
    if mode == "data":
        layers.require_devices("--clean=data copies the data it holds")
    elif mode is None and options.verify:
        layers.require_devices("--verify reads the image through it")
    # (--verify reads each file through `files`: all are noted; else only the few whose bytes
    # are not one run of blocks)
    early = None if options.verify else (mode, options.block_size)
    root, files = layers.merged_tree(options.rebuild.ovlfs_strip, early)

    def same_file(copy: TreeInode, original: TreeInode) -> None:
        if original in files:
            files[copy] = files[original]
    apply_walk_options(root, options, on_split=same_file)
    verify_source = b""
    if options.verify:
        from .verify import TarSource
        # (each file as its source image reads it, not through the data the build took;
        # the image read back through its device table: the images, or their devices)
        verify_source = TarSource.capture(
            root, contents=layers.contents(files) if mode != "rvsp" else None,
            devices=layers.device_files() if mode is None else None,
            release=layers.drop_pages)
    if not files:       # (every file placed as it was read: no spool, nor the tar reader)
        layers.drop_pages()
        return root, verify_source
    # (the spool makes its file when the first file is copied into it: none when every file
    # points into the images)
    from .spool import Spool                # as layers does: loaded only in rebuild mode
    spool = inputs.enter_context(Spool())
    layers.resolve_data(root, files, mode, options.block_size, spool)
    return root, verify_source


def _vmdk_extents(image: str, result: BuildResult, devices: DeviceTable
                  ) -> list[tuple[str, int]]:
    """--vmdk-desc: the image, then each extra device (as its slot counts it)."""
    extents = [(image, result.size)]
    for device in devices.devices:
        name = device.src_path if device.src_path is not None else device.tag.decode()
        extents.append((name, device.blocks * result.block_size))
    return extents


def _fill_report(report: BuildReport, result: BuildResult, plan: Plan,
                 pool: CompressionPool | None, tally: bool) -> None:
    """What the build report takes from the finished layout (one pass over the inodes, if
    `tally`)."""
    report.block_size, report.blocks = result.block_size, result.blocks
    report.metadata_blocks = result.metadata_blocks
    report.uuid = str(uuidlib.UUID(bytes=result.uuid))
    if result.report is not None:   # what _write_image noted (fragments, chunks stored once)
        noted = result.report
        report.fragment_bytes = noted.fragment_bytes
        report.fragment_shared_bytes = noted.fragment_shared_bytes
        report.dedupe_bytes, report.dedupe_blocks = noted.dedupe_bytes, noted.dedupe_blocks
    if pool is not None:
        report.dedupe_bytes += pool.deduped[0]
        report.dedupe_blocks += pool.deduped[1]
    if tally:
        tally_inodes(report, plan.inodes, result.block_size)
    else:
        report.inodes = {"total": len(plan.inodes)}
    result.report = report


@dataclass
class _TarTree:
    """What _read_tar found: the tree, and where --sort=none puts the files' data."""
    root: TreeInode
    order: dict[TreeInode, int] | None      # --sort=none, spooled: each regular file's place
                                            # in the stream
    label: bytes                        # a GNU volume header's name (b"": none)
    written: DataArea | None            # --sort=none from a stream: the data area the files
                                        # were written to as the stream passed
    index: TarIndex | None = None       # --tar=i: where the files' bytes are in the tar
    device_path: bytes | None = None    # --tar=i from a plain tar file: the tar as device 1
    writer: ImageSpool | None = None    # --sort=none from a stream: what writes the files'
                                        # data into `written` (finish() waits for it)


def _read_tar(inputs: contextlib.ExitStack, source, options: BuildOptions, build_time: int,
              out: Output, offer: Callable | None, merged: bool = False) -> _TarTree:
    """The tree of the tar stream `source` (a path or a binary file object).  What it opens
    (the --ungzip=FILE dump, the decoder, the spool holding file data that cannot be read in
    place) stays open in `inputs` until the image is written, and is closed (the spool
    removed) on every way out.  `offer` (with compression) gets each regular file once its
    data is stored, as walk_source's on_file (a later entry may still replace it: the pool
    then drops it).  `merged`: the tree is merged with others (layers.py), which change
    its directories' entries in place: lists of them (else walk.SortedEntries, but for an
    increment's tree, merged too).

    --sort=none, which mkfs.erofs honours only without compression and with -Enoinline_data,
    keeps the files' data in tar order: a stream (not a plain tar file, which is read in place)
    is then written into the image's data area as it is read, one pass and no temporary copy
    (spool.ImageSpool, whose processes may still write when this returns; from a plain tar
    file on stdin, a spool.TarCopier copies the bytes); otherwise each file's place in the
    stream is noted for the layout.

    --tar=i reads no file data (a stream's is read past, nothing is spooled), except a sparse
    file's, which the image holds (tarsource); the files are noted in tar order for the
    MAPFILE's blob."""
    # (the tar reader and the decoders are loaded only for tar input)
    from .decompress import file_path, open_input
    from .spool import ImageSpool, Spool, TarCopier
    from .tarsource import TarTreeOptions, read_tar_tree
    from .tarstream import TarReader
    tar = options.tar
    if _sort_none_overruled(options) and not options.quiet:
        print("mkerofs: warning: --sort=none is ignored with chunk-based files (--chunksize, "
              "-Ededupe without -z): their data is stored chunk by chunk in the usual order "
              "(mkfs.erofs 1.9.3 drops the chunks instead, storing the files whole in tar "
              "order)", file=sys.stderr)
    try:
        dump = inputs.enter_context(open(tar.dump, "wb")) if tar.dump else None
        stream = inputs.enter_context(open_input(source, tar.decompress, dump))
    except OSError as err:
        name = err.filename if err.filename is not None else source
        raise BuildError(f"{os.fsdecode(name)}: {err.strerror or err}") from None
    in_place = isinstance(source, (str, bytes, os.PathLike)) and stream.kind == "tar" \
        and stream.seekable
    tar_path = os.fsencode(os.fspath(source)) if in_place else None
    if not in_place and stream.kind == "tar" and stream.seekable and tar.mode == "f" \
            and not _sort_none_applies(options):
        # stdin redirected from a tar file: read in place as well, rather than copied into
        # the spool (not with --sort=none, whose layout differs for a stream)
        tar_path = file_path(source)
    written = writer = None
    # (--verify needs a copy of the data to compare the image with: it spools instead)
    if _sort_none_applies(options) and not in_place and tar.mode == "f" \
            and not options.verify:
        written = DataArea(out, options.block_size, _head_blocks(options.block_size),
                           options.dsunit)
        copier = None
        if stream.kind == "tar" and stream.seekable and TarCopier.suits(stream.stream, out):
            copier = TarCopier(stream.stream.fileno(), stream.stream.tell(), out,
                               options.block_size)
            inputs.callback(copier.close)
            copier.start()
        spool = writer = ImageSpool(written, copier)
        inputs.callback(writer.close)
    else:
        spool = inputs.enter_context(Spool())
    if options.verify and tar.mode == "i" and (tar.mapfile or not in_place):
        # (the files' bytes are only in the tar: verification reads them there)
        raise BuildError("--verify with --tar=i needs SOURCE to be a plain, uncompressed tar "
                         "file (not stdin) and no MAPFILE: the files' data is read from it")
    tree_options = TarTreeOptions(
        aufs=tar.aufs, ovlfs_strip=tar.ovlfs_strip, headerball=tar.mode == "headerball",
        index=tar.mode == "i", root_uid=os.getuid(), root_gid=os.getgid(), build_time=build_time,
        tar_path=tar_path, sorted_entries=not merged and options.incremental is None)
    order = indexed = None
    if tree_options.index:
        indexed = []
        # (the files in tar order make only the MAPFILE's blob: none kept without one)
        offer = _noting_files(indexed) if tar.mapfile else None
    elif _sort_none_applies(options) and written is None:
        order = {}
        offer = _noting_order(order)
    # a thread reads (and decodes: the decoders let go of the GIL) a compressed tar or a pipe
    # ahead of the parsing; not a plain tar file (read in place, its data passed over by
    # seeking, or for --sort=none read whole: no faster there), nor a pipe under --tar=i
    # (its file data is only passed over: no faster either)
    read_ahead = stream.kind != "tar" or (not stream.seekable and not tree_options.index)
    if tree_options.index:
        # (no file data is read but a sparse file's, and reading the headers is most of the
        # build: they may be read on two cores.  Not for --tar=f, whose data copy takes longer
        # than the headers, and where the batches' objects cost ~0.15 MiB of peak RSS)
        from .tarsplit import SplitTarReader
        reader = SplitTarReader(stream, headerball=False, read_ahead=read_ahead)
    else:
        reader = TarReader(stream, headerball=tree_options.headerball, read_ahead=read_ahead)
    inputs.callback(reader.close)
    root, _count = read_tar_tree(reader, tree_options, spool, on_file=offer)
    reader.close()          # (before copiers are forked: no thread may run then)
    apply_walk_options(root, options)
    label = (reader.volume_label or b"")[:fmt.EROFS_SB_VOLUME_NAME_SIZE]
    index = TarIndex(indexed, reader.archive_end) if indexed is not None else None
    device_path = tree_options.tar_path if index is not None and _tar_device(options) else None
    return _TarTree(root, order, label, written, index, device_path, writer)


def _sort_none_applies(options: BuildOptions) -> bool:
    """--sort=none counts, as with mkfs.erofs, only without compression and with
    -Enoinline_data (and means nothing to --tar=i, which writes no file data); and in mkerofs
    not with chunk-based files (their data goes through the chunk store, not straight into the
    image)."""
    return options.tar.sort == "none" and not options.compressor and not options.inline_data \
        and options.tar.mode != "i" and options.chunkbits is None


def _tar_device(options: BuildOptions) -> bool:
    """--tar=i without a MAPFILE: the tar is extra device 1, in 512-byte blocks."""
    return options.tar is not None and options.tar.mode == "i" and not options.tar.mapfile


def _tar_as_device(tar_index: TarIndex, src_path: str | None, wide_ok: bool) -> ExtraDevice:
    """--tar=i: the tar as extra device 1, as long as mkfs.erofs counts it (to the end of the
    end-of-archive marker).  One of 2 TiB or more (2^32 blocks of 512 bytes) needs the 48-bit
    format (`wide_ok`) for its slot and the chunk indexes of its last files: refused here
    without it, before any file is indexed.  (mkfs.erofs 1.9.3 turns the format on by
    itself then.)"""
    from .tarstream import BLOCK as TAR_BLOCK         # loads the tar reader only for tar input
    blocks = -(-tar_index.tar_bytes // TAR_BLOCK)
    if blocks > fmt.EROFS_MAX_BLOCKS_LO and not wide_ok:
        raise BuildError(f"--tar=i: {src_path or 'the tar'} is {tar_index.tar_bytes} bytes, "
                         "2 TiB or more: its blocks need 48-bit block addresses (-E48bit)")
    return ExtraDevice("the tar", blocks, src_path=src_path)


def _path_given(source) -> str | None:
    """SOURCE as given, if it is a path (not stdin)."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    return None


def _noting_order(order: dict[TreeInode, int]) -> Callable:
    """An on_file for read_tar_tree that notes each regular file's place in the stream."""

    def note(src: TreeInode, _relpath: bytes, _links) -> None:
        order[src] = len(order)        # (TreeInodes hash by identity)

    return note


def _noting_files(files: list[TreeInode]) -> Callable:
    """An on_file for read_tar_tree that lists the regular files in stream order."""

    def note(src: TreeInode, _relpath: bytes, _links) -> None:
        files.append(src)

    return note


def _sort_none_overruled(options: BuildOptions) -> bool:
    """--sort=none where mkfs.erofs would honour it but mkerofs does not: with chunk-based
    files, whose chunks go through the chunk store (deduplicated, from a file read in place or
    the spool), not straight into the image."""
    tar = options.tar
    return tar.sort == "none" and tar.mode == "f" and not options.compressor \
        and not options.inline_data and options.chunkbits is not None


def _head_blocks(block_size: int) -> int:
    """Blocks up to the end of the superblock (and of the span of its checksum)."""
    return fmt.round_up(fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE, block_size) // block_size


def _in_tar_order(plan: Plan, tar_order: dict[TreeInode, int]) -> list[TreeInode]:
    """--sort=none, which mkfs.erofs honours only without compression and with
    -Enoinline_data: regular files' data first, in the order the tar stream had it."""
    files = [n for n in plan.inodes if n.ftype == fmt.EROFS_FT_REG_FILE]
    files.sort(key=lambda n: tar_order.get(n, -1))
    return files + [n for n in plan.inodes if n.ftype != fmt.EROFS_FT_REG_FILE]


def _plan_xattrs(plan: Plan, options: BuildOptions) -> XattrLayout:
    """Decide the shared xattrs over the whole tree and give every inode its xattr ibody."""
    layout = XattrLayout(options.xattr_options(), options.block_size)
    root = plan.root
    # (most inodes have no xattrs: their meta_size_before_inline is their inode's size already)
    with_xattrs = [n for n in plan.inodes if n.xattrs or n is root]
    try:
        # mkfs.erofs counts an xattr once per path below the root: the links of a file, 1 for
        # a directory, 0 for the root itself
        handles = [layout.add(n.xattrs,
                              0 if n is root else 1 if n.ftype == fmt.EROFS_FT_DIR else n.nlink,
                              n.display_path() if n.xattrs else None)
                   for n in with_xattrs]
        layout.finalize()
    except ValueError as err:
        raise BuildError(str(err)) from None
    for node, handle in zip(with_xattrs, handles):
        if handle.items or node is root:
            node.set_xattr_ibody(layout.ibody(handle, is_root=node is root))   # (xattrs let go)
        # (else xattrs the options leave out: the inode's size alone, as it is)
    return layout


def _workers(options: BuildOptions) -> int:
    return options.workers or os.cpu_count() or 1


def _early_offers(pool: CompressionPool, options: BuildOptions, hints: CompressHints | None,
                  build_time: int) -> Callable[[TreeInode, bytes, os.stat_result], bool]:
    """The walk's on_file: hand a regular file to the workers right away when its job is
    known already, i.e. its size, its profile and its inode + xattrs size (no xattrs, one
    inode form whatever its link count); False once the workers take no more."""
    from .workers import FileRange              # loaded only when files are compressed

    def offer(src: TreeInode, relpath: bytes, st: os.stat_result) -> bool:
        if not pool.takes_early():
            return False
        size = src.size
        if src.xattrs or st.st_nlink > fmt.EROFS_COMPACT_INODE_MAX_NLINK or \
                not pool.suits_early(size):
            return True
        wanted, profile = _hinted(pool.cfg, hints, relpath)
        if not wanted:
            return True
        isize = planned_isize(src, options, build_time)
        if isize is not None:
            pool.offer(src, FileRange.of(src, size), size, isize, profile)
        return True

    return offer


def _hinted(cfg: compress.CompressConfig, hints: CompressHints | None, relpath: bytes
            ) -> tuple[bool, compress.FileProfile | None]:
    """(compress it at all, its profile: None for -z/-C) as --compress-hints says for a file;
    a hint of size 0 keeps it uncompressed."""
    hint = hints.match(relpath) if hints is not None else None
    if hint is None:
        return True, None
    if not hint.pcluster_size:
        return False, None
    return True, cfg.profile(hint.algorithm, hint.pcluster_size)


def _write_image(plan: Plan, options: BuildOptions, out: Output, xattrs: XattrLayout,
                 source: bytes, zcfg: compress.CompressConfig | None, hints: CompressHints | None,
                 pool: CompressionPool | None, written: DataArea | None,
                 devices: DeviceTable, tar_index: TarIndex | None,
                 blob: BlobFile | None, increment=None) -> BuildResult:
    """Lay out and write everything but the files' data in `written` (--sort=none from a
    stream: in the image already) and on the extra `devices` (--tar=i: in the tar; the chunks
    of chunk-based files go to `blob` if there is one); with `increment`
    (incremental.Increment), append to the base instead."""
    # compression configurations (if any) follow the superblock; the device table follows them
    cfgs_pos = fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE
    cfgs = zcfg.superblock(False).cfgs if zcfg is not None else b""
    packed = None
    if zcfg is not None and zcfg.fragments:
        from .packed import PackedFile          # (loaded only for fragments)
        packed = PackedFile(zcfg.fragdedupe)
    try:
        if increment is not None:
            result = _lay_out_increment(plan, options, out, xattrs, source, zcfg, hints, pool,
                                        packed, increment)
        else:
            result = _lay_out(plan, options, out, xattrs, source, zcfg, hints, pool, cfgs_pos,
                              cfgs, packed, written, devices, tar_index, blob)
        if packed is not None:                                                  # report
            result.report = result.report or BuildReport()
            result.report.fragment_bytes = packed.size
            result.report.fragment_shared_bytes = packed.shared_bytes
        return result
    finally:
        if packed is not None:
            packed.close()


def _lay_out(plan: Plan, options: BuildOptions, out: Output, xattrs: XattrLayout, source: bytes,
             zcfg: compress.CompressConfig | None, hints: CompressHints | None,
             pool: CompressionPool | None, cfgs_pos: int, cfgs: bytes,
             packed: PackedFile | None, written: DataArea | None,
             devices: DeviceTable, tar_index: TarIndex | None,
             blob: BlobFile | None) -> BuildResult:
    bs = options.block_size
    root = plan.root
    devt_pos = fmt.round_up(cfgs_pos + len(cfgs), fmt.EROFS_DEVT_SLOT_SIZE)
    meta_start = devt_pos + devices.size if devices else cfgs_pos + len(cfgs)
    alloc = MetaAllocator(bs, fmt.round_up(meta_start, fmt.EROFS_ISLOT_SIZE))
    prefix_pos = None
    if xattrs.prefix_records:
        if packed is not None and not options.plain_xattr_prefixes:
            # old kernels read the table from the packed inode when there is one
            prefix_pos = packed.append(xattrs.prefix_records)
            xattrs.in_packed_inode = True
        elif written is None or \
                alloc.frontier + len(xattrs.prefix_records) <= written.start_block * bs:
            # read at an absolute, 4-aligned offset: before the root
            prefix_pos = alloc.place(len(xattrs.prefix_records))
    if written is None:
        # The root goes right after the superblock so that its nid fits the 16-bit rootnid
        # field; the data area follows, then the metadata area with every other inode.
        # (its tail's room, before reserve_flat gives the root that tail)
        tail = root.size % bs if inline_fits(root, root.size, bs) else 0
        root_pos = alloc.place(root.meta_size_before_inline + tail)
        data = DataArea(out, bs, fmt.round_up(alloc.frontier, bs) // bs, options.dsunit)
    else:
        # --sort=none from a stream: the files' data fills the blocks after the superblock's
        # already; the rest of the data area follows, then the metadata area, which the nids
        # count from (meta_blkaddr), the root first.
        data = written
        for node in plan.inodes:
            if node.ftype == fmt.EROFS_FT_REG_FILE and node.data is not None \
                    and node.data.in_image:
                data.take_written(node)
    data_start = data.start_block
    placed = _assign_data(plan, options, source, xattrs, zcfg, hints, pool, packed, data,
                          tar_index, blob)
    nodes = placed.nodes
    data_end = data.next_block

    if written is None:
        meta_base = 0
        alloc.jump_to(data_end * bs)
        root.nid = root_pos >> fmt.EROFS_ISLOTBITS
    else:
        meta_base = data_end * bs
        alloc = MetaAllocator(bs, meta_base)
        if xattrs.prefix_records and prefix_pos is None:
            prefix_pos = alloc.place(len(xattrs.prefix_records))
        place_inode(alloc, root, meta_base)
    place_inodes(alloc, nodes, meta_base, skip=root)
    meta_end = fmt.round_up(alloc.frontier, bs)
    blocks = fmt.round_up(max(meta_end, data_end * bs) // bs, options.fs_align_blocks)
    if blocks > fmt.EROFS_MAX_BLOCKS_LO:
        raise BuildError(f"image of {blocks} blocks: more than the superblock's 32-bit block "
                         "count holds")
    out.check_fits(blocks * bs)

    # (the metadata area is written through a mapping of the image: a fresh file reads as zeros)
    meta = MetaImage(data_start * bs, data_end * bs, meta_end, out)
    _write_contents(plan, nodes, data, meta, meta_base, xattrs, placed.xattr_blkaddr,
                    prefix_pos, _workers(options), pending=placed.pending)

    try:
        xattr_fields = xattrs.superblock_fields(placed.xattr_blkaddr, prefix_pos or 0)
    except ValueError as err:
        raise BuildError(str(err)) from None
    sb = fmt.SuperBlock(
        blkszbits=fmt.blksz_bits(bs), root_nid=root.nid, inos=len(plan.inodes), epoch=plan.epoch,
        blocks=blocks, meta_blkaddr=meta_base // bs,
        feature_compat=fmt.EROFS_FEATURE_COMPAT_MTIME | xattrs.feature_compat,
        feature_incompat=xattrs.feature_incompat, volume_name=options.label, **xattr_fields)
    if placed.chunked:
        sb.feature_incompat |= fmt.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
    if devices:
        sb.feature_incompat |= fmt.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE
        sb.extra_devices = len(devices.devices)
        sb.devt_slotoff = fmt.devt_slotoff(devt_pos)
        meta.put(devt_pos, devices.slots(blocks, options.format_48bit))
    if options.format_48bit:
        sb.feature_incompat |= fmt.EROFS_FEATURE_INCOMPAT_48BIT
    if len(nodes) > len(plan.inodes):
        sb.packed_nid = nodes[-1].nid
    if zcfg is not None:
        used = placed.used
        zsb = zcfg.superblock(ztailpacking_used=used.ztailpacking,
                              fragments_used=used.fragments, dedupe_used=used.dedupe)
        sb.feature_incompat |= zsb.feature_incompat
        sb.u1 = zsb.u1
        if cfgs:
            meta.put(cfgs_pos, cfgs)
    sb.uuid = _choose_uuid(options, meta, plan.epoch)
    _put_superblock(meta, sb, bs, options.sb_checksum)
    meta.write_out(out)
    if placed.map_lines is not None and options.tar.mapfile:
        _write_mapfile(options.tar.mapfile, placed.map_lines)
    result = BuildResult(out.path, blocks, bs, len(plan.inodes), sb.uuid, root.nid,
                         metadata_blocks=blocks - (data_end - data_start))
    if placed.store is not None:                                                # report
        result.report = BuildReport(dedupe_bytes=placed.store.saved_bytes,
                                    dedupe_blocks=placed.store.saved_blocks)
    return result


class _IncrementStep:
    """--incremental's steps of the pipeline (writer/incremental.py): the base, opened and
    locked (closed with `inputs`); the source merged over it; the plan of the new inodes
    only; --verify of the image as it will be, before IMAGE changes (a failure rolls the
    increment back).  _lay_out_increment writes it."""

    def __init__(self, image: str, options: BuildOptions, inputs: contextlib.ExitStack):
        from . import incremental               # loads the reader only when asked to
        self.base = incremental.Base(image)
        inputs.callback(self.base.close)
        self.options = self.base.amend(options)
        self.merged = None                      # the incremental.Increment, once merged
        self.upper: TreeInode | None = None     # --verify: the source tree, as it was

    def output(self) -> Output:
        return self.base.output()

    def merge(self, root: TreeInode, options: BuildOptions) -> TreeInode:
        """The merged tree of the source (`root`) over the base."""
        from . import incremental
        inc = options.incremental
        if options.verify:      # (the merge takes the tree apart)
            self.upper = incremental.copy_upper(root, inc.mode == "rvsp")
        self.merged = incremental.merge_increment(self.base, root, inc.ovlfs_strip)
        return self.merged.root

    def plan(self, root: TreeInode, options: BuildOptions, build_time: int) -> Plan:
        """The new inodes of the merged tree (the kept ones are named by their nids),
        numbered after the base's."""
        from . import incremental
        plan = plan_inodes(root, options, build_time, written=True)
        incremental.renumber(plan, self.base, options)
        return plan

    def verify(self, out: Output, options: BuildOptions, build_time: int) -> None:
        """--verify: the image as the increment makes it, read before IMAGE is changed,
        against the base and the source merged."""
        from . import incremental
        from .verify import verify_increment
        expected = incremental.expected_tree(self.base, self.upper,
                                             options.incremental.ovlfs_strip,
                                             options.xattr_tolerance >= 0)
        view = out.view()
        try:
            verify_increment(view, self.base.path, expected, options, build_time)
        finally:
            view.close()

    def note(self, report: BuildReport) -> None:
        report.base_inodes = self.base.superblock.inos
        report.base_blocks = self.base.superblock.blocks


def _lay_out_increment(plan: Plan, options: BuildOptions, out: Output, xattrs: XattrLayout,
                       source: bytes, zcfg: compress.CompressConfig | None,
                       hints: CompressHints | None, pool: CompressionPool | None,
                       packed: PackedFile | None, increment) -> BuildResult:
    """--incremental (writer/incremental.py): the new data after the base's last block, the
    new metadata after it, then what changes in the base's bytes, the superblock last."""
    from . import incremental
    base = increment.base
    bs = options.block_size
    root = plan.root
    if zcfg is not None:        # (refused before any file is compressed)
        zsb = zcfg.superblock(False)
        base.compression(zsb.feature_incompat, zsb.u1, zsb.cfgs)
    data = DataArea(out, bs, base.end_block, options.dsunit)
    data.reserve_flat(root, False)          # FLAT_PLAIN: it may have to go over the old root
    if options.incremental.mode == "rvsp":
        incremental.reserve_rvsp(plan, data)
    placed = _assign_data(plan, options, source, xattrs, zcfg, hints, pool, packed, data,
                          None, None)
    data_end = data.next_block
    alloc = MetaAllocator(bs, data_end * bs)
    for node in placed.nodes:
        place_inode(alloc, node, base.meta_base)
    root_pos = incremental.place_root(base, root, item_size(root))
    meta_end = fmt.round_up(alloc.frontier, bs)
    blocks = fmt.round_up(max(meta_end, data_end * bs) // bs, options.fs_align_blocks)
    if blocks > fmt.EROFS_MAX_BLOCKS_LO:
        raise BuildError(f"image of {blocks} blocks: more than the superblock's 32-bit block "
                         "count holds")
    # (a shared mapping of the image file, as in a full build: the new metadata starts at or
    # after base.end_block, past the base file's last byte, so it reads as zeros)
    meta = MetaImage(0, data_end * bs, meta_end, out)
    # (the kept directories' ".." entries are looked up while the copiers copy: 8 ms less
    # after them on the bench's increment)
    dotdots = _write_contents(
        plan, placed.nodes, data, meta, base.meta_base, xattrs, 0, None, _workers(options),
        elsewhere=root if root_pos is not None else None,
        meanwhile=lambda: incremental.dotdot_patches(increment, plan.inodes))
    meta.write_out(out)
    out.seal(blocks * bs)           # all that is new is written: now the base's bytes
    if root_pos is not None:
        out.pwrite(serialize_inode(root, plan.first_ino + placed.nodes.index(root), plan.epoch),
                   root_pos)
    for pos, entry in dotdots:
        out.pwrite(entry, pos)
    incompat, u1 = 0, None
    if zcfg is not None:
        used = placed.used
        zsb = zcfg.superblock(ztailpacking_used=used.ztailpacking,
                              fragments_used=used.fragments, dedupe_used=used.dedupe)
        incompat, u1, cfgs = base.compression(zsb.feature_incompat, zsb.u1, zsb.cfgs)
        if cfgs:
            out.pwrite(cfgs, base.room_start())
    if placed.chunked:
        incompat |= fmt.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
    packed_nid = placed.nodes[-1].nid if len(placed.nodes) > len(plan.inodes) else 0
    incremental.superblock(base, out, root.nid, blocks, len(placed.nodes),
                           fmt.EROFS_FEATURE_COMPAT_MTIME | xattrs.feature_compat,
                           incompat | xattrs.feature_incompat, u1, packed_nid, options)
    sb = base.raw_superblock
    uuid = options.uuid if options.uuid is not None else fmt.SuperBlock.unpack(sb).uuid
    return BuildResult(out.path, blocks, bs, base.superblock.inos + len(placed.nodes), uuid,
                       root.nid, metadata_blocks=blocks - data_end)


@dataclass
class _DataPlaced:
    """What _assign_data decided, for the metadata and the superblock."""
    nodes: list[TreeInode]              # every inode with metadata: the tree's, then the
                                        # packed inode if there is one
    xattr_blkaddr: int                  # the shared xattr area (0: none)
    used: "_FeaturesUsed"               # compression features some inode ended up using
    chunked: bool                       # some inode is chunk-based
    map_lines: list[str] | None         # --tar=i: the MAPFILE's lines
    store: ChunkStore | None            # --chunksize: the chunks stored (for the report)
    pending: PendingIndexes | None      # --tar=i: the chunk indexes put_inodes packs


def _assign_data(plan: Plan, options: BuildOptions, source: bytes, xattrs: XattrLayout,
                 zcfg: compress.CompressConfig | None, hints: CompressHints | None,
                 pool: CompressionPool | None, packed: PackedFile | None, data: DataArea,
                 tar_index: TarIndex | None, blob: BlobFile | None) -> _DataPlaced:
    """Give every inode with data its blocks in `data`, in this order (it decides the
    addresses): the --tar=i,MAPFILE blob, the shared xattrs, compressed files (then the packed
    inode), chunk-based files, then flat files, symlinks and directories in plan order."""
    bs = options.block_size
    bits = fmt.blksz_bits(bs)
    # --tar=i,MAPFILE: the blob is the first thing of the data area (as mkfs.erofs has it
    # for a small tar)
    map_lines, pending = _index_tar(plan, options, tar_index, data) if tar_index is not None \
        else (None, None)
    # rebuild mode: files whose bytes stay in the source images point there
    indexed = options.rebuild is not None and index_layer_files(plan.inodes, bits,
                                                                options.format_48bit)
    # the shared xattr area: whole blocks at the start of the data area; ids count from there
    xattr_blkaddr = data.allocate(-(-len(xattrs.shared_area) // bs)) if xattrs.shared_area else 0
    nodes = plan.inodes         # (a copy only with a packed inode: 8 bytes an inode)
    used = _FeaturesUsed()
    # files of zeros only (--tar=headerball, rebuild --clean=rvsp) take no data blocks,
    # compressed or not
    chunked = (options.tar is not None or options.rebuild is not None) and \
        make_hole_files(plan.inodes, bits)
    chunked |= indexed
    if zcfg is not None:
        # compressed files first: how many blocks they take is known once they are compressed
        packed_node = _compress_regular_files(plan, options, source, zcfg, hints, pool, packed,
                                              data, used)
        if packed_node is not None:
            nodes = [*nodes, packed_node]
    store = None
    if options.chunkbits is not None:
        # --chunksize: the files left uncompressed are chunk-based (the flag even if none is)
        store = _chunk_regular_files(plan, options, data, blob)
        chunked = True
    reserve_flat = data.reserve_flat
    flat_plain, reg_file = fmt.EROFS_INODE_FLAT_PLAIN, fmt.EROFS_FT_REG_FILE
    inline_data = options.inline_data
    for node in plan.data_order or plan.inodes:
        # (a layout still FLAT_PLAIN with no place is neither compressed nor chunk-based)
        if node.flat is None and node.datalayout == flat_plain and node.ftype in _FLAT_CONTENT:
            reserve_flat(node, inline_fits(node, node.size, bs)
                         and (inline_data or node.ftype != reg_file))
    return _DataPlaced(nodes, xattr_blkaddr, used, chunked, map_lines, store, pending)


def _write_contents(plan: Plan, nodes: list[TreeInode], data: DataArea, meta: MetaImage,
                    meta_base: int, xattrs: XattrLayout, xattr_blkaddr: int,
                    prefix_pos: int | None, workers: int,
                    elsewhere: TreeInode | None = None,
                    meanwhile: Callable[[], object] | None = None,
                    pending: PendingIndexes | None = None) -> object:
    """Write the flat files' data (by threads), symlinks and directories into the data area
    and the shared xattrs; put the long prefixes and every inode into `meta` (the chunk
    indexes `pending` with them).  `meanwhile()`,
    if given, runs once this process is done with its part, while the copiers may still be
    copying; its answer is returned."""
    bs = data.block_size
    reg_file, symlink, directory = fmt.EROFS_FT_REG_FILE, fmt.EROFS_FT_SYMLINK, fmt.EROFS_FT_DIR

    def copied(node: TreeInode) -> bool:
        # (not a tar's empty files, DataRef(None): nothing to copy, and --tar=i has no other,
        # so no copier is forked for it)
        return node.ftype == reg_file and node.flat is not None and not node.flat.written \
            and (node.data is None or node.data.path is not None)

    def tail_view(node: TreeInode) -> memoryview:
        return meta.view(node_pos(node, meta_base) + node.meta_size_before_inline,
                         node.flat.tail)

    # (FlatCopier leaves first: its copiers are done before their sources are closed)
    with data.sources_kept_open(), FlatCopier(data, workers, tail_view) as copier:
        copier.start(nodes, copied)
        # while the copiers copy file data, this process lays out everything else: the
        # directories and symlinks as their inodes are written (put_inodes), their tails not
        # kept till then (1.9 MiB at the peak of the bench's tar), but `elsewhere`, written
        # apart, now.  With no copier forked, the other core would idle: a forked child
        # writes the second part of `nodes` meanwhile (into the image file and the shared
        # metadata image only), when that core is free (_second_core_free).
        split = len(nodes)
        if workers > 1 and not copier.pids and len(nodes) >= _SPLIT_MIN_INODES \
                and can_fork() and _second_core_free():
            split = _split_point(nodes)

        def render(node: TreeInode) -> bytes:
            if node.ftype == symlink:
                return data.write_flat_body(node, node.target)
            content = render_directory(node.dir_shape, bs, _NID, _FTYPE)
            node.dir_shape = None
            return data.write_flat_body(node, content)

        def write_part(start: int, stop: int) -> None:
            part = nodes[start:stop] if start or stop < len(nodes) else nodes
            put_inodes(meta, part, plan.first_ino + start, plan.epoch, meta_base, elsewhere,
                       render, pending)
        if elsewhere is not None and elsewhere.ftype == directory:
            elsewhere.inline = render(elsewhere)
        with _forked_part(lambda: write_part(split, len(nodes)), split < len(nodes)):
            if xattrs.shared_area:
                data.out.pwrite(
                    xattrs.shared_area.ljust(fmt.round_up(len(xattrs.shared_area), bs), b"\0"),
                    xattr_blkaddr * bs)
            if xattrs.prefix_records:
                meta.put(prefix_pos, xattrs.prefix_records)
            write_part(0, split)
            done = meanwhile() if meanwhile is not None else None
    return done


# Inodes from which a forked child writes the second part of them (_write_contents): the fork
# (~2 ms for the ~45 MiB of a 60k-inode build) and the copy-on-write faults it brings to both
# processes cost more than a part saves in smaller builds.
_SPLIT_MIN_INODES = 20000
# What writing a directory costs, as inodes written (render_directory: ~3 us a directory and
# ~0.3 us an entry, put_inodes ~0.7 us an inode): about 4 inodes, and one for each 34 bytes
# of its size (an entry and its name, ~24 bytes, cost ~0.7 of an inode)
_DIR_COST, _DIR_BYTES_A_COST = 4, 34
_SPLIT_SAMPLES = 1024
# The part of that cost this process takes: it forks, and its part faults in more pages (on
# the bench's rows, with half: ~58 ms of CPU here, ~50 in the child)
_PARENT_SHARE = 0.46


def _split_point(nodes: list[TreeInode]) -> int:
    """Where to split `nodes` so that writing each part takes about as long (see
    _PARENT_SHARE), from a sample of them: directories cost more than other inodes, and a
    breadth-first plan may have most of them in its first part.  (Never 0: an increment's
    root may be written elsewhere.)"""
    step = max(1, len(nodes) // _SPLIT_SAMPLES)
    directory = fmt.EROFS_FT_DIR
    costs = list(accumulate(_DIR_COST + node.size // _DIR_BYTES_A_COST
                            if node.ftype == directory else 1 for node in nodes[::step]))
    return max(1, bisect_left(costs, costs[-1] * _PARENT_SHARE) * step)


def _second_core_free() -> bool:
    """Whether fewer processes are running now (this one among them: /proc/loadavg's
    runnable count) than this process may run on cores.  A forked part on a core that
    another process keeps busy only takes turns with this process: on the bench's 60k
    inodes, the write took ~30 ms longer in two parts than in one."""
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            running = int(loadavg.read().split()[3].partition(b"/")[0])
        return running < len(os.sched_getaffinity(0))
    except (OSError, ValueError, IndexError, AttributeError):   # (no /proc: not Linux)
        return True


@contextlib.contextmanager
def _forked_part(work: Callable[[], object], fork: bool):
    """Run `work` in a forked child (with `fork`, and if the system forks one) while the
    `with` block runs here; leaving it waits for the child and raises its failure (a child
    still running when the block fails is killed).  Otherwise `work` runs here, first."""
    pid = -1
    if fork:
        errors, report = os.pipe()
        try:
            pid = fork_copier(work, report, errors, doing="writing metadata")
        except OSError:             # (EAGAIN, ENOMEM: this process does it)
            os.close(errors)
        finally:
            os.close(report)
    if pid < 0:
        work()
        yield
        return
    failed = True
    try:
        yield
        failed = False
    finally:
        reap_copiers([pid], errors, kill=failed, doing="writing metadata")


def _index_tar(plan: Plan, options: BuildOptions, tar_index: TarIndex,
               data: DataArea) -> tuple[list[str], PendingIndexes | None]:
    """--tar=i: point every file whose bytes stay in the tar at them (writer/chunks.py); with a
    MAPFILE, reserve the blob (a hole) in `data` and return the MAPFILE's lines; without,
    the indexes left for put_inodes to pack."""
    bs = options.block_size
    bits = fmt.blksz_bits(bs)
    if not options.tar.mapfile:
        # (--verify reads the files' bytes in the tar through their refs: kept then)
        return [], defer_tar_indexes(plan.inodes, bits, tar_index.tar_bytes,
                                     let_go=not options.verify)
    blob, blocks = tar_index.blob(bs)
    start = data.allocate(blocks)
    if start + blocks >= fmt.EROFS_NULL_ADDR_32:
        raise BuildError(f"--tar=i,MAPFILE: the files take {blocks} blocks of {bs} bytes, more "
                         "than a block map can address (a larger -b, or --tar=i without MAPFILE)")
    placed = index_tar_files(plan.inodes, bits, blob, start)
    return map_lines(placed, bs), None


def _write_mapfile(path: str, lines: list[str]) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.writelines(lines)
    except OSError as err:
        raise BuildError(f"{path}: {err.strerror or err}") from None


@dataclass
class _FeaturesUsed:
    """Optional compression features that some inode ended up using: superblock bits."""
    ztailpacking: bool = False
    fragments: bool = False
    dedupe: bool = False


def _compress_regular_files(plan: Plan, options: BuildOptions, source: bytes,
                            zcfg: compress.CompressConfig, hints: CompressHints | None,
                            pool: CompressionPool | None, packed: PackedFile | None,
                            data: DataArea, used: _FeaturesUsed) -> TreeInode | None:
    """Compress the regular files that are worth trying (and then the packed inode, returned
    if there is one): each gets a compressed layout or, when compression saves nothing, its
    flat place."""
    from .workers import FileJob, FileRange, compress_files     # only when files are compressed
    jobs = []
    wanted, profile = True, None        # (without --compress-hints, for every file)
    for n in plan.inodes:
        if n.ftype != fmt.EROFS_FT_REG_FILE or n.size == 0 or n.chunk_based or \
                not zcfg.worth_trying(n.size):
            continue
        if hints is not None:
            wanted, profile = _hinted(zcfg, hints, _relative(n.path, source))
        if wanted:
            jobs.append(FileJob(n, n.size, n.meta_size_before_inline,
                                FileRange.of(n, n.size), profile, origin=n))
    if pool is not None:
        pool.discard_offers(jobs)
    _take_layouts(compress_files(jobs, zcfg, data, packed=packed, pool=pool), options, data,
                  used)
    del jobs
    if packed is None or not packed.size:
        return None
    packed_node = _packed_inode(packed, plan)
    job = FileJob(packed_node, packed.size, packed_node.meta_size_before_inline,
                  packed.reader(), zcfg.packed_profile)
    _take_layouts(compress_files([job], zcfg.without_fragments(), data, _workers(options)),
                  options, data, used)
    used.fragments = True
    return packed_node


def _take_layouts(results, options: BuildOptions, data: DataArea, used: _FeaturesUsed) -> None:
    """Give each compressed file its layout, or its flat place where its blocks were."""
    bs = options.block_size
    for job, layout in results:
        node = job.key
        if layout is None:
            if options.chunkbits is not None:
                continue            # chunk-based instead, see _chunk_regular_files
            inline_ok = inline_fits(node, node.size, bs) and options.inline_data
            data.reserve_flat(node, inline_ok, job.wrote_blocks)
            continue
        node.datalayout = layout.datalayout
        node.i_u = layout.blocks
        node.inline = layout.inline
        node.inline_tail = layout.tail
        used.ztailpacking |= layout.inline_pcluster
        used.fragments |= layout.fragment
        used.dedupe |= layout.deduped


def _chunk_regular_files(plan: Plan, options: BuildOptions, data: DataArea,
                         blob: BlobFile | None) -> ChunkStore:
    """Make every regular file with data that is not compressed chunk-based, its chunks in
    the image's data area or in `blob` (chunks.py)."""
    blkszbits = fmt.blksz_bits(options.block_size)
    chunk_blocks = 1 << (options.chunkbits - blkszbits)
    dsunit = options.dsunit if 1 < options.dsunit <= chunk_blocks else 1
    if options.dsunit > 1 and dsunit == 1 and not options.quiet:
        # as mkfs.erofs: deduplicated chunks smaller than dsunit would misalign all the rest
        print(f"mkerofs: warning: chunks of {1 << options.chunkbits} bytes are smaller than "
              f"dsunit ({options.dsunit} blocks): --dsunit is ignored for them",
              file=sys.stderr)
    files = [node for node in plan.data_order or plan.inodes
             if node.ftype == fmt.EROFS_FT_REG_FILE and node.size and node.flat is None and
             not node.compressed and not node.chunk_based]
    store = ChunkStore(blob if blob is not None else ImageBlocks(data), blkszbits,
                       options.chunkbits, indexes=options.chunk_format == "indexes",
                       device_id=1 if blob is not None else 0,
                       dedupe=options.dedupe is not False, dsunit=dsunit,
                       wide_ok=options.format_48bit, expected=sum(
                           [((node.size - 1) >> options.chunkbits) + 1 for node in files]))
    for node in files:
        make_chunked(node, store)
    store.close()
    return store


def _compress_config(options: BuildOptions
                     ) -> tuple[compress.CompressConfig | None, CompressHints | None]:
    if not options.compressor:
        return None, None
    # (the codecs and the compression modules are loaded only here: a plain build needs none)
    from . import compress
    from ..codecs.spec import parse_compressor_spec
    from .hints import load_compress_hints
    hints = None
    extra = {}
    try:
        specs = parse_compressor_spec(options.compressor)
        if options.compress_hints is not None:
            hints = load_compress_hints(options.compress_hints, options.block_size, len(specs))
            for warning in hints.warnings:
                if not options.quiet:
                    print(f"mkerofs: warning: {warning}", file=sys.stderr)
        if options.max_extent_bytes is not None:
            if options.max_extent_bytes < 0:
                raise ValueError("unaligned compressed extents (negative --max-extent-bytes) "
                                 "need the 48-bit on-disk format, not implemented in mkerofs yet")
            extra["max_extent_input"] = min(options.max_extent_bytes, compress.MAX_EXTENT_INPUT)
        cfg = compress.CompressConfig.from_options(
            options.compressor, options.block_size, options.pcluster_size,
            max_pcluster_size=hints.max_pcluster_size if hints else 0,
            legacy_indexes=options.legacy_compress, ztailpacking=options.ztailpacking,
            fragments=options.fragments, all_fragments=options.all_fragments,
            fragdedupe=options.fragdedupe, dedupe=bool(options.dedupe),
            packed_pcluster_size=options.packed_pcluster_size or 0, **extra)
        return cfg, hints
    except (ValueError, CompressorUnavailable) as err:
        raise BuildError(f"compression: {err}") from None


def _relative(path: bytes, source: bytes) -> bytes:
    """A path as --compress-hints patterns see it: below SOURCE, without a leading '/'."""
    return path[len(source):].lstrip(b"/")


def _packed_inode(packed: PackedFile, plan: Plan) -> TreeInode:
    """The nameless regular file that holds the fragments (superblock packed_nid); it comes
    after the tree's inodes, and is numbered so."""
    mode = stat.S_IFREG | 0o600
    node = TreeInode(packed.path, mode, 0, 0, packed.size, plan.epoch * 10**9, nlink=1,
                        ftype=fmt.EROFS_FT_REG_FILE,
                        extended=packed.size > fmt.EROFS_COMPACT_INODE_MAX_SIZE)
    node.set_xattr_ibody(b"")
    return node


def _choose_uuid(options: BuildOptions, meta: MetaImage, epoch: int) -> bytes:
    if options.uuid is not None:
        return options.uuid
    if options.source_date_epoch is not None:
        # reproducible: the same tree and options give the same metadata, hence the same UUID
        import hashlib      # (OpenSSL: 3.5 MB of memory, loaded only where a build hashes)
        digest = hashlib.sha256(b"mkerofs\0%d\0" % epoch)
        meta.hash_into(digest)
        return uuidlib.UUID(bytes=digest.digest()[:16], version=5).bytes
    return uuidlib.uuid4().bytes


def _put_superblock(meta: MetaImage, sb: fmt.SuperBlock, bs: int, checksum: bool) -> None:
    if checksum:
        sb.feature_compat |= fmt.EROFS_FEATURE_COMPAT_SB_CHKSUM
    meta.put(fmt.EROFS_SUPER_OFFSET, sb.pack())
    if checksum:
        span = fmt.sb_checksum_span(bs)
        region = bytes(meta.head[fmt.EROFS_SUPER_OFFSET:fmt.EROFS_SUPER_OFFSET + span])
        region = region.ljust(span, b"\0")
        sb.checksum = fmt.erofs_crc32c(region)
        meta.put(fmt.EROFS_SUPER_OFFSET, sb.pack())
