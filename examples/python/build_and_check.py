#!/usr/bin/env python3
"""Build an image with the Python API, print what the build report says, then read the image
back with the reader: the numbers agree.

    python3 examples/python/build_and_check.py [TREE] [IMAGE]
"""
import json
import sys
from pathlib import Path

from mkerofs import BuildOptions, build
from mkerofs.reader import Image
from mkerofs.reader.stats import image_stats

here = Path(__file__).resolve().parent
tree = sys.argv[1] if len(sys.argv) > 1 else str(here.parent / "tree")
image = sys.argv[2] if len(sys.argv) > 2 else "build/api-example.erofs"
Path(image).parent.mkdir(parents=True, exist_ok=True)

result = build(image, tree, BuildOptions(compressor="lz4hc", timestamp=0, uuid=bytes(16),
                                         label=b"api-example", quiet=True))
report = result.report
print("\n".join(report.summary_lines()))
print(json.dumps({"inodes": report.inodes, "phases": report.phases}, indent=2))

with Image.open(image) as img:
    problems = img.verify()
    found = image_stats(img)
if problems:
    sys.exit("\n".join(problems))
# the reader sees what the writer counted
assert found.inodes == report.inodes, (found.inodes, report.inodes)
assert {k: (t.files, t.bytes_in, t.bytes_out) for k, t in found.data.items()} == \
    {k: (t.files, t.bytes_in, t.bytes_out) for k, t in report.data.items()}
print(f"{image}: {result.size} bytes, clean, report and image agree")
