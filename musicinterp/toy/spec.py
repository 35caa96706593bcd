"""What the toy is: its settings (:class:`ToySpec`), their checks, its MusicGen config, and the frames of a
cue piece that the training and the checks single out."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from musicinterp.config import Spec
from musicinterp.frames import FRAME_RATE_HZ
from musicinterp.models import _offline_config
from musicinterp.sources.cue import RETURN_AT_S, RETURN_END_S

TOY_MODEL_IDS = {"chord": "musicinterp/toy-cue", "pair": "musicinterp/toy-pair"}  # by cue design
CALIBRATION_SEED = 424_242  # cue pieces whose latents set the EnCodec codebooks (never trained on)
TEXT_VOCAB = 32  # the toy has no tokenizer: only the empty condition (T5's EOS token, id 1) is ever fed
RETURN_FRAMES = range(round(RETURN_AT_S * FRAME_RATE_HZ), round(RETURN_END_S * FRAME_RATE_HZ))
# The first codes that hear the return: the toy EnCodec is causal and smooths over ~12 frames, so the code
# of the return's first frame is the same after either cue (tested); those of the next two frames mostly
# differ. They are predicted at time indices 450 and 451, from inputs in which the return cannot be heard
# yet (or only just): only the cue tells what comes.
ONSET_FRAMES = (RETURN_FRAMES.start + 1, RETURN_FRAMES.start + 2)


class ToySpec(Spec):
    """How the positive-control model is made: pieces, architecture, optimiser."""

    n_pieces: int = Field(256, ge=4, le=100_000, description="Training cue pieces (half with the return cue).")
    duration_s: float = Field(11.0, ge=11.0, le=30.0, description="Length of each piece in seconds.")
    seed: int = Field(0, ge=0, description="Seed of the training pieces and of the initial weights.")
    heldout_pieces: int = Field(32, ge=2, le=10_000, description="Held-out pieces for the check.")
    heldout_seed: int = Field(1000, ge=0, description="Seed of the held-out pieces (must differ from seed).")
    steps: int = Field(800, ge=1, le=100_000, description="Optimiser steps.")
    batch_size: int = Field(16, ge=1, le=1024, description="Pieces per step.")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Peak learning rate (AdamW, linear warm-up, cosine decay).")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    hidden_size: int = Field(128, ge=16, le=1024, description="Decoder width.")
    n_layers: int = Field(4, ge=1, le=24, description="Decoder blocks.")
    n_heads: int = Field(4, ge=1, le=16, description="Attention heads (must divide hidden_size).")
    ffn_dim: int = Field(512, ge=16, le=4096, description="Feed-forward width of each block.")
    loss_steps: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Decoder steps per piece whose codes enter the loss at each "
        "optimiser step (drawn at random; the output heads dominate the CPU cost).",
    )
    codebook_clusters: int = Field(
        64,
        ge=2,
        le=2048,
        description="Distinct EnCodec codewords of the first codebook (k-means on calibration pieces).",
    )
    residual_clusters: int = Field(
        4,
        ge=1,
        le=2048,
        description="Distinct codewords of each residual codebook (2-4): few, so that the "
        "fine detail of note transitions does not drown the structure in code noise.",
    )
    threads: int = Field(2, ge=1, le=256, description="torch CPU threads.")
    focus_return: bool = Field(
        True,
        description="Always put the decoder steps of the return section into the loss (besides the "
        "random ones): the only steps where the cue matters, about a fifth of the piece, would otherwise be "
        "drawn rarely. The model still sees and predicts every other step.",
    )
    design: Literal["chord", "pair"] = Field(
        "chord",
        description="Cue design of the pieces (CueSource.design): 'chord', one of two chords; 'pair', "
        "two chords that are equal when A returns (not linear in retained codes: a random twin cannot expose it).",
    )
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="torch device of training and of encoding the pieces "
        "('cpu', 'cuda', 'cuda:N'). The checks and the saved checkpoints are always on the CPU.",
    )
    onset_weight: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Weight of an extra loss term: the cross-entropy of the first "
        "codebook at the first frames whose codes hear the return (ONSET_FRAMES), predicted before the return "
        "is heard. They are the codes of a piece that only the cue predicts (the rest of a returning A can be "
        "copied from A once its start is heard); without the term a model copies and barely uses the cue.",
    )


def _check_spec(spec: ToySpec) -> None:
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec.device!r} asked for, but torch {torch.__version__} sees no CUDA device")
    if spec.hidden_size % spec.n_heads:
        raise ValueError(f"hidden_size {spec.hidden_size} is not divisible by n_heads {spec.n_heads}")
    if spec.heldout_seed == spec.seed:
        raise ValueError(f"heldout_seed must differ from seed (both {spec.seed}): held-out pieces would be trained on")
    if spec.seed == CALIBRATION_SEED or spec.heldout_seed == CALIBRATION_SEED:
        raise ValueError(f"seed {CALIBRATION_SEED} is reserved for the codebook calibration pieces")


def toy_config(spec: ToySpec):
    """MusicgenConfig of the toy: the offline 'tiny' model with a wider, deeper decoder and causal EnCodec."""
    from transformers import MusicgenConfig

    base = _offline_config("tiny")
    text = base.text_encoder.to_dict() | {"vocab_size": TEXT_VOCAB}
    audio = base.audio_encoder.to_dict() | {"use_causal_conv": True}
    decoder = base.decoder.to_dict() | {
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "ffn_dim": spec.ffn_dim,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    }
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
