"""Images whose chunk-based files live on extra devices, made by mkfs.erofs, and patches of them.

mkfs.erofs 1.5 (Debian, /usr/bin/mkfs.erofs) has --chunksize and --blobdev; 1.9.3 (the
reference: $MKFS_EROFS_REF, else /work/erofs-utils-install/bin/mkfs.erofs) adds --tar=i.
Patches locate chunk indexes with the independent parser (support/oracle.py), not the reader.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image

from . import oracle
from .trees import write_file

OLD_MKFS = Path("/usr/bin/mkfs.erofs")
REF_DEFAULT = Path("/work/erofs-utils-install/bin/mkfs.erofs")
SIZES = (1, 100, 4095, 4096, 4097, 8191, 8192, 8193, 65536, 100_001, 300_000)
MTIME_NS = 1_600_000_000 * 10**9


def reference() -> Optional[Path]:
    """mkfs.erofs >= 1.9, if there is one."""
    ref = os.environ.get("MKFS_EROFS_REF")
    path = Path(ref) if ref else REF_DEFAULT
    return path if path.exists() else None


def make_device_tree(root: Path) -> Path:
    """Files of several sizes, duplicates, a sparse file, empty files, a subdirectory;
    whole-second mtimes (tar keeps no more)."""
    root.mkdir()
    (root / "sub").mkdir()
    for size in SIZES:
        write_file(root / f"f{size}", size)
        write_file(root / "sub" / f"g{size}", size, seed=size * 7)
    shutil.copyfile(root / "f100001", root / "dup100001")
    shutil.copyfile(root / "sub" / "g8192", root / "sub" / "dup8192")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "empty2").write_bytes(b"")
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300_000)
        f.write(b"island")
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return root


def mkfs(tool: Path, image: Path, source: Path, *opts) -> Path:
    r = subprocess.run([str(tool), "-T1600000000", *map(str, opts), str(image), str(source)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, f"{tool} failed: {r.stdout}"
    return image


def make_tar(src: Path, tar: Path) -> Path:
    subprocess.run(["tar", "-C", str(src), "--numeric-owner", "-cf", str(tar), "."], check=True)
    return tar


def concat(out: Path, *parts: Path) -> Path:
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out


def chunk_index_positions(image: Path) -> list[int]:
    """Byte offsets of every 8-byte chunk index of the image's chunk-based files."""
    sb = oracle.read_superblock(image)
    bs = sb.block_size
    out = []
    for ino in oracle.image_inodes(image).values():
        if ino.layout != fmt.EROFS_INODE_CHUNK_BASED or not ino.size or \
                not stat.S_ISREG(ino.mode):
            continue
        chunkfmt = ino.raw_blkaddr & 0xFFFF
        assert chunkfmt & fmt.EROFS_CHUNK_FORMAT_INDEXES, "not an image with chunk indexes"
        chunk = bs << (chunkfmt & fmt.EROFS_CHUNK_FORMAT_BLKBITS_MASK)
        inode_end = sb.meta_blkaddr * bs + ino.nid * 32 + (64 if ino.extended else 32) + \
            (12 + (ino.xattr_icount - 1) * 4 if ino.xattr_icount else 0)
        start = -(-inode_end // 8) * 8
        out += [start + i * 8 for i in range(-(-ino.size // chunk))]
    return out


def reseal(raw: bytearray, block_size: int) -> None:
    """Recompute the superblock checksum after a patch (the kernel checks it)."""
    span = fmt.sb_checksum_span(block_size)
    at = fmt.EROFS_SUPER_OFFSET
    body = bytearray(raw[at:at + span])
    body[fmt.SB_CHECKSUM_OFFSET:fmt.SB_CHECKSUM_OFFSET + 4] = bytes(4)
    raw[at + fmt.SB_CHECKSUM_OFFSET:at + fmt.SB_CHECKSUM_OFFSET + 4] = \
        oracle.crc32c(bytes(body)).to_bytes(4, "little")


IndexPatch = Callable[[int, int, int], tuple[int, int, int]]


def patch_image(image: Path, out: Path, *, uniaddr: Optional[int] = None,
                blocks: Optional[int] = None, extra_devices: Optional[int] = None,
                index: Optional[IndexPatch] = None) -> Path:
    """A copy of `image` with slot 1's uniaddr/blocks, extra_devices or every chunk index
    (startblk_hi, device_id, startblk_lo) changed, its checksum recomputed."""
    raw = bytearray(image.read_bytes())
    sb_range = slice(fmt.EROFS_SUPER_OFFSET, fmt.EROFS_SUPER_OFFSET + fmt.EROFS_SB_SIZE)
    sb = fmt.SuperBlock.unpack(raw[sb_range])
    at = sb.devt_slotoff * fmt.EROFS_DEVT_SLOT_SIZE
    slot = fmt.DeviceSlot.unpack(raw[at:at + fmt.EROFS_DEVT_SLOT_SIZE], False)
    if uniaddr is not None:
        slot.uniaddr = uniaddr
    if blocks is not None:
        slot.blocks = blocks
    raw[at:at + fmt.EROFS_DEVT_SLOT_SIZE] = slot.pack()
    if extra_devices is not None:
        sb.extra_devices = extra_devices
        raw[sb_range] = sb.pack()
    if index is not None:
        for pos in chunk_index_positions(image):
            entry = fmt.EROFS_INODE_CHUNK_INDEX.unpack_from(raw, pos)
            fmt.EROFS_INODE_CHUNK_INDEX.pack_into(raw, pos, *index(*entry))
    reseal(raw, 1 << sb.blkszbits)
    out.write_bytes(bytes(raw))
    return out


def blocks_of(path: Path, block_size: int) -> int:
    return -(-path.stat().st_size // block_size)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every regular file below root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def reader_files(image: Path, devices=None) -> dict[str, bytes]:
    """tree_bytes() of an image as the reader reads it (with `devices`, else flatdev)."""
    with Image.open(image, devices=devices) as img:
        return {os.fsdecode(path[1:]): img.read(inode) for path, inode in img.walk()
                if inode.is_reg()}


@dataclass
class DeviceCase:
    """mkfs.erofs 1.5 --chunksize=4096 --blobdev=BLOB of make_device_tree(), in `work`."""
    work: Path
    src: Path
    image: Path
    blob: Path


def device_case(tmp_path_factory) -> DeviceCase:
    """Build a DeviceCase (skips without mkfs.erofs 1.5)."""
    if not OLD_MKFS.exists():
        pytest.skip(f"needs Debian's mkfs.erofs 1.5 at {OLD_MKFS}")
    work = tmp_path_factory.mktemp("devices")
    src = make_device_tree(work / "src")
    image, blob = work / "blob.erofs", work / "blob.dev"
    mkfs(OLD_MKFS, image, src, "--chunksize=4096", f"--blobdev={blob}")
    return DeviceCase(work, src, image, blob)


def place_blob(case: DeviceCase, name: str, *, unified: bool = False) -> Path:
    """case.image with its slot placing the blob right after the image (uniaddr = the image's
    blocks, blocks = the blob's), as mkfs.erofs >= 1.9 writes it; `unified`: also every chunk
    index moved to device 0 at uniaddr + its block (unified addressing)."""
    sb = oracle.read_superblock(case.image)
    base = sb.blocks
    move = (lambda hi, _dev, lo: (hi, 0, lo + base)) if unified else None
    return patch_image(case.image, case.work / name, uniaddr=base,
                       blocks=blocks_of(case.blob, sb.block_size), index=move)


def require_reference() -> Path:
    """mkfs.erofs >= 1.9 (skips without one)."""
    path = reference()
    if path is None:
        pytest.skip(f"needs mkfs.erofs 1.9.3 (set MKFS_EROFS_REF, or install it at "
                    f"{REF_DEFAULT})")
    return path
