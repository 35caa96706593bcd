"""The causal experiment on the pair toy: interventions on twin pairs, matched controls, paired statistics, report.

Outline (:func:`run_experiment`):

1. twin pairs of the test seed (return pieces and their other-cue twins) and of the fit seed;
2. per model (the trained toy, then its random twin): baseline outcomes of both cues; the layers' streams;
3. whole-stream patches (``whole_patch_layers`` x ``whole_patch_windows``) from the other-cue run, and from
   the same run (must change nothing);
4. per layer and candidate (the saved probe direction; the top-k difference-of-means directions of the fit
   pieces' two cues), per operation (mean-ablate, patch from the other-cue run): the candidate and its matched
   random controls; per SAE feature of the layer (``sae-feature`` families, experiment ``sae feature``): its
   ablation (decoder contribution out, the SAE's error term kept) and features of the same SAE matched in
   activation frequency and mean contribution (musicinterp.causal.sae_features);
5. paired statistics per row (intervention - none, per piece; candidate - mean of its controls, per piece),
   BH over the grid (layers x candidates x operations x models, SAE features included), the table, one figure,
   findings in words.

Every model's directions are its own: the random twin's probe directions are those of its own analysis
(the random-model control of the same analysis), its difference of means is of its own streams.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from musicinterp.analysis.stats import bh
from musicinterp.capture import text_condition
from musicinterp.causal.controls import matched_controls
from musicinterp.causal.directions import Direction, diff_of_means, load_directions
from musicinterp.causal.hooks import Intervention, intervening, layer_streams
from musicinterp.causal.outcomes import paired, piece_outcomes
from musicinterp.causal.sae_features import (
    check_features,
    describe,
    feature_edit,
    matched_features,
    resolve_features,
)
from musicinterp.causal.spec import CandidateSpec, InterventionSpec, check_sae_candidates
from musicinterp.causal.toy import FLUENCY_FRAMES, WINDOWS, TwinPairs, twin_pairs
from musicinterp.config import CaptureSpec
from musicinterp.models import LoadedModel, load_model
from musicinterp.toy.spec import ONSET_FRAMES

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
FIGURE_FILE = "causal-effects.png"
FINDINGS_FILE = "findings.md"
GRID_EXPERIMENTS = ("direction", "sae feature")  # the rows with matched controls, in BH's family and the figure
Progress = Callable[[str], None]


def _streams(
    loaded: LoadedModel, ids: torch.Tensor, layers: list[int], half: str, batch: int
) -> dict[int, torch.Tensor]:
    k = loaded.num_codebooks
    states, mask = text_condition(loaded, CaptureSpec(half=half))  # type: ignore[arg-type]
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for i in range(0, len(ids), batch):
        x = ids[i : i + batch]
        b, _, s = x.shape

        def fwd(x=x, b=b, s=s):
            loaded.model(
                encoder_outputs=(states.expand(b, -1, -1),),
                attention_mask=mask.expand(b, -1),
                decoder_input_ids=x.reshape(b * k, s),
                use_cache=False,
            )

        for layer, t in layer_streams(loaded.model, layers, fwd).items():
            parts[layer].append(t)
    return {layer: torch.cat(v) for layer, v in parts.items()}


def outcomes_under(
    loaded: LoadedModel, ids: torch.Tensor, make: Callable[[slice], list[Intervention]], spec: InterventionSpec
) -> dict[str, np.ndarray]:
    """Per-piece outcomes with the interventions ``make(rows)`` builds for each batch of pieces."""
    ev, fl = [], []
    for i in range(0, len(ids), spec.batch_size):
        rows = slice(i, min(i + spec.batch_size, len(ids)))
        with intervening(loaded.model, make(rows)):
            o = piece_outcomes(
                loaded, ids[rows], ONSET_FRAMES, FLUENCY_FRAMES, len(ids), spec.half, spec.fluency_stride
            )
        ev.append(o["event"])
        fl.append(o["fluency"])
    return {"event": np.concatenate(ev), "fluency": np.concatenate(fl)}


def _window_rows(streams: dict[int, torch.Tensor], layer: int, window: tuple[int, int]) -> np.ndarray:
    """The layer's stream at the window's steps, all pieces, as rows ``(pieces * steps, d)``."""
    s = streams[layer][:, window[0] + 1 : window[1] + 1]
    return s.reshape(-1, s.shape[-1]).numpy().astype(np.float64)


def _candidates(
    spec: InterventionSpec, layer: int, saved: list[Direction], random_twin: bool, fit_a, fit_b, window, families=None
) -> list[tuple[str, Any, np.ndarray]]:
    out = []
    for c in families or spec.candidates:
        if c.kind in ("probe", "probe-pattern"):
            name = f"{'random-' if random_twin else ''}L{layer}-{spec.probe_target}"
            found = [d for d in saved if d.name == name]
            if not found:
                log.warning("no saved probe direction %r: skipped", name)
                continue
            w = found[0].unit
            if c.kind == "probe-pattern":  # Haufe et al. 2014: the activation pattern the read-out responds to
                a = np.vstack([_window_rows(fit_a, layer, window), _window_rows(fit_b, layer, window)])
                w = np.cov(a, rowvar=False) @ w
                w = w / np.linalg.norm(w)
            out.append((f"{c.kind} ({spec.probe_target})", c, w[None, :]))
        elif c.kind == "diff-means":
            a, b = _window_rows(fit_a, layer, window), _window_rows(fit_b, layer, window)
            out.append((f"diff-means top-{c.k}", c, diff_of_means(a, b, c.k)))
    return out


def run_experiment(spec: InterventionSpec, out: str | Path, progress: Progress | None = None) -> pd.DataFrame:
    """Run the experiment, write ``results.csv``, the figure, ``findings.md`` and ``experiment.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        rows = _run(spec, progress)
    finally:
        torch.set_num_threads(before)
    df = finalize(rows, spec)
    df.to_csv(out / RESULTS_FILE, index=False)
    try:
        figure(df, out / FIGURE_FILE)
    except Exception as e:  # noqa: BLE001 - a figure must not lose the table already written
        log.warning("figure failed: %s", e)
    (out / FINDINGS_FILE).write_text(findings_markdown(df, spec))
    (out / "experiment.json").write_text(
        json.dumps(
            {
                "spec": spec.model_dump(mode="json"),
                "fingerprint": spec.fingerprint(),
                "seconds": time.perf_counter() - t0,
            },
            indent=2,
        )
    )
    return df


def _run(spec: InterventionSpec, progress: Progress | None) -> list[dict[str, Any]]:
    say = progress or (lambda msg: log.info("%s", msg))
    check_sae_candidates(spec, f"experiment {spec.name!r}")  # before any model runs
    saved = load_directions(spec.directions) if spec.directions else []
    models = [("trained", spec.model)] + ([("random", spec.control_model)] if spec.control_model else [])
    rows: list[dict[str, Any]] = []
    test = fit = None
    for role, mspec in models:
        loaded = load_model(mspec)
        loaded.model.eval()
        if test is None:  # the twin has the trained toy's EnCodec bit for bit: the same codes
            test = twin_pairs(loaded, spec.seed, spec.n_pieces)
            fit = twin_pairs(loaded, spec.fit_seed, spec.n_fit_pieces)
        assert fit is not None
        rows += _model_rows(spec, role, loaded, test, fit, saved, say)
    return rows


def _model_rows(
    spec: InterventionSpec,
    role: str,
    loaded: LoadedModel,
    test: TwinPairs,
    fit: TwinPairs,
    saved: list[Direction],
    say: Progress,
) -> list[dict[str, Any]]:
    weights = loaded.weights
    layers = sorted(set(spec.layers) | set(spec.whole_patch_layers))
    none = outcomes_under(loaded, test.ids, lambda r: [], spec)
    other = outcomes_under(loaded, test.swapped_ids, lambda r: [], spec)
    say(f"{role}: onset loss {none['event'].mean():.3f} (true cue) vs {other['event'].mean():.3f} (other cue)")
    s_true = _streams(loaded, test.ids, layers, spec.half, spec.batch_size)
    s_other = _streams(loaded, test.swapped_ids, layers, spec.half, spec.batch_size)
    f_true = _streams(loaded, fit.ids, spec.layers, spec.half, spec.batch_size)
    f_other = _streams(loaded, fit.swapped_ids, spec.layers, spec.half, spec.batch_size)
    rng = np.random.default_rng([spec.seed, 77])
    base = {"model": role, "weights": weights, "n_pieces": len(test.ids)}
    rows = [
        _row(
            base
            | {
                "experiment": "cue swap",
                "layer": -1,
                "window": "",
                "candidate": "other cue (no intervention)",
                "operation": "none",
                "k": 0,
            },
            other,
            none,
            None,
            spec,
            rng,
        )
    ]
    for layer in spec.whole_patch_layers:
        for wname in spec.whole_patch_windows:
            w = WINDOWS[wname]
            for source_name, src in (("other-cue run", s_other[layer]), ("same run", s_true[layer])):
                o = outcomes_under(loaded, test.ids, _whole_patch(layer, w, src), spec)
                rows.append(
                    _row(
                        base
                        | {
                            "experiment": "whole-stream patch",
                            "layer": layer,
                            "window": wname,
                            "candidate": f"whole stream from the {source_name}",
                            "operation": "patch",
                            "k": int(loaded.model.decoder.config.hidden_size),
                        },
                        o,
                        none,
                        None,
                        spec,
                        rng,
                    )
                )
            say(f"{role}: whole-stream patch, layer {layer}, {wname}: {rows[-2]['event_effect']:+.3f} nats")
    window = WINDOWS[spec.window]
    for layer in spec.layers:
        # mean-ablation reference: the fit pieces' mean stream per step, both cues pooled
        ref = 0.5 * (f_true[layer].mean(dim=0) + f_other[layer].mean(dim=0))
        acts = np.vstack([_window_rows(f_true, layer, window), _window_rows(f_other, layer, window)])
        families = spec.control_model_candidates if role == "random" and spec.control_model_candidates else None
        rows += _sae_rows(spec, loaded, test, acts, layer, base, none, rng, say, families or spec.candidates)
        for cname, cspec, dirs in _candidates(spec, layer, saved, role == "random", f_true, f_other, window, families):
            ctrl = matched_controls(
                acts,
                dirs,
                cspec.n_controls,
                seed=spec.seed + layer,
                tolerance=spec.control_tolerance,
                max_draws=spec.control_max_draws,
            )
            for op in cspec.operations:
                source = ref if op == "ablate" else s_other[layer]
                per_row = op == "patch"

                def make(d: np.ndarray, layer=layer, op=op, source=source, per_row=per_row) -> Maker:
                    return _direction(layer, window, op, d, source, per_row)

                cand = outcomes_under(loaded, test.ids, make(dirs), spec)
                ctl = [outcomes_under(loaded, test.ids, make(c), spec) for c in ctrl.directions]
                rows.append(
                    _row(
                        base
                        | {
                            "experiment": "direction",
                            "layer": layer,
                            "window": spec.window,
                            "candidate": cname,
                            "operation": op,
                            "k": int(dirs.shape[0]),
                            "control_variance_ratio_min": float(ctrl.variances.min() / ctrl.target_variance),
                            "control_variance_ratio_max": float(ctrl.variances.max() / ctrl.target_variance),
                            "control_seeds": json.dumps(ctrl.seeds),
                            "control_power": ctrl.power,
                        },
                        cand,
                        none,
                        ctl,
                        spec,
                        rng,
                    )
                )
                say(
                    f"{role}: layer {layer} {cname} {op}: {rows[-1]['event_effect']:+.4f} nats "
                    f"(controls mean {rows[-1]['controls_event_mean']:+.4f}, max {rows[-1]['controls_event_max']:+.4f})"
                )
    return rows


Maker = Callable[[slice], list[Intervention]]


def _sae_rows(
    spec: InterventionSpec,
    loaded: LoadedModel,
    test: TwinPairs,
    acts: np.ndarray,
    layer: int,
    base: dict[str, Any],
    none: dict[str, np.ndarray],
    rng: np.random.Generator,
    say: Progress,
    families: list[CandidateSpec],
) -> list[dict[str, Any]]:
    """The ``sae-feature`` families' features at ``layer``: each ablated alone, and its matched control features
    (``acts``: the layer at the intervened frames of the fit pieces, both cues). No candidate of any family on the
    same SAE is another's control."""
    rows = []
    window = WINDOWS[spec.window]
    named = [
        (c, [f for f in resolve_features(c.sae, c.features, c.top, spec.layers) if f.layer == layer])
        for c in families
        if c.kind == "sae-feature" and c.sae is not None
    ]
    candidates: dict[str, set[int]] = {}
    for _, found in named:
        for f in found:
            candidates.setdefault(str(Path(f.folder).resolve()), set()).add(f.feature)
    for cspec, found in named:
        saes = check_features(found, loaded.hidden_size, loaded.n_layers, spec.layers)
        for feat in found:
            sl = saes[feat.folder]
            others = candidates[str(Path(feat.folder).resolve())] - {feat.feature}
            ctrl = matched_features(sl, acts, feat.feature, cspec.n_controls, spec.seed, cspec.match_tolerance, others)

            def make(f: int, sl=sl) -> Maker:
                return lambda r: [Intervention(layer, window, "edit", edit=feature_edit(sl, f))]

            cand = outcomes_under(loaded, test.ids, make(feat.feature), spec)
            ctl = [outcomes_under(loaded, test.ids, make(f), spec) for f in ctrl.features]
            rows.append(
                _row(
                    base
                    | {
                        "experiment": "sae feature",
                        "layer": layer,
                        "window": spec.window,
                        "candidate": feat.name,
                        "operation": "ablate",
                        "k": 1,
                        "sae": str(Path(feat.folder).resolve()),
                        "feature": feat.feature,
                        "sae_target": feat.target,
                    }
                    | describe(ctrl),
                    cand,
                    none,
                    ctl,
                    spec,
                    rng,
                )
            )
            r = rows[-1]
            say(
                f"{base['model']}: layer {layer} {feat.name} ablate: {r['event_effect']:+.4f} nats (controls "
                f"{ctrl.features}: mean {r['controls_event_mean']:+.4f}, max {r['controls_event_max']:+.4f})"
            )
    return rows


def _whole_patch(layer: int, window: tuple[int, int], src: torch.Tensor) -> Maker:
    """The whole stream of ``layer`` over ``window`` set to ``src``'s rows of the batch."""
    return lambda r: [Intervention(layer, window, "patch", source=src[r])]


def _direction(
    layer: int, window: tuple[int, int], op: str, d: np.ndarray, source: torch.Tensor, per_row: bool
) -> Maker:
    """``op`` on the span of ``d``: the component set to ``source``'s (per step, or per row and step)."""
    dt = torch.from_numpy(np.atleast_2d(d)).float()
    return lambda r: [Intervention(layer, window, op, directions=dt, source=source[r] if per_row else source)]  # type: ignore[arg-type]


def _row(
    info: dict[str, Any],
    o: dict[str, np.ndarray],
    none: dict[str, np.ndarray],
    controls: list[dict[str, np.ndarray]] | None,
    spec: InterventionSpec,
    rng: np.random.Generator,
) -> dict[str, Any]:
    row = dict(info)
    for what in ("event", "fluency"):
        d = o[what] - none[what]
        s = paired(d, rng, spec.n_bootstrap, spec.alpha)
        row |= {
            f"{what}_mean": float(o[what].mean()),
            f"{what}_effect": s["mean"],
            f"{what}_ci_low": s["ci_low"],
            f"{what}_ci_high": s["ci_high"],
            f"{what}_p": s["p"],
        }
        if controls:
            per = np.stack([c[what] - none[what] for c in controls])  # (controls, pieces)
            means = per.mean(axis=1)
            v = paired(d - per.mean(axis=0), rng, spec.n_bootstrap, spec.alpha)
            row |= {
                f"controls_{what}_mean": float(means.mean()),
                f"controls_{what}_max": float(means.max()),
                f"controls_{what}_min": float(means.min()),
                f"{what}_vs_controls": v["mean"],
                f"{what}_vs_controls_ci_low": v["ci_low"],
                f"{what}_vs_controls_ci_high": v["ci_high"],
                f"{what}_vs_controls_p": v["p"],
                f"{what}_control_rank": float((means < s["mean"]).mean()),
                f"_controls_{what}": json.dumps([round(float(m), 6) for m in means]),
            }
    return row


def finalize(rows: list[dict[str, Any]], spec: InterventionSpec) -> pd.DataFrame:
    """The table, with BH q-values over the direction grid (layers x candidates x operations x models)."""
    df = pd.DataFrame(rows)
    for col in ("event_p", "event_vs_controls_p", "fluency_p", "fluency_vs_controls_p"):
        if col in df:
            q = np.full(len(df), np.nan)
            grid = df["experiment"].isin(GRID_EXPERIMENTS).to_numpy()
            q[grid] = bh(df.loc[grid, col].to_numpy(float), spec.alpha)
            df[col.replace("_p", "_q")] = q
    return df


def figure(df: pd.DataFrame, path: Path) -> Path:
    """Event effect against fluency effect: each candidate against the cloud of its controls, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df[df["experiment"].isin(GRID_EXPERIMENTS)].reset_index(drop=True)
    n = max(1, len(d))
    cols = min(4, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.6 * cols, 3.0 * -(-n // cols)), squeeze=False)
    for ax, (_, r) in zip(axes.flat, d.iterrows()):
        ce, cf = json.loads(r["_controls_event"]), json.loads(r["_controls_fluency"])
        ax.scatter(ce, cf, s=12, c="0.6", label="matched controls")
        ax.scatter([r["event_effect"]], [r["fluency_effect"]], s=50, c="C3", label="candidate")
        ax.errorbar(
            [r["event_effect"]],
            [r["fluency_effect"]],
            xerr=[[r["event_effect"] - r["event_ci_low"]], [r["event_ci_high"] - r["event_effect"]]],
            c="C3",
            lw=1,
        )
        ax.axvline(0, c="k", lw=0.5)
        ax.axhline(0, c="k", lw=0.5)
        ax.set_title(f"{r['model']} ({r['weights']}) L{r['layer']}\n{r['candidate']}, {r['operation']}", fontsize=8)
        ax.set_xlabel("onset loss change (nats)", fontsize=7)
        ax.set_ylabel("fluency change (nats/code)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(d) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def findings_markdown(df: pd.DataFrame, spec: InterventionSpec) -> str:
    """Findings in words, naming the weights kind of each model."""
    lines = [f"# Causal tests: {spec.name}", ""]
    for model, g in df.groupby("model", sort=False):
        weights = g["weights"].iloc[0]
        lines += [f"## {model} model (weights: {weights}{' — not MusicGen' if weights == 'trained-here' else ''})", ""]
        swap = g[g["experiment"] == "cue swap"].iloc[0]
        lines.append(
            f"- Swapping the second chord (no intervention) changes the onset loss by "
            f"{swap['event_effect']:+.3f} nats [{swap['event_ci_low']:+.3f}, {swap['event_ci_high']:+.3f}] "
            f"over {swap['n_pieces']} return pieces (the cue's total effect)."
        )
        for _, r in g[g["experiment"] == "whole-stream patch"].iterrows():
            lines.append(
                f"- {r['candidate']}, layer {r['layer']}, frames '{r['window']}': onset "
                f"{r['event_effect']:+.3f} nats [{r['event_ci_low']:+.3f}, {r['event_ci_high']:+.3f}], "
                f"fluency {r['fluency_effect']:+.4f}."
            )
        for _, r in g[g["experiment"].isin(GRID_EXPERIMENTS)].iterrows():
            verdict = (
                "more than"
                if r["event_vs_controls_q"] < spec.alpha and r["event_vs_controls"] > 0
                else ("not distinguishable from")
            )
            lines.append(
                f"- Layer {r['layer']}, {r['candidate']}, {r['operation']} over '{r['window']}': onset "
                f"{r['event_effect']:+.4f} nats [{r['event_ci_low']:+.4f}, {r['event_ci_high']:+.4f}] "
                f"(q {r['event_q']:.3g}); its {len(json.loads(r['_controls_event']))} matched controls "
                f"{r['controls_event_mean']:+.4f} on average (max {r['controls_event_max']:+.4f}): "
                f"{verdict} the controls "
                f"(difference {r['event_vs_controls']:+.4f}, q {r['event_vs_controls_q']:.3g}); fluency "
                f"{r['fluency_effect']:+.4f} nats/code"
                + (
                    f", {r['event_effect'] / swap['event_effect']:.0%} of the cue's effect."
                    if swap["event_effect"] > 0.05
                    else " (the cue itself changes nothing here)."
                )
            )
        lines.append("")
    return "\n".join(lines)
