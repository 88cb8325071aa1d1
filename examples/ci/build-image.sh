#!/bin/sh
# The steps of the CI workflow (github-workflow.yml), as one script anyone can run:
# build a reproducible image of TREE, check it, and put it with its checksum and build report
# in OUT for publishing.
#   TREE   the directory to pack        (default: examples/tree)
#   OUT    where the artifacts go       (default: build/publish)
#   NAME   the image's file name        (default: example.erofs)
#   MKEROFS, MKEROFS_READ  the commands (default: mkerofs, mkerofs-read)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
TREE=${TREE:-$here/../tree}
OUT=${OUT:-build/publish}
NAME=${NAME:-example.erofs}
MKEROFS=${MKEROFS:-mkerofs}
MKEROFS_READ=${MKEROFS_READ:-mkerofs-read}
# one time and one UUID per commit: the same sources give the same bytes
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH

mkdir -p "$OUT"
image=$OUT/$NAME
# build: lz4hc, compared with TREE after the build (--verify), the report for the record
$MKEROFS --quiet -zlz4hc -Efragments,dedupe --verify --report="$image.report.json" \
    "$image" "$TREE"
# verify: read every inode and extent back, independently of the build
$MKEROFS_READ verify -q "$image"
# (mtimes newer than SOURCE_DATE_EPOCH were clamped to it, as reproducible builds want)
$MKEROFS_READ compare -q --ignore-mtime "$image" "$TREE"
# publish: the image, its checksum, the report, and a human-readable summary
$MKEROFS_READ info "$image" > "$image.info.txt"
$MKEROFS_READ stats "$image" >> "$image.info.txt"
(cd "$OUT" && sha256sum "$NAME" > "$NAME.sha256")
echo "published $(wc -c < "$image") bytes: $image"
