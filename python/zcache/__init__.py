"""zcache: a drop-in, faster re-implementation of Rocicorp Zero's zero-cache.

Importing the package has no side effects; the Rust core is `zcache._native`.
"""


def __getattr__(name: str) -> str:
    # `__version__` is looked up on demand: importlib.metadata and its scan of the installed
    # distributions cost every launch tens of milliseconds before the server starts.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("zcache")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
