"""Causal tests: interventions on candidate directions of the residual stream, with matched random controls.

Pure Python (no Prefect). Modules, one role each: :mod:`~musicinterp.causal.directions` (probe and
difference-of-means directions in the residual basis, saved beside an analysis),
:mod:`~musicinterp.causal.hooks` (the interventions and ``intervening``), :mod:`~musicinterp.causal.controls`
(matched random controls), :mod:`~musicinterp.causal.sae_features` (SAE features as candidates: their
ablation, features of the same SAE as matched controls), :mod:`~musicinterp.causal.outcomes` (per-piece outcomes
and paired statistics),
:mod:`~musicinterp.causal.toy` (the pair toy's twin pairs and frame windows), :mod:`~musicinterp.causal.spec`
(the experiment's settings), :mod:`~musicinterp.causal.experiment` (the experiment and its report) and
:mod:`~musicinterp.causal.generation` (interventions during generation: the return score, paired effects).
See README.md in this folder.
"""

from musicinterp.causal.controls import ControlMatchError, Controls, matched_controls, projection_variance
from musicinterp.causal.directions import (
    Direction,
    diff_of_means,
    load_directions,
    probe_direction,
    save_directions,
    write_directions,
)
from musicinterp.causal.hooks import Intervention, InterventionError, intervening, layer_streams

__all__ = [
    "ControlMatchError",
    "Controls",
    "Direction",
    "Intervention",
    "InterventionError",
    "diff_of_means",
    "intervening",
    "layer_streams",
    "load_directions",
    "matched_controls",
    "probe_direction",
    "projection_variance",
    "save_directions",
    "write_directions",
]
