"""The Python API for notebooks: open a run, capture and annotate audio, analyse a store.

The same behaviour as the ``musicinterp`` command line, without Prefect: ``analyze`` picks up a run's own
analysis settings (its ``run.json``) as ``musicinterp analyze`` does and takes the same knobs; ``annotate``
returns the rows that ``musicinterp annotate`` writes; ``capture`` takes audio at any rate and channel count.

    import musicinterp as mi
    run = mi.open_run("runs/demo-<fingerprint>")
    run.store                # xarray Dataset (lazy)
    run.complete_clips       # clip ids whose completion flag is set
    results = mi.analyze(run, quick=True)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from musicinterp.frames import CLIP_MAX_S, FRAME_RATE_HZ, SAMPLE_RATE_HZ

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from musicinterp.config import AnalysisSpec, AnnotationSpec, ModelSpec, RunSpec
    from musicinterp.models import LoadedModel

log = logging.getLogger(__name__)

STORE_DIR = "store.zarr"
RUN_FILE = "run.json"
ANALYSIS_DIR = "analysis"
RESULTS_FILE = "results.parquet"
MAX_CHANNELS = 8  # an axis this short is channels, not time
QUICK = {  # a first look in minutes: fixed draws, fewer bootstrap draws, no second control
    "n_permutations": 19,
    "max_permutations": 19,
    "n_bootstrap": 200,
    "shifted_labels_control": False,
}


class RunNotFound(FileNotFoundError):
    """The path is neither a run folder (with ``store.zarr``) nor a store."""


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))


def _read_json(url: str) -> dict[str, Any] | None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def run_paths(path: str | Path) -> tuple[str, str]:
    """(run folder, store) of a run folder or of the ``store.zarr`` inside one; any zarr store is its own
    'run' with no run.json. Raises :class:`RunNotFound` when there is no store."""
    url = str(path).rstrip("/")
    if _exists(f"{url}/{STORE_DIR}"):
        return url, f"{url}/{STORE_DIR}"
    if _exists(f"{url}/zarr.json") or _exists(f"{url}/.zgroup"):
        return url.rsplit("/", 1)[0] if "/" in url else ".", url
    raise RunNotFound(f"{url!r} is neither a run folder (no {STORE_DIR} in it) nor a zarr store")


@dataclass(frozen=True)
class Run:
    """One run folder: its store, its config, its analysis results. Attributes are read when asked."""

    root: str
    store_path: str

    @cached_property
    def store(self) -> xr.Dataset:
        """The store, lazily (plain ``xarray.open_zarr``: what anyone without musicinterp gets, except that an
        int8 store's ``resid`` reads as float: ``musicinterp.store.dequantize``)."""
        import xarray as xr

        from musicinterp.store import dequantize

        return dequantize(xr.open_zarr(self.store_path, consolidated=False))

    @property
    def run_file(self) -> dict[str, Any] | None:
        """``run.json``: the config and what planning found; None for a bare store."""
        return _read_json(f"{self.root}/{RUN_FILE}")

    @property
    def config(self) -> RunSpec | None:
        """The run's config (analysis settings included), or None for a bare store."""
        from musicinterp.config import RunSpec

        data = self.run_file
        return None if data is None else RunSpec.model_validate(data["spec"])

    @property
    def complete_clips(self) -> list[str]:
        """Ids of the clips whose completion flag is set (the only ones to read)."""
        ds = self.store
        return [str(c) for c in ds["clip"].values[ds["complete"].values]]

    @property
    def analysis_dir(self) -> str:
        return f"{self.root}/{ANALYSIS_DIR}"

    @property
    def results(self) -> pd.DataFrame | None:
        """The analysis results table (``analysis/results.parquet``), or None before an analysis."""
        import pandas as pd

        url = f"{self.analysis_dir}/{RESULTS_FILE}"
        return pd.read_parquet(url) if _exists(url) else None

    @property
    def weights(self) -> str:
        """'random', 'pretrained' or 'trained-here': random weights say nothing about a trained MusicGen."""
        return str(self.store.attrs.get("weights", "unknown"))

    def __repr__(self) -> str:
        return f"Run({self.root!r}, weights={self.weights!r})"


def open_run(path: str | Path) -> Run:
    """A run folder (or its ``store.zarr``, or any store of the schema), local path or fsspec URL; or a
    published run, ``hf://ORG/NAME[@REVISION]`` (downloaded once into the Hub cache, musicinterp.publish)."""
    if str(path).startswith("hf://"):
        from musicinterp.publish import fetch

        path = fetch(str(path))
    root, store = run_paths(path)
    return Run(root, store)


def _store_of(store: str | Path | Run) -> tuple[str, str]:
    if isinstance(store, Run):
        return store.root, store.store_path
    return run_paths(store)


# -- analysis ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisPlan:
    """What an analysis of a store will do, and where each setting came from."""

    store: str
    out: str
    spec: AnalysisSpec
    control_store: str | None
    settings_from: str  # 'the settings file ...', "the run's run.json", 'the defaults'


def analysis_plan(
    store: str | Path | Run,
    out: str | None = None,
    *,
    settings: str | Path | AnalysisSpec | dict[str, Any] | None = None,
    control_store: str | None = None,
    targets: list[str] | None = None,
    layers: list[int] | None = None,
    permutations: int | None = None,
    quick: bool = False,
) -> AnalysisPlan:
    """The settings of an analysis: a settings file or mapping if given, else the run's own ``analysis``
    (its run.json, with its ``control_store`` when that still exists), else the defaults; then the knobs.

    ``permutations`` fixes the draws per cell (no sequential extension: p >= 1 / (permutations + 1));
    ``quick`` is 19 draws, 200 bootstrap draws and no shifted-labels control, a look at effect sizes in
    minutes (nothing can reach q < alpha with 19 draws)."""
    from pydantic import ValidationError

    from musicinterp.config import AnalysisSpec, ConfigError, format_validation_error

    root, store_url = _store_of(store)
    fields: dict[str, Any]
    run_control = None
    if isinstance(settings, AnalysisSpec):
        fields, source = settings.model_dump(), "the given AnalysisSpec"
    elif isinstance(settings, dict):
        fields, source = dict(settings), "the given settings"
    elif settings is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(settings).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"settings file {str(settings)!r} does not exist") from e
        fields, source = data.get("analysis", data), f"the settings file {str(settings)!r}"
    else:
        run = _read_json(f"{root}/{RUN_FILE}") if store_url == f"{root}/{STORE_DIR}" else None
        if run is not None:
            fields, source = dict(run["spec"].get("analysis") or {}), f"the run's {RUN_FILE}"
            run_control = run["spec"].get("control_store")
            if run_control and not _exists(str(run_control)):
                log.warning("the run's control_store %r does not exist here; analysing without it", run_control)
                run_control = None
        else:
            fields, source = {}, "the defaults"
    if quick:
        fields |= QUICK
    knobs: dict[str, Any] = {"targets": targets, "layers": layers}
    if permutations is not None:
        knobs |= {"n_permutations": permutations, "max_permutations": permutations}
    fields |= {k: v for k, v in knobs.items() if v is not None}
    try:
        spec = AnalysisSpec.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from e
    return AnalysisPlan(
        store=store_url,
        out=out or f"{root}/{ANALYSIS_DIR}",
        spec=spec,
        control_store=control_store or run_control,
        settings_from=source + (" with --quick" if quick else ""),
    )


def analyze(
    store: str | Path | Run,
    out: str | None = None,
    *,
    settings: str | Path | AnalysisSpec | dict[str, Any] | None = None,
    control_store: str | None = None,
    targets: list[str] | None = None,
    layers: list[int] | None = None,
    permutations: int | None = None,
    quick: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> pd.DataFrame:
    """Probe every layer of a store for future events (``musicinterp analyze``, in this process).

    Settings as :func:`analysis_plan` resolves them; results, heatmaps and ``findings.md`` go to ``out``
    (default: the run's ``analysis/``). ``progress(done, total, what)`` is called after every probe.
    Returns the results table."""
    plan = analysis_plan(
        store,
        out,
        settings=settings,
        control_store=control_store,
        targets=targets,
        layers=layers,
        permutations=permutations,
        quick=quick,
    )
    return run_analysis(plan, progress)


def run_analysis(plan: AnalysisPlan, progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Run a planned analysis (what :func:`analyze` and the CLI share)."""
    from musicinterp.analysis import analyze_store

    return analyze_store(plan.store, plan.spec, plan.out, control_store=plan.control_store, progress=progress)


# -- audio in -------------------------------------------------------------------------------------------------


def to_mono_32k(audio: Any, sr: int, name: str = "<audio>") -> np.ndarray:
    """Float32 mono at 32 kHz from samples of any rate and channel layout: ``(n,)``, ``(n, channels)`` or
    ``(channels, n)``; integer PCM is scaled to [-1, 1]. Errors name ``name``."""
    from scipy.signal import resample_poly

    from musicinterp.sources.base import ClipError

    x = np.asarray(audio)
    if x.dtype.kind in "iu":
        x = x / np.iinfo(x.dtype).max
    elif x.dtype.kind != "f":
        raise ClipError(name, f"expected numeric samples, got dtype {x.dtype}")
    if x.ndim == 2 and min(x.shape) <= MAX_CHANNELS:
        x = x.mean(axis=int(np.argmin(x.shape)), dtype=np.float64)
    if x.ndim != 1:
        raise ClipError(name, f"expected (samples,), (samples, channels) or (channels, samples), got {x.shape}")
    if int(sr) <= 0:
        raise ClipError(name, f"sample rate must be positive, got {sr}")
    if int(sr) != SAMPLE_RATE_HZ:
        ratio = Fraction(SAMPLE_RATE_HZ, int(sr)).limit_denominator(1000)
        x = resample_poly(np.asarray(x, np.float64), ratio.numerator, ratio.denominator)
    return np.ascontiguousarray(x, dtype=np.float32)


def annotate(
    audio: Any,
    sr: int,
    *,
    settings: AnnotationSpec | dict[str, Any] | None = None,
    window_s: float | None = None,
    name: str = "<audio>",
) -> pd.DataFrame:
    """The rows ``musicinterp annotate`` writes, as a DataFrame: ``time`` (s) then every label, one row per
    50 Hz frame; a label is missing (NaN / <NA>) where its ``_valid`` flag is false. Any rate and channels."""
    import pandas as pd

    from musicinterp.annotate.labels import CSV_REQUIRED, WINDOW_S, annotate_windows
    from musicinterp.config import AnnotationSpec
    from musicinterp.slice import check_audio

    spec = settings if isinstance(settings, AnnotationSpec) else AnnotationSpec.model_validate(settings or {})
    samples = to_mono_32k(audio, sr, name)
    check_audio(samples, name, spec.min_duration_s)
    labels, _ = annotate_windows(samples, spec, name, window_s or WINDOW_S)
    names = [k for k in labels if k != "time" and not k.endswith("_valid")]
    names = [c for c in CSV_REQUIRED if c in names] + [c for c in names if c not in CSV_REQUIRED]  # as in the CSV
    cols: dict[str, Any] = {"time": labels["time"]}
    for k in names:
        v = labels[k]
        valid = labels.get(f"{k}_valid")
        s = pd.Series(v)
        if valid is not None:
            s = s.astype("Int64" if v.dtype.kind in "iub" else "float64").where(valid)
        cols[k] = s
    return pd.DataFrame(cols)


# -- capture ----------------------------------------------------------------------------------------------------

_MODELS: dict[str, LoadedModel] = {}


def _model_spec(model: str | ModelSpec | dict[str, Any]) -> ModelSpec:
    from musicinterp.config import OFFLINE_MODEL_NAMES, ModelSpec

    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec.model_validate(model)
    if model in OFFLINE_MODEL_NAMES:
        return ModelSpec(source="offline", name=model)
    if Path(model).is_dir():
        return ModelSpec(source="local", name=model)
    raise ValueError(
        f"model={model!r}: give an offline name {list(OFFLINE_MODEL_NAMES)}, a save_pretrained folder, or "
        "ModelSpec(source='hub', name='facebook/musicgen-small', revision=...) (Hub models need a revision)"
    )


def load(model: str | ModelSpec | dict[str, Any] = "tiny", device: str = "cpu") -> LoadedModel:
    """A model for :func:`capture`, loaded once per process (by its spec and device)."""
    from musicinterp.models import load_model

    spec = _model_spec(model)
    key = f"{spec.canonical_json()}@{device}"
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, device)
    return _MODELS[key]


def capture(
    audio: Any,
    sr: int,
    *,
    model: str | ModelSpec | dict[str, Any] | LoadedModel = "tiny",
    layers: list[int] | None = None,
    description: str = "",
    half: str = "conditional",
    device: str = "cpu",
) -> xr.Dataset:
    """The residual stream of ``model`` teacher-forced on the audio's own EnCodec codes (delay pattern), as
    a run stores it: ``resid (layer, time, feature)`` float16 (layer 0 = embeddings; frame i at i/50 s is
    decoder step i + 1) and ``codes (codebook, time)``. Any rate and channel count; at most 30 s."""
    import xarray as xr

    from musicinterp.capture import capture_clip
    from musicinterp.config import CaptureSpec
    from musicinterp.models import LoadedModel
    from musicinterp.sources.base import ClipError
    from musicinterp.store import weights_note

    loaded = model if isinstance(model, LoadedModel) else load(model, device)
    samples = to_mono_32k(audio, sr)
    seconds = len(samples) / SAMPLE_RATE_HZ
    if seconds > CLIP_MAX_S + 1e-9:
        raise ClipError("<audio>", f"is {seconds:.1f} s long; MusicGen's context is {CLIP_MAX_S:g} s: cut it first")
    spec = CaptureSpec(description=description, half=half, layers=layers, device=device)  # type: ignore[arg-type]
    cap = capture_clip(loaded, samples, spec)
    n = cap.resid.shape[1]
    info = loaded.describe()
    return xr.Dataset(
        {"resid": (("layer", "time", "feature"), cap.resid), "codes": (("codebook", "time"), cap.codes)},
        coords={
            "layer": np.asarray(cap.layers, np.int32),
            "time": np.arange(n) / FRAME_RATE_HZ,
            "decoder_step": ("time", np.arange(n, dtype=np.int32) + 1),
        },
        attrs={
            "model_id": info["model_id"],
            "model_revision": info["revision"],
            "weights": info["weights"],
            "weights_note": weights_note(info["weights"]),
            "guidance_half": half,
            "text_condition": description,
            "frame_rate_hz": FRAME_RATE_HZ,
        },
    )
