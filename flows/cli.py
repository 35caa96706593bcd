"""The ``musicinterp`` command line. It lives beside the flows because ``run`` starts one;
``inspect``, ``annotate`` and ``validate-annotations`` need only the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.ops import add_ops_commands
from musicinterp.annotate.labels import WINDOW_S
from musicinterp.config import ConfigError, load_run_spec

console = Console(stderr=True, soft_wrap=True)  # never break a path across lines
POLL_S = 1.0


def _progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = load_run_spec(args.config)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    from flows.benchmark import benchmark  # imports Prefect and torch: only when a flow is run
    from musicinterp.benchmark import RunPaths
    from musicinterp.store import StoreError, open_store

    paths = RunPaths.for_spec(spec, args.out)
    outcome: dict[str, Any] = {}

    def target() -> None:
        outcome["state"] = benchmark(spec=spec, out=args.out, return_state=True)

    worker = threading.Thread(target=target, name="benchmark-flow", daemon=True)
    worker.start()
    with _progress_bar() as bar:
        task = bar.add_task(f"{spec.name}: planning", total=None)
        labels = bar.add_task(f"{spec.name}: clips annotated", total=None, visible=spec.annotate)
        while worker.is_alive():
            worker.join(POLL_S)
            try:
                ds = open_store(paths.store)
                total = ds.sizes["clip"]
                bar.update(task, description=f"{spec.name}: clips captured", total=total,
                           completed=int(ds["complete"].values.sum()))
                if spec.annotate:
                    bar.update(labels, total=total, completed=int(ds["annotated"].values.sum()))
            except (StoreError, OSError, KeyError, ValueError):
                pass  # the store does not exist yet, or is being created
    state = outcome.get("state")
    summary_md = f"{paths.root}/summary.md"
    console.print(f"store:   {paths.store}\nsummary: {summary_md}")
    if state is None or not state.is_completed():
        console.print(f"[red]run did not complete: {state.message if state else 'no state'}[/red]")
        return 1
    console.print("[green]run complete[/green]")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from musicinterp.store import StoreError, describe_store

    try:
        info = describe_store(args.store)
    except StoreError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    out = Console()
    attrs = info["attrs"]
    out.print(f"[bold]{info['store']}[/bold]")
    out.print(f"[bold yellow]{attrs.get('weights_note', 'weights: ' + str(attrs.get('weights')))}[/bold yellow]")
    out.print(f"model: {attrs.get('model_id')} @ {attrs.get('model_revision')}  (weights: {attrs.get('weights')})")
    out.print("dims: " + ", ".join(f"{k}={v}" for k, v in info["dims"].items()))
    out.print(f"layers: {info['layers'][0]}..{info['layers'][-1]} ({len(info['layers'])}; 0 = embeddings)")
    out.print(f"config fingerprint: {attrs.get('config_fingerprint')}   musicinterp {attrs.get('musicinterp_version')}")
    out.print(f"size on disk: {info['size_bytes'] / 2**20:.1f} MiB")
    out.print(f"complete: {len(info['complete'])} of {len(info['clips'])} clips; "
              f"annotated: {len(info['annotated'])}; labels: {', '.join(info['labels']) or 'none'}")
    table = Table("clip", "frames", "seconds", "complete")
    done = set(info["complete"])
    for clip in info["clips"]:
        n = info["frames"][clip]
        table.add_row(clip, str(n), f"{n / 50:.2f}", "yes" if clip in done else "[red]no[/red]")
    out.print(table)
    return 0


def _settings(path: str | None, model, section: str):
    """A settings model from YAML: the file holds a ``section:`` mapping (as in a run config) or its fields."""
    from pydantic import ValidationError

    from musicinterp.config import ConfigError, format_validation_error

    if not path:
        return model()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return model.model_validate(data.get(section, data))
    except FileNotFoundError as e:
        raise ConfigError(f"settings file {path!r} does not exist") from e
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from e


def cmd_annotate(args: argparse.Namespace) -> int:
    import time

    from musicinterp.annotate import annotate_windows, to_csv
    from musicinterp.config import AnnotationSpec, ConfigError
    from musicinterp.frames import SAMPLE_RATE_HZ
    from musicinterp.slice import check_audio
    from musicinterp.sources.audio_dir import read_audio
    from musicinterp.sources.base import ClipError

    try:
        spec = _settings(args.settings, AnnotationSpec, "annotation")
        samples = read_audio(args.audio)
        check_audio(samples, args.audio, spec.min_duration_s)
        t0 = time.perf_counter()
        labels, ann = annotate_windows(samples, spec, args.audio, args.window_s,
                                       on_window=lambda i, n: console.print(f"window {i}/{n}") if n > 1 else None)
    except (ConfigError, ClipError) as e:
        console.print(f"[red]{e}[/red]")
        return 2
    elapsed = time.perf_counter() - t0
    seconds = len(samples) / SAMPLE_RATE_HZ
    to_csv(labels, args.out)
    lab = labels
    console.print(f"{args.audio}: {seconds:.1f} s, {len(lab['time'])} frames, annotated in {elapsed:.1f} s "
                  f"(real-time factor {elapsed / seconds:.3f})")
    console.print(f"recurring frames: {lab['rec_lag_next_s_valid'].mean():.1%}; "
                  f"resolution events: {int(lab['res_event'].sum())}")
    console.print(f"labels: {args.out}")
    if args.plot:
        if ann is None:
            console.print("[yellow]--plot draws files annotated in one window only; none drawn[/yellow]")
        else:
            from musicinterp.annotate.plot import plot_annotation

            plot_annotation(ann, args.plot, title=args.audio)
            console.print(f"plot:   {args.plot}")
    return 0


def cmd_validate_annotations(args: argparse.Namespace) -> int:
    from musicinterp.annotate.validate import run_validation, validation_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _progress_bar() as bar:
        task = bar.add_task("validating", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"validating: {what}")

        result = run_validation(n_synthetic=args.synthetic, n_chorales=args.chorales, duration_s=args.duration_s,
                                seed=args.seed, progress=progress, chorale_skip=args.chorale_skip)
    (out / "annotation-validation.json").write_text(json.dumps(result, indent=2, default=str))
    md = validation_markdown(result)
    (out / "annotation-validation.md").write_text(md)
    Console().print(md)
    console.print(f"report: {out / 'annotation-validation.md'}")
    return 0 if result["passed"] else 1


def cmd_analyze(args: argparse.Namespace) -> int:
    from musicinterp.analysis.data import AnalysisError, open_analysis_store
    from musicinterp.config import AnalysisSpec, ConfigError

    try:
        spec = _settings(args.settings, AnalysisSpec, "analysis")
        for url in filter(None, (args.store, args.control_store)):
            open_analysis_store(url)
    except (ConfigError, AnalysisError) as e:
        console.print(f"[red]{e}[/red]")
        return 2
    from flows.analysis import analysis, default_out

    out = args.out or default_out(args.store)
    state = analysis(store=args.store, spec=spec, out=out, control_store=args.control_store,
                     name=args.name, return_state=True)
    if not state.is_completed():
        console.print(f"[red]analysis did not complete: {state.message}[/red]")
        return 1
    result = state.result()
    Console().print((Path(out) / "findings.md").read_text())
    console.print(f"results: {out}/results.parquet, {out}/results.csv; figures and findings.md in {out}")
    console.print(f"{result['significant']} significant cells (q < {spec.alpha:g}); weights: {result['weights']}")
    return 0


def toy_spec_from_args(args: argparse.Namespace):
    """The ToySpec of ``train-toy``: the ``--settings`` file (or the defaults), then the flags over it."""
    from pydantic import ValidationError

    from musicinterp.config import ConfigError, format_validation_error
    from musicinterp.toy import ToySpec

    flags = {"steps": args.steps, "seed": args.seed, "design": args.design, "device": args.device}
    fields = _settings(args.settings, ToySpec, "toy").model_dump() | {k: v for k, v in flags.items() if v is not None}
    try:
        return ToySpec(**fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error("train-toy flags", e)) from e


def cmd_train_toy(args: argparse.Namespace) -> int:
    from flows.toy import train_toy_cli
    from musicinterp.config import ConfigError

    try:
        spec = toy_spec_from_args(args)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        return 2
    return train_toy_cli(args.out or f"checkpoints/toy-{'cue' if spec.design == 'chord' else spec.design}", spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicinterp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging from musicinterp")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark described by a YAML config, as a Prefect flow")
    run.add_argument("config", help="YAML config (see configs/)")
    run.add_argument("--out", default="runs", help="folder or fsspec URL for the run (default: runs)")
    run.set_defaults(func=cmd_run)
    insp = sub.add_parser("inspect", help="print what a run store holds")
    insp.add_argument("store", help="path or URL of a store.zarr")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.set_defaults(func=cmd_inspect)
    ann = sub.add_parser("annotate", help="recurrence and tension labels of one audio file, as CSV (one row per frame)")
    ann.add_argument("audio", help="audio file (wav, flac, ogg, mp3, ...; any rate, mono or stereo)")
    ann.add_argument("--out", required=True, help="CSV to write")
    ann.add_argument("--plot", help="PNG to draw: self-similarity with recurrences, tension curves")
    ann.add_argument("--settings", help="YAML with annotation settings (an 'annotation:' mapping or its fields)")
    ann.add_argument("--window-s", type=float, default=WINDOW_S,
                     help=f"files longer than this are annotated in consecutive windows (default {WINDOW_S:g})")
    ann.set_defaults(func=cmd_annotate)
    val = sub.add_parser("validate-annotations",
                         help="score the labels against ground truth (synthetic returns, chorale repeats, fermatas)")
    val.add_argument("--synthetic", type=int, default=30, help="pieces per synthetic set (easy, hard); default 30")
    val.add_argument("--chorales", type=int, default=20, help="chorales with repeat signs; default 20")
    val.add_argument("--duration-s", type=float, default=24.0, help="length of the synthetic pieces (s)")
    val.add_argument("--seed", type=int, default=200, help="seed of the synthetic pieces (tuning used 100-109)")
    val.add_argument("--chorale-skip", type=int, default=20,
                     help="skip this many chorales of the scan (the first 20 informed the resolution rule)")
    val.add_argument("--out", default="validation", help="folder for the JSON and markdown report")
    val.set_defaults(func=cmd_validate_annotations)
    ana = sub.add_parser("analyze", help="probe every layer of a store for future events, against causal controls")
    ana.add_argument("store", help="path or URL of a store of the documented schema (resid + (clip, time) labels)")
    ana.add_argument("--out", help="folder for results, figures and findings (default: beside the store)")
    ana.add_argument("--control-store", help="the same slice from a random-weight model: the 'random-model' control")
    ana.add_argument("--settings", help="YAML with analysis settings (an 'analysis:' mapping or its fields)")
    ana.add_argument("--name", default="analysis", help="name used in artifact keys (default: analysis)")
    ana.set_defaults(func=cmd_analyze)
    toy = sub.add_parser("train-toy", help="train the positive-control model (a cue decides whether A returns)")
    toy.add_argument("--out", help="checkpoint folder (default: checkpoints/toy-cue, or toy-pair with --design pair)")
    toy.add_argument("--settings", help="YAML with ToySpec fields (a 'toy:' mapping or its fields), e.g. "
                     "checkpoints/toy-pair/train.yaml; the flags below override it")
    toy.add_argument("--design", choices=["chord", "pair"],
                     help="cue design: one chord decides (default), or two chords that are equal when A returns")
    toy.add_argument("--device", help="torch device of training: cpu (default) or cuda")
    toy.add_argument("--steps", type=int, help="optimiser steps (default: ToySpec's)")
    toy.add_argument("--seed", type=int, help="seed of the training pieces and weights")
    toy.set_defaults(func=cmd_train_toy)
    add_ops_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # the local server's usage telemetry needs the internet; off unless the user turns it on
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
