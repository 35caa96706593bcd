"""``musicinterp publish RUN_DIR --repo-id ORG/NAME [--dry-run]``: prepare a run for a Hugging Face dataset repo
(store, results, SAE weights, the browser, a dataset card) and upload it. The token comes only from the
environment (HF_TOKEN) or ``hf auth login``; it is never written or printed."""

from __future__ import annotations

import argparse
import tempfile

from musicinterp_cli.common import EXIT_FAILED, EXIT_OK, console, error


def cmd_publish(args: argparse.Namespace) -> int:
    from musicinterp.publish import PublishError, prepare, upload

    out = args.out or (str(args.run_dir).rstrip("/") + "-publish" if args.dry_run else tempfile.mkdtemp())
    try:
        prepared = prepare(args.run_dir, out, args.repo_id)
    except (PublishError, OSError) as e:
        return error(e)
    console.print(f"prepared {prepared.folder}: {prepared.files} files, {prepared.bytes / 2**20:.1f} MiB")
    if args.dry_run:
        console.print(f"dry run: nothing uploaded; the card is {prepared.folder}/README.md")
        return EXIT_OK
    try:
        url = upload(prepared, private=not args.public)
    except Exception as e:  # noqa: BLE001 - any Hub failure: say it, keep the prepared folder
        return error(f"upload to {args.repo_id!r} failed ({type(e).__name__}: {e}); the folder is {out}", EXIT_FAILED)
    console.print(f"uploaded to {url}")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="prepare (and upload) a run as a Hugging Face dataset repo", description=__doc__)
    p.add_argument("run_dir", help="a run folder (holding store.zarr)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME of the dataset repo")
    p.add_argument(
        "--dry-run", action="store_true", help="write the folder and the card only (default RUN_DIR-publish)"
    )
    p.add_argument("--out", help="folder to prepare into (must be empty)")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.set_defaults(func=cmd_publish)
