"""The toy's losses: per-code cross-entropy under teacher forcing, the sampled training loss, and the
per-piece losses over the return section and at its onset that the checks compare."""

from __future__ import annotations

import numpy as np
import torch

from musicinterp.capture import text_condition
from musicinterp.config import CaptureSpec
from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.models import PAD_TOKEN_ID, LoadedModel
from musicinterp.toy.spec import ONSET_FRAMES, RETURN_FRAMES


def _condition(loaded: LoadedModel, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty text condition, as capture feeds it (conditional half, description '')."""
    states, mask = text_condition(loaded, CaptureSpec())
    return states.expand(batch, -1, -1), mask.expand(batch, -1)


def frame_losses(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``(piece, codebook, frame)`` of each code given everything before it (NaN: not predicted).

    ``ids`` are delayed inputs ``(piece, K, T + 1)``; codebook ``k`` of frame ``i`` sits at step
    ``i + 1 + k`` and is predicted by the logits of step ``i + k``.
    """
    b, k, s = ids.shape
    t = s - 1
    states, mask = _condition(loaded, b)
    out = loaded.model(
        encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids.reshape(b * k, s), use_cache=False
    )
    logits = out.logits.reshape(b, k, s, -1)[:, :, :-1]
    target = ids[:, :, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits.permute(0, 3, 1, 2), target.clamp(max=logits.shape[-1] - 1), reduction="none"
    )
    ce = ce.masked_fill(target == PAD_TOKEN_ID, float("nan"))  # (b, k, step - 1)
    per_frame = torch.full((b, k, t), float("nan"))
    for cb in range(k):  # step s - 1 = i + k predicts frame i of codebook cb
        per_frame[:, cb, : t - cb] = ce[:, cb, cb:]
    return per_frame


def sampled_loss(
    loaded: LoadedModel,
    ids: torch.Tensor,
    n_steps: int,
    gen: torch.Generator,
    always: torch.Tensor | None = None,
    onset_weight: float = 0.0,
) -> torch.Tensor:
    """Training loss: the mean of :func:`frame_losses` over ``n_steps`` decoder steps drawn at random.

    The decoder runs over every step (the context is whole); only the output heads and the softmax,
    which dominate the cost on a CPU with 2048 codes, are evaluated on the drawn steps. An unbiased
    estimate of the full loss (``n_steps >= n_frames`` evaluates every step). ``onset_weight`` adds that
    multiple of the cross-entropy of codebook 0 at the return point's first frame (see ``ToySpec``).
    """
    model = loaded.model
    b, k, s = ids.shape
    states, mask = _condition(loaded, b)
    if model.config.text_encoder.hidden_size != model.config.decoder.hidden_size:
        states = model.enc_to_dec_proj(states)
    hidden = model.decoder.model(
        input_ids=ids.reshape(b * k, s), encoder_hidden_states=states, encoder_attention_mask=mask
    ).last_hidden_state  # (b, s, H)
    steps = torch.randperm(s - 1, generator=gen)[: min(n_steps, s - 1)]
    if always is not None:
        steps = torch.unique(torch.cat([steps, always[always < s - 1]]))
    h = hidden[:, steps]
    total, count = hidden.new_zeros(()), 0
    for cb, head in enumerate(model.decoder.lm_heads):
        target = ids[:, cb, steps + 1]
        keep = target != PAD_TOKEN_ID
        if keep.any():
            logits = head(h[keep])
            total = total + torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum")
            count += int(keep.sum())
    loss = total / max(count, 1)
    if onset_weight > 0:  # codebook 0 of frame f is predicted at step f
        f = torch.tensor(ONSET_FRAMES)
        onset = model.decoder.lm_heads[0](hidden[:, f]).flatten(0, 1)
        loss = loss + onset_weight * torch.nn.functional.cross_entropy(onset, ids[:, 0, f + 1].flatten())
    return loss


@torch.no_grad()
def return_losses(loaded: LoadedModel, ids: torch.Tensor, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per piece: mean cross-entropy over the return section, over the 2 s before it, and over the piece."""
    parts = [frame_losses(loaded, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    ce = torch.cat(parts).numpy()
    ret = ce[:, :, RETURN_FRAMES.start : RETURN_FRAMES.stop]
    before = ce[:, :, RETURN_FRAMES.start - 2 * FRAME_RATE_HZ : RETURN_FRAMES.start]
    return {
        "return": np.nanmean(ret, axis=(1, 2)),
        "before": np.nanmean(before, axis=(1, 2)),
        "piece": np.nanmean(ce, axis=(1, 2)),
    }


def onset_losses(loaded: LoadedModel, ids: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Per piece: mean cross-entropy of codebook 0 over :data:`ONSET_FRAMES` (predicted before the return is heard)."""
    with torch.no_grad():
        parts = [
            frame_losses(loaded, ids[i : i + batch_size])[:, 0, list(ONSET_FRAMES)].mean(dim=1)
            for i in range(0, len(ids), batch_size)
        ]
    return torch.cat(parts).numpy()
