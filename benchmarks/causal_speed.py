"""Cost of a causal experiment relative to the plain teacher-forced scoring pass, in the same process.

    OMP_NUM_THREADS=1 python benchmarks/causal_speed.py [--quick] [--json] [--pieces N] [--repeats R]

On the pair toy's architecture (``checkpoints/toy-pair``, weights: trained-here; the codes are random, the cost
does not depend on them): the outcome scoring of :func:`musicinterp.causal.outcomes.piece_outcomes` over
``--pieces`` pieces of 11 s (the event and every fluency frame), timed

- without hooks (``forward_s``, the unit of every ratio);
- with the hooks installed but acting on no scored step (``hooks_idle_ratio``: the hooks' own overhead);
- under a mean-ablation of 1 and of 4 directions, a patch of 4 directions and a whole-stream patch of one
  layer over frames 0-451 (``ablate_k1_ratio``, ``ablate_k4_ratio``, ``patch_k4_ratio``, ``patch_whole_ratio``);
- per matched random control (``per_control_ratio``): drawing one control
  (:func:`musicinterp.causal.controls.matched_controls`, ``control_match_s`` per control) plus one scoring pass
  under it; ``candidate_ratio``: one candidate with ``--controls`` controls and both operations (ablate, patch),
  what one row of the direction grid costs;
- in generation (``generation_s``: one continuation of a 8.5 s prompt for 2.5 s, KV cache, both guidance halves;
  ``--quick``: 1 s for 0.5 s), plain and under a whole-stream patch of the prompt (``generation_hooks_ratio``).

Times (``*_s``) are the median CPU seconds of this process over ``--repeats`` runs, with one torch thread (wall
time on a machine shared with other jobs measures the contention). Prints a summary, or one JSON line with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from musicinterp.capture import delayed_decoder_input
from musicinterp.causal.controls import matched_controls
from musicinterp.causal.generation import prompt_streams
from musicinterp.causal.hooks import Intervention, intervening
from musicinterp.causal.outcomes import piece_outcomes
from musicinterp.causal.toy import FLUENCY_FRAMES, WINDOWS
from musicinterp.config import CaptureSpec, GenerationSpec, ModelSpec
from musicinterp.frames import frames_of
from musicinterp.generate.sampling import generate_continuation
from musicinterp.models import load_model
from musicinterp.toy.spec import ONSET_FRAMES

MODEL = "checkpoints/toy-pair"
PIECE_FRAMES = 550  # 11 s


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of this process (one torch thread): unlike wall time, not inflated by other processes
    contending for the cores, so the ratios hold on a loaded machine."""
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 pieces, 1 repeat, 2 controls, a short continuation")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--pieces", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--controls", type=int, default=20)
    args = ap.parse_args()
    if args.quick:
        args.pieces, args.repeats, args.controls = 2, 1, 2
    torch.set_num_threads(1)
    loaded = load_model(ModelSpec(source="local", name=MODEL, weights="trained-here"))
    loaded.model.eval()
    k, d = loaded.num_codebooks, int(loaded.model.decoder.config.hidden_size)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (2, args.pieces, k, PIECE_FRAMES), generator=g)
    ids = torch.stack([delayed_decoder_input(loaded, c) for c in codes[0]])
    other = torch.stack([delayed_decoder_input(loaded, c) for c in codes[1]])
    layer, window = 2, WINDOWS["to-return"]
    source = prompt_streams(loaded, other, [layer], ids.shape[-1] - 1)[layer]  # (piece, steps, d)
    mean = source.mean(dim=0)
    rng = np.random.default_rng(0)
    dirs1, dirs4 = rng.standard_normal((1, d)), rng.standard_normal((4, d))

    def score(interventions: list[Intervention]) -> Callable[[], object]:
        def run() -> object:
            with intervening(loaded.model, interventions):
                return piece_outcomes(loaded, ids, ONSET_FRAMES, FLUENCY_FRAMES, batch_size=args.pieces)

        return run

    t = lambda x: torch.from_numpy(x).float()  # noqa: E731
    forward_s = timed(score([]), args.repeats)
    cases = {
        "hooks_idle": [Intervention(layer, (PIECE_FRAMES - 2, PIECE_FRAMES - 1), "ablate", t(dirs1))],
        "ablate_k1": [Intervention(layer, window, "ablate", t(dirs1), source=mean)],
        "ablate_k4": [Intervention(layer, window, "ablate", t(dirs4), source=mean)],
        "patch_k4": [Intervention(layer, window, "patch", t(dirs4), source=source)],
        "patch_whole": [Intervention(layer, window, "patch", source=source)],
    }
    result: dict[str, object] = {
        "model": MODEL,
        "weights": loaded.weights,
        "pieces": args.pieces,
        "repeats": args.repeats,
        "controls": args.controls,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "forward_s": forward_s,
    }
    secs = {name: timed(score(ivs), args.repeats) for name, ivs in cases.items()}
    for name, s in secs.items():
        result[f"{name}_s"] = s
        result[f"{name}_ratio"] = s / forward_s
    acts = source[:, window[0] + 1 : window[1] + 1].reshape(-1, d).numpy().astype(np.float64)
    t0 = time.process_time()
    matched_controls(acts, dirs1, args.controls, seed=0)
    match_s = (time.process_time() - t0) / args.controls
    result["control_match_s"] = match_s
    result["per_control_ratio"] = (match_s + secs["ablate_k1"]) / forward_s
    # one candidate row: the candidate and its controls, each ablated and patched, and the controls drawn once
    op_s = 0.5 * (secs["ablate_k1"] + secs["patch_k4"])
    result["candidate_ratio"] = (2 * (args.controls + 1) * op_s + args.controls * match_s) / forward_s
    prompt_s, cont_s = (1.0, 0.5) if args.quick else (8.5, 2.5)
    gen = GenerationSpec(
        prompt_s=prompt_s, continuation_s=cont_s, seeds=[0], guidance_scale=1.0, write_audio=False, annotate=False
    )
    p = frames_of(prompt_s)
    prompt = codes[0, 0, :, :p]
    gsource = source[0, : p + 1]

    def generate(interventions: list[Intervention]) -> Callable[[], object]:
        factory = (lambda: intervening(loaded.model, interventions, guided=True)) if interventions else None
        return lambda: generate_continuation(loaded, prompt, CaptureSpec(layers=[0]), gen, 0, factory, torch.float32)

    result["generation_s"] = timed(generate([]), args.repeats)
    result["generation_hooks_s"] = timed(generate([Intervention(layer, (0, p), "patch", source=gsource)]), args.repeats)
    result["generation_hooks_ratio"] = result["generation_hooks_s"] / result["generation_s"]  # type: ignore[operator]
    result["generation_over_forward"] = result["generation_s"] / forward_s  # type: ignore[operator]
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{MODEL} (weights: {loaded.weights}), {args.pieces} pieces, median CPU time of {args.repeats}, "
        f"load {result['load_average_1min']:.1f}"
    )
    print(f"plain scoring pass: {forward_s:.3f} s CPU")
    for name in cases:
        print(f"  {name}: {result[f'{name}_ratio']:.2f}x")
    print(f"  per matched control: {result['per_control_ratio']:.2f}x (drawing it: {match_s * 1e3:.1f} ms)")
    print(f"  one candidate with {args.controls} controls, ablate + patch: {result['candidate_ratio']:.1f}x")
    print(
        f"generation: {result['generation_s']:.2f} s CPU per continuation ({prompt_s:g} s prompt, {cont_s:g} s), "
        f"with a whole-stream patch {result['generation_hooks_ratio']:.2f}x"
    )


if __name__ == "__main__":
    main()
