"""musicinterp: does MusicGen track long-range musical structure? Capture, annotate, probe.

The library is pure Python and never imports Prefect; ``flows/`` and ``tasks/`` wrap it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("musicinterp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
