#!/bin/sh
# Convert a container image layer (a tar, possibly gzip/zstd/xz compressed, on stdin or as
# LAYER) into an EROFS image, the way containerd's erofs differ calls mkfs.erofs: overlayfs
# whiteouts from .wh. entries (--aufs), no inline tails, a UUID fixed per layer.
#   convert-layer.sh LAYER.erofs [LAYER.tar] < LAYER.tar
# The build report (LAYER.erofs.report.json) says what went in: inode counts, sizes, timing.
#   MKEROFS  the command (default: mkerofs)
set -eu
MKEROFS=${MKEROFS:-mkerofs}
out=$1
shift
# the UUID from the image's name, so converting a layer again keeps its UUID
uuid=$(printf '%s' "$(basename "$out")" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
exec $MKEROFS --tar=f --aufs --quiet -Enoinline_data -U "$uuid" \
    --report="$out.report.json" "$out" "$@"
