"""Pictures without matplotlib, so that a thousand pages cost milliseconds each: PNG from a numpy array
(zlib + the PNG chunk format), inline SVG for histograms and curves."""

from __future__ import annotations

import struct
import zlib
from html import escape
from pathlib import Path

import numpy as np

WAVE_SIZE_PX = (360, 64)  # waveform PNG (width, height)
SSM_MAX_PX = 240  # self-similarity PNG: at most this many frames per side (strided)
SVG_SIZE_PX = (360, 120)
HIST_BINS = 40


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """An 8-bit PNG of ``pixels`` (H, W) grey or (H, W, 3) RGB uint8."""
    a = np.ascontiguousarray(pixels, np.uint8)
    colour = 2 if a.ndim == 3 else 0
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )
    return path


def waveform_png(path: Path, samples: np.ndarray, size: tuple[int, int] = WAVE_SIZE_PX) -> Path:
    """Min/max envelope per pixel column (mean removed), dark blue on white; the page overlays each feature's
    peak."""
    w, h = size
    x = np.asarray(samples, np.float64)
    x = x - x.mean() if x.size else x
    img = np.full((h, w, 3), 255, np.uint8)
    if x.size:
        cols = np.array_split(x, w)
        scale = max(float(np.abs(x).max()), 1e-12)
        mid = (h - 1) / 2
        for i, seg in enumerate(cols):
            if seg.size == 0:
                continue
            top = int(round(mid - seg.max() / scale * mid))
            bot = int(round(mid - seg.min() / scale * mid))
            img[max(top, 0) : min(bot, h - 1) + 1, i] = (31, 78, 140)
    img[h // 2, :] = np.minimum(img[h // 2, :], 200)
    return write_png(path, img)


def similarity_png(path: Path, ssm: np.ndarray, max_px: int = SSM_MAX_PX) -> Path:
    """Self-similarity as grey (dark = similar), time 0 at the bottom left like the run's plots; the contrast is
    stretched between the matrix's own 1st and 99th percentiles off the diagonal (decoded audio of a random
    codec is about equally (dis)similar everywhere and would otherwise draw as one flat square)."""
    step = max(1, int(np.ceil(len(ssm) / max_px)))
    s = np.clip(np.nan_to_num(np.asarray(ssm, np.float64)[::step, ::step]), 0, 1)
    off = s[~np.eye(len(s), dtype=bool)]
    lo, hi = np.percentile(off, (1, 99)) if off.size else (0.0, 1.0)
    s = np.clip((s - lo) / (hi - lo), 0, 1) if hi > lo else s
    return write_png(path, (255 * (1 - s))[::-1].astype(np.uint8))


def similarity_spread(ssm: np.ndarray, max_px: int = SSM_MAX_PX) -> float:
    """Range between the 1st and 99th percentiles of the (strided) matrix off its diagonal."""
    step = max(1, int(np.ceil(len(ssm) / max_px)))
    s = np.nan_to_num(np.asarray(ssm, np.float64)[::step, ::step])
    off = s[~np.eye(len(s), dtype=bool)]
    return float(np.subtract(*np.percentile(off, (99, 1)))) if off.size else 0.0


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def histogram_svg(values: np.ndarray, title: str, size: tuple[int, int] = SVG_SIZE_PX) -> str:
    """Bars of a histogram (log counts, so that a sparse feature's rare firing shows), with the range below."""
    w, h = size
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return '<p class="note">no activations to show</p>'
    lo, hi = float(v.min()), float(v.max())
    counts, edges = np.histogram(v, bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1))
    heights = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12) * (h - 22)
    bw = w / HIST_BINS
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - 18 - hh:.1f}" width="{max(bw - 1, 1):.1f}" height="{hh:.1f}">'
        f"<title>{_fmt(edges[i])} to {_fmt(edges[i + 1])}: {c} frames</title></rect>"
        for i, (c, hh) in enumerate(zip(counts, heights, strict=True))
    )
    return (
        f'<svg class="hist" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(title)}">'
        f"{bars}"
        f'<text x="0" y="{h - 4}">{_fmt(lo)}</text><text x="{w}" y="{h - 4}" text-anchor="end">{_fmt(hi)}</text>'
        "</svg>"
    )


def _polyline(y: np.ndarray, w: float, top: float, height: float, cls: str) -> str:
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y)
    if not ok.any():
        return ""
    lo, hi = float(y[ok].min()), float(y[ok].max())
    span = hi - lo if hi > lo else 1.0
    step = max(1, len(y) // int(w))  # at most one point per pixel
    idx = np.arange(0, len(y), step)
    xs = idx / max(len(y) - 1, 1) * w
    ys = top + height - (np.nan_to_num(y[idx], nan=lo) - lo) / span * height
    pts = " ".join(np.rint(np.column_stack([xs, ys]).ravel()).astype(np.int32).astype(str))  # whole pixels
    return f'<polyline class="{cls}" points="{pts}"/>'


def curves_svg(
    activation: np.ndarray,
    tension: np.ndarray | None,
    peak: int,
    window: tuple[int, int],
    frame_rate_hz: float,
    size: tuple[int, int] = SVG_SIZE_PX,
) -> str:
    """The activation over the whole clip (top) and the clip's tension (bottom), on one time axis; the audio
    window shaded and the peak marked."""
    w, h = size
    n = len(activation)
    half = (h - 16) / 2
    x_of = lambda f: f / max(n - 1, 1) * w  # noqa: E731
    parts = [
        f'<rect class="window" x="{x_of(window[0]):.1f}" y="0" width="{x_of(window[1]) - x_of(window[0]):.1f}" '
        f'height="{h - 16}"/>',
        _polyline(activation, w, 2, half - 4, "act"),
        f'<line class="peak" x1="{x_of(peak):.1f}" x2="{x_of(peak):.1f}" y1="0" y2="{h - 16}"/>',
    ]
    if tension is not None:
        parts.append(_polyline(tension, w, half + 2, half - 4, "tension"))
    dur = n / frame_rate_hz
    parts.append(f'<text x="0" y="{h - 3}">0 s</text><text x="{w}" y="{h - 3}" text-anchor="end">{dur:.1f} s</text>')
    label = "activation (top)" + (" and tension (bottom)" if tension is not None else "") + " over the clip"
    return (
        f'<svg class="curves" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label}">'
        + "".join(parts)
        + "</svg>"
    )


def effect_svg(
    event: float,
    event_ci: tuple[float, float],
    fluency: float,
    controls: list[tuple[float, float]],
    title: str,
    size: tuple[int, int] = (SVG_SIZE_PX[0], 200),
) -> str:
    """One intervention as ``causal-effects.png`` draws it: change of the onset loss (x) against change of
    fluency (y), the candidate (red, with its CI) over the cloud of its matched controls (grey); zero lines."""
    w, h = size
    pad, bottom = 10.0, 18.0
    xs = [event, *event_ci, *(c[0] for c in controls), 0.0]
    ys = [fluency, *(c[1] for c in controls), 0.0]
    xs = [x for x in xs if np.isfinite(x)]
    ys = [y for y in ys if np.isfinite(y)]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (w - 2 * pad) / (x1 - x0 if x1 > x0 else 1.0)
    sy = (h - bottom - 2 * pad) / (y1 - y0 if y1 > y0 else 1.0)
    px = lambda x: pad + (x - x0) * sx  # noqa: E731
    py = lambda y: h - bottom - pad - (y - y0) * sy  # noqa: E731
    parts = [
        f'<line class="zero" x1="{px(0):.1f}" x2="{px(0):.1f}" y1="0" y2="{h - bottom:.1f}"/>',
        f'<line class="zero" x1="0" x2="{w}" y1="{py(0):.1f}" y2="{py(0):.1f}"/>',
    ]
    parts += [
        f'<circle class="control" cx="{px(cx):.1f}" cy="{py(cy):.1f}" r="3">'
        f"<title>matched control: onset {_fmt(cx)}, fluency {_fmt(cy)}</title></circle>"
        for cx, cy in controls
        if np.isfinite(cx) and np.isfinite(cy)
    ]
    if all(np.isfinite(v) for v in (event, fluency, *event_ci)):
        parts.append(
            f'<line class="ci" x1="{px(event_ci[0]):.1f}" x2="{px(event_ci[1]):.1f}" '
            f'y1="{py(fluency):.1f}" y2="{py(fluency):.1f}"/>'
            f'<circle class="candidate" cx="{px(event):.1f}" cy="{py(fluency):.1f}" r="5">'
            f"<title>intervention: onset {_fmt(event)} nats, fluency {_fmt(fluency)} nats/code</title></circle>"
        )
    parts.append(
        f'<text x="0" y="{h - 4}">{_fmt(x0)}</text>'
        f'<text x="{w / 2:.0f}" y="{h - 4}" text-anchor="middle">onset loss change (nats)</text>'
        f'<text x="{w}" y="{h - 4}" text-anchor="end">{_fmt(x1)}</text>'
        f'<text x="2" y="10">fluency change {_fmt(y1)}</text>'
    )
    return (
        f'<svg class="effect" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(title)}">'
        + "".join(parts)
        + "</svg>"
    )
