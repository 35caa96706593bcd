"""The capture stage of a run: every unfinished clip of a shard into the store, bad clips collected.

Wraps ``musicinterp.capture`` (one clip through the model) for the run: loads the model once per
process (``cached_model``), skips clips whose completion flag is set, sets the flag after each clip
and writes the shard's record beside the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from musicinterp.capture import Capture, capture_codes, capture_codes_batch, encode_audio, encoder_numerics
from musicinterp.config import CaptureSpec, ModelSpec
from musicinterp.models import LoadedModel, load_model
from musicinterp.run.inputs import check_locator
from musicinterp.run.paths import RunPaths
from musicinterp.run.plan import shard_clips
from musicinterp.run.records import ShardResult, read_shard_record, write_shard_record
from musicinterp.run.retry import MODEL_LOAD_BACKOFF, WRITE_BACKOFF, Backoff, with_retries
from musicinterp.slice import ClipRecord, load_clip_audio
from musicinterp.sources.base import ClipError
from musicinterp.store import (
    ClipWriter,
    StoreError,
    mark_complete,
    open_store,
    reset_damaged,
    verify_clips,
    write_clip,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]

WRITE_QUEUE_CLIPS = 1  # captured clips waiting for (or in) the writer thread: bounds memory to ~2 clips
_Pending = tuple[int, ClipRecord, "Future[tuple[int, float]] | None"]  # clip index, clip, its write (None: no write)


class ShardFailed(RuntimeError):
    """Some clips of a shard failed; the others were captured. Carries the per-clip reasons."""

    def __init__(self, result: ShardResult):
        self.result = result
        reasons = "; ".join(f"{c}: {r}" for c, r in result.failed.items())
        super().__init__(f"shard {result.shard}: {len(result.failed)} of {len(result.clips)} clips failed: {reasons}")


_cached: tuple[str, LoadedModel, threading.Lock] | None = None
_cache_lock = threading.Lock()


def cached_model(model: ModelSpec, device: str) -> tuple[LoadedModel, threading.Lock]:
    """The model for ``(model, device)``, loaded once and kept until another one is asked for.

    A worker process captures shard after shard of the same run: loading the weights once saves
    that time on every shard after the first. Only the last model asked for is kept, so a worker
    that serves runs of different models holds one set of weights at a time, not every model it
    has seen; ``clear_model_cache`` drops it (tests, notebooks, freeing the device). The lock that
    comes with the model serialises captures on it (capture hooks the model's layers).
    """
    global _cached
    key = f"{model.fingerprint()}:{device}"
    with _cache_lock:
        if _cached is None or _cached[0] != key:
            _cached = None  # let the old weights go before the new ones are loaded
            _cached = (key, load_model(model, device=device), threading.Lock())
        return _cached[1], _cached[2]


def clear_model_cache() -> None:
    """Drop the cached model (its weights are freed once no capture holds it)."""
    global _cached
    with _cache_lock:
        _cached = None


def capture_shard(
    model: ModelSpec,
    capture: CaptureSpec,
    paths: RunPaths,
    shard: int,
    on_clip: ProgressFn | None = None,
    roots: list[str] | None = None,
    overlap_writes: bool | None = None,
    write_backoff: Backoff = WRITE_BACKOFF,
    load_backoff: Backoff = MODEL_LOAD_BACKOFF,
) -> ShardResult:
    """Capture every unfinished clip of one shard into the store; bad clips never stop the others.

    Complete clips (their flag is set) are read back first: a damaged one (a chunk missing, truncated
    or not finite) has its flag cleared and is captured again (``result.repaired`` says why); the
    whole ones are skipped, so running a shard twice is harmless and a rerun after a crash redoes
    exactly the unfinished clips (complete clips that an earlier attempt of the shard captured are
    listed as ``captured_earlier``, not ``skipped``). The shard's record is rewritten after every
    clip. ``roots``: the run's data roots (``PreparedRun.data_roots``); an audio-folder clip whose
    file lies outside them fails, naming it (None: not checked). Refuses to start when the model now
    loads as another revision than the store holds.

    ``overlap_writes``: clip n is written by one background thread while clip n + 1 is encoded and
    captured. The queue holds ``WRITE_QUEUE_CLIPS`` clip, so memory stays at two clips' activations;
    the completion flag is still set last, after the clip's arrays, and a failed write fails that clip
    by its id. False: write in the capturing thread. None (default): ``writes_can_overlap``.

    Transient failures (``musicinterp.run.retry``) are tried again with backoff: writing a clip (its arrays
    and its flag, ``write_backoff``; then the clip fails, naming it) and loading the model
    (``load_backoff``; then the shard fails, naming the model). A permanent one fails at once.
    """
    clips = [clip for _, clip in shard_clips(paths, shard)]
    result = ShardResult(shard=shard, clips=[c.clip_id for c in clips])
    before = read_shard_record(paths, shard)  # the previous attempt, if any: what it captured is not "skipped"
    earlier = set(before.captured) | set(before.captured_earlier) if before else set()
    result.attempt = before.attempt + 1 if before else 1
    result.encoded_with = {c: how for c, how in (before.encoded_with if before else {}).items() if c in earlier}
    ds = open_store(paths.store)  # the store's metadata read once per shard, not once per clip
    store_writer = ClipWriter(paths.store)
    result.repaired = verify_clips(paths.store, result.clips, ds=ds)
    if result.repaired:
        reset_damaged(store_writer, result.repaired)
    done = {str(c) for c, flag in zip(ds["clip"].values, ds["complete"].values) if flag} - set(result.repaired)
    t0 = time.perf_counter()
    what = f"loading {model.source} model {model.name!r} on {capture.device} for shard {shard}"
    try:
        loaded, lock = with_retries(lambda: cached_model(model, capture.device), what, load_backoff)
    except Exception as e:
        log.error("shard %d failed: %s: %s: %s", shard, what, type(e).__name__, e)
        raise
    if loaded.revision != ds.attrs["model_revision"]:
        raise StoreError(
            f"store {paths.store!r} holds activations of model revision {ds.attrs['model_revision']!r}, but "
            f"the model now loads as {loaded.revision!r} (its weights changed since the run was planned); "
            "choose another --out or delete the old store"
        )
    numerics = encoder_numerics(loaded)
    if overlap_writes is None:
        overlap_writes = writes_can_overlap(capture.device)
    pending: deque[_Pending] = deque()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard{shard}-writer") if overlap_writes else None

    stopped = threading.Event()  # a write was interrupted (KeyboardInterrupt, SystemExit): write no more

    def write(clip_id: str, cap: Capture) -> tuple[int, float]:
        if stopped.is_set():
            raise InterruptedError(f"clip {clip_id!r} not written: an earlier write of the shard was interrupted")
        try:
            return write_one(store_writer, clip_id, cap, write_backoff)
        except BaseException as e:
            if not isinstance(e, Exception):
                stopped.set()
            raise

    def book(clip: ClipRecord, written: int, write_s: float) -> None:
        result.write_s += write_s
        result.bytes_written += written
        result.captured.append(clip.clip_id)
        result.encoded_with[clip.clip_id] = numerics
        result.frames += clip.n_frames
        result.audio_s += clip.duration_s

    def settle(item: _Pending) -> None:
        """Book one clip's outcome (waiting for its write), rewrite the record, report progress."""
        i, clip, outcome = item
        if outcome is not None:
            try:
                book(clip, *outcome.result())
            except Exception as e:  # noqa: BLE001 - a failed write fails its clip, never the shard
                reason = f"{type(e).__name__}: {e}"  # the store's errors name the clip and the cause
                log.error("clip %s failed: %s", clip.clip_id, reason)
                result.failed[clip.clip_id] = reason
        result.elapsed_s = time.perf_counter() - t0
        try:  # after every clip: an attempt killed midway leaves what it captured for the next one to say
            write_shard_record(paths, result)
        except OSError as e:
            log.warning("shard %d: %s", shard, e)
        if on_clip is not None:
            on_clip(i + 1, len(clips), clip.clip_id)

    def fail(clip: ClipRecord, e: Exception) -> None:
        reason = str(e) if isinstance(e, ClipError) else f"{type(e).__name__}: {e}"
        log.error("clip %s failed: %s", clip.clip_id, reason)
        result.failed[clip.clip_id] = reason

    def submit(i: int, clip: ClipRecord, cap: Capture | None) -> None:
        """Queue clip i's write (None: nothing to write), then settle what has landed, in clip order."""
        outcome: Future[tuple[int, float]] | None = None
        if cap is not None and writer is not None:
            outcome = writer.submit(write, clip.clip_id, cap)
        elif cap is not None:
            outcome = Future()
            try:
                outcome.set_result(write(clip.clip_id, cap))
            except Exception as e:  # noqa: BLE001 - booked as the clip's failure by settle
                outcome.set_exception(e)
        pending.append((i, clip, outcome))
        # clip i is written while clip i + 1 is encoded and captured: at most WRITE_QUEUE_CLIPS writes wait
        while pending and (
            pending[0][2] is None
            or pending[0][2].done()
            or sum(p[2] is not None for p in pending) > WRITE_QUEUE_CLIPS * batch_size
        ):
            settle(pending.popleft())

    batch_size = capture.batch_size
    batch: list[tuple[int, ClipRecord, torch.Tensor]] = []  # encoded clips of one length awaiting one forward pass

    def flush() -> None:
        """Capture the waiting clips in one forward pass; should the batch fail, each clip alone, so that an
        error names its clip and the others are still captured."""
        if not batch:
            return
        items = batch[:]
        batch.clear()
        t0 = time.perf_counter()
        caps: list[Capture | None]
        try:
            with lock:
                # on CUDA the last layers' copies to the host may still be in flight: the writer waits for them
                caps = list(capture_codes_batch(loaded, [codes for _, _, codes in items], capture, wait=False))
        except Exception as e:  # noqa: BLE001 - retried clip by clip below
            log.warning("batch of %d clips failed (%s: %s); capturing them one by one", len(items), type(e).__name__, e)
            caps = []
            for _, clip, codes in items:
                try:
                    with lock:
                        caps.append(capture_codes(loaded, codes, capture))
                except Exception as e1:  # noqa: BLE001 - one bad clip must not sink the shard
                    fail(clip, e1)
                    caps.append(None)
        result.capture_s += time.perf_counter() - t0
        for (i, clip, _), cap in zip(items, caps, strict=True):
            submit(i, clip, cap)

    try:
        for i, clip in enumerate(clips):
            if clip.clip_id in done:
                flush()
                (result.captured_earlier if clip.clip_id in earlier else result.skipped).append(clip.clip_id)
                submit(i, clip, None)
                continue
            try:
                if roots is not None:
                    check_locator(clip, roots)
                if batch_size == 1:
                    with lock:
                        cap, encode_s, capture_s = encode_and_capture(loaded, capture, clip)
                    result.encode_s += encode_s
                    result.capture_s += capture_s
                else:
                    t0_encode = time.perf_counter()
                    with lock:
                        codes = encode_clip(loaded, clip)
                    result.encode_s += time.perf_counter() - t0_encode
            except Exception as e:  # noqa: BLE001 - one bad clip must not sink the shard
                flush()
                fail(clip, e)
                submit(i, clip, None)
                continue
            if batch_size == 1:
                submit(i, clip, cap)
                del cap  # the writer holds the only reference: freed once written
                continue
            if batch and batch[0][2].shape[-1] != codes.shape[-1]:
                flush()  # a batch holds one length: a clip of another length starts the next
            batch.append((i, clip, codes))
            if len(batch) == batch_size:
                flush()
        flush()
        while pending:  # the shard finishes only once every write has landed (or failed, naming its clip)
            settle(pending.popleft())
    except BaseException:  # stopped midway: a write in flight finishes (flag last), and the record says so
        if writer is not None:
            writer.shutdown(wait=True)
        for _, clip, outcome in pending:
            if outcome is not None and outcome.exception() is None:
                book(clip, *outcome.result())
        try:
            write_shard_record(paths, result)
        except OSError as e:
            log.warning("shard %d: %s", shard, e)
        raise
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
    result.elapsed_s = time.perf_counter() - t0
    write_shard_record(paths, result)
    return result


def writes_can_overlap(device: str) -> bool:
    """Whether a writer thread has a core to itself: the model runs on an accelerator, or torch leaves a core free.

    Measured on the 2-core CPU machine with torch on both cores (musicgen-small shape, 3 clips of 5 s,
    4 interleaved rounds): the writer thread made the shard 1.12x slower, slower in every round; the
    compression then competes with the forward pass's threads instead of using an idle core.
    """
    return not device.startswith("cpu") or torch.get_num_threads() < (os.cpu_count() or 1)


def encode_clip(loaded: LoadedModel, clip: ClipRecord) -> torch.Tensor:
    """Load one clip's audio and encode it: EnCodec codes ``(codebook, frame)``."""
    samples = load_clip_audio(clip)
    if samples.shape[0] < 1:
        raise ValueError("empty clip")
    return encode_audio(loaded, samples)


def encode_and_capture(loaded: LoadedModel, capture: CaptureSpec, clip: ClipRecord) -> tuple[Capture, float, float]:
    """Load and encode one clip, then capture its residual stream; returns it with encode and capture seconds."""
    t0 = time.perf_counter()
    codes = encode_clip(loaded, clip)
    t1 = time.perf_counter()
    cap = capture_codes(loaded, codes, capture)
    return cap, t1 - t0, time.perf_counter() - t1


def write_one(
    store: str | ClipWriter, clip_id: str, cap: Capture, backoff: Backoff = WRITE_BACKOFF
) -> tuple[int, float]:
    """Write one clip's arrays, then (last) set its completion flag; returns bytes written and seconds taken.

    Each of the two writes is tried again after a transient failure (``backoff``); both are idempotent
    (whole chunks of the clip's own region). ``store``: its URL, or a ``ClipWriter`` kept open for the shard."""
    t0 = time.perf_counter()
    where = f"clip {clip_id!r} into store {store if isinstance(store, str) else store.url!r}"
    cap.wait()  # the device-to-host copies behind its arrays have landed (CUDA; at once elsewhere)
    written = with_retries(
        lambda: write_clip(store, clip_id, cap.resid, cap.codes, cap.quant), f"writing {where}", backoff
    )
    with_retries(lambda: mark_complete(store, clip_id), f"setting the completion flag of {where}", backoff)
    return written, time.perf_counter() - t0
