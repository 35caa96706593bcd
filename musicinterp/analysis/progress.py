"""Progress inside a probe, for whoever watches (a terminal bar, a notebook), without the statistics
knowing how it is shown: the permutation loop reports its draws to the callback installed here.

    with on_draws(lambda done, most: print(done, most)):
        probe_layer_target(...)

``most`` is the most draws the cell may make (sequential tests often stop earlier). The callback is kept in
a context variable, so concurrent probes in other threads or tasks report to their own watcher, or to none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

DrawsCallback = Callable[[int, int], None]

_draws: ContextVar[DrawsCallback | None] = ContextVar("musicinterp_analysis_draws", default=None)


@contextmanager
def on_draws(callback: DrawsCallback | None) -> Iterator[None]:
    """Call ``callback(done, most)`` after every block of permutation draws made in this context."""
    token = _draws.set(callback)
    try:
        yield
    finally:
        _draws.reset(token)


def report_draws(done: int, most: int) -> None:
    """Tell the watcher, if any, that ``done`` of at most ``most`` draws are made."""
    callback = _draws.get()
    if callback is not None:
        callback(done, most)
