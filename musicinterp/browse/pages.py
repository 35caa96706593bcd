"""HTML of the site: one stylesheet, the overview and one page per item. Plain strings, every value escaped,
links relative, no script and nothing fetched from elsewhere (the site works from a folder, offline)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from typing import Any

STYLE = """\
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.weights{padding:.5em .8em;border-radius:4px;font-weight:600;background:#eef4ff}
.weights.random{background:#fff1e6;color:#8a3b00}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.note{color:#8a5a00}.segment{display:flex;gap:1em;align-items:flex-start;margin:1em 0;flex-wrap:wrap}
.segment>div{max-width:420px}
.wave{position:relative;display:inline-block}
.wave .marker{position:absolute;top:0;bottom:0;width:2px;background:#d62728}
svg text{font-size:10px;fill:#555}svg.hist rect{fill:#1f4e8c}
svg polyline{fill:none;stroke-width:1.2}svg .act{stroke:#1f4e8c}svg .tension{stroke:#2ca02c}
svg .peak{stroke:#d62728}svg .window{fill:#ffe9a8}
svg .zero{stroke:#999;stroke-width:.6}svg .control{fill:#999}svg .candidate{fill:#d62728}
svg .ci{stroke:#d62728;stroke-width:1.5}.effect-summary{font-size:.9em}
img.panel{max-width:100%}img.ssm{width:160px;height:160px;image-rendering:pixelated;border:1px solid #ccc}
"""

WEIGHTS_WORDS = {
    "random": "random weights, not a trained model: nothing here says anything about a trained MusicGen",
    "trained-here": "trained here (a small model trained by musicinterp on synthetic pieces), not a published MusicGen",
    "pretrained": "pretrained: published weights loaded from the Hugging Face Hub",
}


def weights_words(weights: str) -> str:
    return WEIGHTS_WORDS.get(weights, f"weights: {weights} (kind unknown)")


def page(title: str, body: str, weights: str, depth: int) -> str:
    up = "../" * depth
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><link rel='stylesheet' href='{up}style.css'>"
        f"<link rel='icon' href='{up}favicon.png'></head><body>"
        f"<p><a href='{up}index.html'>run overview</a></p>"
        f"<p class='weights {escape(weights)}'>Model weights: {escape(weights_words(weights))}</p>"
        f"<h1>{escape(title)}</h1>{body}</body></html>\n"
    )


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def cell(v: Any) -> str:
    if isinstance(v, float):
        return escape(f"{v:.4g}")
    if isinstance(v, dict | list):
        return escape(json.dumps(v, default=str))
    return escape("" if v is None else str(v))


def key_values(d: dict[str, Any]) -> str:
    return (
        "<table>" + "".join(f"<tr><th>{escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in d.items()) + "</table>"
    )


def notes(lines: list[str]) -> str:
    return "".join(f"<p class='note'>{escape(x)}</p>" for x in lines)


@dataclass
class SegmentView:
    """One top-activating segment as the page shows it (paths relative to the page)."""

    clip_id: str
    peak_s: float
    value: float
    window: tuple[float, float]  # seconds
    wav: str | None
    wave_png: str | None
    marker_pct: float
    curves_svg: str
    panel: str | None  # the clip's self-similarity (and tension) picture
    panel_kind: str  # "run" (the run's plot) | "decoded" (from the decoded audio) | "flat" | ""


def segment_html(s: SegmentView) -> str:
    seconds = s.window[1] - s.window[0]
    if s.wav:
        audio = (
            f"<audio controls preload='metadata' src='{escape(s.wav)}' data-seconds='{seconds:g}'></audio>"
            f"<br><div class='wave'><img src='{escape(s.wave_png or '')}' alt='waveform of the segment'>"
            f"<span class='marker' style='left:{s.marker_pct:.1f}%' title='peak'></span></div>"
        )
    else:
        audio = "<p class='note'>no audio (see the note at the top)</p>"
    if s.panel_kind == "flat":
        panel = (
            "<p class='note'>the decoded audio's self-similarity is flat (no tonal content, or alike everywhere):"
            " nothing to show</p>"
        )
    elif s.panel is None:
        panel = "<p class='note'>no self-similarity picture for this clip</p>"
    elif s.panel_kind == "run":
        panel = (
            f"<a href='{escape(s.panel)}'><img class='panel' style='max-width:420px' src='{escape(s.panel)}' "
            "alt='the run's annotation plot: self-similarity and tension'></a>"
        )
    else:
        panel = (
            f"<img class='ssm' src='{escape(s.panel)}' alt='self-similarity of the decoded clip'>"
            "<br><small>self-similarity of the audio decoded from the stored codes (contrast stretched)</small>"
        )
    return (
        f"<div class='segment'><div><b>{escape(s.clip_id)}</b>, peak {s.value:.4g} at {s.peak_s:.2f} s;"
        f" audio {s.window[0]:.1f}-{s.window[1]:.1f} s<br>{audio}</div>"
        f"<div>{s.curves_svg}<br><small>activation (blue, top) and the store's tension (green, bottom) over the clip;"
        f" yellow: the audio window; red: the peak</small></div><div>{panel}</div></div>"
    )
