"""Interventions during generation on the pair toy: does A come back, and do interventions move that?

Each twin pair's return piece (and its other-cue twin) is cut after ``prompt_s`` (8.5 s: the cue, A and most
of B; the return point at 9.0 s is generated) and continued for ``continuation_s`` (2.5 s) with the KV cache
and classifier-free guidance (:func:`musicinterp.generate.sampling.generate_continuation`), several seeds per
piece. A continuation *returns A* when its first-codebook codes over the return section match section A's
in the prompt (:func:`musicinterp.generate.toy_return.a_match` above its threshold). The interventions run
inside the generation (:func:`musicinterp.causal.hooks.intervening` with ``guided=True``, both guidance halves):
their frames count in stored frames of the whole piece, prompt and continuation alike, so a window that ends
at frame 452 covers the prompt's steps and the first generated ones. A patch needs the counterfactual's
stream at every step it covers, so patches cover the prompt's frames only (the other-cue prompt's
teacher-forced stream).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from musicinterp.causal.hooks import Intervention, intervening
from musicinterp.config import CaptureSpec, GenerationSpec
from musicinterp.frames import frames_of
from musicinterp.models import LoadedModel

# per piece index -> the interventions of that piece's continuation (none: an empty list)
PieceInterventions = Callable[[int], list[Intervention]]


def codes_of(ids: torch.Tensor) -> torch.Tensor:
    """Undelayed codes ``(K, T)`` of one piece's delayed decoder input ``(K, T + 1)`` (frame f of codebook c is
    the input at step f + c + 1)."""
    k, s = ids.shape
    t = s - 1
    out = torch.full((k, t), -1, dtype=torch.long)
    for c in range(k):
        out[c, : t - c] = ids[c, c + 1 :]
    return out


def return_rate_rows(
    loaded: LoadedModel,
    ids: torch.Tensor,
    condition: str,
    interventions: PieceInterventions,
    generation: GenerationSpec,
) -> list[dict[str, Any]]:
    """One row per piece and seed: ``a_match`` and ``returns`` of the continuation under ``interventions``."""
    from musicinterp.generate.sampling import generate_continuation
    from musicinterp.generate.toy_return import RETURN_MATCH_THRESHOLD, a_match

    p = frames_of(generation.prompt_s)
    capture = CaptureSpec(layers=[0])
    rows = []
    for i in range(len(ids)):
        prompt = codes_of(ids[i])[:, :p]
        ivs = interventions(i)
        for seed in generation.seeds:
            factory = (lambda ivs=ivs: intervening(loaded.model, ivs, guided=True)) if ivs else None
            cont = generate_continuation(
                loaded, prompt, capture, generation, zlib.crc32(f"{seed}-{i}".encode()), intervention=factory
            )
            m = a_match(prompt.numpy(), cont.codes)
            rows.append(
                {
                    "condition": condition,
                    "piece": i,
                    "seed": seed,
                    "a_match": m,
                    "returns": bool(m > RETURN_MATCH_THRESHOLD),
                    "weights": loaded.weights,
                }
            )
    return rows


def rate_summary(rows: Sequence[dict[str, Any]], rng: np.random.Generator, n_boot: int = 2000) -> dict[str, float]:
    """A-return rate with a cluster-bootstrap CI (pieces resampled with their seeds)."""
    pieces = sorted({r["piece"] for r in rows})
    per = np.array([np.mean([r["returns"] for r in rows if r["piece"] == p]) for p in pieces])
    boots = per[rng.integers(0, len(per), size=(n_boot, len(per)))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"rate": float(per.mean()), "ci_low": float(lo), "ci_high": float(hi), "n_pieces": len(per)}
