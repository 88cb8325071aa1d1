"""The build pipeline: walk the source -> plan inodes -> write data -> place metadata -> superblock."""
from __future__ import annotations

import hashlib
import os
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import format as fmt
from .data import DataArea, flat_blocks, inline_fits
from .dirs import render_directory
from .meta import MetaAllocator, MetaImage, item_size, place_inode, serialize_inode
from .options import BuildError, BuildOptions
from .output import Output
from .plan import Plan, PlannedInode, plan_inodes
from .walk import walk_source


@dataclass
class BuildResult:
    image: str
    blocks: int
    block_size: int
    inodes: int
    uuid: bytes
    root_nid: int

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


def build(image: str | os.PathLike, source: str | os.PathLike,
          options: BuildOptions | None = None) -> BuildResult:
    """Build an EROFS image of the directory `source` into `image` (a file or a block device)."""
    options = options or BuildOptions()
    options.validate()
    image = os.fspath(image)
    source_b = os.fsencode(os.fspath(source))
    if not os.path.lexists(source_b):
        raise BuildError(f"{os.fsdecode(source_b)}: source does not exist")
    build_time = options.build_time if options.build_time is not None else int(time.time())
    out = Output(image, options.offset)
    try:
        root, _count = walk_source(source_b, options, skip=out.identity())
        plan = plan_inodes(root, options, build_time)
        result = _write_image(plan, options, out)
        out.finish(result.size)
        return result
    except BaseException:
        out.abort()
        raise


def _write_image(plan: Plan, options: BuildOptions, out: Output) -> BuildResult:
    bs = options.block_size
    inline_regular = options.inline_data
    dirs = [n for n in plan.inodes if n.dir_shape is not None]

    # the root goes right after the superblock so that its nid fits the 16-bit rootnid field
    alloc = MetaAllocator(bs, fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE)
    dir_inline = {id(d): inline_fits(d, d.size, bs) for d in dirs}
    root = plan.root
    root_item = root.meta_size_before_inline + (root.size % bs if dir_inline[id(root)] else 0)
    root_pos = alloc.place(root_item)
    root.nid = root_pos >> fmt.EROFS_ISLOTBITS
    data_start = fmt.round_up(alloc.frontier, bs) // bs
    out.check_fits(_size_upper_bound(plan, bs, data_start))

    data = DataArea(out, bs, data_start)
    dir_start = {id(d): data.allocate(flat_blocks(d.size, bs, dir_inline[id(d)])) for d in dirs}
    copies = []
    for node in plan.inodes:
        if node.ftype == fmt.EROFS_FT_REG_FILE:
            inline_ok = inline_regular and inline_fits(node, node.size, bs)
            copies.append((node, *data.reserve_regular(node, inline_ok)))
        elif node.ftype == fmt.EROFS_FT_SYMLINK:
            data.write_bytes(node, node.src.target, inline_fits(node, node.size, bs))
    _run_copies(data, copies, options.workers or os.cpu_count() or 1)
    data_end = data.next_block

    alloc.jump_to(data_end * bs)
    positions = {id(root): root_pos}
    for node in plan.inodes:
        if node is root:
            continue
        if node.dir_shape is not None and dir_inline[id(node)]:
            node.inline = bytes(node.size % bs)       # room for the tail, rendered below
        positions[id(node)] = place_inode(alloc, node)

    for d in dirs:
        content = render_directory(d.dir_shape, bs, lambda n: n.nid, lambda n: n.ftype)
        data.write_bytes(d, content, dir_inline[id(d)], start=dir_start[id(d)])
        d.dir_shape = None

    meta_end = fmt.round_up(alloc.frontier, bs)
    meta = MetaImage(data_start * bs, data_end * bs, meta_end)
    for node in plan.inodes:
        meta.put(positions[id(node)], serialize_inode(node, plan.epoch))
    blocks = max(meta_end, data_end * bs) // bs
    out.check_fits(blocks * bs)

    sb = fmt.SuperBlock(
        blkszbits=fmt.blksz_bits(bs), root_nid=root.nid, inos=len(plan.inodes), epoch=plan.epoch,
        blocks=blocks, feature_compat=fmt.EROFS_FEATURE_COMPAT_MTIME, volume_name=options.label)
    sb.uuid = _choose_uuid(options, meta, plan.epoch)
    _put_superblock(meta, sb, bs, options.sb_checksum)
    out.pwrite(meta.head, 0)
    if meta.tail:
        out.pwrite(meta.tail, meta.tail_start)
    return BuildResult(out.path, blocks, bs, len(plan.inodes), sb.uuid, root.nid)


def _run_copies(data: DataArea, copies: list, workers: int) -> None:
    """Copy file data with a few threads: the copies are system calls, which release the GIL."""
    if workers <= 1 or len(copies) < 64:
        for job in copies:
            data.copy_regular(*job)
        return
    batch = 128
    batches = [copies[i:i + batch] for i in range(0, len(copies), batch)]

    def run(jobs):
        for job in jobs:
            data.copy_regular(*job)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(run, batches):
            pass


def _size_upper_bound(plan: Plan, bs: int, data_start: int) -> int:
    """Bytes the image can take at most, so a device too small is refused before any write."""
    total = data_start * bs
    for node in plan.inodes:
        total += fmt.round_up(node.size, bs) + item_size(node) + fmt.EROFS_ISLOT_SIZE
    return total + bs


def _choose_uuid(options: BuildOptions, meta: MetaImage, epoch: int) -> bytes:
    if options.uuid is not None:
        return options.uuid
    if options.source_date_epoch is not None:
        # reproducible: the same tree and options give the same metadata, hence the same UUID
        digest = hashlib.sha256(b"mkerofs\0%d\0" % epoch + bytes(meta.head) + bytes(meta.tail))
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
