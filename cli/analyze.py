"""``musicinterp analyze``: probe every layer of a store for future events, in this process (no Prefect, no
server): the run's own analysis settings by default, flags for the common knobs, a bar per probe with an
ETA on a terminal and one line per probe when piped; prints the findings and where the results are.

It is :func:`musicinterp.api.analyze` with a display; the deployed ``analysis`` flow runs the same library
functions as Prefect tasks (artifacts, caching) for the benchmark flow and the UI.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.progress import Progress

from musicinterp_cli.common import EXIT_OK, console, error, is_terminal, progress_bar

HEADLINE_METRIC = "auroc"


def _list(text: str | None) -> list[str] | None:
    """``a,b c`` -> ['a', 'b', 'c'] (commas or spaces)."""
    if text is None:
        return None
    return [t for part in text.split(",") for t in part.split() if t]


def _layers(text: str | None) -> list[int] | None:
    """``0,2,4-6`` -> [0, 2, 4, 5, 6]."""
    items = _list(text)
    if items is None:
        return None
    out: list[int] = []
    for item in items:
        lo, _, hi = item.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--layers: {item!r} is not a layer number or a range like 2-5") from e
    return out


class ProbeDisplay:
    """Progress of an analysis: on a terminal an overall bar with an ETA and a bar of the running probe's
    permutation draws; piped, one line per finished probe."""

    def __init__(self, total: int, live: bool):
        self.live = live
        self.started = time.monotonic()
        self.bar: Progress | None = None
        if live:
            self.bar = progress_bar()
            self.probes = self.bar.add_task("probes (layer x target x control)", total=total)
            self.draws = self.bar.add_task("  probe 1: permutation draws", total=None)

    def __enter__(self) -> ProbeDisplay:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def on_probe(self, done: int, total: int, what: str) -> None:
        if self.bar is not None:
            self.bar.update(self.probes, completed=done, total=total)
            self.bar.reset(self.draws, total=None, description=f"  probe {done + 1}: permutation draws")
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (total - done)
        console.print(f"probe {done}/{total} done: {what} ({elapsed:.0f} s elapsed, ETA {eta:.0f} s)")

    def on_draws(self, done: int, most: int) -> None:
        if self.bar is not None:
            self.bar.update(self.draws, completed=done, total=most)


def summary(df: Any, plan: Any) -> dict[str, Any]:
    """What ``--json`` prints: paths, counts and the significant cells of the headline metric."""
    alpha = plan.spec.alpha
    head = df[(df["metric"] == HEADLINE_METRIC) & (df["control"] == "none")]
    sig = head[head["q_value"] < alpha]
    from musicinterp import files

    out = str(plan.out)
    return {
        "store": plan.store,
        "out": out,
        "results": files.join(out, "results.parquet"),
        "results_csv": files.join(out, "results.csv"),
        "findings": files.join(out, "findings.md"),
        "figures": files.glob(out, "gain_*.png"),
        "settings_from": plan.settings_from,
        "weights": str(df["weights"].iloc[0]) if len(df) else "unknown",
        "n_rows": len(df),
        "alpha": alpha,
        "significant": len(sig),
        "significant_cells": sig[["layer", "horizon", "target", "gain", "ci_low", "ci_high", "q_value"]]
        .astype(object)
        .where(sig.notna(), None)
        .to_dict("records"),
    }


def cmd_analyze(args: argparse.Namespace) -> int:
    from musicinterp import files
    from musicinterp.analysis.data import AnalysisError, open_analysis_store, store_layers
    from musicinterp.analysis.progress import on_draws
    from musicinterp.api import RunNotFound, analysis_plan, run_analysis
    from musicinterp.config import ConfigError

    try:
        plan = analysis_plan(
            args.store,
            args.out,
            settings=args.settings,
            control_store=args.control_store,
            targets=_list(args.targets),
            layers=_layers(args.layers),
            permutations=args.permutations,
            quick=args.quick,
        )
        for url in filter(None, (plan.store, plan.control_store)):
            open_analysis_store(url)
    except (ConfigError, AnalysisError, RunNotFound, argparse.ArgumentTypeError) as e:
        return error(e)
    spec = plan.spec
    layers = store_layers(open_analysis_store(plan.store), spec)
    most = spec.permutation_budget(len(layers) * len(spec.targets))
    draws = f"{most}" if most == spec.n_permutations else f"{spec.n_permutations} to {most}"
    console.print(
        f"analysing {plan.store} (settings from {plan.settings_from}): layers {layers[0]}..{layers[-1]}, "
        f"targets {', '.join(spec.targets)}, {draws} permutation draws per cell"
        + (f", control store {plan.control_store}" if plan.control_store else "")
    )
    try:
        n_probes = len(layers) * len(spec.targets) * (1 + spec.shifted_labels_control + 2 * bool(plan.control_store))
        with ProbeDisplay(n_probes, live=is_terminal()) as display:
            with on_draws(display.on_draws):
                df = run_analysis(plan, progress=display.on_probe)
    except AnalysisError as e:
        return error(e)
    info = summary(df, plan)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    Console().print(files.read_text(files.join(str(plan.out), "findings.md")))
    console.print(f"results: {info['results']}, {info['results_csv']}; figures and findings.md in {plan.out}")
    console.print(f"{info['significant']} significant cells (q < {spec.alpha:g}); weights: {info['weights']}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``analyze``."""
    ana = sub.add_parser(
        "analyze",
        help="probe every layer of a store for future events, against causal controls",
        description="Probe every layer of a store for future events. Settings: --settings if given, else the "
        "run's own (run.json beside the store: its targets, permutations and control store), else the "
        "defaults; the flags below override them.",
    )
    ana.add_argument("store", help="a run folder, its store.zarr, or any store of the documented schema")
    ana.add_argument("--out", help="folder for results, figures and findings (default: the run's analysis/)")
    ana.add_argument("--control-store", help="the same slice from a random-weight model: the 'random-model' control")
    ana.add_argument("--settings", help="YAML with analysis settings (an 'analysis:' mapping or its fields)")
    ana.add_argument("--targets", help="labels to predict, e.g. rec_within_8s,res_within_4s")
    ana.add_argument("--layers", help="layers to probe, e.g. 0,4,8-12 (layer 0 is always added as a control)")
    ana.add_argument("--permutations", type=int, help="exactly this many permutation draws per cell (p >= 1/(N+1))")
    ana.add_argument(
        "--quick",
        action="store_true",
        help="a first look in minutes: 19 draws, 200 bootstrap draws, no shifted-labels control "
        "(effect sizes only: nothing can reach q < 0.05)",
    )
    ana.add_argument("--json", action="store_true", help="print one JSON object (paths, counts, findings) on stdout")
    ana.set_defaults(func=cmd_analyze)
