"""The EROFS on-disk format: structures, constants, index and xattr encodings."""
