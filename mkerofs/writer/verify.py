"""--verify: read a finished image back (no mount) and compare it with its source as the build
options say it should be."""
from __future__ import annotations

from ..errors import BuildError, ImageError
from ..reader.compare import compare_image
from ..reader.image import Image
from ..util import read_xattrs
from .options import BuildOptions, TimeInherit
from .selinux import FileContexts, fs_path, with_label
from .walk import Excluder


def verify_build(image: str, source: bytes, options: BuildOptions, limit: int = 20) -> None:
    """--verify: read the finished image back without the kernel (every inode, every extent,
    the checksum) and compare it with the source as the options say it should be.  The image
    stays where it is; BuildError lists what is wrong."""
    try:
        with Image.open(image, offset=options.offset) as img:
            problems = img.verify()
            problems += compare_build(img, source, options, limit=limit)
    except (ImageError, OSError) as err:
        problems = [str(err)]
    if problems:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise BuildError(f"{image}: verification failed (the image was kept):\n  {shown}{more}")


def compare_build(img: Image, source, options, *, limit: int = 0) -> list[str]:
    """compare_image with the expectations a build with `options` (BuildOptions) sets: forced
    and shifted owners, the time policy (-T, SOURCE_DATE_EPOCH, --ignore-mtime,
    -Eforce-inode-compact; the build time is read from the image's superblock), excluded
    paths, --hard-dereference, -x < 0 (no xattrs at all) and --file-contexts labels."""
    build_time = getattr(img, "build_time", img.superblock.epoch)
    inherit = options.effective_time_inherit
    mtime = clamp = compact = None
    if inherit is TimeInherit.FIXED:
        mtime = build_time
    elif inherit is TimeInherit.CLAMP:
        clamp = build_time
    if mtime is None and (options.ignore_mtime or options.force_inode == "compact"):
        compact = build_time
    excluder = Excluder(options)

    source_xattrs = None
    if options.xattr_tolerance < 0:
        source_xattrs = lambda path, rel, mode: []
    elif options.file_contexts is not None:
        contexts = FileContexts.load(options.file_contexts)

        def source_xattrs(path, rel, mode):
            label = contexts.lookup(fs_path(rel, options.mount_point), mode)
            return with_label(read_xattrs(path), label)

    return compare_image(img, source, uid=options.force_uid, gid=options.force_gid,
                         uid_offset=options.uid_offset, gid_offset=options.gid_offset,
                         mtime=mtime, clamp_mtime=clamp, compact_mtime=compact,
                         hard_dereference=options.hard_dereference,
                         exclude=excluder.excluded if excluder else None,
                         source_xattrs=source_xattrs, limit=limit)
