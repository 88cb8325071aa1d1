#!/bin/sh
# Convert a container image layer (a tar, possibly gzip/zstd/xz compressed, on stdin or as
# LAYER) into an EROFS image, the way containerd's erofs differ calls mkfs.erofs: overlayfs
# whiteouts from .wh. entries (--aufs), no inline tails, a UUID fixed per layer.
#   convert-layer.sh LAYER.erofs [LAYER.tar] < LAYER.tar
# With --index (containerd's tar-index mode), the image holds only metadata pointing into the
# tar, and the tar (uncompressed, given as a file) is appended to it: one file to mount.
#   convert-layer.sh --index LAYER.erofs LAYER.tar
# The build report (LAYER.erofs.report.json) says what went in: inode counts, sizes, timing.
#   MKEROFS  the command (default: mkerofs)
set -eu
MKEROFS=${MKEROFS:-mkerofs}
index=
if [ "${1:-}" = --index ]; then
    index=1
    shift
fi
out=$1
shift
# the UUID from the image's name, so converting a layer again keeps its UUID
uuid=$(printf '%s' "$(basename "$out")" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
if [ -n "$index" ]; then
    tar=${1:?--index needs the layer as an uncompressed tar file}
    $MKEROFS --tar=i --aufs --quiet -U "$uuid" --report="$out.report.json" "$out" "$tar"
    cat "$tar" >> "$out"
    exit 0
fi
exec $MKEROFS --tar=f --aufs --quiet -Enoinline_data -U "$uuid" \
    --report="$out.report.json" "$out" "$@"
