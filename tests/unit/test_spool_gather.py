"""spool._Gather: writes at offsets, gathered in one reused buffer, land where they were asked
to, whatever their sizes (a piece filling the buffer, crossing its end, larger than it) and
whether they follow each other; memoryviews of a buffer that changes after the call too."""
import random

from mkerofs.writer import spool


def test_gathered_writes_land_where_asked():
    rng = random.Random(7)
    image = bytearray(12 << 20)
    calls = []

    def pwrite(data, offset):
        calls.append(len(data))
        image[offset:offset + len(data)] = data

    gather = spool._Gather(pwrite)
    want = bytearray(len(image))
    pos = 0
    source = bytearray(3 << 20)
    for i in range(400):
        if rng.random() < 0.1:
            pos += rng.randrange(1, 5000)               # a gap: the run is written out
        size = rng.choice([0, 1, 511, 4096, 70_000, spool._BUFFER - 3, spool._BUFFER,
                           spool._BUFFER + 9, rng.randrange(1, 200_000)])
        if pos + size > len(image):
            break
        source[:size] = bytes([i % 251 + 1]) * size
        piece = memoryview(source)[:size] if i % 2 else bytes(source[:size])
        gather.write(pos, piece)
        source[:size] = bytes(size)                     # the caller's buffer moves on
        want[pos:pos + size] = bytes([i % 251 + 1]) * size
        pos += size
    gather.flush()
    assert image == want
    assert max(calls) >= spool._BUFFER and len(calls) < 400
