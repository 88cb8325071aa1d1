"""The `mkerofs` command line: mkfs.erofs's arguments, parsed and handed to build()."""
from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import time
import uuid as uuidlib

import click

from .. import __version__
from ..errors import BuildError
from ..util import parse_c_int
from ..writer.options import (MAX_DSUNIT, MAX_FSALIGNBLKS, BuildOptions, IncrementalOptions,
                              RebuildOptions, TarOptions, TimeInherit)
from ..writer.report import BuildProgress
from . import progress
from .common import CInt, GID, GID_OFFSET, OFFSET, UID, UID_OFFSET, debug_options, run

# long options whose value is optional: like getopt, they take one only after '='
_OPTIONAL_VALUE = {"--tar", "--ovlfs-strip", "--ungzip", "--gzinfo", "--unxz", "--unlzma",
                   "--clean", "--incremental", "--zD", "--MZ", "--oci", "--xattr-inode-digest"}
_NO_VALUE = "\0none"

# mkfs.erofs options that mkerofs does not implement yet: refused, never silently ignored
_NOT_IMPLEMENTED = {
    "metadata_compression": "-m",
    "gzinfo": "--gzinfo",
    "s3": "--s3", "oci": "--oci", "zd": "--zD", "mz": "--MZ",
    "xattr_inode_digest": "--xattr-inode-digest", "product_out": "--product-out",
    "fs_config_file": "--fs-config-file", "async_queue_limit": "--async-queue-limit",
}


# main() run as the program hands the build's tree of inodes to this list and ends without
# freeing it (see build's `keep`): the list holds itself and is frozen out of the cyclic
# collector, so neither the end of the build nor the interpreter's exit lets it go.
_UNFREED: list | None = None

_UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_uuid(text: str) -> bytes | None:
    """Only the canonical 8-4-4-4-12 form, as mkfs.erofs accepts; or 'clear', 'random'."""
    if text == "clear":
        return bytes(16)
    if text == "random":
        return None
    if not _UUID_FORM.fullmatch(text):
        raise click.BadParameter(f"invalid UUID {text!r}", param_hint="-U")
    return uuidlib.UUID(text).bytes


def _in_order(ctx: click.Context, param: click.Parameter, value):
    """Record options whose effects override each other, so the last one given wins (getopt)."""
    if value is not None and value is not False:
        ctx.meta.setdefault("mkerofs.ordered", []).append((param.name, value))
    return value


def apply_extended_options(options: BuildOptions, texts: tuple[str, ...]) -> None:
    """-E: comma-separated, repeatable; '^opt' or 'noopt' turns a feature off."""
    for text in texts:
        for token in text.split(","):
            if not token:
                continue
            key, _, value = token.partition("=")
            clear = key.startswith("^")
            key = key.lstrip("^")
            if key in ("inline_data", "noinline_data") and not value:
                options.inline_data = not (clear or key == "noinline_data")
            elif key == "force-inode-compact" and not value:
                options.force_inode = "compact"
            elif key == "force-inode-extended" and not value:
                options.force_inode = "extended"
            elif key == "nosbcrc" and not value:
                options.sb_checksum = False
            elif key == "xattr-name-filter" and not value:
                options.xattr_name_filter = not clear
            elif key == "plain-xattr-prefixes" and not value:
                options.plain_xattr_prefixes = True
            elif key == "legacy-compress" and not value:
                options.legacy_compress = not clear
            elif key == "ztailpacking" and not value:
                options.ztailpacking = not clear
            elif key in _ZFEATURES:
                _set_zfeature(options, key, not clear, value if "=" in token else None, token)
            elif key == "force-inode-blockmap" and not value:
                options.chunk_format = "blockmap"
            elif key == "force-chunk-indexes" and not value:
                options.chunk_format = "indexes"
            else:
                raise click.BadParameter(f"unknown extended option {token!r}", param_hint="-E")


# the compression features, in the bit order of --zfeature-bits
_ZFEATURES = ("legacy-compress", "ztailpacking", "fragments", "all-fragments", "dedupe",
              "fragdedupe", "48bit", "dot-omitted")


def _set_zfeature(options: BuildOptions, key: str, on: bool, value: str | None,
                  token: str) -> None:
    """One compression feature of -E or --zfeature-bits, as mkfs.erofs reads it."""
    def bad() -> click.BadParameter:
        return click.BadParameter(f"invalid extended option {token!r}", param_hint="-E")

    if value is not None and key not in ("fragments", "all-fragments", "fragdedupe"):
        raise bad()
    if key == "legacy-compress":
        options.legacy_compress = on
    elif key == "ztailpacking":
        options.ztailpacking = on
    elif key in ("fragments", "all-fragments"):
        if key == "all-fragments":
            options.all_fragments = on
        if not on:
            if value is not None:
                raise bad()
            options.fragments = False
            return
        options.fragments = True
        if value is not None:
            try:
                options.packed_pcluster_size = parse_c_int(
                    value, "pcluster size for the packed file", minimum=0, suffixes=True)
            except ValueError:
                raise click.BadParameter(f"invalid pcluster size {value!r} for the packed file",
                                         param_hint="-E") from None
    elif key == "dedupe":
        options.dedupe = on
    elif key == "fragdedupe":
        if not on:
            if value is not None:
                raise bad()
            options.fragdedupe = "off"
        else:
            options.fragdedupe = "inode" if value == "inode" else "full"
    elif key == "48bit":
        options.format_48bit = on
    elif on:                                # dot-omitted
        raise click.UsageError(f"extended option -E{token}: not implemented in mkerofs yet "
                               "(needs the 48-bit on-disk format)")


def apply_zfeature_bits(options: BuildOptions, bits: int) -> None:
    """--zfeature-bits=#: bit i turns the i-th feature of _ZFEATURES on or off, up to the
    highest bit set."""
    i = 0
    while bits:
        if i >= len(_ZFEATURES):
            raise click.BadParameter(f"unsupported zfeature bit {i}", param_hint="--zfeature-bits")
        _set_zfeature(options, _ZFEATURES[i], bool(bits & 1), None, _ZFEATURES[i])
        bits >>= 1
        i += 1


def _not_implemented_options(func):
    for dest, flag in _NOT_IMPLEMENTED.items():
        decls = [flag, dest]
        func = click.option(*decls, default=None, hidden=True)(func)
    return func


def tar_options(tar: tuple[str, ...], aufs: bool, ovlfs_strip: str | None, gzip: bool,
                ungzip: str | None, unxz: str | None, unlzma: str | None,
                sort: str | None) -> TarOptions | None:
    """--tar[=X] and its companions, read as mkfs.erofs reads them: X is f (also no value, an
    empty or unknown one), headerball, or i / 0 (index), with ',MAPFILE' after it; a mode once
    set stays (--tar=i --tar=f builds an index).  --ovlfs-strip is on bare or =1 only."""
    companions = {"--aufs": aufs, "--ovlfs-strip": ovlfs_strip, "--gzip": gzip,
                  "--ungzip": ungzip, "--unxz": unxz, "--unlzma": unlzma, "--sort": sort}
    if not tar:
        for flag, value in companions.items():
            if value not in (None, False):
                raise click.UsageError(f"option {flag}: only with --tar")
        return None
    options = TarOptions(aufs=aufs, sort="none" if sort == "none" else "path")
    for value in tar:
        value = "" if value == _NO_VALUE else value
        mode, comma, mapfile = value.partition(",")
        if comma:
            options.mapfile = mapfile
        if mode == "headerball":
            options.mode = "headerball"
        elif mode in ("i", "0") and options.mode != "headerball":
            options.mode = "i"
    options.ovlfs_strip = ovlfs_strip in (_NO_VALUE, "1")
    if gzip:
        options.decompress = "gzip"
    for hint, value in (("gzip", ungzip), ("xz", unxz), ("lzma", unlzma)):
        if value is not None:
            options.decompress = hint
            options.dump = None if value == _NO_VALUE else value
    return options


def incremental_options(incremental: str | None, tar: bool, sources: tuple[str, ...],
                        ovlfs_strip: str | None) -> IncrementalOptions | None:
    """--incremental[=data|rvsp] (bare, data or 0: data): IMAGE DIR, or --tar=f IMAGE [TAR];
    with a directory, --ovlfs-strip goes with it."""
    if incremental is None:
        return None
    if incremental in (_NO_VALUE, "data", "0"):
        mode = "data"
    elif incremental == "rvsp":
        mode = "rvsp"
    else:
        raise click.BadParameter(f"invalid --incremental={incremental}: data or rvsp expected",
                                 param_hint="--incremental")
    if len(sources) > 1:
        raise click.UsageError("--incremental takes one SOURCE: a directory, or a tar with "
                               "--tar=f")
    if not tar and sources and not os.path.isdir(sources[0]):
        raise click.UsageError(f"--incremental: {sources[0]} is not a directory (a tar needs "
                               "--tar=f)")
    return IncrementalOptions(mode=mode, ovlfs_strip=not tar and ovlfs_strip in (_NO_VALUE, "1"))


def rebuild_options(sources: tuple[str, ...], tar: bool, clean: str | None,
                    ovlfs_strip: str | None, devices: tuple[str, ...] = ()
                    ) -> RebuildOptions | None:
    """Rebuild mode, as mkfs.erofs decides it: without --tar, a SOURCE that exists and is not
    a directory, or several SOURCEs.  --clean: data (also bare), rvsp; 0 (mkfs.erofs's
    zero-fill, which rebuild mode has not) and anything else are refused."""
    rebuild = not tar and (len(sources) > 1 or (
        len(sources) == 1 and os.path.exists(sources[0]) and not os.path.isdir(sources[0])))
    if not rebuild:
        for name, value in (("--clean", clean), ("--device", devices or None)):
            if value is not None:
                raise click.UsageError(f"option {name}: only with EROFS images as SOURCE "
                                       "(rebuild mode)")
        return None
    if clean in (None, _NO_VALUE, "data"):
        mode = None if clean is None else "data"
    elif clean == "rvsp":
        mode = "rvsp"
    else:
        why = "rebuild mode has no zero-fill mode" if clean == "0" else "data or rvsp expected"
        raise click.BadParameter(f"invalid --clean={clean}: {why}", param_hint="--clean")
    return RebuildOptions(clean=mode, ovlfs_strip=ovlfs_strip in (_NO_VALUE, "1"),
                          devices=tuple(devices))


class _MkfsStyleCommand(click.Command):
    """Help in mkfs.erofs's spelling: short options with their value attached (-b#, -EX[,...]),
    which scripts grep for to probe features."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                # -b#, -EX[,...]; an optional value attached: --tar=X, --ungzip[=FILE]
                spelled = re.sub(r"^(-[A-Za-z]) (?=[#X])", r"\1", record[0])
                rows.append((re.sub(r"^(--[\w-]+) (?=\[?=)", r"\1", spelled), record[1]))
        with formatter.section("Options"):
            formatter.write_dl(rows)


@click.command(cls=_MkfsStyleCommand, context_settings={"help_option_names": ["-h", "--help"],
                                 "ignore_unknown_options": False,
                                 "max_content_width": 100})
@click.argument("image", type=click.Path(dir_okay=False, allow_dash=False))
@click.argument("sources", metavar="[SOURCE]...", type=click.Path(), nargs=-1)
@click.option("-b", "block_size", metavar="#", type=CInt("block size", suffixes=True),
              help="block size in bytes (512..4096; default 4096)")
@debug_options(expose_level=True)
@click.option("-x", "xattr_tolerance", metavar="#", type=CInt("xattr tolerance", minimum=None),
              help="xattr tolerance (< 0: no xattrs)")
@click.option("-z", "compressor", metavar="X[,level=Y][:...]",
              help="compress files with X (lz4, lz4hc, lzma, deflate, libdeflate, zstd), "
                   "options after commas; more algorithms after colons")
@click.option("-C", "pcluster_size", metavar="#", type=CInt("physical clustersize"),
              help="largest physical cluster in bytes (default: the block size)")
@click.option("-E", "extended", multiple=True, metavar="X[,...]",
              help="extended options: [^]inline_data, noinline_data, force-inode-compact, "
                   "force-inode-extended, nosbcrc, [^]xattr-name-filter, plain-xattr-prefixes, "
                   "[^]legacy-compress, [^]ztailpacking, [^]fragments[=SIZE], "
                   "[^]all-fragments[=SIZE], [^]dedupe (without -z: of chunks of a block), "
                   "[^]fragdedupe[=inode|full], force-chunk-indexes, force-inode-blockmap, "
                   "[^]48bit (chunks past 2^32 blocks; uncompressed only)")
@click.option("-L", "label", metavar="LABEL", help="volume label (at most 15 bytes)")
@click.option("-T", "timestamp", metavar="#", type=CInt("UNIX timestamp"),
              help="fixed UNIX timestamp as build time")
@click.option("--all-time", is_flag=True, callback=_in_order, expose_value=False, help="apply the -T timestamp to all files (default)")
@click.option("--mkfs-time", is_flag=True, callback=_in_order, expose_value=False, help="apply the -T timestamp as build time only")
@click.option("-U", "uuid", metavar="UUID", help="filesystem UUID, 'clear' or 'random'")
@click.option("--all-root", is_flag=True, callback=_in_order, expose_value=False, help="make all files owned by root")
@click.option("--force-uid", metavar="#", type=UID, callback=_in_order, expose_value=False, help="set all file uids to #")
@click.option("--force-gid", metavar="#", type=GID, callback=_in_order, expose_value=False, help="set all file gids to #")
@click.option("--uid-offset", metavar="#", type=UID_OFFSET, help="add # to all file uids")
@click.option("--gid-offset", metavar="#", type=GID_OFFSET, help="add # to all file gids")
@click.option("--exclude-path", multiple=True, metavar="PATH",
              help="skip this exact path (relative to SOURCE); repeatable")
@click.option("--exclude-regex", multiple=True, metavar="RE",
              help="skip paths matching this regular expression; repeatable")
@click.option("--ignore-mtime", is_flag=True, default=None, callback=_in_order, expose_value=False,
              help="use the build time instead of per-file mtimes (compact inodes)")
@click.option("--preserve-mtime", is_flag=True, default=None, callback=_in_order, expose_value=False,
              help="keep per-file modification times strictly (default)")
@click.option("--hard-dereference", is_flag=True, help="store hard links as separate inodes")
@click.option("--offset", metavar="#", type=OFFSET, help="skip # bytes at the beginning of IMAGE")
@click.option("--mount-point", metavar="PATH", help="prefix of target paths (default: /)")
@click.option("--xattr-prefix", "xattr_prefix", multiple=True, metavar="X",
              help="extra xattr name prefix stored once in a table; repeatable")
@click.option("--root-xattr-isize", "root_xattr_isize", metavar="#",
              type=CInt("root xattr isize"),
              help="make the root's inline xattr area at least # bytes")
@click.option("--file-contexts", "file_contexts", metavar="FILE",
              help="SELinux file_contexts to label files with")
@click.option("--compress-hints", "compress_hints", metavar="FILE",
              help="per-file pcluster size and algorithm: lines of 'SIZE [ALG#] REGEX'")
@click.option("--dsunit", "dsunit", metavar="#", type=CInt("dsunit", maximum=MAX_DSUNIT),
              help="align all data block addresses to multiples of # (blocks)")
@click.option("--fsalignblks", "fsalignblks", metavar="#",
              type=CInt("fsalignblks", maximum=MAX_FSALIGNBLKS),
              help="make the image's size in blocks a multiple of # (rounded up to a power "
                   "of two)")
@click.option("--max-extent-bytes", "max_extent_bytes", metavar="#",
              type=CInt("maximum compressed extent size", minimum=-2**31, maximum=2**31 - 1),
              help="largest decompressed extent in bytes")
@click.option("--zfeature-bits", "zfeature_bits", metavar="#", type=CInt("zfeature bits"),
              help="set (1) or clear (0) compression features by bit: legacy-compress, "
                   "ztailpacking, fragments, all-fragments, dedupe, fragdedupe")
@click.option("--workers", metavar="#", type=CInt("number of workers", minimum=1),
              help="worker processes for compression and copying (default: the CPUs)")
@click.option("--quiet", is_flag=True, help="print nothing on success (no progress bar either)")
@click.option("--report", "report_file", metavar="=FILE",
              help="write what the build did as JSON to FILE ('-': stdout, the summary then "
                   "goes to stderr)")
@click.option("--verify", is_flag=True,
              help="read the image back and compare it with SOURCE, or with what the tar "
                   "gave (no mount needed)")
@click.option("--tar", "tar", multiple=True, metavar="=X",
              help="SOURCE is a tar stream (stdin without SOURCE; gzip, xz, lzma, zstd or "
                   "bzip2 compressed read as well): X = f (full, default), headerball (headers "
                   "only, files read as zeros), i (tar index: metadata only, 512-byte blocks, "
                   "the files' data stays in the tar; append the (decompressed) tar to IMAGE "
                   "and mount IMAGE, or mount with -o device= the tar), i,MAPFILE (the image "
                   "reserves a hole for the data; MAPFILE says which tar ranges go where)")
@click.option("--aufs", is_flag=True, help="with --tar: .wh.NAME is an overlayfs whiteout, "
                                            ".wh..wh..opq makes its directory opaque")
@click.option("--ovlfs-strip", "ovlfs_strip", metavar="[=0|1]",
              help="with --tar or EROFS sources: drop whiteouts and overlayfs xattrs (bare "
                   "or =1)")
@click.option("--gzip", is_flag=True, help="with --tar: the stream is gzip-compressed "
                                            "(recognised without it as well)")
@click.option("--ungzip", metavar="[=FILE]",
              help="as --gzip; FILE: write the decompressed tar there too (with --tar=i: "
                   "the tar the image points into)")
@click.option("--unxz", metavar="[=FILE]",
              help="with --tar: the stream is xz-compressed; FILE: write the decompressed tar")
@click.option("--unlzma", metavar="[=FILE]",
              help="with --tar: the stream is lzma-compressed; FILE: write the decompressed tar")
@click.option("--sort", metavar="=X",
              help="with --tar: 'none' puts file data in tar order (else path order)")
@click.option("--chunksize", "chunk_size", metavar="#", type=CInt("chunk size"),
              help="store uncompressed files in chunks of # bytes (a power of two, at least "
                   "the block size): identical chunks stored once, zeros as holes")
@click.option("--blobdev", metavar="X",
              help="with --chunksize: write the chunks to the file or device X (an extra "
                   "device: mount with -o device=X, or append X to the image)")
@click.option("--clean", "clean", metavar="[=X]",
              help="with EROFS sources: data (also bare) copies the files' data into IMAGE, "
                   "rvsp gives them room but no data; without it IMAGE points into the "
                   "sources")
@click.option("--incremental", "incremental", metavar="[=X]",
              help="IMAGE is an existing EROFS image: put SOURCE (a directory, or a tar with "
                   "--tar=f) on top of it as an overlayfs upper layer, appending to it; X = "
                   "data (default) stores the new files, rvsp gives them room but no data. "
                   "IMAGE is replaced only once the build succeeded")
@click.option("--device", "devices", metavar="=FILE", multiple=True,
              help="with EROFS sources: the extra device (a tar index's tar, a blob) of each "
                   "source that has one not appended to it, in order; needed to copy its data "
                   "(--clean=data) or --verify")
@click.option("--vmdk-desc", "vmdk_desc", metavar="=FILE",
              help="write a VMDK descriptor joining IMAGE and its extra devices to FILE")
@click.option("--random-pclusterblks", is_flag=True, hidden=True)
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, param, value: _print_version(ctx, value),
              help="Show the version and what serves each algorithm, and exit.")
@_not_implemented_options
def command(image, sources, block_size, debug, compressor, pcluster_size,
            xattr_tolerance, extended, label, timestamp, uuid,
            uid_offset, gid_offset, exclude_path, exclude_regex, hard_dereference, offset,
            mount_point, xattr_prefix, root_xattr_isize, file_contexts, compress_hints,
            dsunit, fsalignblks, max_extent_bytes, zfeature_bits, workers, quiet, report_file,
            verify, tar, aufs, ovlfs_strip, gzip, ungzip, unxz, unlzma, sort, chunk_size,
            blobdev, clean, devices, vmdk_desc, random_pclusterblks, incremental,
            **unimplemented):
    """Generate an EROFS image (IMAGE: a file or block device) from the directory SOURCE, or
    with --tar from a tar stream (SOURCE, or stdin; with --tar=f several SOURCE tars are
    stacked as overlayfs layers, the last on top), or from EROFS images (SOURCE... : stacked
    the same way)."""
    for dest, value in unimplemented.items():
        if value is not None:
            raise click.UsageError(f"option {_NOT_IMPLEMENTED[dest]}: not implemented in mkerofs yet")
    if random_pclusterblks:
        raise click.UsageError("option --random-pclusterblks: not implemented in mkerofs yet")
    increment = incremental_options(incremental, bool(tar), sources, ovlfs_strip)
    rebuild = None if increment is not None else \
        rebuild_options(sources, bool(tar), clean, ovlfs_strip, devices)
    tar_opts = tar_options(tar, aufs, None if rebuild or (increment and not tar) else ovlfs_strip,
                           gzip, ungzip, unxz, unlzma, sort)
    if not sources and tar_opts is None:
        raise click.UsageError("Missing argument 'SOURCE'.")
    if len(sources) > 1 and rebuild is None and (tar_opts is None or tar_opts.mode != "f"):
        raise click.UsageError("several SOURCEs: only EROFS images (rebuild mode) or tar "
                               "layers (--tar=f)")
    options = BuildOptions(quiet=quiet, verify=verify, xattr_prefixes=list(xattr_prefix),
                           exclude_paths=list(exclude_path),
                           exclude_regexes=list(exclude_regex),
                           hard_dereference=hard_dereference, tar=tar_opts, rebuild=rebuild,
                           vmdk_desc=vmdk_desc, incremental=increment)
    given = {"block_size": block_size, "debug": debug, "pcluster_size": pcluster_size,
             "xattr_tolerance": xattr_tolerance, "root_xattr_isize": root_xattr_isize,
             "file_contexts": file_contexts, "timestamp": timestamp, "uid_offset": uid_offset,
             "gid_offset": gid_offset, "offset": offset, "mount_point": mount_point,
             "workers": workers, "compress_hints": compress_hints,
             "max_extent_bytes": max_extent_bytes, "dsunit": dsunit,
             "fsalignblks": fsalignblks, "chunk_size": chunk_size, "blobdev": blobdev}
    for name, value in given.items():
        if value is not None:
            setattr(options, name, value)
    if compressor is not None:
        # (the codecs are loaded only when asked for: a plain build needs none)
        from ..codecs.spec import parse_compressor_spec
        try:
            parse_compressor_spec(compressor)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="-z") from None
        options.compressor = compressor
    if label is not None:
        options.label = os.fsencode(label)
        if len(options.label) > 15:
            raise click.BadParameter(f"volume label {label!r} is longer than 15 bytes",
                                     param_hint="-L")
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            options.source_date_epoch = int(sde, 10)
            if options.source_date_epoch < 0:
                raise ValueError
        except ValueError:
            raise click.UsageError(f"environment variable SOURCE_DATE_EPOCH={sde!r} is invalid") from None
    if uuid is not None:
        options.uuid = parse_uuid(uuid)
    for name, value in click.get_current_context().meta.get("mkerofs.ordered", []):
        if name == "all_time":
            options.time_inherit = TimeInherit.FIXED
        elif name == "mkfs_time":
            options.time_inherit = TimeInherit.SOURCE
        elif name == "ignore_mtime":
            options.ignore_mtime = True
        elif name == "preserve_mtime":
            options.ignore_mtime = False
        elif name == "all_root":
            options.force_uid = options.force_gid = 0
        elif name in ("force_uid", "force_gid"):
            setattr(options, name, value)
    # mkfs.erofs applies options in command-line order; here --zfeature-bits comes before -E
    if zfeature_bits is not None:
        apply_zfeature_bits(options, zfeature_bits)
    apply_extended_options(options, extended)

    started = time.monotonic()
    if rebuild is not None or len(sources) > 1:
        source = list(sources)
    elif sources:
        source = sources[0]
    else:
        source = click.get_binary_stream("stdin")
    # (the pipeline is loaded once the options are known: --help, -V and a usage error,
    # ~20 ms and ~1.5 MiB sooner done without it)
    from ..writer.build import build
    watching = BuildProgress() if progress.wanted(quiet) else None
    # an unwritable --report FILE is found before the build, not after it
    with _report_sink(report_file) as report_out:
        with progress.build_bars(watching, source, tar_opts is not None):
            if _UNFREED is not None:
                # (off until the kept tree is frozen: build would turn the collector back on,
                # and its next collection would scan every object of the tree once, 65 ms
                # for 60k files)
                gc.disable()
            # (the per-type counts are for --report only: the summary prints the total)
            result = build(image, source, options, progress=watching, keep=_UNFREED,
                           tally=report_file is not None)
        if _UNFREED is not None:
            _UNFREED.append(_UNFREED)
            gc.freeze()
            gc.enable()
        if report_out is not None:
            write_report(result.report, report_out)
    if not quiet:
        # with the JSON on stdout, the person reads the summary on stderr
        to_stderr = report_file == "-"
        click.echo(f"Build completed: {image}: {result.inodes} inodes, {result.blocks} blocks of "
                   f"{result.block_size} bytes ({result.size} bytes) in "
                   f"{time.monotonic() - started:.2f}s; UUID {uuidlib.UUID(bytes=result.uuid)}",
                   err=to_stderr)
        for line in result.report.summary_lines():
            click.echo(line, err=to_stderr)


@contextlib.contextmanager
def _report_sink(path: str | None):
    """--report=FILE opened for writing ('-': stdout); a FILE this run created is removed
    again when the build fails."""
    if path is None or path == "-":
        yield path
        return
    existed = os.path.lexists(path)
    try:
        f = open(path, "a", encoding="utf-8")
    except OSError as err:
        raise BuildError(f"{path}: {err.strerror or err}") from None
    try:
        with f:
            yield f
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise


def write_report(report, out) -> None:
    """--report=FILE: the build report as JSON to `out` ('-': stdout)."""
    import json                                 # (loaded only for --report)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if out == "-":
        click.echo(text, nl=False)
        return
    out.truncate(0)
    out.write(text)


def _getopt_style(argv: list[str]) -> list[str]:
    """Give long options their getopt_long meaning: a unique prefix names the option, and an
    optional value is taken only after '='."""
    names = {o for p in command.params for o in p.opts + p.secondary_opts if o.startswith("--")}
    fixed = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return fixed + argv[i:]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in names:
                candidates = [n for n in names if n.startswith(name)]
                if len(candidates) == 1:
                    name = candidates[0]
                    arg = name + eq + value
            if name in _OPTIONAL_VALUE and not eq:
                arg = f"{name}={_NO_VALUE}"
        fixed.append(arg)
    return fixed


def _print_version(ctx: click.Context, value: bool) -> None:
    """-V: the version, then each -z algorithm with the library (and version) that serves it."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"mkerofs {__version__} (mkfs.erofs-compatible)")
    from ..codecs import registry
    for name, served in registry.report().items():
        click.echo(f"  {name}: {served}")
    ctx.exit()


def main(argv: list[str] | None = None) -> int:
    """The `mkerofs` command: exit status 0 built, 1 the build failed, 2 a usage error."""
    global _UNFREED
    if argv is None:                # the process's own command line: it ends after the build
        _UNFREED = []
    return run(command, "mkerofs", _getopt_style(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
