"""mkerofs: build EROFS images, a drop-in for mkfs.erofs."""
from .options import BuildError, BuildOptions, TimeInherit
from .build import BuildResult, build

__version__ = "0.1.0"
__all__ = ["build", "BuildOptions", "BuildResult", "BuildError", "TimeInherit", "__version__"]
