"""The command line: config errors before anything runs, inspect on a real store."""

from __future__ import annotations

import json

import numpy as np

from musicinterp.store import ClipLayout, StoreLayout, init_store, mark_complete, store_attrs, write_clip
from musicinterp_cli import main


def test_run__invalid_config_exits_2_naming_the_field(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {source: offline, name: musicgen-huge}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model" in err and "musicgen-huge" in err
    assert not (tmp_path / "out").exists()  # nothing ran


def _store(tmp_path):
    url = str(tmp_path / "s.zarr")
    layout = StoreLayout((ClipLayout("piece-a", 10), ClipLayout("piece-b", 20)), (0, 1), 8, 4)
    attrs = store_attrs(
        model={"model_id": "offline/tiny", "revision": "seed-0", "weights": "random"},
        run_spec_json='{"name": "x"}',
        fingerprint="abc",
        capture={"half": "conditional", "guidance_scale": 3.0, "description": ""},
        package_version="t",
    )
    init_store(url, layout, {}, attrs)
    write_clip(url, "piece-a", np.zeros((2, 10, 8), np.float16), np.zeros((4, 10), np.int16))
    mark_complete(url, "piece-a")
    return url


def test_inspect__prints_model_weights_and_completion(tmp_path, capsys):
    url = _store(tmp_path)
    assert main(["inspect", url]) == 0
    out = capsys.readouterr().out
    assert "weights: random" in out and "offline/tiny" in out and "1 of 2 clips" in out
    assert "piece-b" in out and "size on disk" in out


def test_inspect__json_and_missing_store(tmp_path, capsys):
    url = _store(tmp_path)
    assert main(["inspect", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] == ["piece-a"] and info["dims"]["time"] == 20
    assert main(["inspect", str(tmp_path / "nope.zarr")]) == 2
    assert "no musicinterp store" in capsys.readouterr().err


def test_annotate__writes_the_documented_columns_and_a_plot(tmp_path, capsys):
    import csv

    import soundfile as sf

    from musicinterp.sources.synthetic import compose

    x, truth = compose({"seed": 4, "index": 0, "duration_s": 14.0, "hard": False, "returns": True})
    stereo_44k = np.repeat(x[:, None], 2, axis=1)  # any rate, any channel count
    sf.write(tmp_path / "piece.flac", stereo_44k, 32000)
    out, png = tmp_path / "labels.csv", tmp_path / "plot.png"
    assert main(["annotate", str(tmp_path / "piece.flac"), "--out", str(out), "--plot", str(png)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 700 and rows[1]["time"] == "0.02"
    for col in ("rec_lag_next_s", "rec_within_4s", "rec_within_8s", "tension"):
        assert col in rows[0]
    assert {r["rec_within_8s"] for r in rows} <= {"0", "1", ""}
    assert rows[-1]["rec_within_8s"] in ("", "1")  # the horizon runs past the end: not a negative
    (r,) = truth["returns"]
    mid = int((r["source_start_s"] + r["source_end_s"]) / 2 * 50)
    assert abs(float(rows[mid]["rec_lag_next_s"]) - (r["start_s"] - r["source_start_s"])) < 0.5
    assert png.stat().st_size > 10_000 and "real-time factor" in capsys.readouterr().err


def test_annotate__bad_files_exit_2_naming_them(tmp_path, capsys):
    import soundfile as sf

    assert main(["annotate", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "missing.wav: file does not exist" in capsys.readouterr().err
    sf.write(tmp_path / "short.wav", np.full(16000, 0.1, np.float32), 32000)
    assert main(["annotate", str(tmp_path / "short.wav"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "short.wav" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    nan = np.full(96000, 0.1, np.float32)
    nan[5] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 32000, subtype="FLOAT")
    assert main(["annotate", str(tmp_path / "nan.wav"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "NaN" in capsys.readouterr().err


def test_annotate__long_files_go_in_windows_that_tile_the_frames(tmp_path):
    import soundfile as sf

    from musicinterp.sources.synthetic import compose

    x, _ = compose({"seed": 1, "index": 0, "duration_s": 9.0, "hard": False, "returns": True})
    sf.write(tmp_path / "long.wav", x, 32000, subtype="FLOAT")
    out = tmp_path / "l.csv"
    assert main(["annotate", str(tmp_path / "long.wav"), "--out", str(out), "--window-s", "4"]) == 0
    times = [float(r["time"]) for r in __import__("csv").DictReader(out.open())]
    assert len(times) == 450 and times == [round(i / 50, 2) for i in range(450)]


def _start_analysis(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from analysis_factories import make_store

    store = make_store(tmp_path / "s.zarr")  # defaults: ~40 s of probing on this machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicinterp_cli", "analyze", store, "--out", str(tmp_path / "out")],
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it is probing
        if line.startswith("analysing"):
            break
    import time

    time.sleep(2.0)
    assert proc.poll() is None, "the analysis ended before it could be stopped"
    return proc


def test_analyze__sigterm_and_ctrl_c_stop_it_within_seconds(tmp_path):
    import signal
    import time

    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = _start_analysis(tmp_path / signal.Signals(signum).name)
        t0 = time.monotonic()
        proc.send_signal(signum)
        got = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
        err = proc.stderr.read()
        assert got == code and "stopped" in err, err[-3000:]
        assert elapsed < 15, f"took {elapsed:.1f} s to stop\n{err[-3000:]}"
        # nothing that looks finished: the results are written only at the end
        assert not (tmp_path / signal.Signals(signum).name / "out" / "results.parquet").exists()


def test_annotate__csv_on_stdout_and_plot_of_a_long_file_refused(tmp_path, capsys):
    import soundfile as sf

    from musicinterp.sources.synthetic import compose

    x, _ = compose({"seed": 1, "index": 0, "duration_s": 9.0, "hard": False, "returns": True})
    sf.write(tmp_path / "long.wav", x, 32000, subtype="FLOAT")
    assert main(["annotate", str(tmp_path / "long.wav"), "--out", "-"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("time,rec_lag_next_s") and len(lines) == 451 and "labels: stdout" in out.err
    png = tmp_path / "p.png"
    args = ["annotate", str(tmp_path / "long.wav"), "--out", str(tmp_path / "l.csv"), "--plot", str(png)]
    assert main([*args, "--window-s", "4"]) == 2
    assert "longer than --window-s 4" in capsys.readouterr().err
    assert not png.exists() and not (tmp_path / "l.csv").exists()  # refused before any work


def test_cli__version_help_and_analyze_json_on_a_run(capsys):
    import pytest
    from run_factories import small_run

    import musicinterp

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"musicinterp {musicinterp.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Exit codes" in capsys.readouterr().out
    root = small_run()
    assert main(["analyze", str(root), "--quick", "--layers", "1", "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)  # stdout holds only the JSON object
    assert info["settings_from"] == "the run's run.json with --quick" and info["weights"] == "random"
    assert info["n_rows"] > 0 and info["findings"].endswith("findings.md") and info["significant"] == 0
