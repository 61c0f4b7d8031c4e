"""zcache: a drop-in, faster re-implementation of Rocicorp Zero's zero-cache.

Importing the package has no side effects; the Rust core is `zcache._native`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zcache")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
