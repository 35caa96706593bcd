"""int8 activations with one scale per (clip, layer, feature): ``capture.reduce: int8``.

Symmetric absmax quantisation, computed per clip: ``scale = max_t |x[t, f]| / 127`` for each layer and hidden
unit ``f``, ``q = round(x / scale)`` in -127..127, and ``x ≈ q * scale``. -128 is never produced, so the store
uses it as the fill (no data: read back as NaN). Why per clip and not a fixed scale: a fixed scale needs a
calibration pass before the run and clips whatever exceeds it, while each clip's own absmax never clips, needs
no state shared between shards or batches (a clip's scale is written with its own region, like its values), and
costs ``4 / time`` of the int8 bytes (0.3% at 30 s). The rounding error of a value is at most ``scale / 2``, so
``max_abs_error ≤ absmax / 254`` per unit; the error against what float16 capture would have stored is measured
on every clip (``max_abs_error``, ``rel_rms_error`` per layer) and written with it.

The same function runs on the device during capture (before the copy to the host, so half the bytes cross) and
on the host when float activations are written into an int8 store (``write_clip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

QUANT_MAX = 127  # symmetric int8 range: -127..127
QUANT_FILL = -128  # never produced by quantize_int8: the store's "no data" (read back as NaN)


@dataclass(frozen=True)
class QuantInfo:
    """What comes with int8 activations ``(layer, time, feature)`` of one clip.

    ``scale``: ``(layer, feature)`` float32, value = q * scale. ``max_abs_error`` and ``rel_rms_error``:
    ``(layer,)`` float32, the dequantised values against the float16 values of the same activations (largest
    absolute difference; root-mean-square difference over the root-mean-square of the float16 values).
    """

    scale: np.ndarray
    max_abs_error: np.ndarray
    rel_rms_error: np.ndarray


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise ``x`` ``(batch, time, feature)`` (any float dtype, any device) per ``(batch, feature)`` over time.

    Returns torch tensors on ``x``'s device: ``q`` int8 ``(batch, time, feature)``, ``scale`` float32
    ``(batch, feature)``, and per batch entry ``max_abs_error`` and ``rel_rms_error`` against
    ``x.to(float16)``. Nothing here synchronises with the host. (torch is imported lazily: store readers that
    only dequantise need not load it.)
    """
    import torch

    xf = x.float()
    scale = xf.abs().amax(dim=1) / QUANT_MAX
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero unit: q = 0, scale 0
    q = torch.round(xf / divisor[:, None]).clamp_(-QUANT_MAX, QUANT_MAX).to(torch.int8)
    ref = x.to(torch.float16).float()
    err = (q.float() * scale[:, None]).sub_(ref)
    max_abs = err.abs_().amax(dim=(1, 2))
    norm_ref = torch.linalg.vector_norm(ref, dim=(1, 2))  # the ratio of norms is the ratio of RMS values
    rel_rms = torch.linalg.vector_norm(err, dim=(1, 2)) / torch.where(norm_ref > 0, norm_ref, torch.ones_like(norm_ref))
    return q, scale, max_abs, rel_rms


def quantize_host(resid: np.ndarray) -> tuple[np.ndarray, QuantInfo]:
    """``quantize_int8`` of one clip's float activations ``(layer, time, feature)`` on the host (numpy in and out)."""
    import torch

    q, scale, max_abs, rel_rms = quantize_int8(torch.from_numpy(np.ascontiguousarray(resid)))
    return q.numpy(), QuantInfo(scale.numpy(), max_abs.numpy(), rel_rms.numpy())


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 values of int8 ``q`` with ``scale`` broadcast against it; ``QUANT_FILL`` reads as NaN."""
    out = q.astype(np.float32) * scale
    out[q == QUANT_FILL] = np.nan
    return out
