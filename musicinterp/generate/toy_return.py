"""The pair toy's known answer in generation: prompted with a cue piece up to before the return point,
does the model bring section A back, and does that follow the cue?

Each cue piece has two versions that differ only in the cue and the return section (A again, or new
material C): ``compose`` draws A, B and D from streams the kind of the piece does not change. Both are
encoded with the run's own EnCodec, so the references include what the codec makes of each version's
first return frames (the toy's causal codec smooths over ~12 frames: a returning A's first codes are not
those of A at 1 s). A continuation's *A-match* is the fraction of the return window (frames 450-529,
9.0-10.6 s) whose generated codebook-0 code equals the A version's there; its *C-match* the same against
the C version. A continuation "returns A" when its A-match exceeds its C-match. The cue of each clip
comes from the manifest's ground truth (``return_points``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from musicinterp.capture import encode_audio
from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.models import LoadedModel
from musicinterp.run.paths import RunPaths
from musicinterp.slice import Manifest
from musicinterp.sources.cue import A_LEN_S, A_START_S, RETURN_AT_S, compose
from musicinterp.store import open_store

RETURN_WINDOW = range(round(RETURN_AT_S * FRAME_RATE_HZ), round((RETURN_AT_S + A_LEN_S) * FRAME_RATE_HZ))
A_FRAMES = range(round(A_START_S * FRAME_RATE_HZ), round((A_START_S + A_LEN_S) * FRAME_RATE_HZ))
# No threshold on a_match says "A returned": on the real held-out pieces (their own codes, 16 pieces of seed
# 1000) it is 0.92-0.95 where A returns and 0.00-0.29 where it does not, but no continuation the toy generates
# reaches 0.5 (largest 0.48). Continuations are compared by A-match against C-match instead (window_matches).
BOOTSTRAP = 2000


def a_match(prompt_codes: np.ndarray, gen_codes: np.ndarray) -> float:
    """Fraction of the return window whose generated codebook-0 code equals section A's (1.0-2.6 s) in the prompt.

    Needs only the store's codes; :func:`window_matches` compares with what the codec makes of each
    version's return instead (the codec smooths the return's first frames) and is what the report uses.
    """
    p, g = prompt_codes.shape[1], gen_codes.shape[1]
    if p < A_FRAMES.stop or p > RETURN_WINDOW.start or p + g < RETURN_WINDOW.stop:
        raise ValueError(
            f"a prompt of {p} frames and a continuation of {g} must hold section A (frames {A_FRAMES.start}-"
            f"{A_FRAMES.stop - 1}) in the prompt and the return window (frames {RETURN_WINDOW.start}-"
            f"{RETURN_WINDOW.stop - 1}) in the continuation"
        )
    a = prompt_codes[0, A_FRAMES.start : A_FRAMES.stop]
    return float((a == gen_codes[0, RETURN_WINDOW.start - p : RETURN_WINDOW.stop - p]).mean())


def version_codes(loaded: LoadedModel, locator: str) -> dict[str, np.ndarray]:
    """Codebook-0 codes over the return window of the piece's A version and its C version."""
    recipe = json.loads(locator)
    out = {}
    for kind, returns in (("A", True), ("C", False)):
        samples, _ = compose({**recipe, "returns": returns})
        out[kind] = encode_audio(loaded, samples).cpu().numpy()[0, RETURN_WINDOW.start : RETURN_WINDOW.stop]
    return out


def window_matches(gen_codes: np.ndarray, prompt_frames: int, refs: dict[str, np.ndarray]) -> dict[str, float]:
    """A-match and C-match of one continuation ``(codebook, G)`` that starts at frame ``prompt_frames``."""
    p, g = prompt_frames, gen_codes.shape[1]
    if p > RETURN_WINDOW.start or p + g < RETURN_WINDOW.stop:
        raise ValueError(
            f"a continuation of frames {p}-{p + g - 1} does not cover the return window "
            f"(frames {RETURN_WINDOW.start}-{RETURN_WINDOW.stop - 1})"
        )
    window = gen_codes[0, RETURN_WINDOW.start - p : RETURN_WINDOW.stop - p]
    return {f"{k.lower()}_match": float((window == ref).mean()) for k, ref in refs.items()}


@dataclass(frozen=True)
class ReturnRates:
    """A-return by cue; ``rows`` holds one dict per (clip, seed), statistics are over clips."""

    rows: list[dict[str, Any]]
    by_cue: dict[str, dict[str, float]]  # cue -> mean a_match, c_match, returned; n_clips
    a_match_difference: float  # return cue - no-return cue, clip means
    a_match_ci: tuple[float, float]  # clip-bootstrap 95% interval
    rate_difference: float
    rate_ci: tuple[float, float]

    def markdown(self, weights: str) -> str:
        r, n = self.by_cue["return"], self.by_cue["no-return"]
        lines = [
            f"A returns in generation (weights: {weights}), clip means over seeds:",
            "",
            "| cue | clips | A-match | C-match | returns A (A-match > C-match) | match with A in the prompt |",
            "|---|---|---|---|---|---|",
        ]
        for cue, s in (("return", r), ("no-return", n)):
            lines.append(
                f"| {cue} | {s['n_clips']:.0f} | {s['a_match']:.3f} | {s['c_match']:.3f} | {s['returned']:.3f} "
                f"| {s['a_prompt_match']:.3f} |"
            )
        lo, hi = self.a_match_ci
        rlo, rhi = self.rate_ci
        lines += [
            "",
            f"Return cue minus no-return cue: A-match {self.a_match_difference:+.3f} (clip-bootstrap 95% CI "
            f"{lo:+.3f} to {hi:+.3f}); rate of returning A {self.rate_difference:+.3f} ({rlo:+.3f} to {rhi:+.3f}).",
        ]
        return "\n".join(lines)


def _bootstrap_difference(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    boot = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(BOOTSTRAP)]
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def return_rates(root: str, loaded: LoadedModel, seed: int = 0) -> ReturnRates:
    """A-return by cue over the complete continuations of cue pieces in the run folder ``root``."""
    paths = RunPaths(root)
    ds = open_store(paths.store)
    clips = {c.clip_id: c for c in Manifest.from_json(paths.manifest).clips}
    done, gen, prompts = ds["gen_complete"].values, ds["gen_codes"].values, ds["gen_prompt_codes"].values
    p = int(ds.attrs["generation_prompt_frames"])
    rows = []
    for i, clip_id in enumerate(str(c) for c in ds["clip"].values):
        clip = clips.get(clip_id)
        points = clip.truth.get("return_points") if clip is not None else None
        if not points or clip is None or clip.source != "cue" or not done[i].any():
            continue
        refs = version_codes(loaded, clip.locator)
        cue = "return" if points[0]["returns"] else "no-return"
        for j, s in enumerate(ds["seed"].values):
            if done[i, j]:
                m = window_matches(gen[i, j], p, refs) | {"a_prompt_match": a_match(prompts[i], gen[i, j])}
                rows.append({"clip": clip_id, "seed": int(s), "cue": cue, **m, "returned": m["a_match"] > m["c_match"]})
    if not rows:
        raise ValueError(f"no complete continuation of a cue piece in {paths.store!r}")
    per_clip: dict[str, dict[str, list[np.ndarray]]] = {"return": {}, "no-return": {}}
    for row in rows:
        values = np.array([row["a_match"], row["c_match"], 1.0 if row["returned"] else 0.0, row["a_prompt_match"]])
        per_clip[str(row["cue"])].setdefault(str(row["clip"]), []).append(values)
    means = {cue: np.array([np.mean(v, axis=0) for v in by.values()]) for cue, by in per_clip.items()}
    if not len(means["return"]) or not len(means["no-return"]):
        raise ValueError("the continuations must include clips of both cues")
    rng = np.random.default_rng(seed)
    r, n = means["return"], means["no-return"]
    by_cue = {
        cue: {
            "a_match": float(m[:, 0].mean()),
            "c_match": float(m[:, 1].mean()),
            "returned": float(m[:, 2].mean()),
            "a_prompt_match": float(m[:, 3].mean()),
            "n_clips": len(m),
        }
        for cue, m in means.items()
    }
    return ReturnRates(
        rows=rows,
        by_cue=by_cue,
        a_match_difference=float(r[:, 0].mean() - n[:, 0].mean()),
        a_match_ci=_bootstrap_difference(r[:, 0], n[:, 0], rng),
        rate_difference=float(r[:, 2].mean() - n[:, 2].mean()),
        rate_ci=_bootstrap_difference(r[:, 2], n[:, 2], rng),
    )
