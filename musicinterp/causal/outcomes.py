"""Outcomes of an intervention, per piece (and seed), and the paired statistics that compare them.

Teacher-forced outcomes (the codes are fixed; the model runs with the intervention in place):

- **event**: the mean cross-entropy of the planned event's codes (for the pair toy: codebook 0 of the
  return's first frames, :data:`musicinterp.toy.ONSET_FRAMES`, the same numbers as
  :func:`musicinterp.toy.onset_losses`, tested);
- **fluency**: the mean cross-entropy of every codebook of the frames of a window outside the event
  (``fluency_frames``), all predicted before the event's steps: does the intervention damage local
  prediction? (In generation the codes are the model's own, and fluency is the *unmodified* model's loss
  of them.)

Codebook ``k`` of frame ``f`` is the input at decoder step ``f + 1 + k`` and is predicted by the logits of
step ``f + k`` (:mod:`musicinterp.frames`); only the heads of the steps needed are evaluated.

Statistics (the unit is the piece; several seeds of one piece are averaged inside it before anything else):
a cluster bootstrap of the mean paired difference (pieces resampled with replacement), a sign-flip
permutation p (under no effect the sign of each piece's difference is exchangeable; exact when there are
few pieces) and Benjamini-Hochberg q-values over the experiment's grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from musicinterp.capture import text_condition
from musicinterp.config import CaptureSpec
from musicinterp.models import PAD_TOKEN_ID, LoadedModel

EXACT_SIGN_FLIPS_MAX_UNITS = 14  # 2^14 = 16384 arrangements: enumerate them all


@torch.no_grad()
def piece_outcomes(
    loaded: LoadedModel,
    ids: torch.Tensor,
    event_frames: Sequence[int],
    fluency_frames: tuple[int, int],
    batch_size: int = 8,
    half: str = "conditional",
    fluency_stride: int = 1,
) -> dict[str, np.ndarray]:
    """Per piece: ``event`` (mean CE of codebook 0 at ``event_frames``) and ``fluency`` (mean CE of every
    codebook of every ``fluency_stride``-th frame of ``[start, stop)`` of ``fluency_frames``) for delayed inputs
    ``(piece, K, T + 1)``. The decoder runs only up to the last step an outcome needs (causal: later steps
    cannot change them). Runs under whatever interventions are active around the call."""
    model = loaded.model
    k = loaded.num_codebooks
    states, mask = text_condition(loaded, CaptureSpec(half=half))  # type: ignore[arg-type]
    if model.config.text_encoder.hidden_size != model.config.decoder.hidden_size:
        states = model.enc_to_dec_proj(states)
    ev = torch.tensor(list(event_frames))
    f0, f1 = fluency_frames
    if not 0 <= f0 < f1 or f1 + k > ids.shape[-1] - 1:
        raise ValueError(f"fluency frames {fluency_frames} do not fit pieces of {ids.shape[-1] - 1} frames")
    event, fluency = [], []
    last_step = max(max(event_frames), f1 - 1 + k - 1)  # the last step whose logits are read
    ids = ids[..., : last_step + 2]  # its target too
    for i in range(0, len(ids), batch_size):
        x = ids[i : i + batch_size]
        b, _, s = x.shape
        hidden = model.decoder.model(
            input_ids=x.reshape(b * k, s),
            encoder_hidden_states=states.expand(b, -1, -1),
            encoder_attention_mask=mask.expand(b, -1),
        ).last_hidden_state
        heads = model.decoder.lm_heads
        logits = heads[0](hidden[:, ev])  # step f predicts codebook 0 of frame f
        event.append(_ce(logits, x[:, 0, ev + 1]).mean(dim=1))
        total = torch.zeros(b, dtype=torch.float64)
        count = torch.zeros(b, dtype=torch.float64)
        for cb in range(k):
            steps = torch.arange(f0 + cb, f1 + cb, fluency_stride)
            ce = _ce(heads[cb](hidden[:, steps]), x[:, cb, steps + 1]).double()
            ok = torch.isfinite(ce)
            total += torch.where(ok, ce, 0.0).sum(dim=1)
            count += ok.sum(dim=1)
        fluency.append(total / count)
    return {"event": torch.cat(event).numpy().astype(np.float64), "fluency": torch.cat(fluency).numpy()}


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = torch.nn.functional.cross_entropy(
        logits.permute(0, 2, 1).float(), target.clamp(max=logits.shape[-1] - 1), reduction="none"
    )
    return ce.masked_fill(target == PAD_TOKEN_ID, float("nan"))


def unit_means(diff: np.ndarray) -> np.ndarray:
    """``(units,)`` or ``(units, seeds)`` paired differences -> one mean per unit (NaN seeds ignored)."""
    d = np.asarray(diff, float)
    return d if d.ndim == 1 else np.nanmean(d, axis=1)


def sign_flip_p(diff: np.ndarray, rng: np.random.Generator, n_flips: int = 9999) -> float:
    """Two-sided sign-flip permutation p of the mean of per-unit differences (exact for few units)."""
    u = unit_means(diff)
    u = u[np.isfinite(u)]
    if len(u) == 0:
        return float("nan")
    obs = abs(u.mean())
    if len(u) <= EXACT_SIGN_FLIPS_MAX_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(u))))
        null = np.abs(signs @ u / len(u))
        return float(np.mean(null >= obs - 1e-12))
    signs = rng.choice((-1.0, 1.0), size=(n_flips, len(u)))
    null = np.abs(signs @ u / len(u))
    return float((1 + np.sum(null >= obs - 1e-12)) / (n_flips + 1))


def cluster_bootstrap_ci(
    diff: np.ndarray, rng: np.random.Generator, n_boot: int = 2000, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile CI of the mean paired difference, resampling units (pieces) with all their seeds."""
    u = unit_means(diff)
    u = u[np.isfinite(u)]
    if len(u) < 2:
        return float("nan"), float("nan")
    means = u[rng.integers(0, len(u), size=(n_boot, len(u)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired(diff: np.ndarray, rng: np.random.Generator, n_boot: int = 2000, alpha: float = 0.05) -> dict[str, float]:
    """Mean paired difference over units, its cluster-bootstrap CI and sign-flip p."""
    u = unit_means(diff)
    lo, hi = cluster_bootstrap_ci(diff, rng, n_boot, alpha)
    return {"mean": float(np.nanmean(u)), "ci_low": lo, "ci_high": hi, "p": sign_flip_p(diff, rng)}
