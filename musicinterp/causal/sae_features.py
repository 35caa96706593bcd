"""SAE features as intervention targets: which features a ``sae-feature`` candidate family names, their edit, and
their matched controls.

**Which features.** A family's ``sae`` is either one SAE folder (SAELens layout, ``cfg.json`` +
``sae_weights.safetensors``, musicinterp.sae.saelens; its hook gives the layer) with ``features`` (ids), or a
``musicinterp sae rank`` output (its folder or its ``candidates.json``) with ``top`` (the first N distinct
(layer, feature) pairs of the ranking, best q first, at the experiment's layers) and/or ``features`` (those ids at
the experiment's layers). A ranking names each candidate's SAE folder as it was given to the ranking; a relative
one that does not exist from here is looked up beside the ranking (``<ranking>/../layer<l>``, the layout `sae train`
+ `sae rank --out <sae>/rank` write).

**The edit** is :func:`musicinterp.sae.splice.ablation`: ``x - a_f(x) W_dec[f]`` at the window's steps, the SAE's
error term ``x - x_hat`` kept, so the stream changes by exactly the feature's decoder contribution and where the
feature is silent it does not change at all (tested on the model's stream).

**Matched controls** are other features of the same SAE (the same layer), the analog of the random directions
matched in projection variance (musicinterp.causal.controls): a feature's ablation removes ``a_f W_dec[f]`` on the
frames where it fires, so a control must fire about as often and remove about as much. On the layer's stream at
the intervened frames of the fit pieces (both cues; the rows the directions' controls are matched on), each
feature has an **activation frequency** (share of rows where it is non-zero) and a **mean contribution** (mean of
``a_f * |W_dec[f]|`` over all rows: the average size of what its ablation subtracts). A control's frequency and
mean contribution are each within ``match_tolerance`` (relative) of the candidate's; it is never the candidate nor
another candidate of the experiment on the same SAE (``exclude``). ``n`` controls are drawn without replacement
from those, seeded ``[seed, layer, feature]``; fewer than ``n`` raises
:class:`~musicinterp.causal.controls.ControlMatchError`, as does a candidate that never fires on the fit pieces (its
ablation would change nothing there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicinterp.causal.controls import DEFAULT_MATCH_TOLERANCE, ControlMatchError
from musicinterp.sae.saelens import CFG_FILE, LoadedSAE, load_sae
from musicinterp.sae.splice import Edit, ablation

CANDIDATES_FILE = "candidates.json"
ENCODE_ROWS = 65_536  # rows encoded at once when measuring the features (bounds memory: rows x d_sae floats)


class SAECandidateError(ValueError):
    """A ``sae-feature`` family that cannot be resolved; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SAEFeature:
    """One feature of the SAE in ``folder`` (an SAELens-layout folder), reading ``layer``."""

    folder: str
    layer: int
    feature: int
    target: str = ""  # the ranking's target it predicts ('' when named by id)

    @property
    def name(self) -> str:
        return f"sae-feature L{self.layer} f{self.feature}" + (f" ({self.target})" if self.target else "")


def _ranking_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / CANDIDATES_FILE).is_file():
        return path / CANDIDATES_FILE
    return None


def _sae_folder(name: str, ranking: Path) -> Path:
    for p in (Path(name), ranking.parent.parent / Path(name).name):
        if (p / CFG_FILE).is_file():
            return p
    raise SAECandidateError(
        f"{str(ranking)!r} names the SAE folder {name!r}, which holds no {CFG_FILE} (looked as given and beside the "
        f"ranking, in {str(ranking.parent.parent)!r})"
    )


def resolve_features(sae: str, features: list[int] | None, top: int | None, layers: list[int]) -> list[SAEFeature]:
    """The features a family names (module docstring), in order, without repeats; layers are not checked here
    against the SAEs (:func:`check_features` does, with the model's width)."""
    path = Path(sae)
    ranking = _ranking_file(path)
    if ranking is None:
        if not (path / CFG_FILE).is_file():
            raise SAECandidateError(
                f"{sae!r} is neither an SAE folder ({CFG_FILE} + sae_weights.safetensors) nor a `musicinterp sae "
                f"rank` output ({CANDIDATES_FILE}); for an SAE root name one layer (e.g. {str(path / 'layer3')!r})"
            )
        if not features:
            raise SAECandidateError(f"{sae!r} is an SAE folder: name its features (features: [ids])")
        if top is not None:
            raise SAECandidateError(f"{sae!r} is an SAE folder, not a ranking: 'top' needs a candidates.json")
        layer = load_sae(path).layer
        return [SAEFeature(str(path), layer, int(f)) for f in dict.fromkeys(features)]
    try:
        cands = json.loads(ranking.read_text())
        rows = [(str(c["sae"]), int(c["layer"]), int(c["feature"]), str(c.get("target") or "")) for c in cands]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SAECandidateError(
            f"{str(ranking)!r} is not a `musicinterp sae rank` candidates list (entries with sae, layer, feature): {e}"
        ) from e
    out: list[SAEFeature] = []
    seen: set[tuple[int, int]] = set()
    for folder, layer, feature, target in rows:
        if layer not in layers or (layer, feature) in seen or (features and feature not in features):
            continue
        seen.add((layer, feature))
        out.append(SAEFeature(str(_sae_folder(folder, ranking)), layer, feature, target))
    if top is not None:
        out = out[:top]
    if not out:
        raise SAECandidateError(
            f"{str(ranking)!r} has no candidate at layers {layers}"
            + (f" among features {features}" if features else "")
            + f" ({len(rows)} candidates, at layers {sorted({r[1] for r in rows})})"
        )
    return out


def check_features(found: list[SAEFeature], d_model: int, n_layers: int, layers: list[int]) -> dict[str, LoadedSAE]:
    """Load each SAE once, checked against the model (width, layer range) and the experiment (its layer among
    ``layers``, feature ids below d_sae); returns them by folder. SAELoadError / SAECandidateError name the file."""
    saes: dict[str, LoadedSAE] = {}
    for f in found:
        if f.folder not in saes:
            saes[f.folder] = load_sae(f.folder, d_model=d_model, n_layers=n_layers)
        sl = saes[f.folder]
        if sl.layer != f.layer:
            raise SAECandidateError(
                f"{f.folder!r}: its hook {sl.hook_name!r} is layer {sl.layer}, but the ranking lists its feature "
                f"{f.feature} at layer {f.layer}"
            )
        if sl.layer not in layers:
            raise SAECandidateError(
                f"{f.folder!r} reads layer {sl.layer} (hook {sl.hook_name!r}), which is not among the experiment's "
                f"layers {layers}: add it to 'layers'"
            )
        if not 0 <= f.feature < sl.sae.d_sae:
            raise SAECandidateError(
                f"{f.folder!r}: feature {f.feature} is out of range: the SAE has 0..{sl.sae.d_sae - 1}"
            )
    return saes


def feature_edit(sl: LoadedSAE, feature: int) -> Edit:
    """The edit that ablates ``feature`` (musicinterp.sae.splice.ablation: decoder contribution out, error kept)."""
    return ablation(sl.sae, [feature])


@dataclass(frozen=True)
class SAEControls:
    """Matched control ``features`` of one candidate, with their frequencies and mean contributions and the
    candidate's (``target_*``)."""

    features: list[int]
    frequency: np.ndarray
    contribution: np.ndarray
    target_frequency: float
    target_contribution: float
    seed: list[int]
    tolerance: float


def feature_stats(sl: LoadedSAE, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature over the rows ``acts`` ``(n, d)``: activation frequency and mean contribution (docstring)."""
    sae = sl.sae
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(acts), ENCODE_ROWS):
            a = sae.encode(torch.from_numpy(np.asarray(acts[i : i + ENCODE_ROWS], np.float32)).to(sae.W_enc.device))
            fired += (a > 0).sum(dim=0).double().cpu()
            total += a.sum(dim=0).double().cpu()
        norm = sae.W_dec.norm(dim=1).double().cpu()
    n = max(len(acts), 1)
    return (fired / n).numpy(), (total / n * norm).numpy()


def matched_features(
    sl: LoadedSAE,
    acts: np.ndarray,
    feature: int,
    n: int,
    seed: int,
    tolerance: float = DEFAULT_MATCH_TOLERANCE,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> SAEControls:
    """``n`` features of the same SAE matched in activation frequency and mean contribution (module docstring)."""
    freq, contrib = feature_stats(sl, acts)
    tf, tc = float(freq[feature]), float(contrib[feature])
    where = f"SAE feature {feature} of layer {sl.layer} (hook {sl.hook_name!r})"
    if tf <= 0 or tc <= 0:
        raise ControlMatchError(
            f"{where} never fires on the {len(acts)} reference rows (the fit pieces at the intervened frames): "
            "ablating it changes nothing there, and there is nothing to match"
        )
    ok = (np.abs(freq - tf) <= tolerance * tf) & (np.abs(contrib - tc) <= tolerance * tc)
    ok[[feature, *exclude]] = False
    pool = np.flatnonzero(ok)
    if len(pool) < n:
        raise ControlMatchError(
            f"only {len(pool)} of the SAE's {len(freq)} features match {where} (frequency {tf:.4g}, mean contribution "
            f"{tc:.4g}) within {tolerance:.0%}; {n} controls wanted: raise match_tolerance or lower n_controls. "
            "The candidate is never its own control."
        )
    s = [int(seed), int(sl.layer), int(feature)]
    chosen = sorted(int(x) for x in np.random.default_rng(s).choice(pool, n, replace=False))
    return SAEControls(chosen, freq[chosen], contrib[chosen], tf, tc, s, tolerance)


def describe(controls: SAEControls) -> dict[str, Any]:
    """The row columns of a candidate's controls (results.csv)."""
    fr = controls.frequency / controls.target_frequency
    cr = controls.contribution / controls.target_contribution
    return {
        "feature_frequency": controls.target_frequency,
        "feature_contribution": controls.target_contribution,
        "control_features": json.dumps(controls.features),
        "control_frequency_ratio_min": float(fr.min()),
        "control_frequency_ratio_max": float(fr.max()),
        "control_contribution_ratio_min": float(cr.min()),
        "control_contribution_ratio_max": float(cr.max()),
        "control_seeds": json.dumps(controls.seed),
    }
