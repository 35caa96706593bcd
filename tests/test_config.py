"""Config: YAML round trip, stable fingerprints, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from musicinterp.config import ConfigError, ModelSpec, RunSpec, load_run_spec, parse_run_spec

ROOT = Path(__file__).resolve().parents[1]


def test_fingerprint__stable_and_sensitive():
    a = RunSpec()
    assert a.fingerprint() == RunSpec().fingerprint()
    assert a.fingerprint() == parse_run_spec(yaml.safe_load(yaml.safe_dump(a.model_dump(mode="json")))).fingerprint()
    changed = RunSpec(capture={"half": "unconditional"})
    assert changed.fingerprint() != a.fingerprint()
    # known values guard against accidental changes of the canonical form (they name every existing run folder;
    # analysis settings are not part of them)
    assert a.fingerprint() == "88aec2e3044a1c90"
    assert load_run_spec(ROOT / "configs/demo.yaml").fingerprint() == "e25836af2a7d7e69"


def test_load__shipped_configs_validate():
    paths = sorted(ROOT.glob("configs/*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        assert load_run_spec(path).name


def test_toy_config__names_the_store_that_the_random_twin_config_writes():
    """configs/toy.yaml analyses the random twin's store beside its own; the folder carries the fingerprint,
    so an edit of configs/toy-random.yaml must be followed there."""
    from musicinterp.run import RunPaths

    for name in ("toy", "toy-pair"):
        toy, twin = load_run_spec(ROOT / f"configs/{name}.yaml"), load_run_spec(ROOT / f"configs/{name}-random.yaml")
        assert toy.control_store == RunPaths.for_spec(twin, "runs").store
        assert toy.slice == twin.slice and toy.capture == twin.capture and toy.annotation == twin.annotation
        assert toy.analysis == twin.analysis


def test_load__unknown_offline_model_names_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {source: offline, name: huge}\n")
    with pytest.raises(ConfigError, match=r"model: .*unknown offline model 'huge'"):
        load_run_spec(p)


def test_load__hub_model_needs_revision():
    with pytest.raises(ValueError, match="model.revision"):
        ModelSpec(source="hub", name="facebook/musicgen-small")


def test_load__unknown_key_and_bad_value_name_fields(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("slice: {n_shards: 0, clip_s: 45}\ncapture: {halff: conditional}\n")
    with pytest.raises(ConfigError) as e:
        load_run_spec(p)
    msg = str(e.value)
    assert "slice.n_shards" in msg and "slice.clip_s" in msg and "capture.halff" in msg and str(p) in msg


def test_load__missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_spec(bad)


def test_source_kind_is_discriminated():
    spec = parse_run_spec({"slice": {"sources": [{"kind": "audio_dir", "path": "/x"}, {"kind": "music21"}]}})
    assert [s.kind for s in spec.slice.sources] == ["audio_dir", "music21"]
    with pytest.raises(ConfigError, match="slice.sources.0"):
        parse_run_spec({"slice": {"sources": [{"kind": "midi"}]}})


def test_readme__documents_every_config_field():
    from pathlib import Path

    from musicinterp.config import (
        AnalysisSpec,
        AnnotationSpec,
        AudioDirSource,
        CaptureSpec,
        CueSource,
        Music21Source,
        RunSpec,
        SliceSpec,
        SyntheticSource,
    )

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for prefix, model in (
        ("", RunSpec),
        ("model.", ModelSpec),
        ("slice.", SliceSpec),
        ("capture.", CaptureSpec),
        ("analysis.", AnalysisSpec),
        ("annotation.", AnnotationSpec),
    ):
        nested = {"model", "slice", "capture", "annotation", "analysis"} if not prefix else set()
        for field in set(model.model_fields) - nested:
            assert f"`{prefix}{field}`" in readme, f"{prefix}{field} missing from README's config reference"
    for model in (SyntheticSource, Music21Source, AudioDirSource, CueSource):
        for field in set(model.model_fields) - {"kind"}:
            assert f"`{field}`" in readme, f"{model.__name__}.{field} missing from README"


def test_fingerprint__reduce_and_autocast_enter_only_when_not_default():
    """``capture.reduce`` and ``capture.autocast`` at their defaults leave every existing run's name as it was
    (the known value above); any other value is another run (other values in the store)."""
    base = RunSpec()
    assert RunSpec(capture={"reduce": "none", "autocast": False}).fingerprint() == base.fingerprint()
    assert "reduce" not in base.canonical_json() and "autocast" not in base.canonical_json()
    int8, autocast = RunSpec(capture={"reduce": "int8"}), RunSpec(capture={"autocast": True})
    assert len({base.fingerprint(), int8.fingerprint(), autocast.fingerprint()}) == 3
    assert '"reduce":"int8"' in int8.canonical_json() and '"autocast":true' in autocast.canonical_json()
