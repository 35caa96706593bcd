"""Interventions during generation on the pair toy: do they move the generated return towards the other cue?

    OMP_NUM_THREADS=1 python benchmarks/causal_generation.py [--models trained random] [--pieces 16] [--json]

For each model (the trained toy ``checkpoints/toy-pair``, then its random twin ``checkpoints/toy-pair-random``):
``--pieces`` held-out return pieces of the pair toy (seed 3000) are prompted with their first 8.5 s and continued
for 2.5 s (guidance 1, top-k 250, temperature 1) under each condition, with the same sampling seed per (piece,
seed) in every condition: no intervention; the other-cue prompt (the cue swap, the total effect of the cue);
the whole stream of each layer over the prompt's frames patched from the other-cue run; the same patch from the
same run (must change nothing); and, on the trained toy, the top-k difference-of-means directions of the two
cues (fit on ``--fit-pieces`` pairs of seed 3001) patched from the other-cue run against matched random controls.
The outcome is the return score (A-match minus C-match over the return window, 9.0-10.6 s); see
:mod:`musicinterp.causal.generation`. Prints a markdown table (``--json``: one JSON line of rows).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from musicinterp.causal.generation import GenerationExperiment, generation_experiment, return_references
from musicinterp.causal.toy import twin_pairs
from musicinterp.config import GenerationSpec, ModelSpec
from musicinterp.models import load_model
from musicinterp.sources.cue import MIN_DURATION_S

MODELS = (("checkpoints/toy-pair", "trained-here"), ("checkpoints/toy-pair-random", "random"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=16)
    ap.add_argument("--fit-pieces", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--controls", type=int, default=3, help="matched random controls of the direction patch")
    ap.add_argument("--k", type=int, default=4, help="difference-of-means directions patched")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4], help="whole-stream patch layers")
    ap.add_argument("--models", choices=("trained", "random"), nargs="+", default=["trained", "random"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    generation = GenerationSpec(
        prompt_s=8.5,
        continuation_s=2.5,
        seeds=args.seeds,
        guidance_scale=1.0,
        top_k=250,
        temperature=1.0,
        write_audio=False,
        annotate=False,
    )
    rows, t0 = [], time.perf_counter()
    test = fit = refs = None
    for name, weights in MODELS:
        trained = weights == "trained-here"
        if ("trained" if trained else "random") not in args.models:
            continue
        loaded = load_model(ModelSpec(source="local", name=name, weights="trained-here" if trained else "auto"))
        loaded.model.eval()
        if test is None:  # the twin has the trained toy's EnCodec bit for bit: the same codes
            test = twin_pairs(loaded, 3000, args.pieces)
            fit = twin_pairs(loaded, 3001, args.fit_pieces)
            refs = return_references(loaded, test, MIN_DURATION_S)
        assert refs is not None
        plan = GenerationExperiment(
            whole_patch_layers=tuple(args.layers) if trained else (2,),
            same_run_layers=(2,),
            direction_layers=(2,) if trained and args.controls else (),
            direction_k=args.k,
            n_controls=args.controls,
        )
        progress = None if args.json else (lambda msg: print(f"  [{time.perf_counter() - t0:.0f} s] {msg}"))
        for row in generation_experiment(loaded, test, fit, refs, generation, plan, progress):
            rows.append({"model": name} | row)
    if args.json:
        print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0}))
        return
    print(f"\n{args.pieces} pieces x {len(args.seeds)} seeds, {time.perf_counter() - t0:.0f} s\n")
    print("| model | condition | layer | A-match | C-match | score | score change [95% CI] | p | fluency change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        change = (
            ""
            if r["condition"] == "none"
            else f"{r['score_effect']:+.3f} [{r['score_ci_low']:+.3f}, {r['score_ci_high']:+.3f}]"
        )
        if "n_controls" in r:
            change += (
                f"; {r['n_controls']} controls {r['controls_score_mean']:+.3f} (min {r['controls_score_min']:+.3f}), "
                f"vs controls {r['score_vs_controls']:+.3f} [{r['score_vs_controls_ci_low']:+.3f}, "
                f"{r['score_vs_controls_ci_high']:+.3f}] p {r['score_vs_controls_p']:.3g}"
            )
        base = r["condition"] == "none"
        p = "" if base else f"{r['score_p']:.3g}"
        fluency = (
            "" if base else f"{r['fluency_effect']:+.3f} [{r['fluency_ci_low']:+.3f}, {r['fluency_ci_high']:+.3f}]"
        )
        print(
            f"| {r['model']} ({r['weights']}) | {r['condition']} | {'' if r['layer'] < 0 else r['layer']} | "
            f"{r['a_match']:.3f} | {r['c_match']:.3f} | {r['score']:+.3f} | {change} | {p} | {fluency} |"
        )


if __name__ == "__main__":
    main()
