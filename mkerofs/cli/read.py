"""The `mkerofs-read` command line: look inside an EROFS image without mounting it.

Subcommands: info, ls, stat, stats, cat, extract, tar, verify, compare (see
`mkerofs-read --help`); info, ls and stats also speak JSON (--json) for scripts.
Exit status: 0 success; 1 a problem found (verify, compare) or an error while reading; 2 an
unreadable image or a usage error.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import time
import uuid as uuidlib

import click

from .. import __version__
from ..ondisk import format as fmt
from ..reader.extract import (ExtractStats, device_numbers, extract as extract_tree, follow,
                              iter_tree, resolve, show, type_name, write_tar, LEAVE)
from ..errors import CompressorUnavailable
from ..reader.image import Image, ImageError
from ..reader.stats import bucket_bounds, image_stats, type_key
from . import progress as bars
from .common import (CInt, EXIT_FAILURE, EXIT_USAGE, Failure, GID, GID_OFFSET, OFFSET, UID,
                     UID_OFFSET, debug_options, run)

PROG = "mkerofs-read"

EXIT_PROBLEMS = EXIT_FAILURE        # a problem found (verify, compare), an error while reading
EXIT_UNREADABLE = EXIT_USAGE        # not an image at all: as bad as a wrong argument


def _named(image: str, err: Exception) -> str:
    msg = str(err)
    return msg if image in msg else f"{image}: {msg}"


@contextlib.contextmanager
def open_image(image: str, offset: int = 0):
    """Image.open with failures turned into a message naming the image (exit status 2); the
    extra devices are those of the command's --device options."""
    devices = click.get_current_context().meta.get(_DEVICES) or None
    try:
        img = Image.open(image, offset=offset, devices=devices)
    except ImageError as err:
        raise Failure(_named(image, err), EXIT_UNREADABLE) from err
    except OSError as err:
        raise Failure(f"{image}: {err.strerror or err}", EXIT_UNREADABLE) from err
    try:
        yield img
    except ImageError as err:
        raise Failure(_named(image, err), EXIT_PROBLEMS) from err
    finally:
        img.close()


def _out():
    return sys.stdout.buffer


_DEVICES = "mkerofs.devices"


def _keep_devices(ctx, _param, value):
    ctx.meta[_DEVICES] = value
    return value


def _common(func):
    """Options every subcommand takes: --offset, --device (kept in the context for open_image,
    so no command passes it on) and -d#/--debug (tracebacks on errors)."""
    func = click.option("--offset", metavar="#", type=OFFSET, default=0,
                        help="the filesystem starts # bytes into IMAGE")(func)
    func = click.option("--device", metavar="FILE", multiple=True, expose_value=False,
                        callback=_keep_devices, type=click.Path(dir_okay=False),
                        help="an extra device of IMAGE's device table, one per slot, in order "
                             "(default: read them from IMAGE, where they may be appended)")(func)
    return debug_options(hidden=True)(func)


# ---------------------------------------------------------------------------
# formatting

def fmt_time(sec: int, nsec: int = 0, full: bool = False) -> str:
    try:
        t = time.gmtime(sec)
        text = time.strftime("%Y-%m-%d %H:%M:%S" if full else "%Y-%m-%d %H:%M", t)
    except (OverflowError, OSError, ValueError):
        return f"@{sec}"
    return f"{text}.{nsec:09d}" if full else text


def escape(name: bytes) -> bytes:
    """C-style escapes for bytes that are not printable ASCII or valid UTF-8 text."""
    out = []
    for ch in name.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{o:02x}"))
        else:
            out.append(ch)
    return "".join(out).encode()


_MODES: dict[int, str] = {}
_TIMES: dict[tuple[int, int, bool], str] = {}


def _long_line(img: Image, inode, label: bytes, full_time: bool, esc) -> bytes:
    mode = inode.mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        major, minor = device_numbers(inode)
        size = f"{major:>4}, {minor:>4}"
    else:
        size = f"{inode.size:>10}"
    mode_s = _MODES.get(mode)
    if mode_s is None:
        mode_s = _MODES[mode] = stat.filemode(mode)
    key = (inode.mtime, inode.mtime_nsec if full_time else 0, full_time)
    when = _TIMES.get(key)
    if when is None:
        if len(_TIMES) > 65536:
            _TIMES.clear()
        when = _TIMES[key] = fmt_time(inode.mtime, inode.mtime_nsec, full_time)
    head = f"{mode_s} {inode.nlink:>3} {inode.uid:>5} {inode.gid:>5} {size} {when} ".encode()
    line = head + esc(label)
    if stat.S_ISLNK(mode):
        line += b" -> " + esc(img.readlink(inode))
    return line + b"\n"


# ---------------------------------------------------------------------------
# the commands

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@debug_options()
@click.version_option(__version__, "-V", "--version", prog_name=PROG)
def cli():
    """Inspect, list, extract, verify and compare EROFS images without mounting them."""


@cli.command(short_help="Show the superblock and feature summary.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
@_common
def info(image, offset, as_json):
    """Show the superblock: size, inodes, build time, UUID, label, features, checksum."""
    if as_json:
        return info_json(image, offset)
    with open_image(image, offset) as img:
        sb = img.superblock
        bs = img.block_size
        ok = img.checksum_ok
        verdict = {True: "ok", False: "BAD (does not match the superblock)",
                   None: "none (the image has no superblock checksum)"}[ok]
        label = sb.volume_name.rstrip(b"\0")
        rows = [
            ("image", image + (f" (at offset {offset})" if offset else "")),
            ("block size", f"{bs}"),
            ("blocks", f"{sb.blocks} ({sb.blocks * bs} bytes)"),
            ("inodes", f"{sb.inos}"),
            ("build time", f"{fmt_time(sb.epoch, sb.fixed_nsec, True)} UTC ({sb.epoch})"),
            ("uuid", str(uuidlib.UUID(bytes=bytes(sb.uuid)))),
            ("label", show(escape(label)) if label else "(none)"),
            ("root nid", f"{sb.root_nid}"),
            ("metadata block", f"{sb.meta_blkaddr}"),
            ("xattr block", f"{sb.xattr_blkaddr}"),
            ("features", " ".join(img.features()) or "(none)"),
            ("algorithms", ", ".join(img.algorithms()) or "(none: uncompressed)"),
            ("checksum", verdict),
        ]
        rows += [(f"device {n}", f"tag {show(escape(slot.tag)) or '(none)'}, {slot.blocks} "
                                 f"blocks, uniaddr {slot.uniaddr}")
                 for n, slot in enumerate(img.device_table, 1)]
        width = max(len(k) for k, _ in rows) + 1
        for key, value in rows:
            click.echo(f"{key + ':':<{width}} {value}")


@cli.command(name="ls", short_help="List a directory, or the whole tree with -R.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("path", required=False)
@click.option("-R", "recursive", is_flag=True, help="list the whole tree below PATH, one path a line")
@click.option("-l", "long", is_flag=True, help="long format: mode, links, uid, gid, size, mtime")
@click.option("--full-time", is_flag=True, help="with -l: seconds and nanoseconds")
@click.option("-b", "--escape", "escaped", is_flag=True,
              help="print C-style escapes for control characters and non-UTF-8 bytes")
@click.option("--json", "as_json", is_flag=True,
              help="a JSON array of entries with every -l field, for scripts")
@_common
def ls(image, path, recursive, long, full_time, escaped, offset, as_json):
    """List the directory PATH (default: the root), or with -R every path below it."""
    if as_json:
        return ls_json(image, path, recursive, offset)
    esc = escape if escaped else (lambda b: b)
    out = _out()
    with open_image(image, offset) as img:
        top_path, top = resolve(img, path)
        buf = []

        def emit(inode, label):
            if long:
                buf.append(_long_line(img, inode, label, full_time, esc))
            else:
                buf.append(esc(label) + b"\n")
            if len(buf) >= 4096:
                out.write(b"".join(buf))
                buf.clear()

        if not stat.S_ISDIR(top.mode):
            emit(top, top_path)
        elif recursive:
            # names only: the entries' file types say where to descend, no other inode is read
            for event, p, inode in iter_tree(img, top, top_path, check=False, leaf_inodes=long):
                if event != LEAVE and p != top_path:
                    emit(inode, p)
        else:
            for name, nid, _ftype in img.listdir(top):
                emit(img.inode(nid), name)
        out.write(b"".join(buf))
        out.flush()


_LAYOUTS = {fmt.EROFS_INODE_FLAT_PLAIN: "flat plain",
            fmt.EROFS_INODE_COMPRESSED_FULL: "compressed (full indexes)",
            fmt.EROFS_INODE_FLAT_INLINE: "flat inline",
            fmt.EROFS_INODE_COMPRESSED_COMPACT: "compressed (compact indexes)",
            fmt.EROFS_INODE_CHUNK_BASED: "chunk-based"}


@cli.command(name="stat", short_help="Show one inode: attributes, xattrs, extents.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("path")
@_common
def stat_(image, path, offset):
    """Show one inode: nid, type, mode, owner, size, mtime, layout, xattrs and data extents."""
    with open_image(image, offset) as img:
        p, inode = resolve(img, path)
        mode = inode.mode
        rows = [
            ("path", show(p)),
            ("nid", f"{inode.nid}"),
            ("inode", f"{inode.ino} ({'extended' if inode.extended else 'compact'}, "
                      f"{_LAYOUTS.get(inode.datalayout, f'layout {inode.datalayout}')})"),
            ("type", type_name(mode)),
            ("mode", f"{stat.S_IMODE(mode):04o} ({stat.filemode(mode)})"),
            ("uid/gid", f"{inode.uid}/{inode.gid}"),
            ("links", f"{inode.nlink}"),
            ("size", f"{inode.size}"),
            ("mtime", f"{fmt_time(inode.mtime, inode.mtime_nsec, True)} UTC ({inode.mtime})"),
        ]
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            major, minor = device_numbers(inode)
            rows.append(("device", f"{major}, {minor}"))
        if stat.S_ISLNK(mode):
            rows.append(("target", show(escape(img.readlink(inode)))))
        width = max(len(k) for k, _ in rows) + 1
        for key, value in rows:
            click.echo(f"{key + ':':<{width}} {value}")
        xattrs = img.xattrs(inode)
        click.echo(f"xattrs: {len(xattrs)}" + (f" (inline area of {inode.xattr_icount} slots)"
                                               if inode.xattr_icount else ""))
        for name, value in xattrs:
            shown = show(escape(value[:64])) + ("..." if len(value) > 64 else "")
            click.echo(f"  {show(escape(name))} = \"{shown}\" ({len(value)} bytes)")
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            extents = img.extents(inode)
            click.echo(f"extents: {len(extents)}")
            if extents:
                click.echo(f"  {'logical':>12} {'length':>10} {'physical':>14} {'phys.len':>10}"
                           f"  algorithm  kind")
                for e in extents:
                    physical = "-" if e.physical is None else \
                        f"{e.device}:{e.physical}" if e.device else str(e.physical)
                    plen = "-" if e.physical_length is None else str(e.physical_length)
                    kind = e.kind + (" (partial)" if e.partial else "")
                    click.echo(f"  {e.logical:>12} {e.length:>10} {physical:>14} {plen:>10}"
                               f"  {e.algorithm or '-':<9}  {kind}")


@cli.command(short_help="Write files to stdout.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@_common
def cat(image, paths, offset):
    """Write the contents of files (symlinks followed inside the image) to stdout."""
    out = _out()
    with open_image(image, offset) as img:
        for path in paths:
            p, inode = resolve(img, path)
            p, inode = follow(img, p, inode)
            if not stat.S_ISREG(inode.mode):
                raise Failure(f"{image}: {show(p)}: is a {type_name(inode.mode)}, not a file")
            for chunk in img.iter_data(inode):
                out.write(chunk)
        out.flush()


def _warn(msg: str) -> None:
    click.echo(f"{PROG}: warning: {msg}", err=True)


@cli.command(short_help="Extract the image or a subtree into a folder.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--path", "subtree", metavar="PATH",
              help="extract only this directory's contents (or this one file) from the image")
@click.option("--no-owner", is_flag=True,
              help="do not restore owners (the default unless running as root)")
@click.option("--no-xattrs", is_flag=True, help="do not restore extended attributes")
@click.option("--force", is_flag=True, help="extract into a non-empty DEST, replacing entries")
@click.option("-q", "--quiet", is_flag=True, help="print nothing but problems")
@_common
def extract(image, dest, subtree, no_owner, no_xattrs, force, quiet, offset):
    """Extract the image into the folder DEST (created if missing; must be empty unless
    --force), keeping modes, mtimes (ns), owners (as root), xattrs, devices, fifos, sockets,
    symlinks and hard links. Entries never land outside DEST, whatever the image says."""
    started = time.monotonic()
    stats = ExtractStats()
    with open_image(image, offset) as img, \
            bars.counting_bar(bars.wanted(quiet), "extracting", img.superblock.inos, " entries",
                              lambda: stats.entries):
        extract_tree(img, dest, path=subtree, owner=False if no_owner else None,
                     xattrs=not no_xattrs, force=force, warn=_warn, stats=stats)
    if stats.skipped_xattrs:
        _warn(f"{stats.skipped_xattrs} trusted./security. xattrs not restored (needs root)")
    if not quiet:
        click.echo(f"{image}: extracted {stats.entries} entries ({stats.files} files, "
                   f"{stats.dirs} directories, {stats.links} hard links, {stats.bytes} bytes) "
                   f"to {dest} in {time.monotonic() - started:.2f}s"
                   + (f"; {len(stats.problems)} problem(s)" if stats.problems else ""))
    return EXIT_PROBLEMS if stats.problems else 0


@cli.command(short_help="Write the image as a PAX tar archive.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="FILE", default="-",
              help="write the archive to FILE (default: stdout, '-')")
@click.option("--path", "subtree", metavar="PATH", help="archive only this subtree")
@click.option("--no-xattrs", is_flag=True, help="leave out extended attributes (and so ACLs)")
@_common
def tar(image, output, subtree, no_xattrs, offset):
    """Write the image as a POSIX (PAX) tar archive: numeric owners, mtimes with nanoseconds,
    xattrs (SCHILY.xattr), POSIX ACLs also as text (SCHILY.acl, for GNU tar --acls), hard links,
    devices, fifos. Sockets are left out (tar has none)."""
    with open_image(image, offset) as img:
        if output == "-":
            if sys.stdout.isatty():
                raise Failure("refusing to write a tar archive to a terminal (use -o FILE or a "
                              "pipe)", EXIT_UNREADABLE)
            write_tar(img, _out(), path=subtree, xattrs=not no_xattrs, warn=_warn)
            _out().flush()
            return 0
        f = open(output, "wb")
        try:
            with f:
                write_tar(img, f, path=subtree, xattrs=not no_xattrs, warn=_warn)
        except BaseException:
            # no half-written archive left behind (unless it is not a regular file)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.stat(output).st_mode):
                    os.unlink(output)
            raise
    return 0


@cli.command(short_help="Check the whole image (exit 0 clean, 1 problems, 2 unreadable).")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--progress/--no-progress", default=None,
              help="show a progress bar on stderr (default: when stderr is a terminal and "
                   "without -q)")
@click.option("-q", "--quiet", is_flag=True, help="print only problems")
@_common
def verify(image, progress, quiet, offset):
    """Check the whole image: superblock checksum, every inode reachable and sane, every
    extent decompressing to its length. Exit status 0 clean, 1 problems, 2 unreadable."""
    if progress is None:
        progress = bars.wanted(quiet)
    with open_image(image, offset) as img:
        with bars.callback_bar(progress, "verifying", img.superblock.inos, " inodes") as moved:
            report = img.verify_report(progress=moved)
        if report.problems:
            for p in report.problems:
                click.echo(f"{image}: {p}")
            click.echo(f"{image}: {len(report.problems)} problem(s) found", err=True)
            return EXIT_PROBLEMS
        if not quiet:
            click.echo(f"{image}: clean ({report.inodes} inodes, {report.data_bytes} bytes of "
                       "data)")
    return 0


@cli.command(short_help="Compare the image with a source directory.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--path", "subtree", metavar="PATH",
              help="compare this subtree of the image with SOURCE")
@click.option("--ignore-owner", is_flag=True, help="do not compare uids and gids")
@click.option("--ignore-mtime", is_flag=True, help="do not compare modification times")
@click.option("--ignore-xattrs", is_flag=True, help="do not compare extended attributes")
@click.option("--all-root", is_flag=True, help="expect every file owned by 0:0")
@click.option("--force-uid", metavar="#", type=UID, help="expect every uid to be #")
@click.option("--force-gid", metavar="#", type=GID, help="expect every gid to be #")
@click.option("--uid-offset", metavar="#", type=UID_OFFSET, default=0,
              help="expect uids shifted by #")
@click.option("--gid-offset", metavar="#", type=GID_OFFSET, default=0,
              help="expect gids shifted by #")
@click.option("--hard-dereference", is_flag=True, help="expect hard links as separate inodes")
@click.option("--exclude-path", multiple=True, metavar="P",
              help="leave out this path of SOURCE (relative to it); repeatable")
@click.option("--exclude-regex", multiple=True, metavar="RE",
              help="leave out SOURCE paths matching RE (POSIX extended); repeatable")
@click.option("--max", "limit", type=CInt("number of differences"), default=0, metavar="N",
              help="stop after N differences (default: report all)")
@click.option("-q", "--quiet", is_flag=True, help="print nothing; only the exit status")
@_common
def compare(image, source, subtree, ignore_owner, ignore_mtime, ignore_xattrs, all_root,
            force_uid, force_gid, uid_offset, gid_offset, hard_dereference, exclude_path,
            exclude_regex, limit, quiet, offset):
    """Compare the image with the directory SOURCE: paths, types, data, modes, owners,
    mtimes (ns), symlink targets, devices, hard links and xattrs. Exit status 1 if they
    differ."""
    from ..reader.compare import compare_image
    exclude = None
    if exclude_path or exclude_regex:
        from ..writer.options import BuildOptions
        from ..writer.walk import Excluder
        try:
            exclude = Excluder(BuildOptions(exclude_paths=list(exclude_path),
                                            exclude_regexes=list(exclude_regex))).excluded
        except re.error as err:
            raise click.BadParameter(f"invalid regex: {err}", param_hint="--exclude-regex")
    uid = 0 if all_root else force_uid
    gid = 0 if all_root else force_gid
    with open_image(image, offset) as img:
        diffs = compare_image(img, source, path=subtree, check_owner=not ignore_owner,
                              check_mtime=not ignore_mtime, check_xattrs=not ignore_xattrs,
                              uid=uid, gid=gid, uid_offset=uid_offset, gid_offset=gid_offset,
                              hard_dereference=hard_dereference, exclude=exclude, limit=limit)
    if not quiet:
        for d in diffs:
            click.echo(d)
        if diffs:
            click.echo(f"{image} and {source} differ ({len(diffs)} difference(s))", err=True)
        else:
            click.echo(f"{image} and {source}: no differences")
    return EXIT_PROBLEMS if diffs else 0


# ---------------------------------------------------------------------------
# for scripts and statistics: JSON and text tables

_CHECKSUM_WORDS = {True: "ok", False: "bad", None: "none"}


def _text(name: bytes) -> str:
    """A name as JSON text: UTF-8, other bytes as backslash escapes (\\xNN)."""
    return name.decode("utf-8", "backslashreplace")


def _dump_json(value) -> None:
    click.echo(json.dumps(value, indent=2))


def info_json(image: str, offset: int) -> int:
    """info --json: the superblock as one object (the keys are documented in the README)."""
    with open_image(image, offset) as img:
        sb = img.superblock
        bs = img.block_size
        _dump_json({
            "image": image, "offset": offset, "block_size": bs, "blocks": sb.blocks,
            "image_bytes": sb.blocks * bs, "inodes": sb.inos, "build_time": sb.epoch,
            "build_time_nsec": sb.fixed_nsec, "uuid": str(uuidlib.UUID(bytes=bytes(sb.uuid))),
            "label": _text(sb.volume_name.rstrip(b"\0")), "root_nid": sb.root_nid,
            "meta_blkaddr": sb.meta_blkaddr, "xattr_blkaddr": sb.xattr_blkaddr,
            "features": img.features(), "algorithms": img.algorithms(),
            "checksum": _CHECKSUM_WORDS[img.checksum_ok],
        })
    return 0


def _entry_json(img: Image, inode, path: bytes) -> dict:
    mode = inode.mode
    entry = {"path": _text(path), "type": type_key(mode), "mode": stat.S_IMODE(mode),
             "nid": inode.nid, "ino": inode.ino, "nlink": inode.nlink, "uid": inode.uid,
             "gid": inode.gid, "size": inode.size, "mtime": inode.mtime,
             "mtime_nsec": inode.mtime_nsec}
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry["major"], entry["minor"] = device_numbers(inode)
    if stat.S_ISLNK(mode):
        entry["target"] = _text(img.readlink(inode))
    return entry


def ls_json(image: str, path: str | None, recursive: bool, offset: int) -> int:
    """ls --json: the entries ls -l shows, as a JSON array of objects ("path" is the name
    for one directory's entries, the full path with -R)."""
    with open_image(image, offset) as img:
        top_path, top = resolve(img, path)
        if not stat.S_ISDIR(top.mode):
            entries = [_entry_json(img, top, top_path)]
        elif recursive:
            entries = [_entry_json(img, inode, p) for event, p, inode
                       in iter_tree(img, top, top_path, check=False, leaf_inodes=True)
                       if event != LEAVE and p != top_path]
        else:
            entries = [_entry_json(img, img.inode(nid), name)
                       for name, nid, _ftype in img.listdir(top)]
    _dump_json(entries)
    return 0


def _size_label(size: int | None) -> str:
    if size is None:
        return ""
    for unit, shift in (("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _histogram_lines(sizes: list[int], width: int = 40) -> list[str]:
    total = sum(sizes) or 1
    peak = max(sizes) or 1
    lines = [f"{'size from':>9} {'to':>6} {'files':>9} {'share':>7}"]
    for (lo, hi), n in zip(bucket_bounds(), sizes):
        bar = "#" * round(width * n / peak)
        lines.append(f"{_size_label(lo):>9} {_size_label(hi):>6} {n:>9} {100 * n / total:>6.2f}% "
                     f"{bar}".rstrip())
    return lines


@cli.command(short_help="Statistics: inodes by type, file sizes, compression per algorithm.")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
@_common
def stats(image, offset, as_json):
    """Count the inodes by type, show a histogram of file sizes and, per compression
    algorithm, the files, their bytes, the bytes of data blocks they own and the ratio
    (files stored as they are: "none"; files entirely in the packed inode: "fragment")."""
    with open_image(image, offset) as img:
        found = image_stats(img)
    if as_json:
        _dump_json(found.to_dict())
        return 0
    click.echo("inodes:")
    for name, count in found.inodes.items():
        click.echo(f"  {name:<13} {count:>10}")
    click.echo("\nregular file sizes:")
    for line in _histogram_lines(found.sizes):
        click.echo("  " + line)
    click.echo("\ndata by algorithm:")
    click.echo(f"  {'algorithm':<10} {'files':>9} {'bytes in':>14} {'bytes out':>14} {'ratio':>7}")
    rows = sorted(found.data.items())
    total_in = sum(t.bytes_in for _k, t in rows)
    total_out = sum(t.bytes_out for _k, t in rows)
    for kind, t in rows + [("total", None)]:
        files = t.files if t else sum(x.files for _k, x in rows)
        b_in, b_out = (t.bytes_in, t.bytes_out) if t else (total_in, total_out)
        ratio = f"{100 * b_out / b_in:.2f}%" if b_in else "-"
        click.echo(f"  {kind:<10} {files:>9} {b_in:>14} {b_out:>14} {ratio:>7}")
    return 0


# ---------------------------------------------------------------------------
# entry point

def main(argv: list[str] | None = None) -> int:
    # a missing library is this machine's problem, not the image's: as bad as an unreadable image
    return run(cli, PROG, argv, status_of={CompressorUnavailable: EXIT_UNREADABLE})


if __name__ == "__main__":
    sys.exit(main())
