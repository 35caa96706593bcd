"""Transient failures tried again with exponential backoff: an I/O error while a clip is written into the
store, a model that fails to load.

On a fleet a store write can meet a dropped connection, an object store's time-out or a network mount's
``EIO``, and a model load a download cut short: tried again a moment later, each usually succeeds. What
fails the same way every time (a full disk, a read-only or forbidden path, a model folder that does not
exist, a corrupt weights file) is never retried: it fails its clip (a write) or its shard (the model) at
once, with its reason. Each retry is logged (warning) naming what was tried and the error; once the
attempts are used up, :class:`RetriesExhausted` says how many there were and chains the last error.

(A dozen lines of our own rather than a dependency: the backoff needed here is small and fixed.)
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# an OSError with one of these fails the same way when tried again at once
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,  # no space left: the store's StoreError says to free space and run the same command again
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
        errno.EFBIG,
    }
)


class RetriesExhausted(RuntimeError):
    """A transient-looking failure that did not pass: every attempt failed. Chains the last error."""


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently a transient failure is tried again: ``attempts`` tries in all, the
    n-th retry after ``first_delay_s * factor ** (n - 1)`` seconds (at most ``max_delay_s``)."""

    attempts: int = 4
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_s < 0 or self.factor < 1 or self.max_delay_s < 0:
            raise ValueError(f"a backoff needs attempts >= 1, delays >= 0 and factor >= 1, got {self}")

    def delay_s(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1 = the second attempt)."""
        return min(self.first_delay_s * self.factor ** (retry - 1), self.max_delay_s)


WRITE_BACKOFF = Backoff()  # a clip's arrays and its completion flag: 0.5 + 1 + 2 s at most, then the clip fails
MODEL_LOAD_BACKOFF = Backoff(attempts=4, first_delay_s=2.0)  # 2 + 4 + 8 s at most, then the shard fails


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass when tried again: an ``OSError`` (a connection dropped or reset, a time-out,
    an I/O error, an object store's error) other than the permanent kinds (``PERMANENT_ERRNOS``), found in
    the error or in what caused it (``raise ... from``: the store's ``StoreError`` and the model loader's
    ``ModelLoadError`` wrap the ``OSError`` behind them). Anything else fails the same way every time."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return cause.errno not in PERMANENT_ERRNOS
        seen.add(id(cause))
        cause = cause.__cause__
    return False


def with_retries(
    fn: Callable[[], T],
    what: str,
    backoff: Backoff,
    transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, tried again after each transient failure (see the module's docstring).

    ``what`` names the operation in the log and the error ("writing clip 'x' into store '...'"). A
    permanent failure is raised as it is, at once; the last of ``backoff.attempts`` transient failures
    as :class:`RetriesExhausted` from it.
    """
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as e:
            if not transient(e):
                raise
            if attempt >= backoff.attempts:
                raise RetriesExhausted(f"{what}: failed {attempt} times, the last with {type(e).__name__}: {e}") from e
            delay = backoff.delay_s(attempt)
            log.warning(
                "%s failed (attempt %d of %d): %s: %s; trying again in %.2g s",
                what,
                attempt,
                backoff.attempts,
                type(e).__name__,
                e,
                delay,
            )
            sleep(delay)
            attempt += 1
