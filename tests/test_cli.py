"""The command line: config errors before anything runs, inspect on a real store."""

from __future__ import annotations

import json

import numpy as np

from flows.cli import main
from musicinterp.store import ClipLayout, StoreLayout, init_store, mark_complete, store_attrs, write_clip


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
    attrs = store_attrs(model={"model_id": "offline/tiny", "revision": "seed-0", "weights": "random"},
                        run_spec_json='{"name": "x"}', fingerprint="abc",
                        capture={"half": "conditional", "guidance_scale": 3.0, "description": ""},
                        package_version="t")
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
