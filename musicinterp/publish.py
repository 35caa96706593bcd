"""Share a run as a Hugging Face dataset repo: ``prepare`` writes the folder (store, results, SAE weights, the
browser, a dataset card with provenance, every source's licence, the weights kind and the config), ``upload``
sends it with huggingface_hub, ``fetch`` brings one back (``musicinterp.open_run("hf://ORG/NAME")``).

The token comes only from the environment (``HF_TOKEN``) or the Hub's own login (``hf auth login``): nothing
here reads, writes or logs it. These machines have no route to the Hub: the dry run and the loader on local
folders are what the tests exercise; ``upload`` and ``fetch`` are thin calls into huggingface_hub.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
CARD_FILE = "README.md"  # the Hub shows a dataset repo's README.md as its card
PUBLISH_FILE = "musicinterp_publish.json"
# what a published run holds, relative to the run folder; checkpoints (optimiser state) and caches stay home
INCLUDE = ("store.zarr", "run.json", "manifest.json", "summary.json", "summary.md", "analysis", "plots", "browse")
INCLUDE_GLOBS = ("sae-*",)
EXCLUDE = ("checkpoints", "work", "__pycache__", "*.tmp")


class PublishError(ValueError):
    """The run or the repo id cannot be published as asked; the message says what to change."""


@dataclass(frozen=True)
class Prepared:
    folder: Path
    repo_id: str
    files: int
    bytes: int


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id):
        raise PublishError(f"repo id {repo_id!r} is not ORG/NAME (letters, digits, '.', '_', '-')")
    return repo_id


def parse_hf_url(url: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME`` or ``hf://ORG/NAME@REVISION`` (``hf://datasets/ORG/NAME`` too) -> (repo id, revision)."""
    if not url.startswith(HF_SCHEME):
        raise PublishError(f"{url!r} is not an hf:// URL")
    rest = url[len(HF_SCHEME) :].strip("/").removeprefix("datasets/")
    repo, _, revision = rest.partition("@")
    return check_repo_id(repo), revision or None


def _licences(ds: Any) -> list[tuple[str, int]]:
    if "licence" not in ds:
        return [("(not recorded in the store)", int(ds.sizes["clip"]))]
    return Counter(str(x) or "(unknown)" for x in ds["licence"].values).most_common()


def dataset_card(run_dir: Path, repo_id: str) -> str:
    """The card: YAML metadata, then provenance in words (model, revision, weights kind, sources and their
    licences, config fingerprint and the whole config)."""
    import xarray as xr

    ds = xr.open_zarr(str(run_dir / "store.zarr"), chunks=None)
    a = ds.attrs
    weights = str(a.get("weights", "unknown"))
    licences = _licences(ds)
    sources = sorted({str(s) for s in ds["source"].values}) if "source" in ds else []
    config = a.get("config_json", "")
    pretty = json.dumps(json.loads(config), indent=2) if config else "(not recorded)"
    words = {
        "random": "**random weights — an untrained model; nothing here says anything about a trained MusicGen**",
        "trained-here": "**trained here** — a small model trained by musicinterp on synthetic pieces",
        "pretrained": "**pretrained** — published weights loaded from the Hugging Face Hub",
    }.get(weights, f"**{weights}**")
    lines = [
        "---",
        "tags: [musicinterp, interpretability, music, musicgen]",
        "license: other",
        f"pretty_name: musicinterp run {run_dir.name}",
        "---",
        "",
        f"# musicinterp run `{run_dir.name}`",
        "",
        f"Model weights: {words}.",
        "",
        "Residual-stream activations of a MusicGen-architecture decoder on music clips, per-frame recurrence and "
        "tension labels, probe results and (where present) SAEs and a feature browser (`browse/index.html`), "
        f"written by musicinterp {a.get('musicinterp_version', '')}. "
        f"Open it with `musicinterp.open_run('hf://{repo_id}')` or plain "
        "`xarray.open_zarr('store.zarr')`.",
        "",
        "## Provenance",
        "",
        f"- model: `{a.get('model_id')}` at revision `{a.get('model_revision')}`; weights: `{weights}`",
        f"- clips: {ds.sizes['clip']}; layers: {ds.sizes.get('layer')}; width: {ds.sizes.get('feature')}",
        f"- config fingerprint: `{a.get('config_fingerprint')}`; store uid: `{a.get('store_uid')}`",
        f"- written by musicinterp {a.get('musicinterp_version')}; frame rate {a.get('frame_rate_hz')} Hz",
        f"- delay convention: {a.get('delay_convention')}",
        f"- layer convention: {a.get('layer_convention')}",
        "",
        "## Licences of the sources",
        "",
        "| licence | clips |",
        "|---|---|",
        *[f"| {name} | {n} |" for name, n in licences],
        "",
        f"Sources: {', '.join(f'`{s}`' for s in sources) or '(not recorded)'}. Each clip's file or score, "
        "offset and checksum are in the store (`locator`, `offset_s`, `sha256`).",
        "",
        "## Config",
        "",
        "```json",
        pretty,
        "```",
        "",
    ]
    return "\n".join(lines)


def _ignore(_dir: str, names: list[str]) -> set[str]:
    import fnmatch

    return {n for n in names for pat in EXCLUDE if fnmatch.fnmatch(n, pat)}


def prepare(run_dir: str | Path, out: str | Path, repo_id: str) -> Prepared:
    """Write what the dataset repo holds into ``out`` (which must be empty or absent); nothing is uploaded."""
    check_repo_id(repo_id)
    run = Path(run_dir)
    if not (run / "store.zarr").is_dir():
        raise PublishError(f"{str(run)!r} holds no store.zarr: pass a run folder (runs/<name>-<hash>)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{str(out)!r} is not empty: choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    parts = [run / n for n in INCLUDE] + [p for g in INCLUDE_GLOBS for p in sorted(run.glob(g))]
    copied = []
    for src in parts:
        if src.is_dir():
            shutil.copytree(src, out / src.name, ignore=_ignore)
        elif src.is_file():
            shutil.copyfile(src, out / src.name)
        else:
            continue
        copied.append(src.name)
    (out / CARD_FILE).write_text(dataset_card(run, repo_id))
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    meta = {"repo_id": repo_id, "run": run.name, "parts": copied, "files": len(files) + 1, "bytes": size}
    (out / PUBLISH_FILE).write_text(json.dumps(meta, indent=2))
    log.info("prepared %s for %s: %d files, %.1f MiB", out, repo_id, len(files) + 1, size / 2**20)
    return Prepared(out, repo_id, len(files) + 1, size)


def upload(prepared: Prepared, private: bool = True) -> str:
    """Create the dataset repo if needed and upload the folder; returns the repo's URL. The token is the
    environment's or the Hub login's (huggingface_hub finds it; it is never passed through here)."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(prepared.repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=prepared.repo_id,
        folder_path=str(prepared.folder),
        repo_type="dataset",
        commit_message=f"musicinterp publish {prepared.folder.name}",
    )
    return str(url)


def fetch(url: str) -> Path:
    """Download (or find in the Hub cache) a published run; returns its local folder."""
    from huggingface_hub import snapshot_download

    repo_id, revision = parse_hf_url(url)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
    except Exception as e:  # huggingface_hub raises several kinds; all mean "not here"
        raise PublishError(f"could not fetch {url!r} from the Hugging Face Hub ({type(e).__name__}: {e})") from e
