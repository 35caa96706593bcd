"""The generation stage of a run: plan (the run's store plus the generated variables), every unfinished
(clip, seed) of a shard generated, written, decoded and annotated, and the totals.

Wraps :mod:`musicinterp.generate.sampling` for the run as ``musicinterp.run.capture`` wraps capture:
the model is loaded once per process, complete pairs are skipped (``gen_complete``; a complete pair that
is not yet annotated is only annotated), bad clips are collected with the reason, and each shard's
record is written beside the store (``generation/shards/NNNNN.json``).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import soundfile as sf
import torch
from pydantic import BaseModel, ConfigDict

from musicinterp.capture import encode_audio
from musicinterp.config import AnnotationSpec, CaptureSpec, GenerationSpec, ModelSpec, RunSpec
from musicinterp.frames import HOP_SAMPLES, SAMPLE_RATE_HZ, frames_of
from musicinterp.generate.annotate import annotate_continuation, continuation_label_schema
from musicinterp.generate.sampling import decode_codes, generate_continuation, sampling_seed
from musicinterp.generate.store import (
    generated_pairs,
    init_generation,
    mark_generated,
    write_continuation,
    write_continuation_labels,
)
from musicinterp.models import LoadedModel
from musicinterp.run.capture import cached_model
from musicinterp.run.paths import RunPaths
from musicinterp.run.plan import PreparedRun, prepare_run, shard_clips
from musicinterp.run.records import _read_records, write_json
from musicinterp.slice import ClipRecord, load_clip_audio
from musicinterp.sources.base import ClipError
from musicinterp.store import StoreError, finalize_store, open_store

log = logging.getLogger(__name__)

PairProgressFn = Callable[[int, int, str], None]


class PreparedGeneration(BaseModel):
    """What planning hands to the shards: the run (its store, manifest) and the generation's fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: PreparedRun
    generation_fingerprint: str
    n_seeds: int
    prompt_frames: int
    gen_frames: int

    @property
    def paths(self) -> RunPaths:
        return self.run.paths


@dataclass
class GenerationShardResult:
    """One generation attempt of a shard; pairs are named ``clip_id/seed``."""

    shard: int
    pairs: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    annotated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete (and annotated) before
    failed: dict[str, str] = field(default_factory=dict)  # pair -> reason
    frames: int = 0
    bytes_written: int = 0
    elapsed_s: float = 0.0


class GenerationShardFailed(RuntimeError):
    """Some (clip, seed) pairs of a shard failed; the others were generated. Carries the reasons."""

    def __init__(self, result: GenerationShardResult):
        self.result = result
        reasons = "; ".join(f"{c}: {r}" for c, r in result.failed.items())
        super().__init__(
            f"shard {result.shard}: {len(result.failed)} of {len(result.pairs)} continuations failed: {reasons}"
        )


def generation_spec(spec: RunSpec) -> GenerationSpec:
    if spec.generation is None:
        raise ValueError(
            f"config {spec.name!r} has no 'generation' section; add one (see README, Generation-time capture)"
        )
    return spec.generation


def prepare_generation(spec: RunSpec, out: str) -> PreparedGeneration:
    """Plan the run (creating or reopening its store) and add the generated variables to the store."""
    generation = generation_spec(spec)
    prepared = prepare_run(spec, out)
    labels = continuation_label_schema(spec.annotation) if generation.annotate else {}
    layout = init_generation(prepared.paths.store, generation, spec.capture, labels)
    return PreparedGeneration(
        run=prepared,
        generation_fingerprint=generation.fingerprint(),
        n_seeds=len(layout.seeds),
        prompt_frames=layout.prompt_frames,
        gen_frames=layout.gen_frames,
    )


def audio_file(paths: RunPaths, index: int, seed: int) -> str:
    """The decoded prompt + continuation of row ``index`` and ``seed`` (the continuation starts at prompt_s)."""
    return f"{paths.root}/generated/{index:05d}-seed{seed}.wav"


def shard_record_file(paths: RunPaths, shard: int) -> str:
    return f"{paths.root}/generation/shards/{shard:05d}.json"


def _write_wav(url: str, samples: np.ndarray) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def prompt_codes(loaded: LoadedModel, clip: ClipRecord, generation: GenerationSpec) -> torch.Tensor:
    """EnCodec codes of the clip's first ``prompt_s`` seconds, encoded alone (as an audio prompt is)."""
    p = frames_of(generation.prompt_s)
    if clip.n_frames < p:
        raise ClipError(
            clip.clip_id, f"{clip.duration_s:g} s is shorter than generation.prompt_s={generation.prompt_s:g} s"
        )
    samples = load_clip_audio(clip)
    return encode_audio(loaded, samples[: p * HOP_SAMPLES])


def generate_one(
    loaded: LoadedModel,
    capture: CaptureSpec,
    generation: GenerationSpec,
    annotation: AnnotationSpec,
    paths: RunPaths,
    clip: ClipRecord,
    index: int,
    seeds: list[int],
    result: GenerationShardResult,
    done: set[tuple[str, int]],
    annotated: set[tuple[str, int]],
) -> None:
    """Every unfinished seed of one clip: generate, write, flag; decode and annotate; flag."""
    store = paths.store
    todo = [s for s in seeds if (clip.clip_id, s) not in done]
    prompt = prompt_codes(loaded, clip, generation) if todo else None
    ds = open_store(store)
    for seed in seeds:
        pair = f"{clip.clip_id}/{seed}"
        result.pairs.append(pair)
        needs_labels = generation.annotate and (clip.clip_id, seed) not in annotated
        if seed not in todo and not needs_labels:
            result.skipped.append(pair)
            continue
        try:
            if prompt is not None and seed in todo:
                torch_seed = sampling_seed(seed, clip.clip_id)
                cont = generate_continuation(loaded, prompt, capture, generation, torch_seed)
                prompt_np = prompt.cpu().numpy()
                result.bytes_written += write_continuation(
                    store, clip.clip_id, seed, cont.resid, cont.codes, prompt_np, torch_seed, ds=ds
                )
                mark_generated(store, clip.clip_id, seed, ds=ds)
                result.generated.append(pair)
                result.frames += cont.n_frames
                codes = np.concatenate([prompt_np, cont.codes], axis=1)
            else:  # generated before, not yet annotated
                codes = _stored_codes(ds, clip.clip_id, seed)
            audio = decode_codes(loaded, codes)
            if generation.write_audio:
                _write_wav(audio_file(paths, index, seed), audio)
            if generation.annotate:
                labels = annotate_continuation(audio, codes.shape[1] - ds.sizes["gen_time"], annotation, pair)
                write_continuation_labels(store, clip.clip_id, seed, labels, ds=ds)
                mark_generated(store, clip.clip_id, seed, flag="gen_annotated", ds=ds)
                result.annotated.append(pair)
        except Exception as e:  # noqa: BLE001 - one bad clip must not sink the shard
            reason = e.problem if isinstance(e, ClipError) else f"{type(e).__name__}: {e}"
            log.error("continuation %s failed: %s", pair, reason)
            result.failed[pair] = reason


def _stored_codes(ds, clip_id: str, seed: int) -> np.ndarray:
    prompt = ds["gen_prompt_codes"].sel(clip=clip_id).values
    gen = ds["gen_codes"].sel(clip=clip_id, seed=seed).values
    return np.concatenate([prompt, gen], axis=1).astype(np.int64)


def generate_shard(
    model: ModelSpec,
    capture: CaptureSpec,
    generation: GenerationSpec,
    annotation: AnnotationSpec,
    prepared: PreparedGeneration,
    shard: int,
    on_clip: PairProgressFn | None = None,
) -> GenerationShardResult:
    """Generate every unfinished (clip, seed) of one shard into the store; bad clips never stop the others.

    Refuses to start when the store's continuations are of other generation settings, or when the model
    now loads as another revision than the store holds.
    """
    paths = prepared.paths
    ds = open_store(paths.store)
    if ds.attrs.get("generation_fingerprint") != generation.fingerprint():
        raise StoreError(
            f"store {paths.store!r} was prepared for generation settings {ds.attrs.get('generation_fingerprint')!r}, "
            f"not {generation.fingerprint()!r}; plan the generation again"
        )
    clips = shard_clips(paths, shard)
    result = GenerationShardResult(shard=shard)
    t0 = time.perf_counter()
    loaded, lock = cached_model(model, capture.device)
    if loaded.revision != ds.attrs["model_revision"]:
        raise StoreError(
            f"store {paths.store!r} holds activations of model revision {ds.attrs['model_revision']!r}, but the "
            f"model now loads as {loaded.revision!r}; choose another --out or delete the old store"
        )
    done = generated_pairs(ds)
    annotated = generated_pairs(ds, "gen_annotated")
    seeds = [int(s) for s in ds["seed"].values]
    for i, (index, clip) in enumerate(clips):
        try:
            with lock:
                generate_one(
                    loaded, capture, generation, annotation, paths, clip, index, seeds, result, done, annotated
                )
        except Exception as e:  # noqa: BLE001 - the prompt could not be read: every seed of the clip fails
            reason = e.problem if isinstance(e, ClipError) else f"{type(e).__name__}: {e}"
            log.error("clip %s: no continuation: %s", clip.clip_id, reason)
            for seed in seeds:
                result.pairs.append(f"{clip.clip_id}/{seed}")
                result.failed[f"{clip.clip_id}/{seed}"] = reason
        if on_clip is not None:
            on_clip(i + 1, len(clips), clip.clip_id)
    result.elapsed_s = round(time.perf_counter() - t0, 3)
    write_json(shard_record_file(paths, shard), asdict(result))
    return result


@dataclass
class GenerationSummary:
    """Totals of a generation from the store's flags and the shard records."""

    root: str
    store: str
    weights: str
    n_clips: int
    seeds: list[int]
    complete: int
    annotated: int
    pairs: int
    failed: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.failed and self.complete == self.pairs


def summarise_generation(prepared: PreparedGeneration) -> GenerationSummary:
    """Totals from the flags; consolidates the store's metadata so plain ``xr.open_zarr`` sees the new variables."""
    paths = prepared.paths
    finalize_store(paths.store)
    ds = open_store(paths.store)
    failed: dict[str, str] = {}
    for record in _read_records(f"{paths.root}/generation/shards"):
        failed.update(record.get("failed", {}))
    done = generated_pairs(ds)
    failed = {k: v for k, v in failed.items() if (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])) not in done}
    return GenerationSummary(
        root=paths.root,
        store=paths.store,
        weights=str(ds.attrs.get("weights")),
        n_clips=ds.sizes["clip"],
        seeds=[int(s) for s in ds["seed"].values],
        complete=len(done),
        annotated=len(generated_pairs(ds, "gen_annotated")),
        pairs=ds.sizes["clip"] * ds.sizes["seed"],
        failed=failed,
    )


def summary_rows(summary: GenerationSummary) -> list[dict[str, Any]]:
    return [
        {
            "pairs": summary.pairs,
            "complete": summary.complete,
            "annotated": summary.annotated,
            "failed": len(summary.failed),
        }
    ]
