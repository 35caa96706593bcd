"""The positive-control model: a small MusicGen decoder trained here on cue pieces (CPU, or a GPU).

DESIGN.md section 3 ("Known-answer models"): a pipeline that claims to detect foresight must find it
where it exists. :func:`train_toy` renders cue pieces (:mod:`musicinterp.sources.cue`: a cue in the
first second decides whether section A returns at 9 s, and nothing audible near 9 s gives it away),
encodes them with the model's EnCodec, trains a small MusicGen-architecture decoder on their delayed
codes (teacher forcing, the empty text condition, cross-entropy over the four codebooks), checks on
held-out pieces that it learned the structure, and saves it as a loadable checkpoint with weights
kind ``trained-here``. The same architecture with its initial random weights is saved beside it
(weights kind ``random``) as the negative control.

The check: mean cross-entropy over the return section (frames 450-529) of held-out pieces. A model
that remembers the cue predicts A's codes there after the return cue, and cannot do better than
chance after the no-return cue (the section is then random); the random-weight model is at chance
everywhere. The report gives all of these numbers.

The audio encoder is the offline 'tiny' model's random-weight EnCodec (DESIGN.md: a random EnCodec is
fine, its codes are a deterministic function of the audio), with three changes that the construction
needs, all recorded in the checkpoint's ``musicinterp.json``:

- *codebooks*: the offline model's quantizer codebooks are all zero (every frame would get code 0),
  so each of the four residual codebooks is set to k-means centroids of latents of calibration cue
  pieces (their own seed), repeated to fill the 2048 entries: ``codebook_clusters`` for the first
  codebook, ``residual_clusters`` (few) for the others, which would otherwise spend most of the loss
  on the fine detail of note transitions;
- *no LSTM memory*: the encoder LSTM's weights are zeroed, which turns it into its identity skip, so a
  frame's codes depend on a few frames of audio only (a trained EnCodec's LSTM would carry the cue
  into every later frame and give the return away locally);
- *causal convolutions*: frame ``i``'s codes depend on audio up to the end of its own hop, never on
  audio after it (the non-causal encoder looks ~5 frames ahead, into the return section).

So the codes at frame ``i`` are a function of the audio in roughly ``[(i - 12) * 640, (i + 1) * 640)``
samples; a returning section yields the same codes as A except in its first few frames.

Modules, one role each: :mod:`~musicinterp.toy.spec` (settings, config, the frames that matter),
:mod:`~musicinterp.toy.data` (pieces, encoding, held-out set, cached pool), :mod:`~musicinterp.toy.model`
(architecture, calibrated EnCodec, checkpoints), :mod:`~musicinterp.toy.losses`,
:mod:`~musicinterp.toy.train` and :mod:`~musicinterp.toy.evaluate` (checks and report).
"""

from musicinterp.toy.data import HeldOut, encode_pieces, encoder_digest, heldout, training_pieces
from musicinterp.toy.evaluate import (
    MAX_ONSET_P,
    MAX_RATIO_TO_RANDOM,
    MIN_ONSET_GAIN_NATS,
    evaluate_toy,
    report_markdown,
)
from musicinterp.toy.losses import frame_losses, onset_losses, return_losses, sampled_loss
from musicinterp.toy.model import build_toy, load_toy, save_half, save_random_twin
from musicinterp.toy.spec import ONSET_FRAMES, RETURN_FRAMES, TOY_MODEL_IDS, ToySpec, toy_config
from musicinterp.toy.train import torch_threads, train_toy

__all__ = [
    "MAX_ONSET_P",
    "MAX_RATIO_TO_RANDOM",
    "MIN_ONSET_GAIN_NATS",
    "ONSET_FRAMES",
    "RETURN_FRAMES",
    "TOY_MODEL_IDS",
    "HeldOut",
    "ToySpec",
    "build_toy",
    "encode_pieces",
    "encoder_digest",
    "evaluate_toy",
    "frame_losses",
    "heldout",
    "load_toy",
    "onset_losses",
    "report_markdown",
    "return_losses",
    "sampled_loss",
    "save_half",
    "save_random_twin",
    "toy_config",
    "torch_threads",
    "train_toy",
    "training_pieces",
]
