"""``musicinterp annotate`` and ``musicinterp validate-annotations``: the labels of one audio file, and
their score against ground truth. Both need only the library (no Prefect, no model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from musicinterp.annotate.labels import WINDOW_S
from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, console, error, load_settings, progress_bar, quiet_essentia


def cmd_annotate(args: argparse.Namespace) -> int:
    import time

    from musicinterp.annotate import annotate_windows, to_csv
    from musicinterp.config import AnnotationSpec, ConfigError
    from musicinterp.frames import SAMPLE_RATE_HZ
    from musicinterp.slice import check_audio
    from musicinterp.sources.audio_dir import read_audio
    from musicinterp.sources.base import ClipError

    quiet_essentia(args.verbose)
    try:
        spec = load_settings(args.settings, AnnotationSpec, "annotation")
        samples = read_audio(args.audio)
        check_audio(samples, args.audio, spec.min_duration_s)
        seconds = len(samples) / SAMPLE_RATE_HZ
        if args.plot and seconds > args.window_s:
            return error(
                f"{args.audio}: --plot draws one window, and this file ({seconds:.1f} s) is longer than "
                f"--window-s {args.window_s:g}: raise --window-s to {seconds:.0f} or more, or cut the file"
            )
        t0 = time.perf_counter()
        labels, ann = annotate_windows(
            samples,
            spec,
            args.audio,
            args.window_s,
            on_window=lambda i, n: console.print(f"window {i}/{n}") if n > 1 else None,
        )
    except (ConfigError, ClipError) as e:
        return error(e)
    elapsed = time.perf_counter() - t0
    if args.out == "-":  # the CSV on stdout, everything else on stderr
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            sys.stdout.write(to_csv(labels, Path(tmp) / "labels.csv").read_text())
        sys.stdout.flush()
    else:
        to_csv(labels, args.out)
    console.print(
        f"{args.audio}: {seconds:.1f} s, {len(labels['time'])} frames, annotated in {elapsed:.1f} s "
        f"(real-time factor {elapsed / seconds:.3f})"
    )
    console.print(
        f"recurring frames: {labels['rec_lag_next_s_valid'].mean():.1%}; "
        f"resolution events: {int(labels['res_event'].sum())}"
    )
    console.print(f"labels: {'stdout' if args.out == '-' else args.out}")
    if args.plot and ann is not None:  # one window (longer files were refused above)
        from musicinterp.annotate.plot import plot_annotation

        plot_annotation(ann, args.plot, title=args.audio)
        console.print(f"plot:   {args.plot}")
    return EXIT_OK


def cmd_validate_annotations(args: argparse.Namespace) -> int:
    from musicinterp.annotate.validation import run_validation, validation_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task = bar.add_task("validating", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"validating: {what}")

        result = run_validation(
            n_synthetic=args.synthetic,
            n_chorales=args.chorales,
            duration_s=args.duration_s,
            seed=args.seed,
            progress=progress,
            chorale_skip=args.chorale_skip,
        )
    (out / "annotation-validation.json").write_text(json.dumps(result, indent=2, default=str))
    md = validation_markdown(result)
    (out / "annotation-validation.md").write_text(md)
    Console().print(md)
    console.print(f"report: {out / 'annotation-validation.md'}")
    return EXIT_OK if result["passed"] else EXIT_FAILED


def positive_seconds(text: str) -> float:
    """``--window-s``: a finite number of seconds above 0 (0, NaN or a negative value would drop the
    memory guard that windows long files, or crash)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds above 0")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``annotate`` and ``validate-annotations``."""
    ann = sub.add_parser("annotate", help="recurrence and tension labels of one audio file, as CSV (one row per frame)")
    ann.add_argument("audio", help="audio file (wav, flac, ogg, mp3, ...; any rate, mono or stereo)")
    ann.add_argument("--out", required=True, help="CSV to write; - writes it to stdout")
    ann.add_argument("--plot", help="PNG to draw: self-similarity with recurrences, tension curves")
    ann.add_argument("--settings", help="YAML with annotation settings (an 'annotation:' mapping or its fields)")
    ann.add_argument(
        "--window-s",
        type=positive_seconds,
        default=WINDOW_S,
        help=f"files longer than this are annotated in consecutive windows (default {WINDOW_S:g})",
    )
    ann.set_defaults(func=cmd_annotate)
    val = sub.add_parser(
        "validate-annotations",
        help="score the labels against ground truth (synthetic returns, chorale repeats, fermatas)",
    )
    val.add_argument("--synthetic", type=int, default=30, help="pieces per synthetic set (easy, hard); default 30")
    val.add_argument("--chorales", type=int, default=20, help="chorales with repeat signs; default 20")
    val.add_argument("--duration-s", type=float, default=24.0, help="length of the synthetic pieces (s)")
    val.add_argument("--seed", type=int, default=200, help="seed of the synthetic pieces (tuning used 100-109)")
    val.add_argument(
        "--chorale-skip",
        type=int,
        default=20,
        help="skip this many chorales of the scan (the first 20 informed the resolution rule)",
    )
    val.add_argument("--out", default="validation", help="folder for the JSON and markdown report")
    val.set_defaults(func=cmd_validate_annotations)
