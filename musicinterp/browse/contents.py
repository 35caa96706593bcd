"""What a run folder holds for the browser: the store, its config, analyses, saved probe directions, SAE
rankings and intervention runs. Discovery only (no computing); every missing piece becomes a note that the
overview page shows, so that a half-finished run still gets a site."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musicinterp.browse.interventions import (
    EXPERIMENT_FILE,
    FIGURE_FILE,
    RESULTS_FILE,
    is_intervention_folder,
    sibling_experiments,
)

STORE_DIR = "store.zarr"
HEATMAP_GLOB = "gain_*.png"  # musicinterp.analysis.report.heatmaps
DIRECTIONS_META_FILE = "directions.json"  # musicinterp.causal.directions
CANDIDATES_FILE = "candidates.json"  # musicinterp.sae.rank
RANKED_FILE = "ranked.parquet"
SEARCH_DEPTH = 3  # folder levels under the run searched for analyses, rankings and intervention runs


class BrowseInputError(ValueError):
    """The folder is not a run the browser can read; the message names it and says what to pass."""


@dataclass
class RunContents:
    """Paths of what exists in a run folder, and notes about what does not."""

    root: Path
    store: Path
    attrs: dict[str, Any]
    run_json: dict[str, Any] | None
    heatmaps: list[Path] = field(default_factory=list)
    annotation_plots: dict[str, Path] = field(default_factory=dict)  # clip id -> the run's annotation PNG
    directions_dirs: list[Path] = field(default_factory=list)
    rank_dirs: list[Path] = field(default_factory=list)
    intervention_dirs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _below(root: Path, name: str) -> list[Path]:
    """Files called ``name`` up to SEARCH_DEPTH folders below ``root`` (the store itself is skipped)."""
    found: list[Path] = []
    for depth in range(SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth + [name])
        found += [p for p in root.glob(pattern) if STORE_DIR not in p.parts]
    return sorted(set(found))


def _in_site(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a browser site built inside the run (its copies of figures are not results)."""
    return any((p / "index.html").is_file() and (p / "items").is_dir() for p in path.parents if root in p.parents)


def _annotation_plots(root: Path) -> dict[str, Path]:
    """clip id -> PNG from the run's ``annotations/*.json`` (each names its clip and plot)."""
    plots: dict[str, Path] = {}
    for meta_path in sorted((root / "annotations").glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        plot = meta.get("plot")
        if not plot or not meta.get("clip_id"):
            continue
        local = root / "plots" / Path(plot).name  # the json may name the folder where the run was made
        if local.is_file():
            plots[str(meta["clip_id"])] = local
    return plots


def discover(
    run_dir: str | Path,
    rank_dirs: list[str | Path] | None = None,
    intervention_dirs: list[str | Path] | None = None,
) -> RunContents:
    """Find the run's parts; ``rank_dirs`` / ``intervention_dirs`` add folders kept outside the run."""
    import zarr

    root = Path(run_dir)
    store = root / STORE_DIR
    if not store.is_dir():
        if (root / "zarr.json").is_file():
            root, store = root.parent, root
        else:
            raise BrowseInputError(f"{str(run_dir)!r} holds no {STORE_DIR}: pass a run folder (runs/<name>-<hash>)")
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    run_file = root / "run.json"
    contents = RunContents(
        root=root,
        store=store,
        attrs=attrs,
        run_json=json.loads(run_file.read_text()) if run_file.is_file() else None,
    )
    contents.heatmaps = [p for d in _below(root, "results.parquet") for p in sorted(d.parent.glob(HEATMAP_GLOB))]
    if not contents.heatmaps:
        contents.notes.append("no analysis heatmaps (run `musicinterp analyze` on this run)")
    contents.annotation_plots = _annotation_plots(root)
    contents.directions_dirs = [p.parent for p in _below(root, DIRECTIONS_META_FILE)]
    if not contents.directions_dirs:
        contents.notes.append(
            "no saved probe directions (analysis.save_directions, or `musicinterp intervene --write-directions`)"
        )
    extra_ranks = [Path(d) for d in rank_dirs or []]
    for d in extra_ranks:
        if not (d / CANDIDATES_FILE).is_file():
            raise BrowseInputError(f"{str(d)!r} holds no {CANDIDATES_FILE}: pass the output of `musicinterp sae rank`")
    contents.rank_dirs = sorted({*extra_ranks, *(p.parent for p in _below(root, CANDIDATES_FILE))})
    if not contents.rank_dirs:
        contents.notes.append("no SAE feature ranking (`musicinterp sae rank` writes candidates.json)")
    extra_int = [Path(d) for d in intervention_dirs or []]
    for d in extra_int:
        if not is_intervention_folder(d):
            raise BrowseInputError(
                f"{str(d)!r} holds none of {EXPERIMENT_FILE}, {RESULTS_FILE}, {FIGURE_FILE}: "
                "pass a folder `musicinterp intervene` wrote (OUT/NAME-FINGERPRINT)"
            )
    inside = {p.parent for name in (EXPERIMENT_FILE, FIGURE_FILE) for p in _below(root, name)}
    inside = {d for d in inside if not _in_site(d, root)}
    sae_roots = [d.parent for d in contents.rank_dirs]  # <sae>/rank: experiments on <sae>/layer<l> belong here
    found = {d.resolve() for d in [*extra_int, *inside, *sibling_experiments(root, sae_roots)]}
    contents.intervention_dirs = sorted(found)
    if not contents.intervention_dirs:
        contents.notes.append(
            "no intervention run (`musicinterp intervene` writes OUT/NAME-FINGERPRINT/results.csv; the browser reads"
            " those in the run, beside it with `directions` or an SAE in the run or under an SAE root of --sae-rank, or"
            " given with --intervention)"
        )
    return contents
