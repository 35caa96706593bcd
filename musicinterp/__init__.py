"""musicinterp: does MusicGen track long-range musical structure? Capture, annotate, probe.

The library is pure Python and never imports Prefect; ``flows/`` and ``tasks/`` wrap it. A run
(``musicinterp.run``: plan the slice and create the store, capture each shard, annotate each clip,
summarise) stands on ``config``, ``slice`` and ``sources``, ``models``, ``capture``, ``store`` and
``annotate``; ``analysis`` probes a finished store; ``toy`` trains the positive-control model.
``musicinterp.run.run_inline(spec, out)`` runs a whole run in this process, without Prefect.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("musicinterp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
