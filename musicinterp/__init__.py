"""musicinterp: does MusicGen track long-range musical structure? Capture, annotate, probe.

The library is pure Python and never imports Prefect; ``flows/`` and ``tasks/`` wrap it. A run
(``musicinterp.run``: plan the slice and create the store, capture each shard, annotate each clip,
summarise) stands on ``config``, ``slice`` and ``sources``, ``models``, ``capture``, ``store`` and
``annotate``; ``analysis`` probes a finished store; ``toy`` trains the positive-control model.
``musicinterp.run.run_inline(spec, out)`` runs a whole run in this process, without Prefect.

For notebooks (``musicinterp.api``, loaded on first use so that ``import musicinterp`` stays light):
``open_run(path)``, ``capture(audio, sr, model=...)``, ``annotate(audio, sr)``, ``analyze(store, ...)``.
"""

from __future__ import annotations

import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("musicinterp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

if TYPE_CHECKING:
    from musicinterp.api import Run, analyze, annotate, capture, open_run

__all__ = ["Run", "__version__", "analyze", "annotate", "capture", "open_run"]

_API = frozenset({"Run", "analyze", "annotate", "capture", "open_run"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from musicinterp import api

        return getattr(api, name)
    raise AttributeError(f"module 'musicinterp' has no attribute {name!r}")


def _api_function(name: str) -> property:
    """A property of the package that is always ``musicinterp.api.<name>``, even after the module of the same
    name (``musicinterp.annotate``, ``musicinterp.capture``) is imported: importing a submodule sets the
    attribute of that name on its parent, and this setter keeps the module aside instead. The module stays
    importable by its full name (``from musicinterp.capture import capture_clip``)."""

    def get(self: types.ModuleType) -> Any:
        from musicinterp import api

        return getattr(api, name)

    def set_module(self: types.ModuleType, module: types.ModuleType) -> None:
        self.__dict__[f"_{name}_module"] = module

    return property(get, set_module)


class _Package(types.ModuleType):
    annotate = _api_function("annotate")
    capture = _api_function("capture")


sys.modules[__name__].__class__ = _Package
