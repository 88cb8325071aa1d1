"""Unit tests of mkerofs.writer.compress: index encoding, decoded back the way the kernel reads it.

The decoder below follows the reading rules of fs/erofs/zmap.c (lcluster loading for full and
compact indexes, lookback through NONHEAD entries, CBLKCNT, EOF and inline tail handling), so a
file compressed here and decoded with it must come back byte for byte.  Kernel mounts of whole
images are tested elsewhere; these tests need no root.
"""
from __future__ import annotations

import os
import random
import struct

import pytest

from mkerofs.writer import compress as z
from mkerofs.writer import packed as zp
from mkerofs.writer import workers as zw
from mkerofs.codecs import registry
from mkerofs.ondisk import format as fmt
from mkerofs.ondisk import index

HAVE = set(registry.available())
needs_lz4 = pytest.mark.skipif("lz4" not in HAVE, reason="liblz4 not available")


# ---------------------------------------------------------------------------
# a reader with the kernel's rules


class KernelStyleReader:
    """Maps file offsets of one compressed inode as zmap.c does.

    `meta` is what follows inode + xattrs (node.inline); positions are relative to the inode,
    which is 32-byte aligned on disk like every inode.
    """

    def __init__(self, meta: bytes, meta_size: int, size: int, datalayout: int, block_size: int):
        self.meta, self.meta_size, self.size = meta, meta_size, size
        self.layout, self.bs = datalayout, block_size
        self.bits = block_size.bit_length() - 1
        hpos = fmt.round_up(meta_size, 8)
        _r, self.idata_size, self.advise, alg, clusterbits = struct.unpack_from(
            "<HHHBB", self._at(hpos, 8))
        self.algorithm = alg & 15
        assert clusterbits == 0
        self.lclusterbits = self.bits
        self.big1 = bool(self.advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1)
        self.big2 = bool(self.advise & fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
        if not self.advise & fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER:
            self.idata_size = 0
        if datalayout == fmt.EROFS_INODE_COMPRESSED_COMPACT:
            assert self.big1 == self.big2, "head1/2 big pcluster bits must agree"
        self.tail_headlcn = None
        self.tail_pos = None
        if self.idata_size:
            m = self.map(size - 1, findtail=True)
            assert m is not None

    def _at(self, pos: int, n: int) -> bytes:
        rel = pos - self.meta_size
        assert rel >= 0 and rel + n <= len(self.meta), f"read {n} at {pos} outside the metadata"
        return self.meta[rel:rel + n]

    # -- lcluster loading ---------------------------------------------------

    def load(self, lcn: int, lookahead: bool = False) -> dict:
        totalidx = -(-self.size // self.bs)
        assert 0 <= lcn < totalidx
        if self.layout == fmt.EROFS_INODE_COMPRESSED_FULL:
            pos = fmt.round_up(self.meta_size, 8) + 16 + 8 * lcn
            adv, ofs, u = struct.unpack("<HHI", self._at(pos, 8))
            t = adv & 3
            m = {"lcn": lcn, "type": t, "next": pos + 8}
            if t == z.NONHEAD:
                d0, d1 = u & 0xFFFF, u >> 16
                m["clusterofs"] = self.bs
                if d0 & fmt.Z_EROFS_LI_D0_CBLKCNT:
                    assert self.big1 or self.big2
                    m["cblk"] = d0 & ~fmt.Z_EROFS_LI_D0_CBLKCNT
                    d0 = 1
                m["d0"], m["d1"] = d0, d1
            else:
                m["clusterofs"], m["pblk"] = ofs, u
            return m
        return self._load_compact(lcn, totalidx, lookahead)

    def _load_compact(self, lcn: int, totalidx: int, lookahead: bool) -> dict:
        ebase = fmt.round_up(self.meta_size, 8) + 8
        initial = ((32 - ebase % 32) // 4) & 7
        two = 0
        if self.advise & fmt.Z_EROFS_ADVISE_COMPACTED_2B and initial < totalidx:
            two = (totalidx - initial) // 16 * 16
        pos, shift, rel = ebase, 2, lcn
        if rel >= initial:
            pos += initial * 4
            rel -= initial
            if rel < two:
                shift = 1
            else:
                pos += two * 2
                rel -= two
        pos += rel << shift
        vcnt = 2 if shift == 2 else 16
        packsize = vcnt << shift
        packstart = pos - pos % packsize
        pack = self._at(packstart, packsize)
        lobits = max(self.lclusterbits, 12)
        encodebits = ((packsize - 4) * 8) // vcnt
        i = (pos - packstart) >> shift

        def entry(k: int) -> tuple[int, int]:
            word = int.from_bytes(pack[:packsize - 4], "little") >> (encodebits * k)
            return (word >> lobits) & 3, word & ((1 << lobits) - 1)

        t, lo = entry(i)
        m = {"lcn": lcn, "type": t, "next": packstart + packsize}
        if t == z.NONHEAD:
            m["clusterofs"] = self.bs
            if lookahead:
                d1, k = 0, i
                while k < vcnt:
                    tk, lok = entry(k)
                    if tk != z.NONHEAD:
                        break
                    d1 += 1
                    k += 1
                else:
                    if not lok & fmt.Z_EROFS_LI_D0_CBLKCNT:
                        d1 += lok - 1
                m["d1"] = d1
            if lo & fmt.Z_EROFS_LI_D0_CBLKCNT:
                assert self.big1
                m["cblk"] = lo & ~fmt.Z_EROFS_LI_D0_CBLKCNT
                m["d0"] = 1
                return m
            if i + 1 != vcnt:
                m["d0"] = lo
                return m
            tp, lp = entry(i - 1)
            if tp != z.NONHEAD:
                lp = 0
            elif lp & fmt.Z_EROFS_LI_D0_CBLKCNT:
                lp = 1
            m["d0"] = lp + 1
            return m
        m["clusterofs"] = lo
        base = struct.unpack_from("<I", pack, packsize - 4)[0]
        if not self.big1:
            nblk = 1
            k = i
            while k > 0:
                k -= 1
                tk, lok = entry(k)
                if tk == z.NONHEAD:
                    k -= lok
                if k >= 0:
                    nblk += 1
        else:
            nblk = 0
            k = i
            while k > 0:
                k -= 1
                tk, lok = entry(k)
                if tk == z.NONHEAD:
                    if lok & fmt.Z_EROFS_LI_D0_CBLKCNT:
                        k -= 1
                        nblk += lok & ~fmt.Z_EROFS_LI_D0_CBLKCNT
                        continue
                    assert lok > 1, "big pcluster with a plain d0 of 1"
                    k -= lok - 2
                    continue
                nblk += 1
        m["pblk"] = base + nblk
        return m

    # -- mapping ----------------------------------------------------------

    def _lookback(self, m: dict, distance: int) -> dict:
        lcn = m["lcn"]
        while lcn >= distance:
            lcn -= distance
            m = self.load(lcn)
            if m["type"] == z.NONHEAD:
                distance = m["d0"]
                assert distance, "zero lookback distance"
                continue
            return m
        raise AssertionError("bogus lookback")

    def map(self, offset: int, findtail: bool = False) -> dict:
        """One mapping as z_erofs_map_blocks_fo() returns it: la, llen, type, pa/plen."""
        bits = self.lclusterbits
        lcn, endoff = offset >> bits, offset & (self.bs - 1)
        m = self.load(lcn)
        if findtail and self.idata_size:
            self.tail_pos = m["next"]
        end = (lcn + 1) << bits
        if m["type"] != z.NONHEAD:
            if endoff >= m["clusterofs"]:
                head = m
                if self.idata_size and end > self.size:
                    end = self.size
            else:
                assert lcn > 0, "invalid logical cluster 0"
                end = (lcn << bits) | m["clusterofs"]
                head = self._lookback(m, 1)
        else:
            head = self._lookback(m, m["d0"])
        la = (head["lcn"] << bits) | head["clusterofs"]
        out = {"la": la, "llen": end - la, "type": head["type"], "headlcn": head["lcn"]}
        if findtail:
            self.tail_headlcn = head["lcn"]
        if self.idata_size and head["lcn"] == self.tail_headlcn:
            pos = self.tail_pos
            assert pos % self.bs + self.idata_size <= self.bs or True
            out.update(inline=True, pa=pos, plen=self.idata_size)
        else:
            out.update(inline=False, pblk=head["pblk"], plen=self._cblocks(head) * self.bs)
        if out["type"] == z.PLAIN:
            assert out["llen"] <= out["plen"], "PLAIN extent longer than its pcluster"
        return out

    def _cblocks(self, head: dict) -> int:
        lcn = head["lcn"] + 1
        if ((head["type"] == z.HEAD1 and not self.big1) or
                (head["type"] == z.PLAIN and not self.big2) or (lcn << self.bits) >= self.size):
            return 1
        m = self.load(lcn)
        if m["type"] == z.NONHEAD:
            assert m["d0"] == 1 and "cblk" in m, "missing CBLKCNT"
            return m["cblk"]
        return 1

    def full_length(self, head_la: int, headlcn: int) -> int:
        """The extent's whole decompressed length (the FIEMAP path: follows delta[1])."""
        lcn = headlcn
        while True:
            if (lcn << self.bits) >= self.size:
                return self.size - head_la
            m = self.load(lcn, lookahead=True)
            if m["type"] == z.NONHEAD:
                d1 = m["d1"] or 1
            elif lcn != headlcn:
                return (lcn << self.bits) + m["clusterofs"] - head_la
            else:
                d1 = 1
            lcn += d1

    def extents(self) -> list[dict]:
        out, pos = [], 0
        while pos < self.size:
            m = self.map(pos)
            assert m["la"] == pos, f"extent at {pos} maps to {m['la']}"
            m["full"] = self.full_length(m["la"], m["headlcn"])
            assert m["full"] > 0
            out.append(m)
            pos += m["full"]
        return out


def read_back(reader: KernelStyleReader, disk: dict, comp) -> bytes:
    """Decode the whole file from `disk` (block -> bytes) and the inline tail."""
    bs = reader.bs
    out = bytearray()
    for m in reader.extents():
        if m["inline"]:
            src = reader._at(m["pa"], m["plen"])
        else:
            n = m["plen"] // bs
            src = b"".join(disk[m["pblk"] + k] for k in range(n))
        if m["type"] == z.PLAIN:
            out += src[:m["full"]]
        else:
            out += comp.decode(src, m["full"])
    return bytes(out)


# ---------------------------------------------------------------------------
# helpers


class FakeArea:
    """Stands in for DataArea: hands out blocks, keeps what is written."""

    def __init__(self, bs: int, first: int = 100):
        self.block_size = bs
        self.next_block = first
        self.disk: dict[int, bytes] = {}
        self.out = self

    def allocate(self, n: int) -> int:
        start = self.next_block
        self.next_block += n
        return start

    allocate_file = allocate                # (no --dsunit here)

    def file_start(self) -> int:
        return self.next_block

    def rewind(self, block: int) -> None:
        self.next_block = block

    def pwrite(self, data: bytes, pos: int) -> None:
        assert pos % self.block_size == 0 and len(data) % self.block_size == 0
        for k in range(len(data) // self.block_size):
            self.disk[pos // self.block_size + k] = bytes(
                data[k * self.block_size:(k + 1) * self.block_size])


def text(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    words = [b"erofs ", b"lcluster ", b"pcluster ", b"index\n", b"zero ", b"%d "]
    out = bytearray()
    while len(out) < n:
        w = rnd.choice(words)
        out += w % rnd.randrange(1000) if b"%d" in w else w
    return bytes(out[:n])


def mixed(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        k = rnd.choice([300, 2000, 5000, 9000])
        out += rnd.choice([lambda: rnd.randbytes(k), lambda: text(k, rnd.random()),
                           lambda: bytes(k)])()
    return bytes(out[:n])


def roundtrip(data: bytes, cfg: z.CompressConfig, meta_size: int = 32, workers: int = 1):
    area = FakeArea(cfg.block_size)
    job = zw.FileJob("f", len(data), meta_size,
                    lambda off, n, last: data[off:off + n])
    [(j, layout)] = list(zw.compress_files([job], cfg, area, workers))
    assert j is job
    if layout is None:
        return None, area
    reader = KernelStyleReader(layout.inline, meta_size, len(data), layout.datalayout,
                               cfg.block_size)
    assert read_back(reader, area.disk, cfg.primary) == data
    return layout, area


def cfg_for(alg="lz4", bs=4096, pcs=None, legacy=False, ztail=False, **kw):
    c = z.CompressConfig.from_options(alg, bs, pcs, legacy_indexes=legacy, ztailpacking=ztail)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


# ---------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("header_end, nidx, expect", [
    (40, 100, (6, 80, 14)),      # 40 % 32 = 8: six 4B entries reach 64
    (48, 100, (4, 96, 0)),
    (56, 100, (2, 96, 2)),
    (64, 100, (0, 96, 4)),
    (40, 5, (0, 0, 5)),          # fewer entries than the 4B lead-in: all 4B
    (40, 6, (6, 0, 0)),
    (72, 23, (6, 16, 1)),
])
def test_compact_runs(header_end, nidx, expect):
    assert index.compact_runs(nidx, header_end) == expect


def test_compact_2b_packs_are_32_byte_aligned():
    for meta_size in range(32, 32 + 200, 4):
        hdr_end = fmt.round_up(meta_size, 8) + 8
        initial, two, _end = index.compact_runs(1000, hdr_end)
        if two:
            assert (hdr_end + 4 * initial) % 32 == 0


def test_index_area_size_counts_header_padding_and_packs():
    cfg = cfg_for()
    # compact, 12 lclusters, inode 32 bytes: header at 32, indexes at 40: 6 x 4B + 6 x 4B
    assert z.index_area_size(12 * 4096, 32, cfg) == 8 + 24 + 24
    # xattrs of 12 bytes: padding of 4 to the header
    assert z.index_area_size(12 * 4096, 44, cfg) == 4 + 8 + (4 * 4 + 4 * 8)
    legacy = cfg_for(legacy=True)
    assert z.index_area_size(4097, 32, legacy) == 16 + 2 * 8
    assert z.index_area_size(4097, 44, legacy) == 4 + 16 + 2 * 8


# ---------------------------------------------------------------------------
# exact encodings


def test_full_entries_for_one_extent_with_eof_marker():
    # one compressed extent of 10000 bytes: HEAD, NONHEAD, then PLAIN marking EOF at 1808
    ent = z.lclusters_for([10000], [1], 500, 4096, big_pcluster=False)
    assert list(ent.types) == [z.HEAD1, z.NONHEAD, z.PLAIN]
    assert list(ent.lo) == [0, 1, 1808]
    assert list(ent.hi) == [500, 1, 0]
    raw = index.encode_full(ent)
    assert raw == (struct.pack("<HHI", 1, 0, 500) + struct.pack("<HHHH", 2, 0, 1, 1)
                   + struct.pack("<HHI", 0, 1808, 0))


def test_cblkcnt_on_first_nonhead_only_with_big_pclusters():
    ent = z.lclusters_for([5 * 4096 + 10], [3], 7, 4096, big_pcluster=True)
    assert list(ent.types) == [z.HEAD1] + [z.NONHEAD] * 4 + [z.PLAIN]
    assert ent.lo[1] == fmt.Z_EROFS_LI_D0_CBLKCNT | 3
    assert list(ent.lo[2:5]) == [2, 3, 4]
    assert list(ent.hi[1:5]) == [4, 3, 2, 1]
    small = z.lclusters_for([5 * 4096 + 10], [1], 7, 4096, big_pcluster=False)
    assert small.lo[1] == 1


def test_extent_ending_inside_its_lcluster_must_be_last():
    with pytest.raises(ValueError):
        z.lclusters_for([100, 4096], [1 | z._RAW, 1 | z._RAW], 0, 4096, False)


def test_compact_4b_pack_bits():
    # HEAD1 at 0, NONHEAD, EOF marker: meta_size 32 -> all 4B (6 lead-in > 3 entries)
    raw = index.encode_compact_extents([10000], [1], 40, 500, 12, big_pcluster=False)
    assert len(raw) == 16
    # pack 1: HEAD1|0 in bits 0-15, NONHEAD with delta[1]=1 (last of pack) in bits 16-31
    assert raw[:4] == ((z.NONHEAD << 12 | 1) << 16 | (z.HEAD1 << 12)).to_bytes(4, "little")
    assert struct.unpack_from("<I", raw, 4)[0] == 499      # the kernel adds 1 for the head
    assert raw[8:12] == (z.PLAIN << 12 | 1808).to_bytes(4, "little")
    assert struct.unpack_from("<I", raw, 12)[0] == 500


def test_compact_2b_pack_is_32_bytes_with_14_bit_fields():
    # 24 one-block raw extents: meta 32 -> 6 x 4B lead-in, one 2B pack of 16, then 4B x 2
    codes = [1 | z._RAW] * 24
    raw = index.encode_compact_extents([4096] * 24, codes, 40, 1000, 12, big_pcluster=False)
    assert len(raw) == 3 * 8 + 32 + 8
    pack = raw[24:56]
    bits = int.from_bytes(pack[:28], "little")
    for k in range(16):
        field = (bits >> (14 * k)) & 0x3FFF
        assert field == (z.PLAIN << 12 | 0)
    # base: the head before this pack was block 1005; the first head in it is 1006
    assert struct.unpack_from("<I", pack, 28)[0] == 1005


def test_map_header_fields():
    cfg = cfg_for(pcs=16384, ztail=True)
    layout, meta, advise = z.build_indexes([4096 * 3, 1000], [2, 1 | z._INLINE], 4096 * 3 + 1000,
                                           50, 44, cfg, idata=b"x" * 300)
    assert layout == fmt.EROFS_INODE_COMPRESSED_COMPACT
    assert meta[:4] == bytes(4)                     # 44 -> header at 48
    r1, idata_size, h_advise, alg, clusterbits = struct.unpack_from("<HHHBB", meta, 4)
    assert (r1, idata_size, alg, clusterbits) == (0, 300, 0, 0)
    assert h_advise == advise == (
        fmt.Z_EROFS_ADVISE_COMPACTED_2B | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_1
        | fmt.Z_EROFS_ADVISE_BIG_PCLUSTER_2 | fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER)
    assert meta.endswith(b"x" * 300)
    legacy = cfg_for(legacy=True)
    layout, meta, advise = z.build_indexes([5000], [1], 5000, 50, 32, legacy)
    assert layout == fmt.EROFS_INODE_COMPRESSED_FULL and advise == 0
    assert meta[8:16] == bytes(8) and len(meta) == 16 + 2 * 8


# ---------------------------------------------------------------------------
# decode back what we encode (synthetic extent lists)


def _random_extents(rnd: random.Random, bs: int, max_blocks: int, big: bool, inline: bool):
    llens, codes, pos = [], [], 0
    n = rnd.randrange(1, 60)
    for i in range(n):
        c = pos % bs
        if rnd.random() < 0.3:              # raw: one block of data
            llen = bs
            code = 1 | z._RAW
        else:
            blocks = rnd.randrange(1, max_blocks + 1) if big else 1
            llen = blocks * bs + rnd.randrange(1, 3 * bs)
            code = blocks
        llens.append(llen)
        codes.append(code)
        pos += llen
    if inline:
        c = pos % bs
        llens.append(rnd.randrange(1, bs) if rnd.random() < 0.5 else rnd.randrange(1, 3 * bs))
        codes.append(1 | z._INLINE | (z._RAW if llens[-1] < bs and rnd.random() < 0.3 else 0))
        pos += llens[-1]
    return llens, codes, pos


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("bs, big", [(4096, False), (4096, True), (1024, True), (512, False)])
def test_decode_back_random_extent_lists(legacy, bs, big):
    rnd = random.Random(bs * 7 + big * 3 + legacy)
    cfg = cfg_for(bs=bs, pcs=bs * 8 if big else bs, legacy=legacy, ztail=True)
    assert cfg.big_pcluster == big
    for trial in range(60):
        inline = rnd.random() < 0.4
        llens, codes, size = _random_extents(rnd, bs, 8, big, inline)
        meta_size = rnd.choice([32, 44, 48, 64, 76, 96, 100])
        start = rnd.randrange(10, 10 ** 6)
        idata = b""
        if inline:
            idata = b"\x01" * (llens[-1] if codes[-1] & z._RAW else 10)
        layout, meta, _adv = z.build_indexes(llens, codes, size, start, meta_size, cfg,
                                             idata=idata)
        reader = KernelStyleReader(meta, meta_size, size, layout, bs)
        got = reader.extents()
        assert [m["la"] for m in got] == [sum(llens[:i]) for i in range(len(llens))]
        assert [m["full"] for m in got] == llens
        blk = start
        for m, code in zip(got, codes):
            nb = code & z._BLOCKS_MASK
            assert m["type"] == (z.PLAIN if code & z._RAW else z.HEAD1)
            if code & z._INLINE:
                assert m["inline"] and m["plen"] == len(idata)
                assert m["pa"] == meta_size + len(meta) - len(idata)
            else:
                assert not m["inline"]
                assert m["pblk"] == blk, (trial, m)
                assert m["plen"] == nb * bs
            blk += 1 if code & z._INLINE else nb
        # every offset maps into the right extent (spot checks)
        bounds = [sum(llens[:i]) for i in range(len(llens) + 1)]
        for _ in range(40):
            off = rnd.randrange(size)
            m = reader.map(off)
            k = max(i for i in range(len(llens)) if bounds[i] <= off)
            assert m["la"] == bounds[k] and m["la"] + m["llen"] > off


# ---------------------------------------------------------------------------
# real compression, decoded back


@needs_lz4
@pytest.mark.parametrize("size", [1, 100, 4095, 4096, 4097, 8191, 12000, 16384, 65535, 65536,
                                  65537, 200001])
@pytest.mark.parametrize("opts", [dict(), dict(pcs=16384), dict(legacy=True),
                                  dict(ztail=True), dict(pcs=65536, ztail=True),
                                  dict(pcs=16384, legacy=True, ztail=True)])
def test_lz4_roundtrip_sizes(size, opts):
    cfg = cfg_for("lz4", **opts)
    data = mixed(size, size)
    layout, area = roundtrip(data, cfg, meta_size=32)
    if layout is None:
        assert area.next_block == 100      # a file stored flat gives its blocks back
    else:
        assert area.next_block == 100 + layout.blocks


@pytest.mark.parametrize("alg", ["lz4hc", "zstd", "deflate", "lzma"])
def test_other_algorithms_roundtrip(alg):
    if alg.rstrip("hc") not in HAVE and alg not in HAVE:
        pytest.skip(f"{alg} not available")
    for opts in (dict(), dict(pcs=16384, ztail=True), dict(legacy=True, bs=1024)):
        cfg = cfg_for(alg, **opts)
        data = text(150000, 3) + bytes(20000) + text(777, 4)
        layout, _area = roundtrip(data, cfg, meta_size=44)
        assert layout is not None
        assert layout.inline[4 + 6] == cfg.primary.algorithm_id    # h_algorithmtype


@needs_lz4
def test_incompressible_file_falls_back_to_flat():
    data = random.Random(5).randbytes(50000)
    layout, area = roundtrip(data, cfg_for("lz4"))
    assert layout is None and area.next_block == 100


@needs_lz4
def test_written_blocks_of_a_big_file_not_worth_compressing_are_reported():
    cfg = cfg_for("lz4")
    cfg.segment_size = 32768
    data = random.Random(6).randbytes(200000)
    area = FakeArea(4096)
    big = zw.FileJob("big", len(data), 32, lambda off, n, last: data[off:off + n])
    small = zw.FileJob("small", 20000, 32, lambda off, n, last: data[off:off + n])
    got = list(zw.compress_files([big, small], cfg, area))
    assert [(j.key, layout) for j, layout in got] == [("big", None), ("small", None)]
    assert big.wrote_blocks and area.disk           # flushed segment by segment, then dropped
    assert not small.wrote_blocks
    assert area.next_block == 100


@needs_lz4
def test_one_block_saving_is_needed():
    # 4097 compressible bytes fit one block, but a block + indexes is not smaller than the file
    layout, _ = roundtrip(bytes(4097), cfg_for("lz4"))
    assert layout is None
    layout, _ = roundtrip(bytes(8193), cfg_for("lz4"))
    assert layout is not None and layout.blocks == 1


@needs_lz4
def test_ztailpacking_inlines_a_small_compressed_tail():
    cfg = cfg_for("lz4", ztail=True)
    data = bytes(200000)                     # everything fits one pcluster below a block
    layout, area = roundtrip(data, cfg)
    assert layout.blocks == 0 and layout.inline_pcluster
    assert layout.advise & fmt.Z_EROFS_ADVISE_INLINE_PCLUSTER
    assert not area.disk


@needs_lz4
def test_ztailpacking_room_depends_on_the_tail_start_within_32_bytes():
    cfg = cfg_for("lz4", ztail=True)
    data = text(3000, 9)
    s = 32 + z.index_area_size(len(data), 32, cfg)
    # the inode is 32-byte aligned, so the tail can begin s % 32 bytes into a block (but never
    # right at its start)
    assert z.inline_room(len(data), 32, cfg) == 4096 - (s % 32 or 32)
    assert z.inline_room(30 * 4096, 32, cfg_for("lz4", ztail=True, legacy=True)) == 4096 - 32
    assert z.inline_room(len(data), 32, cfg_for("lz4")) == 0
    layout, _ = roundtrip(data, cfg, meta_size=32)
    assert layout is not None and layout.inline_pcluster
    assert layout.tail == struct.unpack_from("<H", layout.inline, 2)[0] > 0


@needs_lz4
def test_ztailpacking_with_a_tail_almost_a_block_long():
    # a big file: the index area alone is larger than a block, the tail still goes inline
    cfg = cfg_for("lz4", ztail=True)
    data = bytes(10 << 20) + text(4000, 1)
    layout, _ = roundtrip(data, cfg, meta_size=64)
    assert layout.inline_pcluster
    assert 64 + len(layout.inline) > 4096


def test_allocator_keeps_an_inline_tail_within_a_block():
    import inspect
    from mkerofs.writer.meta import MetaAllocator
    if "tail" not in inspect.signature(MetaAllocator.place).parameters:
        pytest.skip("MetaAllocator.place(nbytes, tail) of the compression integration missing")
    for frontier in range(8192, 8192 + 4096, 32):
        for nbytes, tail in ((5000, 3000), (8992, 4082), (4200, 100), (6000, 0), (4096 + 64, 4064),
                             (8192 + 32, 2000)):
            alloc = MetaAllocator(4096, frontier)
            pos = alloc.place(nbytes, tail)
            assert pos % 32 == 0 and pos >= frontier
            start = pos + nbytes - tail
            if tail:
                assert 0 < start % 4096 and start % 4096 + tail <= 4096, (frontier, nbytes, tail)
            assert pos - frontier < 4096 + 32
            assert alloc.frontier == pos + fmt.round_up(nbytes, 32)
    # a small item (no tail) still never crosses a block boundary
    alloc = MetaAllocator(4096, 4096 + 4000)
    assert alloc.place(200) == 8192


@needs_lz4
def test_segments_are_independent_and_end_on_their_boundary():
    cfg = cfg_for("lz4", pcs=16384)
    cfg.segment_size = 64 * 1024
    data = mixed(300000, 77)
    fc = z.FileCompression(len(data), 32, cfg)
    assert fc.segments() == [(0, 65536, False), (65536, 65536, False), (131072, 65536, False),
                             (196608, 65536, False), (262144, 300000 - 262144, True)]
    for workers in (1, 3):
        layout, _ = roundtrip(data, cfg, workers=workers)
        assert layout is not None


@needs_lz4
def test_compress_files_keeps_order_and_contiguity():
    cfg = cfg_for("lz4", pcs=8192)
    cfg.segment_size = 32768
    files = [mixed(n, n) for n in (70000, 5, 100000, 40000, 1)] + [random.Random(1).randbytes(9000)]
    area = FakeArea(4096)
    jobs = [zw.FileJob(i, len(d), 32, (lambda d: lambda o, n, last: d[o:o + n])(d))
            for i, d in enumerate(files)]
    seen, nxt, written = [], area.next_block, []
    for job, layout in zw.compress_files(jobs, cfg, area, workers=2):
        seen.append(job.key)
        if layout is None:
            assert area.next_block == nxt
            continue
        start = area.next_block - layout.blocks
        assert start == nxt
        nxt = area.next_block
        reader = KernelStyleReader(layout.inline, 32, job.size, layout.datalayout, 4096)
        if layout.blocks:
            assert min(m["pblk"] for m in reader.extents() if not m["inline"]) == start
        written.append((job.key, reader))
    assert seen == list(range(len(files)))
    # the data is all written once compress_files is done (consecutive files in few writes)
    for key, reader in written:
        assert read_back(reader, area.disk, cfg.primary) == files[key]


class FileArea:
    """A data area in a real file: forked workers write into it too."""

    def __init__(self, path: Path, bs: int, first: int = 100):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.block_size = bs
        self.next_block = first
        self.out = self

    def allocate(self, n: int) -> int:
        start = self.next_block
        self.next_block += n
        return start

    allocate_file = allocate                # (no --dsunit here)

    def file_start(self) -> int:
        return self.next_block

    def rewind(self, block: int) -> None:
        self.next_block = block

    def pwrite(self, data, pos: int) -> None:
        os.pwrite(self.fd, data, pos)

    def contents(self) -> bytes:
        return os.pread(self.fd, self.next_block * self.block_size, 0)


def _worker_inputs(tmp_path: Path) -> list[tuple[Path, int]]:
    rnd = random.Random(31)
    sizes = [70000, 5, 100000, 9000, 40000, 1, 300000, 4097, 12345, 8192, 60000]
    files = []
    for i, n in enumerate(sizes):
        path = tmp_path / f"f{i}"
        # every fourth file incompressible: stored flat, its blocks handed back
        path.write_bytes(rnd.randbytes(n) if i % 4 == 3 else mixed(n, i))
        files.append((path, n))
    return files


@needs_lz4
@pytest.mark.parametrize("alg, pcs, legacy, ztail", [
    ("lz4", None, False, False), ("lz4hc", 16384, False, True), ("lz4", 8192, True, True)])
def test_worker_processes_give_the_same_layouts_as_one_thread(tmp_path, alg, pcs, legacy, ztail):
    """Files compressed alone in worker processes (some offered early) come back as layouts
    for block 0 moved here (or, full indexes, as extents encoded here): the same inode metadata
    and data as compressing every file in this thread, and as threads."""
    files = _worker_inputs(tmp_path)
    meta_sizes = [32, 64, 44, 76]

    def run(name: str, workers: int, processes: bool):
        cfg = cfg_for(alg, pcs=pcs, legacy=legacy, ztail=ztail)
        cfg.segment_size = 131072       # the 300000-byte file has three segments
        area = FileArea(tmp_path / f"area-{name}", cfg.block_size)
        pool = zw.CompressionPool(cfg, workers, area.out, processes)
        if processes:
            if not isinstance(pool.impl, zw._ProcessPool):
                pool.abort()
                pytest.skip("other threads run in this process: no forked workers")
            assert pool.takes_early()
        jobs = []
        for i, (path, size) in enumerate(files):
            read = zw.FileRange(bytes(path), size)
            meta_size = meta_sizes[i % len(meta_sizes)]
            origin = None
            if processes and i % 2 and pool.suits_early(size):
                origin = ("early", i)
                pool.offer(origin, read, size, meta_size, None)
            jobs.append(zw.FileJob(i, size, meta_size, read, origin=origin))
        got = [(job.key, job.wrote_blocks, layout)
               for job, layout in zw.compress_files(jobs, cfg, area, workers, pool=pool)]
        data = area.contents()
        os.close(area.fd)
        return got, data, cfg

    alone, alone_data, cfg = run("one", 1, False)
    assert [key for key, _w, _lay in alone] == list(range(len(files)))
    assert any(lay is None for _k, _w, lay in alone)
    assert any(lay is not None and lay.blocks > 1 for _k, _w, lay in alone)
    bs = cfg.block_size
    disk = {k: alone_data[k * bs:(k + 1) * bs] for k in range(len(alone_data) // bs)}
    start = 100
    for key, _wrote, layout in alone:
        (path, size), meta_size = files[key], meta_sizes[key % len(meta_sizes)]
        data = path.read_bytes()
        # what one FileCompression makes of the whole file, its pclusters from `start`
        fc = z.FileCompression(size, meta_size, cfg)
        for off, length, last in fc.segments():
            for p in fc.compress(data[off:off + length], last):
                fc.add(p)
        assert layout == fc.finish(start), key
        if layout is not None:
            start += layout.blocks
            reader = KernelStyleReader(layout.inline, meta_size, size, layout.datalayout, bs)
            assert read_back(reader, disk, cfg.primary) == data
    forked, forked_data, _cfg = run("forked", 2, True)
    assert forked == alone
    assert forked_data == alone_data
    threads, threads_data, _cfg = run("threads", 2, False)
    assert threads == alone and threads_data == alone_data


# Files whose extents depend on the files before them (-Efragments, -Ededupe) may be offered to
# the worker processes while the source is walked: the workers cut them into pclusters, and
# fragments and deduplication are still decided in job order, so nothing changes but when the
# compressing happens.


@needs_lz4
@pytest.mark.parametrize("features", [dict(fragments=True), dict(dedupe=True)])
def test_early_offers_of_dependent_files_change_nothing(tmp_path, features):
    files = _worker_inputs(tmp_path)
    # the same bytes again: deduplicated extents and fragments
    for path, size in list(files[:4]):
        twin = tmp_path / (path.name + "-twin")
        twin.write_bytes(path.read_bytes())
        files.append((twin, size))
    meta_sizes = [32, 64, 44, 76]

    def run(name: str, workers: int, processes: bool):
        cfg = cfg_for("lz4hc", pcs=16384, ztail=True, **features)
        area = FileArea(tmp_path / f"area-{name}", cfg.block_size)
        pool = zw.CompressionPool(cfg, workers, area.out, processes)
        offered = 0
        jobs = []
        with zp.PackedFile() as packed:
            for i, (path, size) in enumerate(files):
                read = zw.FileRange(bytes(path), size)
                meta_size = meta_sizes[i % len(meta_sizes)]
                origin = None
                if processes and i % 2 and pool.takes_early() and pool.suits_early(size):
                    origin = ("early", i)
                    pool.offer(origin, read, size, meta_size, None)
                    offered += 1
                jobs.append(zw.FileJob(i, size, meta_size, read, origin=origin))
            got = [(job.key, job.wrote_blocks, layout) for job, layout in
                   zw.compress_files(jobs, cfg, area, workers, packed=packed, pool=pool)]
            fragments = packed.reader()(0, packed.size, True)
        data = area.contents()
        os.close(area.fd)
        return got, data, fragments, offered

    alone, alone_data, alone_fragments, _ = run("one", 1, False)
    assert any(lay is not None for _k, _w, lay in alone)
    forked, forked_data, forked_fragments, offered = run("forked", 2, True)
    if not offered:
        pytest.skip("other threads run in this process: no forked workers")
    assert offered == len(files) // 2
    assert forked == alone
    assert forked_data == alone_data
    assert forked_fragments == alone_fragments
    if features.get("fragments"):
        assert alone_fragments


def test_files_of_one_block_are_not_read_without_ztailpacking():
    def never(*_a):
        raise AssertionError("read")
    area = FakeArea(4096)
    jobs = [zw.FileJob(i, n, 32, never) for i, n in enumerate((1, 100, 4096))]
    assert [(j.key, lay) for j, lay in zw.compress_files(jobs, cfg_for("lz4"), area, 2)] == \
        [(0, None), (1, None), (2, None)]
    assert area.next_block == 100 and not area.disk
    # with ztailpacking they are tried (and may go inline)
    layout, _ = roundtrip(bytes(4096), cfg_for("lz4", ztail=True))
    assert layout is not None and layout.inline_pcluster


def test_empty_files_are_refused():
    with pytest.raises(ValueError):
        list(zw.compress_files([zw.FileJob(0, 0, 32, lambda *a: b"")], cfg_for(), FakeArea(4096)))


# ---------------------------------------------------------------------------
# superblock


@needs_lz4
def test_superblock_lz4_single_block_pclusters():
    s = cfg_for("lz4").superblock(False)
    assert s.feature_incompat == fmt.EROFS_FEATURE_INCOMPAT_LZ4_0PADDING
    assert s.u1 == 65535 and s.cfgs == b""
    s = cfg_for("lz4").superblock(True)
    assert s.feature_incompat & fmt.EROFS_FEATURE_INCOMPAT_ZTAILPACKING


@needs_lz4
def test_superblock_big_pclusters_and_cfgs_records():
    s = cfg_for("lz4", pcs=65536).superblock(False)
    assert s.feature_incompat == (fmt.EROFS_FEATURE_INCOMPAT_LZ4_0PADDING
                                  | fmt.EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER)
    assert s.u1 == 1 << fmt.Z_EROFS_COMPRESSION_LZ4
    assert s.cfgs == struct.pack("<HHH10x", 14, 65535, 16)
    if "lzma" in HAVE:
        s = cfg_for("lzma:lz4").superblock(False)
        assert s.u1 == 0b11
        size0 = struct.unpack_from("<H", s.cfgs)[0]
        assert size0 == 14 and struct.unpack_from("<H", s.cfgs, 2)[0] == 65535   # lz4 first
        assert struct.unpack_from("<H", s.cfgs, 16)[0] == 14                      # then lzma
        assert len(s.cfgs) == 32


def test_lz4_pclusters_stay_within_what_the_kernel_accepts():
    c = cfg_for("lz4", bs=1024, pcs=1 << 20)
    assert c.profile().max_blocks == 256 and c.profile().dest_size == 256 * 1024
    rec = c.superblock(False).cfgs
    assert struct.unpack_from("<HHH", rec) == (14, 65535, 256)
    if "lzma" in HAVE:
        c = cfg_for("lzma", bs=512, pcs=1 << 20)
        assert c.profile().max_blocks == 2047       # CBLKCNT keeps 11 bits


def test_bad_pcluster_sizes_are_refused():
    with pytest.raises(ValueError):
        z.CompressConfig.from_options("lz4", 4096, 6000)
    with pytest.raises(ValueError):
        z.CompressConfig.from_options("lz4", 4096, 2 << 20)
