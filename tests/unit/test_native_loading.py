"""The package's layers: what importing a part of mkerofs loads (checked in a fresh interpreter).

The reader must not load the writer, multiprocessing or any compression library: libraries are
bound when an algorithm is first used (codecs/native.py).  `import mkerofs` loads nothing of the
package but itself.
"""
import json
import subprocess
import sys

NATIVE = ("liblz4", "libzstd", "liblzma", "libdeflate")

# what the interpreter loaded before (site hooks may import e.g. shutil, hence lzma) is left out
_PROBE = """
import json, sys
def mapped():
    maps = open("/proc/self/maps").read()
    return {{n for n in {native!r} if n in maps}}
before_modules, before_native = set(sys.modules), mapped()
{imports}
print(json.dumps({{"modules": sorted(set(sys.modules) - before_modules),
                   "native": sorted(mapped() - before_native)}}))
"""


def _loaded(imports: str) -> dict:
    code = _PROBE.format(imports=imports, native=NATIVE)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_reader_loads_no_writer_no_multiprocessing_no_native_library():
    got = _loaded("import mkerofs.reader")
    mods = got["modules"]
    assert "mkerofs.reader.image" in mods            # the probe did import the reader
    assert [m for m in mods if m.startswith("mkerofs.writer")] == []
    assert [m for m in mods if m.startswith("mkerofs.cli")] == []
    assert [m for m in mods if m == "multiprocessing" or m.startswith("multiprocessing.")] == []
    assert [m for m in mods if m in ("lz4", "zstandard", "_lzma")] == []
    assert got["native"] == []


def test_reading_an_uncompressed_image_loads_no_native_library(tmp_path):
    from support.run import run_mkerofs
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello" * 1000)
    image = tmp_path / "img"
    run_mkerofs(image, src)
    got = _loaded(f"from mkerofs.reader import Image\n"
                  f"img = Image.open({str(image)!r})\n"
                  f"assert img.read(img.lookup(b'/a')) == b'hello' * 1000")
    assert got["native"] == []


def test_native_library_loads_on_first_use_only():
    got = _loaded("from mkerofs.codecs import registry\n"
                  "registry.decoder(0)\n"
                  "registry.decoder(3)\n"
                  "from mkerofs.codecs.lz4 import LZ4\n"
                  "LZ4().compress(b'x' * 100)")
    assert got["native"] == ["liblz4"]


def test_import_mkerofs_loads_almost_nothing():
    mods = _loaded("import mkerofs")["modules"]
    ours = [m for m in mods if m.startswith("mkerofs")]
    assert ours == ["mkerofs"]
    for heavy in ("ctypes", "click", "multiprocessing", "zlib", "hashlib", "dataclasses"):
        assert heavy not in mods, heavy


def test_builds_that_hash_nothing_do_not_load_hashlib(tmp_path):
    """OpenSSL (hashlib's _hashlib) costs 3.5 MB of peak memory: a build loads it only to hash
    (compressed extents with -Ededupe, fragments, a UUID from SOURCE_DATE_EPOCH)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello" * 1000)
    (src / "b").write_bytes(b"hello" * 1000)
    build = ("from mkerofs import BuildOptions, build\n"
             f"build({str(tmp_path / 'img')!r}, {str(src)!r}, BuildOptions(**{{}}))\n")
    for options in ({}, {"dedupe": True}):      # (-Ededupe without -z: chunks, deduplicated)
        mods = _loaded(build.replace("{}", repr(options)))["modules"]
        assert "mkerofs.writer.build" in mods and "_hashlib" not in mods, options
    mods = _loaded(build.replace("{}", repr({"source_date_epoch": 1})))["modules"]
    assert "_hashlib" in mods or "_sha256" in mods      # (the probe sees a build that hashes)
