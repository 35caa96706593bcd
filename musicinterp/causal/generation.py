"""Interventions during generation on the pair toy: does the generated return move towards the other cue's material?

Each twin pair's return piece is cut after ``prompt_s`` (8.5 s: the cue, A and most of B; the return point at
9.0 s is generated) and continued for ``continuation_s`` (2.5 s) with the KV cache
(:func:`musicinterp.generate.sampling.generate_continuation`), several seeds per piece. The outcome of one
continuation is the **return score**: its A-match minus its C-match over the return window (frames 450-529,
:func:`musicinterp.generate.toy_return.window_matches`: the fraction of frames whose generated codebook-0 code
equals the piece's A version, resp. its C version, both encoded by the model's own codec). The trained toy
does not bring A back whole in free sampling (A-match well below the real pieces' 0.92-0.95), so no threshold
on the A-match means "returned"; the score measures *how far towards A* a continuation leans, and an
intervention's effect is its paired change.

Every condition of one piece and seed samples with the same torch seed (:func:`musicinterp.generate.sampling.
sampling_seed` of the seed and the piece), so the comparisons are paired: intervention minus none per (piece,
seed), averaged over seeds inside each piece, then a cluster bootstrap over pieces and a sign-flip p
(:func:`musicinterp.causal.outcomes.paired`). Candidate directions are compared with matched random controls
(:func:`musicinterp.causal.controls.matched_controls`), per piece: candidate minus the mean of its controls.

Where the interventions act: frames count in stored frames of the whole piece (stored frame ``i`` is decoder
step ``i + 1``). A patch needs the counterfactual's stream at every step it covers, so patches cover the
prompt's frames ``[0, P)`` (the other-cue prompt's teacher-forced stream, both guidance halves); the generated
steps are computed by the model, and they read the patched prompt through attention at the layers above the
patched one. Patching the embeddings (layer 0) over the prompt is therefore exactly generating from the other
prompt (tested: the same codes), a patch from the same run changes nothing (tested), and a patch at layer ``l``
leaves the blocks up to ``l`` of the generated steps attending to the original prompt. Fluency is the
*unmodified* model's mean loss (every codebook) of the generated frames before the return window, with the
prompt the continuation was generated from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from musicinterp.capture import delayed_decoder_input, text_condition
from musicinterp.causal.controls import matched_controls
from musicinterp.causal.directions import diff_of_means
from musicinterp.causal.hooks import Intervention, intervening, layer_streams
from musicinterp.causal.outcomes import paired, piece_outcomes
from musicinterp.causal.toy import TwinPairs
from musicinterp.config import CaptureSpec, GenerationSpec
from musicinterp.frames import frames_of
from musicinterp.models import LoadedModel

log = logging.getLogger(__name__)

# per piece index -> the interventions of that piece's continuations (none: an empty list)
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


def return_references(loaded: LoadedModel, pairs: TwinPairs, duration_s: float) -> list[dict[str, np.ndarray]]:
    """Per piece of ``pairs``: codebook-0 codes of its A version and its C version over the return window."""
    from musicinterp.generate.toy_return import version_codes
    from musicinterp.sources.cue import cue_recipe

    return [
        version_codes(loaded, json.dumps(cue_recipe(pairs.seed, i, duration_s, True, "pair"))) for i in pairs.indices
    ]


@dataclass(frozen=True)
class GenerationOutcome:
    """One condition's continuations: ``(piece, seed)`` arrays and the generated codes ``(piece, seed, K, G)``."""

    a_match: np.ndarray
    c_match: np.ndarray
    fluency: np.ndarray
    codes: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """A-match minus C-match: how far towards A the return window leans (-1..1)."""
        return self.a_match - self.c_match


@torch.no_grad()
def generation_outcomes(
    loaded: LoadedModel,
    ids: torch.Tensor,
    refs: Sequence[dict[str, np.ndarray]],
    generation: GenerationSpec,
    interventions: PieceInterventions | None = None,
) -> GenerationOutcome:
    """Continue the prompt of every piece of ``ids`` (delayed inputs ``(piece, K, T + 1)``) for every seed of
    ``generation``, under ``interventions`` (applied to both guidance halves), and score each continuation."""
    from musicinterp.generate.sampling import generate_continuation, sampling_seed
    from musicinterp.generate.toy_return import RETURN_WINDOW, window_matches

    if len(refs) != len(ids):
        raise ValueError(f"{len(ids)} pieces but {len(refs)} return references")
    p = frames_of(generation.prompt_s)
    capture = CaptureSpec(layers=[0])
    a, c, codes, scored = [], [], [], []
    for i in range(len(ids)):
        prompt = codes_of(ids[i])[:, :p]
        ivs = interventions(i) if interventions is not None else []
        for seed in generation.seeds:
            factory = (lambda ivs=ivs: intervening(loaded.model, ivs, guided=True)) if ivs else None
            cont = generate_continuation(
                loaded, prompt, capture, generation, sampling_seed(seed, f"pair-{i}"), factory, torch.float32
            )
            m = window_matches(cont.codes, p, refs[i])
            a.append(m["a_match"])
            c.append(m["c_match"])
            codes.append(cont.codes)
            scored.append(delayed_decoder_input(loaded, torch.cat([prompt, torch.from_numpy(cont.codes)], dim=1)))
    n, s = len(ids), len(generation.seeds)
    # the unmodified model's loss of the generated frames before the return window (every codebook)
    fluency = piece_outcomes(loaded, torch.stack(scored), [p], (p, RETURN_WINDOW.start), batch_size=8)["fluency"]
    return GenerationOutcome(
        a_match=np.reshape(a, (n, s)),
        c_match=np.reshape(c, (n, s)),
        fluency=fluency.reshape(n, s),
        codes=np.stack(codes).reshape(n, s, *codes[0].shape),
    )


@torch.no_grad()
def prompt_streams(loaded: LoadedModel, ids: torch.Tensor, layers: Sequence[int], prompt_frames: int) -> dict:
    """Teacher-forced streams ``(piece, P + 1, d)`` of ``layers`` over the prompt's decoder steps ``0..P``
    (conditional half): the sources of patches over the prompt."""
    states, mask = text_condition(loaded, CaptureSpec(half="conditional"))
    x = ids[..., : prompt_frames + 1]
    b, k, s = x.shape

    def forward() -> None:
        loaded.model(
            encoder_outputs=(states.expand(b, -1, -1),),
            attention_mask=mask.expand(b, -1),
            decoder_input_ids=x.reshape(b * k, s),
            use_cache=False,
        )

    return layer_streams(loaded.model, list(layers), forward)


def prompt_patch(
    layer: int, source: torch.Tensor, prompt_frames: int, directions: np.ndarray | None = None
) -> PieceInterventions:
    """Patch ``layer`` over the prompt's frames with piece ``i``'s ``source`` stream ``(piece, P + 1, d)``: the
    whole stream, or the span of ``directions`` ``(k, d)``."""
    dirs = None if directions is None else torch.from_numpy(np.atleast_2d(directions)).float()
    return lambda i: [Intervention(layer, (0, prompt_frames), "patch", directions=dirs, source=source[i])]


def effect_row(
    outcome: GenerationOutcome,
    none: GenerationOutcome,
    controls: Sequence[GenerationOutcome] | None,
    rng: np.random.Generator,
    n_boot: int = 2000,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired statistics of one condition against no intervention (and against its controls)."""
    d = outcome.score - none.score
    s = paired(d, rng, n_boot, alpha)
    f = paired(outcome.fluency - none.fluency, rng, n_boot, alpha)
    row: dict[str, Any] = {
        "a_match": float(outcome.a_match.mean()),
        "c_match": float(outcome.c_match.mean()),
        "score": float(outcome.score.mean()),
        "nearer_a": float((outcome.a_match > outcome.c_match).mean()),
        "score_effect": s["mean"],
        "score_ci_low": s["ci_low"],
        "score_ci_high": s["ci_high"],
        "score_p": s["p"],
        "fluency_effect": f["mean"],
        "fluency_ci_low": f["ci_low"],
        "fluency_ci_high": f["ci_high"],
        "n_pieces": int(d.shape[0]),
        "n_seeds": int(d.shape[1]),
    }
    if controls:
        per = np.stack([c.score - none.score for c in controls])  # (control, piece, seed)
        means = per.mean(axis=(1, 2))
        v = paired(d - per.mean(axis=0), rng, n_boot, alpha)
        row |= {
            "n_controls": len(controls),
            "controls_score_mean": float(means.mean()),
            "controls_score_min": float(means.min()),
            "controls_score_max": float(means.max()),
            "score_vs_controls": v["mean"],
            "score_vs_controls_ci_low": v["ci_low"],
            "score_vs_controls_ci_high": v["ci_high"],
            "score_vs_controls_p": v["p"],
        }
    return row


@dataclass(frozen=True)
class GenerationExperiment:
    """What :func:`generation_experiment` runs on one model."""

    whole_patch_layers: tuple[int, ...] = (1, 2, 3, 4)
    same_run_layers: tuple[int, ...] = (2,)
    direction_layers: tuple[int, ...] = (2,)
    direction_k: int = 4
    n_controls: int = 5
    control_seed: int = 0
    n_boot: int = 2000


def generation_experiment(
    loaded: LoadedModel,
    test: TwinPairs,
    fit: TwinPairs | None,
    refs: Sequence[dict[str, np.ndarray]],
    generation: GenerationSpec,
    plan: GenerationExperiment,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per condition on ``test``'s return pieces: the cue swap (the twin's prompt), whole-stream patches
    from the other-cue run and from the same run, and patches of the top-k difference-of-means directions (fit
    on ``fit``'s prompts) against matched random controls."""
    say = progress or (lambda msg: log.info("%s", msg))
    p = frames_of(generation.prompt_s)
    rng = np.random.default_rng([test.seed, 13])
    base = {"weights": loaded.weights, "window": f"prompt frames 0-{p - 1}"}
    layers = sorted(set(plan.whole_patch_layers) | set(plan.same_run_layers) | set(plan.direction_layers))
    other = prompt_streams(loaded, test.swapped_ids, layers, p)
    same = prompt_streams(loaded, test.ids, plan.same_run_layers, p) if plan.same_run_layers else {}
    none = generation_outcomes(loaded, test.ids, refs, generation)
    rows = [base | {"condition": "none", "layer": -1} | effect_row(none, none, None, rng, plan.n_boot)]
    say(f"{loaded.weights}: no intervention, score {none.score.mean():+.3f}")

    def add(condition: str, layer: int, o: GenerationOutcome, controls=None) -> None:
        rows.append(base | {"condition": condition, "layer": layer} | effect_row(o, none, controls, rng, plan.n_boot))
        say(f"{loaded.weights}: {condition}, layer {layer}: score change {rows[-1]['score_effect']:+.3f}")

    add("cue swap (the other-cue prompt)", -1, generation_outcomes(loaded, test.swapped_ids, refs, generation))
    for layer in plan.whole_patch_layers:
        o = generation_outcomes(loaded, test.ids, refs, generation, prompt_patch(layer, other[layer], p))
        add("whole stream from the other-cue run", layer, o)
    for layer in plan.same_run_layers:
        o = generation_outcomes(loaded, test.ids, refs, generation, prompt_patch(layer, same[layer], p))
        add("whole stream from the same run", layer, o)
    if plan.direction_layers and fit is None:
        raise ValueError("direction patches need fit pieces (fit=None)")
    if plan.direction_layers and fit is not None:
        fit_true = prompt_streams(loaded, fit.ids, plan.direction_layers, p)
        fit_other = prompt_streams(loaded, fit.swapped_ids, plan.direction_layers, p)
        for layer in plan.direction_layers:
            a = fit_true[layer][:, 1:].reshape(-1, fit_true[layer].shape[-1]).numpy().astype(np.float64)
            b = fit_other[layer][:, 1:].reshape(-1, fit_other[layer].shape[-1]).numpy().astype(np.float64)
            dirs = diff_of_means(a, b, plan.direction_k)
            ctrl = matched_controls(np.vstack([a, b]), dirs, plan.n_controls, seed=plan.control_seed + layer)
            cand = generation_outcomes(loaded, test.ids, refs, generation, prompt_patch(layer, other[layer], p, dirs))
            ctl = [
                generation_outcomes(loaded, test.ids, refs, generation, prompt_patch(layer, other[layer], p, c))
                for c in ctrl.directions
            ]
            add(f"diff-means top-{plan.direction_k} from the other-cue run", layer, cand, ctl)
    return rows
