"""The pair toy's twin pairs and the frame windows the causal experiments on it name.

A *twin pair* is a held-out pair-cue piece in which A returns (the two chords equal) and the same piece
with the other second chord, every other sample the same (:func:`musicinterp.sources.cue.with_cue`): the
counterfactual of the learned-structure check. The planned event is the loss of the return's first codes
(:data:`musicinterp.toy.ONSET_FRAMES`, codebook 0 of frames 451-452, predicted at decoder steps 451-452 =
stored frames 450-451).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.models import LoadedModel
from musicinterp.sources.cue import CUE_END_S, MIN_DURATION_S, compose, cue_recipe, with_cue
from musicinterp.toy.data import encode_pieces
from musicinterp.toy.spec import ONSET_FRAMES, RETURN_FRAMES

CUE_FRAMES = (0, round(CUE_END_S * FRAME_RATE_HZ))  # stored frames 0-49: the two chords and the silence
# the last stored frame whose step predicts an onset code, + 1: steps 451-452 = stored frames 450-451
EVENT_STOP_FRAME = ONSET_FRAMES[-1]
# frame windows [start, stop) in stored frames (decoder steps start+1 .. stop): every window ends where
# nothing later can change the onset prediction
WINDOWS: dict[str, tuple[int, int]] = {
    "to-return": (0, EVENT_STOP_FRAME),  # every frame that can matter: the cue through the return's steps
    "cue": CUE_FRAMES,  # the cue's frames only
    "cue-end-to-return": (CUE_FRAMES[1], EVENT_STOP_FRAME),  # from the end of the cue through the return step
    "before-return": (CUE_FRAMES[1], RETURN_FRAMES.start),  # after the cue, before the return's steps
}
# local fluency: every codebook of the frames of section B from 3 s to 8.96 s, predicted with the intervention in
# place; never the cue, the event or anything after it: codebook 3 of the last frame (447) is predicted at
# decoder step 450, before the event's steps 451-452
FLUENCY_FRAMES = (150, RETURN_FRAMES.start - 2)


@dataclass
class TwinPairs:
    """Delayed decoder inputs ``(piece, K, T + 1)`` of return pieces (``ids``) and their other-cue twins."""

    ids: torch.Tensor
    swapped_ids: torch.Tensor
    seed: int
    indices: list[int]


def twin_pairs(loaded: LoadedModel, seed: int, n: int, duration_s: float = MIN_DURATION_S) -> TwinPairs:
    """``n`` pair-cue pieces of ``seed`` (indices 0..n-1), all with A returning, and their twins."""
    samples, swapped = [], []
    for i in range(n):
        x, truth = compose(cue_recipe(seed, i, duration_s, True, "pair"))
        samples.append(x)
        swapped.append(with_cue(x, "no-return", truth["cue_chords"]))
    with torch.no_grad():
        ids, sw = encode_pieces(loaded, samples), encode_pieces(loaded, swapped)
    return TwinPairs(ids.cpu(), sw.cpu(), seed, list(range(n)))


def event_mask(n_frames: int) -> np.ndarray:
    """Frames whose codes are the planned event (codebook 0 of the onset frames)."""
    m = np.zeros(n_frames, bool)
    m[list(ONSET_FRAMES)] = True
    return m
