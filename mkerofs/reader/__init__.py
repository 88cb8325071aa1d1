"""Read EROFS images without mounting them (see image.py); imports nothing of the writer."""
from .image import READ_LIMIT, Extent, Image, ImageError, Inode, NotFoundError

__all__ = ["Image", "Inode", "Extent", "ImageError", "NotFoundError", "READ_LIMIT"]
