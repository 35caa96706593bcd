"""The generated variables in the run's store, beside the teacher-forced ones (same ``clip``, ``layer``,
``feature`` and ``codebook`` dims; new ``seed``, ``gen_time`` and ``prompt_time`` dims).

Template first, regions after, flags last, as for capture (musicinterp/store.py): :func:`init_generation`
adds the lazy template once, or checks that the variables already there were made by the same
``GenerationSpec`` (its fingerprint is a store attribute); every generated variable is chunked one
(clip, seed) per chunk, so two writers never share a chunk; ``gen_complete`` (and ``gen_annotated``)
is written last, so a rerun redoes exactly the unfinished (clip, seed) pairs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from musicinterp.config import CaptureSpec, GenerationSpec
from musicinterp.frames import FRAME_RATE_HZ, frames_of
from musicinterp.store import CHUNK_TARGET_BYTES, CODES_FILL, RESID_FILL, StoreError, open_store

log = logging.getLogger(__name__)

GEN_PREFIX = "gen_"
GEN_DIMS = ("seed", "gen_time", "prompt_time")
GENERATION_CONVENTION = (
    "gen_time j is frame prompt_frames + j of the clip (centred at (prompt_frames + j) / 50 s), the state of "
    "decoder step prompt_frames + j + 1 while sampling with the KV cache; the prompt's frames are never in it"
)


@dataclass(frozen=True)
class GenerationLayout:
    """Shape of the generated part of a store, decided before anything is written."""

    n_clips: int
    seeds: tuple[int, ...]
    layers: tuple[int, ...]
    hidden_size: int
    num_codebooks: int
    prompt_frames: int
    gen_frames: int

    @classmethod
    def for_store(cls, ds: xr.Dataset, generation: GenerationSpec) -> GenerationLayout:
        return cls(
            n_clips=ds.sizes["clip"],
            seeds=tuple(generation.seeds),
            layers=tuple(int(x) for x in ds["layer"].values),
            hidden_size=ds.sizes["feature"],
            num_codebooks=ds.sizes["codebook"],
            prompt_frames=frames_of(generation.prompt_s),
            gen_frames=frames_of(generation.continuation_s),
        )

    @property
    def layers_per_chunk(self) -> int:
        per_layer = self.gen_frames * self.hidden_size * 2
        return max(1, min(len(self.layers), math.ceil(CHUNK_TARGET_BYTES / per_layer)))

    def seed_index(self, seed: int) -> int:
        if seed not in self.seeds:
            raise StoreError(f"seed {seed} is not one of the store's generation seeds {list(self.seeds)}")
        return self.seeds.index(seed)


def generation_attrs(generation: GenerationSpec, capture: CaptureSpec) -> dict[str, Any]:
    return {
        "generation_fingerprint": generation.fingerprint(),
        "generation_json": generation.canonical_json(),
        "generation_convention": GENERATION_CONVENTION,
        "generation_guidance_half": capture.half,
        "generation_prompt_frames": frames_of(generation.prompt_s),
    }


def _template(layout: GenerationLayout, labels: dict[str, dict[str, str]]) -> tuple[xr.Dataset, dict[str, dict]]:
    import dask.array as da

    c, s, ll, g, d, k = (
        layout.n_clips,
        len(layout.seeds),
        len(layout.layers),
        layout.gen_frames,
        layout.hidden_size,
        layout.num_codebooks,
    )
    resid_chunks = (1, 1, layout.layers_per_chunk, g, d)
    data: dict[str, Any] = {
        "gen_resid": (
            ("clip", "seed", "layer", "gen_time", "feature"),
            da.full((c, s, ll, g, d), RESID_FILL, dtype=np.float16, chunks=resid_chunks),
            {"long_name": "residual stream of the generated frames", "description": GENERATION_CONVENTION},
        ),
        "gen_codes": (
            ("clip", "seed", "codebook", "gen_time"),
            da.full((c, s, k, g), CODES_FILL, dtype=np.int16, chunks=(1, 1, k, g)),
            {"long_name": "generated EnCodec codes (undelayed)", "fill": CODES_FILL},
        ),
        "gen_prompt_codes": (
            ("clip", "codebook", "prompt_time"),
            da.full((c, k, layout.prompt_frames), CODES_FILL, dtype=np.int16, chunks=(1, k, layout.prompt_frames)),
            {"long_name": "EnCodec codes of the prompt (the clip's first frames)", "fill": CODES_FILL},
        ),
        "gen_sampling_seed": (
            ("clip", "seed"),
            da.zeros((c, s), dtype=np.int64, chunks=(1, 1)),
            {"description": "torch seed of the sampling: sampling_seed(seed, clip id)"},
        ),
        "gen_complete": (
            ("clip", "seed"),
            da.zeros((c, s), dtype=bool, chunks=(1, 1)),
            {"description": "written last: True only once the (clip, seed)'s gen_resid, gen_codes are written"},
        ),
        "gen_annotated": (
            ("clip", "seed"),
            da.zeros((c, s), dtype=bool, chunks=(1, 1)),
            {"description": "written last: True only once the (clip, seed)'s gen_ labels are written"},
        ),
    }
    for name, meta in labels.items():
        data[GEN_PREFIX + name] = (
            ("clip", "seed", "gen_time"),
            da.zeros((c, s, g), dtype=meta["dtype"], chunks=(1, 1, g)),
            {k_: v for k_, v in meta.items() if k_ != "dtype"},
        )
    p = layout.prompt_frames
    ds = xr.Dataset(
        data,
        coords={
            "seed": np.array(layout.seeds, dtype=np.int64),
            "gen_time": ("gen_time", (p + np.arange(g)) / FRAME_RATE_HZ, {"units": "s", "description": "frame centre"}),
            "gen_decoder_step": (
                "gen_time",
                p + np.arange(g, dtype=np.int32) + 1,
                {"description": GENERATION_CONVENTION},
            ),
            "prompt_time": ("prompt_time", np.arange(p) / FRAME_RATE_HZ, {"units": "s"}),
        },
    )
    fills: dict[str, Any] = {"gen_resid": RESID_FILL, "gen_codes": CODES_FILL, "gen_prompt_codes": CODES_FILL}
    encoding = {
        str(name): {"chunks": data[str(name)][1].chunksize, "fill_value": fills.get(str(name), 0)}
        for name in ds.data_vars
    }
    return ds, encoding


def init_generation(
    url: str, generation: GenerationSpec, capture: CaptureSpec, labels: dict[str, dict[str, str]]
) -> GenerationLayout:
    """Add the generated variables to the run's store, or check that those there are of this ``generation``."""
    ds = open_store(url)
    layout = GenerationLayout.for_store(ds, generation)
    attrs = generation_attrs(generation, capture)
    if "gen_complete" in ds:
        old = ds.attrs.get("generation_fingerprint")
        if old != attrs["generation_fingerprint"]:
            raise StoreError(
                f"store {url!r} holds continuations of generation settings {old!r} "
                f"({ds.attrs.get('generation_json')}), not {attrs['generation_fingerprint']!r}; "
                "choose another --out, or put the other settings in a config with another name"
            )
        log.info("resuming the generation in %s", url)
        return layout
    ds_gen, encoding = _template(layout, labels)
    ds_gen.attrs = {**ds.attrs, **attrs}  # appending rewrites the group's attributes: keep the run's
    ds_gen.to_zarr(url, mode="a", compute=False, encoding=encoding, consolidated=False, zarr_format=3)
    log.info("added generated variables to %s (%d seeds, %d frames)", url, len(layout.seeds), layout.gen_frames)
    return layout


def generated_pairs(ds: xr.Dataset, flag: str = "gen_complete") -> set[tuple[str, int]]:
    """(clip id, seed) pairs whose ``flag`` is set."""
    flags = ds[flag].values
    return {
        (str(c), int(s))
        for i, c in enumerate(ds["clip"].values)
        for j, s in enumerate(ds["seed"].values)
        if flags[i, j]
    }


def _region(ds: xr.Dataset, clip_id: str, seed: int) -> dict[str, slice]:
    clips = [str(c) for c in ds["clip"].values]
    seeds = [int(s) for s in ds["seed"].values]
    if clip_id not in clips:
        raise StoreError(f"clip {clip_id!r} is not in the store")
    if seed not in seeds:
        raise StoreError(f"seed {seed} is not one of the store's generation seeds {seeds}")
    i, j = clips.index(clip_id), seeds.index(seed)
    return {"clip": slice(i, i + 1), "seed": slice(j, j + 1)}


def write_continuation(
    url: str,
    clip_id: str,
    seed: int,
    resid: np.ndarray,
    codes: np.ndarray,
    prompt_codes: np.ndarray,
    sampling_seed: int,
    ds: xr.Dataset | None = None,
) -> int:
    """Write one (clip, seed)'s states ``(layer, G, feature)``, codes ``(codebook, G)`` and prompt codes.

    Checks shapes and finiteness first; nothing is written otherwise. The ``gen_complete`` flag is *not*
    set here (:func:`mark_generated`).
    """
    ds = open_store(url) if ds is None else ds
    region = _region(ds, clip_id, seed)
    want = {
        "gen_resid": ds["gen_resid"].shape[2:],
        "gen_codes": ds["gen_codes"].shape[2:],
        "gen_prompt_codes": ds["gen_prompt_codes"].shape[1:],
    }
    for name, arr in (("gen_resid", resid), ("gen_codes", codes), ("gen_prompt_codes", prompt_codes)):
        if tuple(arr.shape) != tuple(want[name]):
            raise StoreError(
                f"clip {clip_id!r} seed {seed}: {name} has shape {arr.shape}, the store expects {want[name]}"
            )
    if not np.isfinite(resid).all():
        raise StoreError(f"clip {clip_id!r} seed {seed}: the residual stream holds NaN or inf; nothing was written")
    for name in ("gen_resid", "gen_codes"):
        chunks = ds[name].encoding.get("chunks") or ()
        if chunks[:2] != (1, 1):
            raise StoreError(f"{name}: chunks {chunks} span several (clip, seed) pairs; writers would collide")
    out = xr.Dataset(
        {
            "gen_resid": (("clip", "seed", "layer", "gen_time", "feature"), resid.astype(np.float16)[None, None]),
            "gen_codes": (("clip", "seed", "codebook", "gen_time"), codes.astype(np.int16)[None, None]),
            "gen_sampling_seed": (("clip", "seed"), np.array([[sampling_seed]], dtype=np.int64)),
        }
    )
    full = {"layer": slice(None), "gen_time": slice(None), "feature": slice(None), "codebook": slice(None)}
    out.to_zarr(url, region={**region, **full}, consolidated=False)
    # the prompt's codes are the same for every seed: written by each, idempotently, in the clip's own chunk
    xr.Dataset(
        {"gen_prompt_codes": (("clip", "codebook", "prompt_time"), prompt_codes.astype(np.int16)[None])}
    ).to_zarr(
        url, region={"clip": region["clip"], "codebook": slice(None), "prompt_time": slice(None)}, consolidated=False
    )
    return int(resid.astype(np.float16).nbytes + codes.nbytes)


def write_continuation_labels(
    url: str, clip_id: str, seed: int, labels: dict[str, np.ndarray], ds: xr.Dataset | None = None
) -> None:
    """Write one (clip, seed)'s ``gen_`` labels (``name -> (G,)``, names without the prefix): all or nothing."""
    ds = open_store(url) if ds is None else ds
    region = _region(ds, clip_id, seed)
    names = sorted(str(k)[len(GEN_PREFIX) :] for k, v in ds.data_vars.items() if v.dims == ("clip", "seed", "gen_time"))
    if set(labels) != set(names):
        raise StoreError(
            f"clip {clip_id!r} seed {seed}: labels {sorted(set(labels) ^ set(names))} do not match the store's"
        )
    g = ds.sizes["gen_time"]
    out = {}
    for name in names:
        v = np.asarray(labels[name])
        if v.shape != (g,):
            raise StoreError(f"clip {clip_id!r} seed {seed}: label {name} has shape {v.shape}, expected ({g},)")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise StoreError(f"clip {clip_id!r} seed {seed}: label {name} holds NaN or inf; nothing was written")
        out[GEN_PREFIX + name] = (("clip", "seed", "gen_time"), v.astype(ds[GEN_PREFIX + name].dtype)[None, None])
    xr.Dataset(out).to_zarr(url, region={**region, "gen_time": slice(None)}, consolidated=False)


def mark_generated(url: str, clip_id: str, seed: int, flag: str = "gen_complete", ds: xr.Dataset | None = None) -> None:
    """Set a (clip, seed)'s completion flag (``gen_complete`` or ``gen_annotated``), last."""
    ds = open_store(url) if ds is None else ds
    xr.Dataset({flag: (("clip", "seed"), np.array([[True]]))}).to_zarr(
        url, region=_region(ds, clip_id, seed), consolidated=False
    )
