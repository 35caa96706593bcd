"""``musicinterp browse RUN_DIR``: write the run's feature browser (a static HTML site) and optionally serve it
on 127.0.0.1. In this process, no Prefect (the deployed ``browse`` flow, flows/browse.py, does the same and
publishes a link artifact)."""

from __future__ import annotations

import argparse
import threading

from musicinterp_cli.common import EXIT_OK, console, error


def cmd_browse(args: argparse.Namespace) -> int:
    from musicinterp.browse import BrowseInputError, build_site, serve

    try:
        result = build_site(
            args.run_dir,
            args.out,
            top_clips=args.top,
            rank_dirs=args.sae_rank,
            intervention_dirs=args.intervention,
            similarity=not args.no_similarity,
            device=args.device,
            progress=console.print,
        )
    except (BrowseInputError, FileNotFoundError, ValueError) as e:
        return error(e)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"open {result.index} ({len(result.pages)} pages, {result.audio_files} audio segments)")
    if not args.serve:
        return EXIT_OK
    server, _thread = serve(result.out, args.port)
    host, port = server.server_address[:2]
    console.print(f"serving on http://{host}:{port}/index.html (Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.shutdown()
        server.server_close()
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "browse",
        help="write a run's feature browser (static HTML with audio) and optionally serve it on 127.0.0.1",
        description=__doc__,
    )
    p.add_argument("run_dir", help="a run folder (holding store.zarr)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/browse)")
    p.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (0: any free port; default 8000)")
    p.add_argument("--top", type=int, default=5, help="top-activating segments (clips) per page (default 5)")
    p.add_argument(
        "--sae-rank", action="append", help="an SAE ranking folder outside the run (candidates.json); repeatable"
    )
    p.add_argument(
        "--intervention",
        action="append",
        help="a `musicinterp intervene` folder kept elsewhere (those in the run, and those beside it whose "
        "directions are the run's, are found); repeatable",
    )
    p.add_argument(
        "--no-similarity",
        action="store_true",
        help="skip computing self-similarity for clips without an annotation plot (the slow part)",
    )
    p.add_argument("--device", default="cpu", help="device for decoding audio (default cpu)")
    p.set_defaults(func=cmd_browse)
