"""The feature browser: the static site of a small real run (tiny offline model, random weights) with saved
probe directions and SAE candidates; links, audio, known peaks, missing pieces, serving, headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import wave
from functools import cache
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from run_factories import small_run

from musicinterp.browse import BrowseInputError, build_site, serve
from musicinterp.browse.audio import FRAME_RATE_HZ, window_around

WEIGHTS_TEXT = "random weights, not a trained model"
N_SAE_FEATURES = 2
DIR_LAYERS = (1, 2)


def _decorate(run: Path) -> None:
    """Add what the analysis, `sae rank` and `intervene` write: directions, an SAE + candidates, and a real
    intervention run beside the run (`intervene --out runs`) on its layer-2 direction and its busiest SAE feature."""
    import torch

    from musicinterp.causal.directions import Direction, save_directions
    from musicinterp.sae.model import TopKSAE
    from musicinterp.sae.saelens import save_sae

    rng = np.random.default_rng(0)
    dirs = [
        Direction(
            name=f"L{layer}-rec_within_2s",
            layer=layer,
            vector=rng.standard_normal(64),
            kind="probe",
            target="rec_within_2s",
            horizon=2.0,
            weights="random",
            stats={"gain": 0.1, "q_value": 0.01},
        )
        for layer in DIR_LAYERS
    ]
    save_directions(dirs, run / "analysis")
    sae = TopKSAE(64, 128, 8)
    sae.init_weights(torch.Generator().manual_seed(0))
    save_sae(sae, run / "sae-test" / "layer2", layer=2, model_name="offline/tiny")
    import xarray as xr

    x = xr.open_zarr(str(run / "store.zarr"), chunks=None)["resid"].sel(layer=2).values.reshape(-1, 64)
    with torch.no_grad():
        fired = (sae.encode(torch.from_numpy(x[np.isfinite(x).all(1)].astype(np.float32))) > 0).sum(0).numpy()
    features = [int(f) for f in np.argsort(-fired, kind="stable")[:N_SAE_FEATURES]]  # the busiest: real pages
    rank = run / "sae-test" / "rank"
    rank.mkdir(parents=True)
    cands = [
        {
            "sae": str(run / "sae-test" / "layer2"),
            "layer": 2,
            "hook_name": "blocks.1.hook_resid_post",
            "feature": f,
            "target": "rec_within_2s",
            "gain": 0.05,
            "q_value": 0.02,
            "q_beyond_random": None,
        }
        for f in features
    ]
    (rank / "candidates.json").write_text(json.dumps(cands))
    _intervene(run, features[0])


INTERVENED_LAYER = 2
INTERVENED_PAGE = f"direction-analysis-L{INTERVENED_LAYER}-rec_within_2s"


def _intervene(run: Path, feature: int) -> Path:
    """`musicinterp intervene` at its smallest on the tiny offline model the run captured with: the run's saved
    layer-2 direction (and its activation pattern) and one difference-of-means direction, mean-ablated, and the
    SAE's ``feature`` ablated (decoder contribution out, error term kept), two twin pairs, two matched controls
    each (~8 s). Written to ``runs/<name>-<fingerprint>``, beside the run."""
    from musicinterp.causal.experiment import run_experiment
    from musicinterp.causal.spec import CandidateSpec, InterventionSpec, experiment_folder
    from musicinterp.config import ModelSpec

    spec = InterventionSpec(
        name="browse-test",
        model=ModelSpec(),  # the run's model: offline tiny, seed 0
        control_model=None,
        directions=str(run / "analysis"),
        probe_target="rec_within_2s",
        n_pieces=2,
        n_fit_pieces=2,
        layers=[INTERVENED_LAYER],
        candidates=[
            *(
                CandidateSpec(kind=kind, operations=["ablate"], n_controls=2)
                for kind in ("probe", "probe-pattern", "diff-means")
            ),
            CandidateSpec(
                kind="sae-feature",
                sae=str(run / "sae-test" / "layer2"),
                features=[feature],
                n_controls=2,
                match_tolerance=0.5,
            ),
        ],
        whole_patch_layers=[],
        fluency_stride=50,
        n_bootstrap=20,
    )
    folder = experiment_folder(spec, run.parent)
    run_experiment(spec, folder)
    return folder


@cache
def decorated_run() -> Path:
    run = Path(str(small_run()) + "-browse")
    shutil.copytree(small_run(), run)
    _decorate(run)
    return run


@cache
def built_site() -> tuple[Path, object]:
    run = decorated_run()
    result = build_site(run, run / "site")
    return run / "site", result


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.audio: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(str(a[key]))
        if tag == "audio":
            self.audio.append(a)


def _parse(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text())
    return p


def test_browse__every_link_resolves_and_every_audio_is_a_wav_of_its_stated_length():
    site, result = built_site()
    pages = [site / "index.html", *sorted((site / "items").glob("*.html"))]
    assert len(pages) == 1 + len(DIR_LAYERS) + N_SAE_FEATURES
    n_audio = 0
    for page in pages:
        text = page.read_text()
        assert WEIGHTS_TEXT in text, page
        parsed = _parse(page)
        for ref in parsed.refs:
            assert "://" not in ref and not ref.startswith("/"), f"{page.name}: {ref!r} is not relative"
            target = (page.parent / ref).resolve()
            assert target.is_file() and site.resolve() in target.parents, f"{page.name}: {ref!r} does not resolve"
        for a in parsed.audio:
            with wave.open(str(page.parent / str(a["src"]))) as w:
                assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 32000)
                assert w.getnframes() == round(float(str(a["data-seconds"])) * 32000)
            n_audio += 1
    assert n_audio >= len(DIR_LAYERS) * 4  # every clip of a direction's page has a segment
    assert result.audio_files == len(list((site / "audio").glob("*.wav")))  # shared, one file per (clip, window)
    index = (site / "index.html").read_text()
    assert "img/intervention-browse-test-" in index and "offline/tiny" in index


def test_browse__intervention_effects_are_on_exactly_their_direction_page_and_all_listed_on_the_overview():
    import pandas as pd

    from musicinterp.browse.interventions import in_run

    site, _result = built_site()
    run = decorated_run()
    (folder,) = [p.parent for p in run.parent.glob("browse-test-*/results.csv")]
    table = pd.read_csv(folder / "results.csv")
    probe_rows = table[table["candidate"].str.startswith("probe")]
    assert len(probe_rows) == 2  # the saved direction and its activation pattern
    (sae_row,) = table[table["experiment"] == "sae feature"].itertuples()
    sae_page = f"sae-L{INTERVENED_LAYER}-f{int(sae_row.feature)}"  # the page of that feature of that SAE
    assert (site / "items" / f"{sae_page}.html").is_file() and len(list((site / "items").glob("sae-*.html"))) == 2
    for page in sorted((site / "items").glob("*.html")):
        text = page.read_text()
        if page.stem == sae_page:
            assert text.count('<svg class="effect"') == 1 and text.count("data-experiment='browse-test'") == 1
            assert f"{sae_row.candidate}: ablate, layer {INTERVENED_LAYER}" in text
            assert f"onset loss {sae_row.event_effect:+.3g} nats" in text and text.count('<circle class="control"') == 2
        elif page.stem == INTERVENED_PAGE:
            assert text.count('<svg class="effect"') == 2 and text.count("data-experiment='browse-test'") == 2
            for r in probe_rows.itertuples():
                assert f"{r.candidate}: ablate, layer {INTERVENED_LAYER}" in text
                assert f"onset loss {r.event_effect:+.3g} nats [{r.event_ci_low:+.3g}, {r.event_ci_high:+.3g}]" in text
                assert f"2 matched controls {r.controls_event_mean:+.3g} on average" in text
            assert text.count('<circle class="control"') == 4  # 2 controls per intervention
        else:
            assert '<svg class="effect"' not in text and "No intervention run in this site targets" in text, page
    index = (site / "index.html").read_text()
    assert index.count(f"<a href='items/{INTERVENED_PAGE}.html'>") == 3  # the page table + the two probe rows
    assert index.count(f"<a href='items/{sae_page}.html'>") == 2  # the page table + its row
    for reason in ("other cue itself", "directions fitted by the experiment (not a saved direction)"):
        assert reason in index  # the cue swap and the diff-means row: listed, no page
    assert str(folder.resolve()) in index and "img/intervention-" in index
    # a direction folder written from another working directory, or before the run moved, maps by the run's name
    assert in_run(f"elsewhere/runs/{run.name}/analysis", run) == (run / "analysis").resolve()
    assert in_run(str(run.parent / "other" / "analysis"), run) is None


def test_browse__sae_feature_interventions_are_found_beside_the_run_and_matched_to_their_feature(tmp_path):
    """An experiment beside the run whose only candidates are SAE features belongs to the run when the SAE lies in
    the run or under the SAE root of a ranking the site reads; its rows go to the page of the same SAE folder,
    layer and feature (a moved folder by its last two path parts), and nowhere else."""
    from musicinterp.browse.interventions import Effect, page_of, sibling_experiments

    run, sae_root = tmp_path / "runs" / "run-1", tmp_path / "runs" / "sae-x"
    for folder, sae in (("exp-in", run / "sae" / "layer2"), ("exp-root", sae_root / "layer2"), ("exp-no", "z/l2")):
        (tmp_path / "runs" / folder).mkdir(parents=True)
        spec = {"name": folder, "candidates": [{"kind": "sae-feature", "sae": str(sae), "features": [3]}]}
        (tmp_path / "runs" / folder / "experiment.json").write_text(json.dumps({"spec": spec}))
    run.mkdir()
    assert [p.name for p in sibling_experiments(run)] == ["exp-in"]
    assert [p.name for p in sibling_experiments(run, [sae_root])] == ["exp-in", "exp-root"]

    def effect(sae: str, feature: int = 3, layer: int = 2) -> Effect:
        return Effect(
            "e",
            tmp_path,
            0,
            "trained",
            "trained-here",
            "sae feature",
            layer,
            "w",
            "c",
            "ablate",
            2,
            {},
            sae=sae,
            feature=feature,
        )

    pages = {(str((sae_root / "layer2").resolve()), 2, 3): "sae-L2-f3", ("/a/other/layer2", 2, 4): "sae-L2-f4"}
    assert page_of(effect(str(sae_root / "layer2")), {}, run, pages) == ("sae-L2-f3", "")
    assert page_of(effect("/moved/sae-x/layer2"), {}, run, pages) == ("sae-L2-f3", "")  # by its last two parts
    for other in (effect(str(sae_root / "layer2"), feature=4), effect("/b/sae-y/layer2")):
        key, why = page_of(other, {}, run, pages)
        assert key is None and "no page for SAE feature" in why


def test_browse__malformed_intervention_folders_are_named_on_the_overview(tmp_path):
    run = decorated_run()
    (good,) = [p.parent for p in run.parent.glob("browse-test-*/results.csv")]
    no_spec = tmp_path / "no-spec"
    no_spec.mkdir()
    shutil.copy(good / "causal-effects.png", no_spec)  # a figure, but the experiment never finished
    bad_table = tmp_path / "bad-table"
    shutil.copytree(good, bad_table)
    (bad_table / "results.csv").write_text("a,b\n1,2\n")
    bad_json = tmp_path / "bad-json"
    shutil.copytree(good, bad_json)
    (bad_json / "experiment.json").write_text("{not json")
    result = build_site(
        run, tmp_path / "site", intervention_dirs=[no_spec, bad_table, bad_json], similarity=False, top_clips=1
    )
    index = result.index.read_text()
    for message in (
        f"{str(no_spec.resolve() / 'experiment.json')!r} is missing",
        f"{str(bad_table.resolve() / 'results.csv')!r} lacks the columns",
        f"{str(bad_json.resolve() / 'experiment.json')!r} is not readable JSON",
    ):
        assert escape(f"intervention folder not shown: {message}") in index, message
        assert any(message in n for n in result.notes)
    assert len(result.pages) == len(DIR_LAYERS) + N_SAE_FEATURES  # the rest of the site is built
    assert '<svg class="effect"' in (tmp_path / "site" / "items" / f"{INTERVENED_PAGE}.html").read_text()
    with pytest.raises(BrowseInputError, match="holds none of experiment.json"):
        build_site(run, tmp_path / "site2", intervention_dirs=[tmp_path / "empty"])


def test_browse__top_segment_is_the_brute_force_peak_of_the_projection():
    import xarray as xr

    from musicinterp.browse.contents import discover
    from musicinterp.browse.items import collect_items
    from musicinterp.browse.scan import scan

    run = decorated_run()
    ds = xr.open_zarr(str(run / "store.zarr"), chunks=None)
    itemset = collect_items(discover(run), d_model=64, n_layers=2)
    res = scan(ds, itemset, top_clips=2)
    for k, item in enumerate(itemset.items):
        n = ds["n_frames"].values
        if item.unit is not None:
            acts = [
                ds["resid"].sel(layer=item.layer).values[c, : n[c]].astype(np.float32) @ item.unit for c in range(4)
            ]
        else:
            import torch

            sae = itemset.saes[str(item.sae)]
            x = [
                torch.from_numpy(ds["resid"].sel(layer=item.layer).values[c, : n[c]].astype(np.float32))
                for c in range(4)
            ]
            acts = [sae.encode(xc)[:, item.feature].detach().numpy() for xc in x]
        peaks = np.array([a.max() for a in acts])
        best = int(np.argmax(peaks))
        assert res.top[k][0].clip == best and res.top[k][0].frame == int(np.argmax(acts[best]))
        assert res.top[k][0].value == pytest.approx(float(peaks[best]), rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(res.curves[(k, best)], acts[best], rtol=1e-4, atol=1e-5)


# ---- the known answer on the pair toy: a feature predicting "A returns" is heard before A returns ---------------
# Reduced size: 32 pieces (16 screen the features, 16 test them) and 61,440 SAE training frames, on one torch
# thread. The SAE's features follow float rounding, and at this size the outcome does too: with two threads the
# best q was 0.099 (no candidate); at 64 pieces with two threads q = 0.008 but one of the top feature's four
# segments peaked at 10.9 s, after the return. So the thread count is fixed here, and the full-size run in the
# README is the evidence; this test guards the pipeline (model, labels, SAE, ranking, page) at one setting.
# The store itself follows the thread count: 0.16% of the stored codes (23 of 32 clips) differ between one and two
# threads, and the resid with them. Measured (2026-11-29): one thread, one candidate (L3 f411, q 0.025, its 4
# segments in equal-chord pieces at 1.02-2.02 s); two threads, none (best q 0.27, L3 f30, one of its 4 segments
# in a different-chord piece at 9.0 s). So at this size no choice among the top few, nor a check tolerating one
# outlier, holds at both thread counts.
# ~45 s of CPU time, the slowest unit test, kept because the known answer needs the real pipeline.
PAIR_PIECES = 32


def _pair_toy_sae_run(top: Path) -> tuple[Path, Path]:
    """The pair toy (checkpoints/toy-pair, trained here) on 32 held-out pieces, a TopK SAE on layer 3 and its
    ranking against "A returns within 8 s": configs/toy-pair-defaults.yaml and configs/sae/toy-pair.yaml at
    reduced size. Returns the run folder and the ranking folder."""
    import yaml

    from musicinterp.config import RunSpec
    from musicinterp.run import run_inline
    from musicinterp.sae import SAERankSpec, SAETrainSpec, rank_store, train_layer

    root = Path(__file__).parent.parent
    cfg = yaml.safe_load((root / "configs" / "toy-pair-defaults.yaml").read_text())
    cfg.pop("control_store")
    cfg["model"]["name"] = str(root / cfg["model"]["name"])
    cfg["slice"] |= {"n_shards": 1}
    cfg["slice"]["sources"][0]["n_pieces"] = PAIR_PIECES
    run = Path(run_inline(RunSpec.model_validate(cfg), str(top / "runs")).root)
    store = str(run / "store.zarr")
    train = SAETrainSpec(
        store=store,
        layers=[3],
        expansion=4,
        k=8,
        train_frames=120 * 512,
        batch_size=512,
        lr=1e-3,
        shuffle_buffer_frames=8192,
        dead_after_frames=20_000,
        loss_clips=0,
    )
    train_layer(train, 3, run / "sae")
    target = "truth_return_within_8s"
    spec = SAERankSpec(
        targets=[target],
        top_n=4,
        analysis={"targets": [target], "n_permutations": 19, "n_bootstrap": 50, "shifted_labels_control": False},
    )
    rank_store(store, run / "sae", spec, run / "sae" / "rank")
    return run, run / "sae" / "rank"


def test_browse__pair_toy_top_feature_peaks_before_a_returns_in_equal_chord_pieces(tmp_path):
    """The issue's known answer for the browser: the page of the best candidate that fires before the event shows
    top segments whose peaks lie between the cue and the return point (1.0-9.0 s) of pieces whose two chords are
    equal (the pieces where A returns). Read from the HTML the page is."""
    import re

    import torch

    from musicinterp.sources.cue import CUE_END_S, RETURN_AT_S, is_return_piece, pair_chords

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see PAIR_PIECES
    try:
        run, rank = _pair_toy_sae_run(tmp_path)
    finally:
        torch.set_num_threads(threads)
    cands = json.loads((rank / "candidates.json").read_text())
    assert cands and {c["direction"] for c in cands} <= {-1, 1}
    best = next(c for c in cands if c["direction"] > 0)  # sorted by q then gain: the top one predicting a return
    result = build_site(run, tmp_path / "site", rank_dirs=[rank], similarity=False, top_clips=4)
    page = tmp_path / "site" / "items" / f"sae-L{best['layer']}-f{best['feature']}.html"
    assert page in result.pages
    text = page.read_text()
    assert "fires_before" in text and "the event" in text
    segments = re.findall(r"<b>cue:s(\d+)([rn])-p(\d+)@0s</b>, peak ([-\d.e+]+) at ([\d.]+) s", text)
    assert len(segments) == 4, text[:2000]
    for seed, flag, index, _value, peak_s in segments:
        returns = is_return_piece(int(seed), PAIR_PIECES, 0.5)[int(index)]
        first, second = pair_chords(int(seed), int(index), returns)
        assert first == second and flag == "r", f"piece {index}: chords {first!r} / {second!r}, peak {peak_s} s"
        assert CUE_END_S <= float(peak_s) < RETURN_AT_S, f"piece {index}: peak at {peak_s} s"


def test_window_around__holds_the_peak_on_the_grid():
    for n in (120, 400, 1500):
        for peak in range(0, n, 7):
            w = window_around(0, peak, n)
            assert w.start <= peak < w.stop and w.stop <= n
            assert w.stop - w.start == min(4 * FRAME_RATE_HZ, n)
            assert w.start % FRAME_RATE_HZ == 0 or w.stop == n


def test_browse__a_bare_run_gets_a_site_that_names_what_is_missing(tmp_path):
    bare = tmp_path / "run"
    shutil.copytree(small_run(), bare)
    for results in list(bare.rglob("results.parquet")):  # the shared run may have been analysed by an earlier test
        shutil.rmtree(results.parent, ignore_errors=True)
    result = build_site(bare, tmp_path / "site", similarity=False)
    index = result.index.read_text()
    assert result.pages == [] and WEIGHTS_TEXT in index
    for missing in ("no saved probe directions", "no SAE feature ranking", "no analysis heatmaps"):
        assert missing in index
    with pytest.raises(BrowseInputError, match="holds no store.zarr"):
        build_site(tmp_path / "nowhere")


def test_serve__answers_on_localhost_only():
    site, _ = built_site()
    server, _thread = serve(site, 0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as r:
            assert WEIGHTS_TEXT in r.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_cli_browse__bad_folder_is_a_usage_error(tmp_path):
    from musicinterp_cli import main

    assert main(["browse", str(tmp_path / "nothing")]) == 2


# ---- headless Chromium over the DevTools protocol -------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
PAGE_LOAD_S = 20


class DevTools:
    """The smallest DevTools client: one page target, commands by id, events kept."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=PAGE_LOAD_S))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str) -> None:
        end = time.monotonic() + PAGE_LOAD_S
        while time.monotonic() < end:
            if any(e.get("method") == method for e in self.events):
                return
            msg = json.loads(self.ws.recv(timeout=PAGE_LOAD_S))
            self.events.append(msg)
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> object:
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")


AUDIO_CHECK = """(async () => {
  const out = [];
  for (const a of document.querySelectorAll('audio')) {
    if (a.readyState < 1) await new Promise(r => { a.onloadedmetadata = r; a.onerror = r; a.load(); });
    out.push({can: a.canPlayType('audio/wav'), state: a.readyState, duration: a.duration,
              stated: parseFloat(a.dataset.seconds), error: a.error ? a.error.code : null});
  }
  return out;
})()"""


def _errors(events: list[dict]) -> list[str]:
    bad = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            bad.append(str(p["exceptionDetails"].get("text")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            bad.append(str(p.get("args")))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            bad.append(str(p["entry"].get("text")) + " " + str(p["entry"].get("url")))
    return bad


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browse__pages_load_in_chromium_without_errors_and_audio_plays(tmp_path):
    site, _ = built_site()
    server, _thread = serve(site, 0)
    port = server.server_address[1]
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--autoplay-policy=no-user-gesture-required",
            "about:blank",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        browser_ws = ""
        end = time.monotonic() + 60
        while not browser_ws and time.monotonic() < end:
            line = proc.stderr.readline()
            if "DevTools listening on" in line:
                browser_ws = line.split("listening on", 1)[1].strip()
        assert browser_ws, "chromium did not start its DevTools endpoint"
        devtools_port = browser_ws.split(":")[2].split("/")[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        dt = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            dt.call(f"{domain}.enable")
        pages = ["index.html", *(f"items/{p.name}" for p in sorted((site / "items").glob("*.html")))]
        checked = 0
        for name in pages:
            dt.events.clear()
            dt.call("Page.navigate", url=f"http://127.0.0.1:{port}/{name}")
            dt.wait_for("Page.loadEventFired")
            for a in dt.evaluate(AUDIO_CHECK) or []:  # type: ignore[union-attr]
                assert a["can"] in ("maybe", "probably") and a["error"] is None, (name, a)
                assert a["state"] >= 1 and a["duration"] == pytest.approx(a["stated"], abs=0.01), (name, a)
                checked += 1
            assert _errors(dt.events) == [], name
            broken = dt.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
            assert broken == 0, name
        assert checked > 0
        dt.ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        server.shutdown()
        server.server_close()
