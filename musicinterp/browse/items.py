"""The things that get a page: saved probe directions and candidate SAE features, each reduced to "how to
compute its activation from one layer's residual stream".

Activation of a probe direction = projection of the stored ``resid`` at its layer onto the direction's unit
vector (residual-stream units). Activation of an SAE feature = its SAE encoding of the stored ``resid``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from musicinterp.browse.contents import CANDIDATES_FILE, RANKED_FILE, RunContents

log = logging.getLogger(__name__)

KIND_DIRECTION = "probe direction"
KIND_SAE = "SAE feature"


@dataclass
class Item:
    """One page: a direction (``unit`` set) or an SAE feature (``sae`` + ``feature`` set)."""

    key: str  # file-safe and unique: names the page
    kind: str
    title: str
    layer: int
    stats: dict[str, Any]
    source: str  # the file it was read from
    unit: np.ndarray | None = None
    sae: str | None = None  # key into ItemSet.saes
    feature: int | None = None
    direction: str | None = None  # a probe direction's saved name (directions.json)
    rows: list[dict[str, Any]] = field(default_factory=list)  # ranked-table rows of an SAE feature


@dataclass
class ItemSet:
    items: list[Item]
    saes: dict[str, Any]  # folder -> TopKSAE
    notes: list[str]

    def layers(self) -> list[int]:
        return sorted({i.layer for i in self.items})


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "item"


def direction_items(folder: Path, d_model: int, notes: list[str]) -> list[Item]:
    """Items of the directions saved in ``folder``; directions of the random-model control live in another
    model's basis and are left out (noted)."""
    from musicinterp.causal.directions import load_directions

    out = []
    skipped = 0
    for d in load_directions(folder):
        if d.control != "none" or d.vector.shape != (d_model,):
            skipped += 1
            continue
        stats = {"target": d.target, "horizon_s": d.horizon, "weights": d.weights, "method": d.kind, **d.stats}
        out.append(
            Item(
                key=slug(f"direction-{folder.name}-{d.name}"),
                kind=KIND_DIRECTION,
                title=f"{d.name} (layer {d.layer})",
                layer=int(d.layer),
                stats=stats,
                source=str(folder / "directions.json"),
                unit=d.unit.astype(np.float32),
                direction=d.name,
            )
        )
    if skipped:
        notes.append(f"{folder}: {skipped} directions of another model's basis (random-model control) not shown")
    return out


def _sae_folder(name: str, rank_dir: Path) -> Path | None:
    for p in (Path(name), rank_dir.parent / Path(name).name, rank_dir.parent.parent / name):
        if (p / "cfg.json").is_file():
            return p
    return None


def sae_items(rank_dir: Path, d_model: int, n_layers: int, saes: dict[str, Any], notes: list[str]) -> list[Item]:
    """Items of the candidates in ``rank_dir/candidates.json``, with their rows of ``ranked.parquet``."""
    from musicinterp.sae.saelens import load_sae

    cands = json.loads((rank_dir / CANDIDATES_FILE).read_text())
    ranked = None
    if (rank_dir / RANKED_FILE).is_file():
        import pandas as pd

        ranked = pd.read_parquet(rank_dir / RANKED_FILE)
    out: list[Item] = []
    for c in cands:
        layer, feature = int(c["layer"]), int(c["feature"])
        folder = _sae_folder(str(c["sae"]), rank_dir)
        if folder is None:
            notes.append(f"{rank_dir}: SAE folder {c['sae']!r} of feature {feature} (layer {layer}) not found")
            continue
        key = str(folder.resolve())
        if key not in saes:
            saes[key] = load_sae(folder, d_model=d_model, n_layers=n_layers, layer=layer).sae.eval()
        rows = []
        if ranked is not None:
            sel = ranked[(ranked["layer"] == layer) & (ranked["feature"] == feature)]
            rows = sel.astype(object).where(sel.notna(), None).to_dict("records")
        name = f"L{layer}-f{feature}"
        if any(i.key == slug(f"sae-{name}") for i in out):
            continue  # one page per feature, however many targets it predicts
        targets = [x["target"] for x in cands if int(x["layer"]) == layer and int(x["feature"]) == feature]
        stats = {k: v for k, v in c.items() if k not in ("how_to_ablate", "target")} | {"targets": ", ".join(targets)}
        out.append(
            Item(
                key=slug(f"sae-{name}"),
                kind=KIND_SAE,
                title=f"SAE feature {feature} of layer {layer}",
                layer=layer,
                stats=stats,
                source=str(rank_dir / CANDIDATES_FILE),
                sae=key,
                feature=feature,
                rows=rows,
            )
        )
    return out


def collect_items(contents: RunContents, d_model: int, n_layers: int) -> ItemSet:
    """Every direction and candidate feature of the run, in a stable order; problems become notes."""
    notes: list[str] = []
    items: list[Item] = []
    saes: dict[str, Any] = {}
    for folder in contents.directions_dirs:
        try:
            items += direction_items(folder, d_model, notes)
        except (OSError, ValueError, KeyError) as e:
            notes.append(f"{folder}: directions not readable ({e})")
    for rank_dir in contents.rank_dirs:
        try:
            items += sae_items(rank_dir, d_model, n_layers, saes, notes)
        except (OSError, ValueError, KeyError) as e:
            notes.append(f"{rank_dir}: SAE candidates not readable ({e})")
    seen: set[str] = set()
    unique = []
    for i in items:
        if i.key not in seen:
            seen.add(i.key)
            unique.append(i)
    return ItemSet(unique, saes, notes)
