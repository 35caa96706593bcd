"""Intervention runs (``musicinterp intervene``, musicinterp.causal.experiment) read back and matched to the
browser's pages.

An experiment folder holds ``results.csv`` (one row per intervention: model, layer, candidate, operation,
window and the paired statistics), ``experiment.json`` (its spec: the ``directions`` folder and
``probe_target`` its probe candidates were read from) and ``causal-effects.png`` (every direction row in one
figure). What a row targets:

- ``probe (T)`` / ``probe-pattern (T)`` on the trained model: the saved direction ``L{layer}-{T}`` of
  ``spec.directions`` (the pattern is that direction's activation pattern, covariance x weights), so the
  page of that direction when the folder is one of the run's;
- ``probe ...`` on the random twin: its own direction ``random-L{layer}-{T}`` (another model's basis: no page);
- ``sae-feature L{layer} f{feature}`` (experiment ``sae feature``): the ablation of that SAE feature; the row
  names its SAE folder (``sae``, resolved) and ``feature``, so the page of that feature when the site has one for
  the same SAE folder, layer and id (a folder written from another working directory, or moved, is matched by its
  last two path parts, ``<sae root>/layer<l>``, when that is unambiguous). Either model's: the SAE folder says
  whose stream it reads;
- ``diff-means top-k``, whole-stream patches and the cue swap: no saved direction, so no page.

Rows without a page are listed on the overview with the reason. The intervene flow writes experiments to
``{out}/{name}-{fingerprint}`` (``--out runs`` by default: beside the run, not in it), so the browser also reads
the run's sibling folders whose experiment names one of the run's folders as its ``directions``, or whose
``sae-feature`` families name an SAE or ranking in the run or under one of the site's SAE roots (the folder
holding a ranking the site reads, e.g. ``runs/sae-toy-pair`` for ``--sae-rank runs/sae-toy-pair/rank``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the file names musicinterp.causal.experiment writes (not imported: that module loads torch)
RESULTS_FILE = "results.csv"
EXPERIMENT_FILE = "experiment.json"
FIGURE_FILE = "causal-effects.png"
FINDINGS_FILE = "findings.md"
REQUIRED_COLUMNS = (
    "model",
    "weights",
    "experiment",
    "layer",
    "window",
    "candidate",
    "operation",
    "n_pieces",
    "event_effect",
    "event_ci_low",
    "event_ci_high",
    "event_p",
    "fluency_effect",
)
PROBE_KINDS = ("probe", "probe-pattern")
SAE_EXPERIMENT = "sae feature"  # musicinterp.causal.experiment's rows of kind 'sae-feature'


class InterventionReadError(ValueError):
    """An intervention folder the browser cannot read; the message names the file and what is wrong."""


@dataclass
class Effect:
    """One row of an experiment's ``results.csv``: an intervention and its paired statistics."""

    experiment: str  # the experiment's name (spec.name)
    folder: Path
    row: int
    model: str  # 'trained' | 'random' (the random twin)
    weights: str
    kind: str  # 'cue swap' | 'whole-stream patch' | 'direction' | 'sae feature'
    layer: int
    window: str
    candidate: str
    operation: str
    n_pieces: int
    values: dict[str, float]
    controls_event: list[float] = field(default_factory=list)
    controls_fluency: list[float] = field(default_factory=list)
    direction: str | None = None  # the saved direction a probe candidate was read from
    directions_dir: str | None = None  # spec.directions as the experiment was given it
    sae: str | None = None  # an SAE feature's SAE folder (resolved when the experiment ran)
    feature: int | None = None  # an SAE feature's id

    @property
    def label(self) -> str:
        where = f"layer {self.layer}, " if self.layer >= 0 else ""
        model = "the random twin" if self.model == "random" else "the model"
        frames = f"frames '{self.window}', " if self.window else ""
        return f"{self.candidate}: {self.operation}, {where}{frames}on {model}"

    def v(self, name: str) -> float:
        return self.values.get(name, math.nan)

    def summary(self) -> str:
        """The numbers in one line: effect on the onset loss with CI and p (q), the matched controls, fluency."""
        f = _num
        text = (
            f"onset loss {f(self.v('event_effect'))} nats [{f(self.v('event_ci_low'))}, {f(self.v('event_ci_high'))}],"
            f" p {_p(self.v('event_p'))}"
        )
        if math.isfinite(self.v("event_q")):
            text += f" (q {_p(self.v('event_q'))})"
        if self.controls_event:
            text += (
                f"; {len(self.controls_event)} matched controls {f(self.v('controls_event_mean'))} on average"
                f" (max {f(self.v('controls_event_max'))}); candidate - controls {f(self.v('event_vs_controls'))}"
                f" [{f(self.v('event_vs_controls_ci_low'))}, {f(self.v('event_vs_controls_ci_high'))}],"
                f" p {_p(self.v('event_vs_controls_p'))}"
            )
            if math.isfinite(self.v("event_vs_controls_q")):
                text += f" (q {_p(self.v('event_vs_controls_q'))})"
        return text + f"; fluency {f(self.v('fluency_effect'))} nats/code; {self.n_pieces} pieces"


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:+.3g}"


def _p(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


@dataclass
class Experiment:
    """One intervention folder: its effects, figure and findings (None when absent)."""

    folder: Path
    name: str
    spec: dict[str, Any]
    effects: list[Effect]
    figure: Path | None
    findings: Path | None


def is_intervention_folder(folder: Path) -> bool:
    return any((folder / f).is_file() for f in (EXPERIMENT_FILE, RESULTS_FILE, FIGURE_FILE))


def read_spec(folder: Path) -> dict[str, Any]:
    """``experiment.json``'s spec; InterventionReadError naming the file when missing or malformed."""
    path = folder / EXPERIMENT_FILE
    if not path.is_file():
        raise InterventionReadError(
            f"{str(path)!r} is missing: the experiment did not finish, or the folder is not from "
            "`musicinterp intervene`"
        )
    try:
        spec = json.loads(path.read_text()).get("spec")
    except (OSError, ValueError, AttributeError) as e:
        raise InterventionReadError(f"{str(path)!r} is not readable JSON with a 'spec' ({e})") from e
    if not isinstance(spec, dict):
        raise InterventionReadError(f"{str(path)!r} has no 'spec' object: rerun `musicinterp intervene`")
    return spec


def _floats(text: Any, path: Path, row: int, column: str) -> list[float]:
    if not isinstance(text, str):
        return []
    try:
        return [float(x) for x in json.loads(text)]
    except (ValueError, TypeError) as e:
        raise InterventionReadError(f"{str(path)!r}: row {row}, column {column!r} is not a JSON list ({e})") from e


def read_experiment(folder: str | Path) -> Experiment:
    """Read one intervention folder; InterventionReadError names the file and what is wrong with it."""
    import pandas as pd

    folder = Path(folder)
    spec = read_spec(folder)
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise InterventionReadError(f"{str(path)!r} is missing: the experiment did not finish")
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' ParserError / EmptyDataError are ValueErrors
        raise InterventionReadError(f"{str(path)!r} is not a readable CSV table ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InterventionReadError(f"{str(path)!r} lacks the columns {missing}: not a `musicinterp intervene` table")
    target = str(spec.get("probe_target") or "")
    name = str(spec.get("name") or folder.name)
    effects = []
    for i, r in enumerate(df.to_dict("records")):
        try:
            layer, n_pieces = int(r["layer"]), int(r["n_pieces"])
            values = {k: float(v) for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        except (TypeError, ValueError) as e:
            raise InterventionReadError(f"{str(path)!r}: row {i} has a non-numeric layer or n_pieces ({e})") from e
        candidate = str(r["candidate"])
        kind = candidate.split(" ", 1)[0]
        direction = None
        if r["experiment"] == "direction" and kind in PROBE_KINDS and target:
            direction = f"{'random-' if r['model'] == 'random' else ''}L{layer}-{target}"
        sae, feature = None, None
        if r["experiment"] == SAE_EXPERIMENT:
            try:
                sae, feature = str(r["sae"]), int(r["feature"])
            except (KeyError, TypeError, ValueError) as e:
                raise InterventionReadError(
                    f"{str(path)!r}: row {i} is an SAE feature without a readable 'sae' folder and 'feature' id ({e})"
                ) from e
        effects.append(
            Effect(
                experiment=name,
                folder=folder,
                row=i,
                model=str(r["model"]),
                weights=str(r["weights"]),
                kind=str(r["experiment"]),
                layer=layer,
                window="" if pd.isna(r["window"]) else str(r["window"]),
                candidate=candidate,
                operation=str(r["operation"]),
                n_pieces=n_pieces,
                values=values,
                controls_event=_floats(r.get("_controls_event"), path, i, "_controls_event"),
                controls_fluency=_floats(r.get("_controls_fluency"), path, i, "_controls_fluency"),
                direction=direction,
                directions_dir=spec.get("directions"),
                sae=sae,
                feature=feature,
            )
        )
    figure = folder / FIGURE_FILE
    findings = folder / FINDINGS_FILE
    return Experiment(
        folder, name, spec, effects, figure if figure.is_file() else None, findings if findings.is_file() else None
    )


def in_run(path_text: str | None, root: Path) -> Path | None:
    """The folder ``path_text`` names, resolved, when it lies in the run ``root``; a path written from another
    working directory or before the run moved is mapped by the run folder's name (``runs/<run>/analysis``)."""
    if not path_text:
        return None
    root = root.resolve()
    p = Path(path_text)
    candidates = [p.resolve()]
    if root.name in p.parts:
        last = len(p.parts) - 1 - p.parts[::-1].index(root.name)
        candidates.append(root.joinpath(*p.parts[last + 1 :]).resolve())
    for c in candidates:
        if c == root or root in c.parents:
            return c
    return None


def _sae_paths(spec: dict[str, Any]) -> list[str]:
    families = [*(spec.get("candidates") or []), *(spec.get("control_model_candidates") or [])]
    return [str(c["sae"]) for c in families if isinstance(c, dict) and c.get("kind") == "sae-feature" and c.get("sae")]


def sibling_experiments(root: Path, sae_roots: list[Path] | None = None) -> list[Path]:
    """Intervention folders beside the run (``intervene --out runs``) whose ``directions`` lie in the run, or whose
    ``sae-feature`` families name an SAE (or ranking) in the run or under one of ``sae_roots``. A sibling that is
    not readable is not known to belong to the run, so it is left alone."""
    found = []
    roots = [root, *(sae_roots or [])]
    for path in sorted(root.resolve().parent.glob(f"*/{EXPERIMENT_FILE}")):
        if path.parent == root.resolve():
            continue
        try:
            spec = read_spec(path.parent)
        except InterventionReadError:
            continue
        saes = _sae_paths(spec)
        if in_run(spec.get("directions"), root) is not None or any(
            in_run(s, r) is not None for s in saes for r in roots
        ):
            found.append(path.parent)
    return found


def page_of(
    effect: Effect,
    direction_pages: dict[tuple[Path, str], str],
    root: Path,
    feature_pages: dict[tuple[str, int, int], str] | None = None,
) -> tuple[str | None, str]:
    """The page key an effect belongs on (None: none) and, when none, why. ``direction_pages`` maps (resolved
    folder, saved direction name) to the page key of each probe direction of the run; ``feature_pages`` maps
    (resolved SAE folder, layer, feature) to the page key of each SAE feature of the site."""
    if effect.kind == "cue swap":
        return None, "no intervention: the other cue itself (the cue's total effect)"
    if effect.kind == "whole-stream patch":
        return None, f"the whole stream of layer {effect.layer}, not one direction"
    if effect.kind == SAE_EXPERIMENT:
        return _feature_page(effect, feature_pages or {})
    if effect.direction is None:
        return None, "directions fitted by the experiment (not a saved direction): no page"
    if effect.model == "random":
        return None, f"the random twin's own direction {effect.direction!r} (another model's basis): no page"
    folder = in_run(effect.directions_dir, root)
    if folder is None:
        return None, f"its direction {effect.direction!r} is from {effect.directions_dir!r}, outside this run"
    key = direction_pages.get((folder, effect.direction))
    if key is None:
        return None, f"no page for direction {effect.direction!r} of {str(folder)!r} in this run"
    return key, ""


def _tail(folder: str) -> tuple[str, ...]:
    return Path(folder).parts[-2:]


def _feature_page(effect: Effect, feature_pages: dict[tuple[str, int, int], str]) -> tuple[str | None, str]:
    """An SAE feature's page: the same SAE folder (resolved), layer and id; else the one page of a folder with the
    same last two path parts (written elsewhere, or moved), when there is exactly one."""
    assert effect.sae is not None and effect.feature is not None  # read_experiment's check
    what = f"SAE feature {effect.feature} of layer {effect.layer} ({effect.sae!r})"
    key = feature_pages.get((str(Path(effect.sae).resolve()), effect.layer, effect.feature))
    if key is not None:
        return key, ""
    same = {
        k
        for (folder, layer, feature), k in feature_pages.items()
        if (layer, feature) == (effect.layer, effect.feature) and _tail(folder) == _tail(effect.sae)
    }
    if len(same) == 1:
        return same.pop(), ""
    return None, f"no page for {what} in this site (no ranking of that SAE lists it)"
