"""The reader against hostile images: a corpus of named corruptions (reader_corpus/cases.py),
raw images that once broke it (reader_corpus/*.erofs), and hypothesis mutating small images.

Whatever the damage, the reader may only raise ImageError (with a message naming the problem)
or report it from verify(); any other exception, a hang or a huge allocation is a bug.
"""
from __future__ import annotations

import pytest

from support.run import build_image
from mkerofs.ondisk import format as fmt
from mkerofs.reader import Image, ImageError
from reader_corpus import (BASE_OPTIONS, CORPUS_DIR, FIXED, OPTIONAL_BASES, Layout, exercise,
                           fix_checksum, make_small_tree)
from reader_corpus.cases import CASES

@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, tuple[bytes, Layout]]:
    root = tmp_path_factory.mktemp("reader-fuzz")
    src = make_small_tree(root / "src")
    out = {}
    for name, options in BASE_OPTIONS.items():
        image = root / f"{name}.erofs"
        r = build_image(image, src, *FIXED, *options, check=name not in OPTIONAL_BASES)
        if r.returncode:
            continue
        data = image.read_bytes()
        out[name] = (data, Layout(data))
    return out


def test_base_images_are_clean(bases):
    for name, (data, _lay) in bases.items():
        assert exercise(data) == [], name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_image(case, bases):
    if case.base not in bases:
        pytest.skip(f"mkerofs cannot build the {case.base!r} base image yet")
    data, lay = bases[case.base]
    image = bytearray(data)
    case.mutate(image, lay)
    if case.fix_checksum:
        fix_checksum(image)
    messages = exercise(bytes(image))
    assert any(case.expect.lower() in m.lower() for m in messages), \
        f"expected {case.expect!r} among: {messages[:20]}"
    for m in messages:
        assert m and "Traceback" not in m


def test_bad_checksum_refused_on_request(bases):
    data, _lay = bases["plain"]
    image = bytearray(data)
    image[fmt.EROFS_SUPER_OFFSET + 120] ^= 1
    with Image(bytes(image)) as img:
        assert img.checksum_ok is False
    with pytest.raises(ImageError, match="checksum"):
        Image(bytes(image), require_checksum=True)


def test_deep_nesting_is_bounded(bases, monkeypatch):
    from mkerofs.reader import image as reader
    data, _lay = bases["plain"]
    monkeypatch.setattr(reader, "MAX_DEPTH", 1)
    with Image(data) as img:
        with pytest.raises(ImageError, match="nested more than"):
            list(img.walk())
        assert any("nested more than" in p for p in img.verify())


@pytest.mark.parametrize("path", sorted(CORPUS_DIR.glob("*.erofs")), ids=lambda p: p.name)
def test_corpus_file(path):
    exercise(path.read_bytes())


try:
    from reader_corpus.generated import (  # noqa: F401  (collected by pytest from here)
        test_compact_pack_block_counts_match_kernel, test_mutated_images_fail_cleanly)
except ImportError as e:      # no hypothesis: the named corpus above still runs
    if "hypothesis" not in str(e):
        raise

    def test_generated_mutations():
        pytest.skip("hypothesis is not installed (pip install -e '.[test]')")


def test_interlaced_plain_pcluster():
    from mkerofs.reader import zmap
    raw = bytes(range(256)) * 16                       # one 4096-byte block
    ext = zmap.Extent(4096 * 3 + 100, 300, 0, 4096, None, "interlaced", interlaced=True)
    assert zmap.unpack_plain(raw, ext, 4096) == raw[100:400]
    ext = zmap.Extent(4096 * 3 + 4000, 300, 0, 4096, None, "interlaced", interlaced=True)
    assert zmap.unpack_plain(raw, ext, 4096) == raw[4000:4096] + raw[:204]
    ext = zmap.Extent(50, 30, 0, 20, None, "ztailpacking", interlaced=True)
    with pytest.raises(ImageError, match="shorter"):
        zmap.unpack_plain(raw[:20], ext, 4096)
