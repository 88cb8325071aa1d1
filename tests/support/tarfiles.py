"""Hand-made tar blocks: headers with any field set (also wrong ones), members, PAX headers."""
from __future__ import annotations


def header(name: bytes, typeflag: bytes = b"0", size: int = 0, *, mode: int = 0o644, uid: int = 0,
           gid: int = 0, mtime: int = 1_700_000_000, linkname: bytes = b"",
           magic: bytes = b"ustar\x0000", devmajor: bytes | None = None,
           devminor: bytes | None = None, prefix: bytes = b"", tail: bytes = b"",
           fields: dict | None = None, signed: bool = False) -> bytes:
    f = {
        "name": name, "mode": b"%07o\0" % mode, "uid": b"%07o\0" % uid, "gid": b"%07o\0" % gid,
        "size": b"%011o\0" % size, "mtime": b"%011o\0" % mtime, "chksum": b" " * 8,
        "typeflag": typeflag, "linkname": linkname, "magic": magic, "uname": b"root",
        "gname": b"root", "devmajor": b"0000000\0" if devmajor is None else devmajor,
        "devminor": b"0000000\0" if devminor is None else devminor, "prefix": prefix,
    }
    f.update(fields or {})
    layout = [("name", 100), ("mode", 8), ("uid", 8), ("gid", 8), ("size", 12), ("mtime", 12),
              ("chksum", 8), ("typeflag", 1), ("linkname", 100), ("magic", 8), ("uname", 32),
              ("gname", 32), ("devmajor", 8), ("devminor", 8), ("prefix", 155), ("tail", 12)]
    f["tail"] = tail
    block = bytearray(b"".join(f[k].ljust(n, b"\0")[:n] for k, n in layout))
    total = sum(b - 256 if signed and b >= 128 else b for b in block)
    if "chksum" not in (fields or {}):
        block[148:156] = b"%06o\0 " % total
    return bytes(block)


def member(hdr: bytes, payload: bytes = b"") -> bytes:
    return hdr + payload + bytes(-len(payload) % 512)


def pax(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    body = b""
    for key, value in records:
        rest = b" " + key + b"=" + value + b"\n"
        n = len(rest) + 1
        while len(str(n)) + len(rest) != n:
            n += 1
        body += str(n).encode() + rest
    return member(header(b"PaxHeader", typeflag, len(body)), body)


END = bytes(1024)
