"""``musicinterp sae train CONFIG`` and ``musicinterp sae rank``: the SAE flows run in this process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, console, error, load_settings


def cmd_sae_train(args: argparse.Namespace) -> int:
    from musicinterp.config import ConfigError
    from musicinterp.sae.spec import SAETrainSpec, load_spec
    from musicinterp.sae.stream import StoreError, open_store

    try:
        spec = load_spec(args.config, SAETrainSpec, device=args.device)
        open_store(spec.store)
    except (ConfigError, StoreError) as e:
        return error(e)
    from musicinterp_flows.sae import default_out, sae_train

    out = args.out or default_out(spec)
    state = sae_train(spec=spec, out=out, with_loss=not args.no_loss, name=Path(args.config).stem, return_state=True)
    if not state.is_completed():
        return error(f"SAE training did not complete: {state.message}", EXIT_FAILED)
    for r in state.result()["metrics"]:
        console.print(
            f"layer {r['layer']}: nMSE {r['nmse']}, explained variance {r['explained_variance']}, L0 {r['l0']}, "
            f"dead {r['dead_fraction']}, dense {r['dense_fraction']}; next-code loss clean {r['loss_clean']}, "
            f"spliced {r['loss_spliced']}, mean-ablated {r['loss_mean_ablated']}"
        )
    console.print(f"SAEs (SAELens layout) and metrics.csv in {out}")
    return EXIT_OK


def cmd_sae_rank(args: argparse.Namespace) -> int:
    from musicinterp.config import ConfigError
    from musicinterp.sae.spec import SAERankSpec

    try:
        spec = load_settings(args.settings, SAERankSpec, "sae_rank")
        update = {k: v for k, v in {"targets": args.targets, "layers": args.layers, "top_n": args.top_n}.items() if v}
        spec = SAERankSpec.model_validate({**spec.model_dump(), **update})
    except (ConfigError, ValueError) as e:
        return error(e)
    if (args.control_store is None) != (args.control_sae is None):
        return error("--control-store and --control-sae go together (the random twin's store and its SAEs)")
    from musicinterp_flows.sae import sae_rank

    out = args.out or str(Path(args.sae) / "rank")
    state = sae_rank(
        store=args.store,
        sae_root=args.sae,
        spec=spec,
        out=out,
        control_store=args.control_store,
        control_sae_root=args.control_sae,
        return_state=True,
    )
    if not state.is_completed():
        return error(f"SAE ranking did not complete: {state.message}", EXIT_FAILED)
    console.print(json.dumps(state.result()["summary"], indent=2))
    console.print(f"ranked table: {out}/ranked.csv; intervention targets: {out}/candidates.json")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``sae`` with its ``train`` and ``rank`` subcommands."""
    p = sub.add_parser("sae", help="sparse autoencoders: train per layer, rank features against structure labels")
    inner = p.add_subparsers(dest="sae_command", required=True)
    tr = inner.add_parser("train", help="train a TopK SAE per layer of a store (resumes from checkpoints)")
    tr.add_argument("config", help="YAML with SAETrainSpec fields (see configs/sae/toy-pair.yaml)")
    tr.add_argument("--out", help="output folder (default: sae-<fingerprint> beside the store)")
    tr.add_argument("--device", help="torch device, overrides the config's (cpu, cuda)")
    tr.add_argument("--no-loss", action="store_true", help="skip the spliced next-code loss (no model is loaded)")
    tr.set_defaults(func=cmd_sae_train)
    rk = inner.add_parser("rank", help="rank SAE features by how well they predict future events beyond controls")
    rk.add_argument("--store", required=True, help="the run store the SAEs were trained on")
    rk.add_argument("--sae", required=True, help="folder holding layer<l>/ SAEs (the output of `sae train`)")
    rk.add_argument("--control-store", help="the random-weight twin's store (random-model control)")
    rk.add_argument("--control-sae", help="the SAEs trained on the twin's store")
    rk.add_argument("--settings", help="YAML with SAERankSpec fields (or a 'sae_rank:' section)")
    rk.add_argument("--targets", nargs="+", help="labels to predict, e.g. rec_within_4s truth_return_within_4s")
    rk.add_argument("--layers", nargs="+", type=int, help="layers whose SAEs to rank (default: all in --sae)")
    rk.add_argument("--top-n", type=int, help="features preselected per (layer, target)")
    rk.add_argument("--out", help="output folder (default: <sae>/rank)")
    rk.set_defaults(func=cmd_sae_rank)
