"""The Python API: open_run, analyze with the run's own settings, capture and annotate any audio, the example."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_factories import SMALL_ANALYSIS, small_run

import musicinterp as mi
from musicinterp.api import analysis_plan, run_paths

REPO = Path(__file__).resolve().parents[1]


def test_import__is_light_and_lists_the_api():
    heavy = "('torch', 'prefect', 'xarray', 'essentia')"
    code = f"import sys, musicinterp; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert {"open_run", "capture", "annotate", "analyze", "__version__"} <= set(mi.__all__)
    import musicinterp.annotate.labels  # noqa: F401 - the subpackage of the same name does not hide the function

    assert callable(mi.annotate) and mi.annotate.__module__ == "musicinterp.api"


def test_open_run__store_config_and_complete_clips():
    root = small_run()
    run = mi.open_run(root)
    assert run.root == str(root) and run.weights == "random"
    assert run.config is not None and run.config.name == "demo"
    assert len(run.complete_clips) == 4 and run.store.sizes["clip"] == 4
    assert mi.open_run(root / "store.zarr").store_path == run.store_path  # the store itself works too
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        run_paths(root / "nope")


def test_analysis_plan__takes_the_runs_settings_then_the_knobs(tmp_path):
    root = small_run()
    plan = analysis_plan(root)
    assert plan.settings_from == "the run's run.json" and plan.spec.targets == SMALL_ANALYSIS["targets"]
    assert plan.spec.n_permutations == 19 and plan.out == f"{root}/analysis"
    knobs = analysis_plan(root, targets=["res_within_4s"], layers=[1], permutations=9)
    assert knobs.spec.targets == ["res_within_4s"] and knobs.spec.layers == [1]
    assert knobs.spec.permutation_budget(100) == 9  # fixed draws, no sequential extension
    quick = analysis_plan(root, quick=True)
    assert quick.spec.max_permutations == 19 and not quick.spec.shifted_labels_control
    settings = tmp_path / "a.yaml"
    settings.write_text("analysis: {targets: [rec_within_4s]}\n")
    assert analysis_plan(root, settings=settings).spec.targets == ["rec_within_4s"]


def test_analyze__probes_the_asked_layers_and_writes_the_findings(tmp_path):
    root = small_run()
    df = mi.analyze(root, out=str(tmp_path / "a"), quick=True, layers=[1])
    assert set(df["layer"]) == {0, 1} and set(df["target"]) == {"res_within"}
    assert set(df["horizon"]) == {2.0} and set(df["control"]) == {"none"}  # --quick: no shifted labels
    assert (tmp_path / "a" / "findings.md").exists()


def test_capture__any_rate_and_channels_on_the_frame_grid(tiny_model):
    sr = 44_100
    t = np.arange(int(2.0 * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    a = mi.capture(np.stack([mono, mono], axis=1), sr, model=tiny_model)
    b = mi.capture(mono, sr, model=tiny_model)
    c = mi.capture(np.stack([mono, mono]), sr, model=tiny_model)  # (channels, samples)
    n = math.ceil(2.0 * 32_000 / 640)
    assert a.sizes["time"] == n and a["resid"].dims == ("layer", "time", "feature")
    assert a.attrs["weights"] == "random" and int(a["decoder_step"][0]) == 1
    np.testing.assert_array_equal(a["resid"].values, b["resid"].values)
    np.testing.assert_array_equal(a["resid"].values, c["resid"].values)
    from musicinterp.sources.base import ClipError

    with pytest.raises(ClipError, match="context is 30 s"):
        mi.capture(np.zeros(31 * 32_000, np.float32), 32_000, model=tiny_model)


def test_annotate__the_rows_the_cli_writes(tmp_path):
    import soundfile as sf

    from musicinterp.sources.synthetic import compose
    from musicinterp_cli import main

    x, _ = compose({"seed": 4, "index": 0, "duration_s": 6.0, "hard": False, "returns": True})
    df = mi.annotate(np.repeat(x[:, None], 2, axis=1), 32_000)
    sf.write(tmp_path / "p.wav", x, 32_000, subtype="FLOAT")
    assert main(["annotate", str(tmp_path / "p.wav"), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(df.columns) == list(rows[0]) and len(df) == len(rows) == 300
    blank = [r["rec_within_4s"] == "" for r in rows]
    assert df["rec_within_4s"].isna().tolist() == blank


def test_example_notebook_script_runs_on_a_run():
    root = small_run()
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook.py"), str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "weights: random" in out.stdout and "captured" in out.stdout
