"""Build the static site of a run: discover its parts, scan the store once, decode each needed clip once, write
the shared pictures and sounds, then the pages. ``build_site`` is the one entry point (CLI, flow, notebooks).

Layout of the output folder::

    index.html              the run overview
    style.css
    items/<key>.html        one page per probe direction / candidate SAE feature
    audio/<clip-window>.wav segments, shared by every page that needs them
    img/                    waveforms, self-similarity, copied heatmaps and annotation / intervention figures
                            (an intervention run's figure: img/intervention-<folder>/effects.png)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from musicinterp.browse import draw, pages
from musicinterp.browse.audio import PEAK_LEVEL, Decoder, Window, window_around, write_wav
from musicinterp.browse.contents import RunContents, discover
from musicinterp.browse.interventions import Effect, Experiment, InterventionReadError, page_of, read_experiment
from musicinterp.browse.items import KIND_SAE, ItemSet, collect_items
from musicinterp.browse.scan import ScanResult, scan
from musicinterp.frames import FRAME_RATE_HZ, SAMPLE_RATE_HZ
from musicinterp.store import dequantize

log = logging.getLogger(__name__)

TOP_CLIPS = 5  # top-activating segments per page (one per clip: the clip's peak)
SITE_DIR = "browse"  # default output folder inside the run
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FRAME_RATE_HZ
MIN_SIMILARITY_SPREAD = 0.05  # 1st-99th percentile range below which a self-similarity matrix shows nothing


@dataclass
class SiteResult:
    out: Path
    index: Path
    pages: list[Path]
    audio_files: int
    notes: list[str]
    timings_s: dict[str, float] = field(default_factory=dict)


def _copy(src: Path, out: Path, sub: str, name: str | None = None) -> str:
    """Copy ``src`` into ``out/img/<sub>/`` (the site stays whole when moved); returns the path from ``out``."""
    rel = Path("img") / sub / (name or src.name)
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / rel)
    return rel.as_posix()


def _slice_words(run_json: dict[str, Any] | None, attrs: dict[str, Any]) -> dict[str, Any]:
    spec = (run_json or {}).get("spec") or (json.loads(attrs["config_json"]) if attrs.get("config_json") else {})
    sl = spec.get("slice") or {}
    return {
        "slice": sl.get("name", "(unknown)"),
        "sources": "; ".join(json.dumps(s, sort_keys=True) for s in sl.get("sources", [])) or "(unknown)",
    }


def _clip_panels(
    ds, contents: RunContents, decoder: Decoder, windows: dict[int, set[Window]], out: Path, with_ssm: bool
) -> tuple[dict[int, tuple[str, str]], dict[Window, str], dict[Window, str]]:
    """Per needed clip: decode it once, write its windows' WAV and waveform, and its picture (the run's annotation
    plot when there is one, else the self-similarity of the decoded audio when ``with_ssm``)."""
    panels: dict[int, tuple[str, str]] = {}
    wavs: dict[Window, str] = {}
    waves: dict[Window, str] = {}
    clip_ids = [str(c) for c in ds["clip"].values]
    spec = None
    for c in sorted(windows):
        plot = contents.annotation_plots.get(clip_ids[c])
        if plot is not None:
            panels[c] = (_copy(plot, out, "annotations"), "run")
        n = int(ds["n_frames"].values[c])
        samples = None
        try:
            samples = decoder.decode(np.asarray(ds["codes"].isel(clip=c, time=slice(0, n)).values))
        except ValueError as e:
            log.warning("browser: clip %r: %s", clip_ids[c], e)
        if samples is None:
            continue
        samples = np.pad(samples, (0, max(0, n * SAMPLES_PER_FRAME - len(samples))))[: n * SAMPLES_PER_FRAME]
        for w in sorted(windows[c], key=lambda w: w.start):
            seg = samples[w.start * SAMPLES_PER_FRAME : w.stop * SAMPLES_PER_FRAME]
            wavs[w] = f"audio/{w.name}.wav"
            write_wav(out / wavs[w], seg)
            waves[w] = f"img/wave/{w.name}.png"
            draw.waveform_png(out / waves[w], seg)
        if c not in panels and with_ssm:
            from musicinterp.annotate.labels import annotate_full
            from musicinterp.config import AnnotationSpec, RunSpec

            if spec is None:
                raw = contents.attrs.get("config_json")
                spec = RunSpec.model_validate(json.loads(raw)).annotation if raw else AnnotationSpec()
            try:
                ann = annotate_full(samples, spec, clip_ids[c])
            except Exception as e:  # noqa: BLE001 - a missing picture is noted on the page
                log.warning("browser: clip %r: no self-similarity (%s)", clip_ids[c], e)
                continue
            if draw.similarity_spread(ann.rec.similarity) < MIN_SIMILARITY_SPREAD:
                panels[c] = ("", "flat")  # no tonal content, or the same everywhere: nothing to see
                continue
            rel = f"img/ssm/c{c:05d}.png"
            draw.similarity_png(out / rel, ann.rec.similarity)
            panels[c] = (rel, "decoded")
    return panels, wavs, waves


@dataclass
class _Shared:
    """What every item page reads, computed once (a page must not touch the store)."""

    clip_ids: list[str]
    n_frames: np.ndarray
    weights: str
    tension: np.ndarray | None
    wins: dict[tuple[int, int], Window]
    panels: dict[int, tuple[str, str]]
    wavs: dict[Window, str]
    waves: dict[Window, str]
    effects: dict[str, list[tuple[Effect, str | None]]]  # page key -> (intervention, its run's figure from out)
    audio_note: list[str]


def _item_page(k: int, itemset: ItemSet, res: ScanResult, sh: _Shared) -> str:
    item = itemset.items[k]
    stats = {"kind": item.kind, "layer": item.layer, **item.stats}
    measured = {
        "frames scanned": res.n_frames_total,
        "mean": float(res.mean[k]),
        "sd": float(res.std[k]),
        "max": float(res.max[k]),
        "fraction of frames > 0": float(res.active_fraction[k]),
    }
    how = (
        "SAE encoding (TopK, or BatchTopK's threshold) of the stored resid at this layer"
        if item.kind == KIND_SAE
        else "projection of the stored resid at this layer onto the direction's unit vector"
    )
    body = [
        f"<p>Activation = {escape(how)}. Source: <code>{escape(item.source)}</code></p>",
        "<h2>Statistics</h2>",
        pages.key_values(stats),
        "<h2>Activations over the run</h2>",
        pages.key_values(measured),
        draw.histogram_svg(res.sample[k], f"histogram of {item.title}"),
        f"<p><small>histogram of {'every frame' if res.sample_stride == 1 else f'every {res.sample_stride}th frame'}"
        f" of {len(res.clips)} clips "
        "(bar heights: log of the count)</small></p>",
    ]
    if item.rows:
        body += ["<h2>Rows of the ranked table</h2>", pages.table(item.rows)]
    body += [f"<h2>Top-activating segments (one per clip, best {len(res.top[k])})</h2>", pages.notes(sh.audio_note)]
    for p in res.top[k]:
        w = sh.wins[(k, p.clip)]
        curve = res.curves[(k, p.clip)]
        ten = sh.tension[p.clip][: int(sh.n_frames[p.clip])] if sh.tension is not None else None
        panel = sh.panels.get(p.clip)
        view = pages.SegmentView(
            clip_id=sh.clip_ids[p.clip],
            peak_s=p.frame / FRAME_RATE_HZ,
            value=p.value,
            window=(w.start / FRAME_RATE_HZ, w.stop / FRAME_RATE_HZ),
            wav=f"../{sh.wavs[w]}" if w in sh.wavs else None,
            wave_png=f"../{sh.waves[w]}" if w in sh.waves else None,
            marker_pct=100.0 * (p.frame - w.start + 0.5) / max(w.stop - w.start, 1),
            curves_svg=draw.curves_svg(curve, ten, p.frame, (w.start, w.stop), FRAME_RATE_HZ),
            panel=f"../{panel[0]}" if panel and panel[0] else None,
            panel_kind=panel[1] if panel else "",
        )
        body.append(pages.segment_html(view))
    body.append("<h2>Interventions</h2>")
    body += [_effect_html(e, fig) for e, fig in sh.effects.get(item.key, [])]
    if item.key not in sh.effects:
        body.append(f"<p class='note'>No intervention run in this site targets this {escape(item.kind)}.</p>")
    return pages.page(f"{item.kind}: {item.title}", "".join(body), sh.weights, 1)


PATTERN_WORDS = "probe-pattern: this direction's activation pattern (covariance x weights over the fit pieces)"


def _effect_html(e: Effect, fig: str | None) -> str:
    """An intervention on an item's page: what it did, its figure (the candidate against its controls), the
    numbers in one line, the experiment's own figure and table."""
    svg = draw.effect_svg(
        e.v("event_effect"),
        (e.v("event_ci_low"), e.v("event_ci_high")),
        e.v("fluency_effect"),
        list(zip(e.controls_event, e.controls_fluency)),
        f"effect of {e.label}",
    )
    links = [f"<a href='../{escape(fig)}'>the experiment's figure</a>"] if fig else []
    links.append(f"<code>{escape(str(e.folder))}</code>, row {e.row} of results.csv")
    return (
        f"<div class='intervention' data-experiment='{escape(e.experiment)}'>"
        f"<h3>{escape(e.experiment)}: {escape(e.label)} (weights: {escape(e.weights)})</h3>"
        + (f"<p><small>{escape(PATTERN_WORDS)}</small></p>" if e.candidate.startswith("probe-pattern") else "")
        + f"{svg}<br><small>x: change of the onset loss (the planned event), y: change of fluency; red: the"
        " intervention with its CI; grey: its matched random controls</small>"
        f"<p class='effect-summary'>{escape(e.summary())}</p><p><small>{'; '.join(links)}</small></p></div>"
    )


def _interventions_html(
    experiments: list[Experiment], problems: list[str], placed: dict[int, list[tuple[str | None, str]]], figs
) -> list[str]:
    """The overview's list of every intervention: each row linked to its page, or the reason it has none."""
    body = ["<h2>Intervention runs</h2>"]
    body += [f"<p class='note'>intervention folder not shown: {escape(x)}</p>" for x in problems]
    if not experiments and not problems:
        body.append("<p class='note'>none found for this run</p>")
    for n, exp in enumerate(experiments):
        body.append(f"<h3>{escape(exp.name)}</h3><p><code>{escape(str(exp.folder))}</code></p>")
        if figs.get(n):
            body.append(f"<img class='panel' src='{escape(figs[n])}' alt='intervention effects of {escape(exp.name)}'>")
        trs = []
        for e, (key, why) in zip(exp.effects, placed[n]):
            where = f"<a href='items/{escape(key)}.html'>{escape(key)}</a>" if key else escape(why)
            trs.append(
                f"<tr><td>{escape(e.label)}</td><td>{escape(e.weights)}</td><td>{escape(e.summary())}</td>"
                f"<td>{where}</td></tr>"
            )
        if trs:
            body.append(
                "<table><tr><th>intervention</th><th>weights</th><th>numbers</th><th>page</th></tr>"
                + "".join(trs)
                + "</table>"
            )
        else:
            body.append("<p class='note'>results.csv has no rows</p>")
    return body


def _overview(
    contents: RunContents, ds, itemset: ItemSet, res: ScanResult, out: Path, notes_: list[str], interventions: list[str]
) -> str:
    attrs = contents.attrs
    complete = int(np.asarray(ds["complete"].values).sum()) if "complete" in ds else ds.sizes["clip"]
    about = {
        "model": attrs.get("model_id", "(unknown)"),
        "revision": attrs.get("model_revision", "(unknown)"),
        "weights": attrs.get("weights", "unknown"),
        **_slice_words(contents.run_json, attrs),
        "clips complete": f"{complete} of {ds.sizes['clip']}",
        "layers in the store": ds.sizes.get("layer"),
        "width": ds.sizes.get("feature"),
        "store": str(contents.store),
        "config fingerprint": attrs.get("config_fingerprint"),
    }
    body = ["<h2>Run</h2>", pages.key_values(about), pages.notes(notes_)]
    body.append("<h2>Layer x horizon heatmaps (probe analysis)</h2>")
    for src in contents.heatmaps:
        rel = _copy(src, out, f"analysis-{src.parent.name}")
        body.append(f"<p>{escape(str(src))}</p><img class='panel' src='{escape(rel)}' alt='{escape(src.stem)}'>")
    if not contents.heatmaps:
        body.append("<p class='note'>none in this run</p>")
    body.append(f"<h2>Probe directions and SAE features ({len(itemset.items)})</h2>")
    rows = [
        {
            "page": i.key,
            "kind": i.kind,
            "layer": i.layer,
            "target": i.stats.get("target") or i.stats.get("targets"),
            "gain": i.stats.get("gain"),
            "q": i.stats.get("q_value"),
            "max activation": float(res.max[k]) if len(res.max) else None,
        }
        for k, i in enumerate(itemset.items)
    ]
    if rows:
        head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
        trs = "".join(
            "<tr>"
            + f"<td><a href='items/{escape(str(r['page']))}.html'>{escape(str(r['page']))}</a></td>"
            + "".join(f"<td>{pages.cell(v)}</td>" for c, v in r.items() if c != "page")
            + "</tr>"
            for r in rows
        )
        body.append(f"<table><tr>{head}</tr>{trs}</table>")
    else:
        body.append("<p class='note'>no saved probe directions or SAE candidates in this run</p>")
    body += interventions
    body.append("<h2>Annotations (the run's plots: self-similarity with recurrences; tension)</h2>")
    for clip_id, src in sorted(contents.annotation_plots.items()):
        rel = _copy(src, out, "annotations")
        body.append(
            f"<p>{escape(clip_id)}</p><img class='panel' src='{escape(rel)}' alt='annotation of {escape(clip_id)}'>"
        )
    if not contents.annotation_plots:
        body.append("<p class='note'>no annotation plots in this run</p>")
    title = f"musicinterp run {contents.root.name}"
    return pages.page(title, "".join(body), str(attrs.get("weights", "unknown")), 0)


def build_site(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    top_clips: int = TOP_CLIPS,
    rank_dirs: list[str | Path] | None = None,
    intervention_dirs: list[str | Path] | None = None,
    similarity: bool = True,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> SiteResult:
    """Write the browser of ``run_dir`` into ``out`` (default ``<run>/browse``); returns what was written.

    ``similarity``: compute the self-similarity of clips that have no annotation plot in the run (decodes
    and analyses the whole clip: the costly part); ``rank_dirs`` / ``intervention_dirs``: folders kept outside
    the run. Pieces the run lacks (no analysis, no directions, no SAE, no codec) become notes on the pages.
    """
    import xarray as xr

    if top_clips < 1:
        raise ValueError(f"top_clips must be at least 1, got {top_clips}")
    say = progress or (lambda m: log.info("%s", m))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    contents = discover(run_dir, rank_dirs, intervention_dirs)
    out = Path(out) if out is not None else contents.root / SITE_DIR
    out.mkdir(parents=True, exist_ok=True)
    ds = dequantize(xr.open_zarr(str(contents.store), chunks=None))  # int8 stores (capture.reduce) read as float
    layers = [int(x) for x in ds["layer"].values]
    itemset = collect_items(contents, d_model=int(ds.sizes["feature"]), n_layers=max(layers))
    itemset.items = [i for i in itemset.items if i.layer in layers] or []
    notes_ = contents.notes + itemset.notes
    timings["discover_s"] = time.perf_counter() - t0
    say(f"{len(itemset.items)} pages; scanning {ds.sizes['clip']} clips")
    t = time.perf_counter()
    res = scan(ds, itemset, top_clips)
    timings["scan_s"] = time.perf_counter() - t
    n_frames = np.asarray(ds["n_frames"].values)
    wins: dict[tuple[int, int], Window] = {}
    by_clip: dict[int, set[Window]] = {}
    for k, top in enumerate(res.top):
        for p in top:
            w = window_around(p.clip, p.frame, int(n_frames[p.clip]))
            wins[(k, p.clip)] = w
            by_clip.setdefault(p.clip, set()).add(w)
    t = time.perf_counter()
    decoder = Decoder(contents.attrs, device)
    panels, wavs, waves = _clip_panels(ds, contents, decoder, by_clip, out, similarity)
    timings["audio_s"] = time.perf_counter() - t
    audio_note = [f"Audio: mean removed, scaled to a peak of {PEAK_LEVEL} of full scale."]
    if decoder.error:
        audio_note = [f"No audio: {decoder.error}."]
        notes_.append(f"no audio: {decoder.error}")
    tension = np.asarray(ds["tension"].values, np.float64) if "tension" in ds else None
    experiments, problems = [], []
    for d in contents.intervention_dirs:
        try:
            experiments.append(read_experiment(d))
        except InterventionReadError as e:
            problems.append(str(e))
            notes_.append(f"intervention folder not shown: {e}")
    figs = {
        n: _copy(exp.figure, out, f"intervention-{exp.folder.name}", "effects.png")
        for n, exp in enumerate(experiments)
        if exp.figure is not None
    }
    direction_pages = {(Path(i.source).parent.resolve(), i.direction): i.key for i in itemset.items if i.direction}
    feature_pages = {
        (i.sae, i.layer, i.feature): i.key for i in itemset.items if i.sae is not None and i.feature is not None
    }
    effects: dict[str, list[tuple[Effect, str | None]]] = {}
    placed: dict[int, list[tuple[str | None, str]]] = {}
    for n, exp in enumerate(experiments):
        placed[n] = [page_of(effect, direction_pages, contents.root, feature_pages) for effect in exp.effects]
        for effect, (key, _why) in zip(exp.effects, placed[n]):
            if key is not None:
                effects.setdefault(key, []).append((effect, figs.get(n)))
    t = time.perf_counter()
    (out / "style.css").write_text(pages.STYLE)
    draw.write_png(out / "favicon.png", np.tile(np.array([31, 78, 140], np.uint8), (16, 16, 1)))  # no 404 per page
    written = []
    (out / "items").mkdir(exist_ok=True)
    shared = _Shared(
        clip_ids=[str(c) for c in ds["clip"].values],
        n_frames=np.asarray(n_frames),
        weights=str(contents.attrs.get("weights", "unknown")),
        tension=tension,
        wins=wins,
        panels=panels,
        wavs=wavs,
        waves=waves,
        effects=effects,
        audio_note=audio_note,
    )
    for k, item in enumerate(itemset.items):
        path = out / "items" / f"{item.key}.html"
        path.write_text(_item_page(k, itemset, res, shared))
        written.append(path)
    index = out / "index.html"
    interventions = _interventions_html(experiments, problems, placed, figs)
    index.write_text(_overview(contents, ds, itemset, res, out, notes_, interventions))
    timings["pages_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    say(f"site of {len(written)} pages in {out} ({timings['total_s']:.1f} s)")
    return SiteResult(out, index, written, len(wavs), notes_, timings)
