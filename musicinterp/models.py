"""Load MusicGen from the Hub (explicit revision), from a local directory, or build it offline.

Offline models have random weights and say so: ``LoadedModel.weights`` is ``"random"`` and every
store and report written from them carries ``weights: random``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from musicinterp.codec import lookahead_frames
from musicinterp.config import ModelSpec
from musicinterp.frames import FRAME_RATE_HZ, SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

WeightsKind = Literal["pretrained", "random", "trained-here"]
CHECKPOINT_META_FILE = "musicinterp.json"
PAD_TOKEN_ID = 2048  # MusicGen's pad / decoder-start token: one past the last code of 2048


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the model and the cause."""


@dataclass
class LoadedModel:
    """A MusicGen model with what the store must record about it."""

    model: Any  # transformers MusicgenForConditionalGeneration, in eval mode
    tokenizer: Any | None  # None for offline models: only the empty text condition is available
    model_id: str
    revision: str
    weights: WeightsKind
    # text conditions already encoded ((description, half, device) -> states and mask): once, not once per clip
    conditions: dict[tuple[str, str, str], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def decoder_config(self):
        return self.model.config.decoder

    @property
    def n_layers(self) -> int:
        """Decoder blocks; the store holds ``n_layers + 1`` layers (0 = embeddings)."""
        return self.decoder_config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.decoder_config.hidden_size

    @property
    def num_codebooks(self) -> int:
        return self.decoder_config.num_codebooks

    def describe(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "weights": self.weights,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "num_codebooks": self.num_codebooks,
            "codec_lookahead_frames": lookahead_frames(self.model.config.audio_encoder),
        }


def _offline_config(name: str):
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    if name == "tiny":
        text = T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        audio = EncodecConfig(
            sampling_rate=SAMPLE_RATE_HZ,
            audio_channels=1,
            hidden_size=32,
            num_filters=4,
            num_residual_layers=1,
            num_lstm_layers=1,
            upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048,
            codebook_dim=32,
            target_bandwidths=[2.2],
            normalize=False,
            use_causal_conv=False,
            chunk_length_s=None,
            overlap=None,
        )
        decoder = MusicgenDecoderConfig(
            vocab_size=2048,
            max_position_embeddings=2048,
            num_hidden_layers=2,
            ffn_dim=128,
            num_attention_heads=4,
            hidden_size=64,
            num_codebooks=4,
            pad_token_id=PAD_TOKEN_ID,
            bos_token_id=PAD_TOKEN_ID,
            dropout=0.0,
        )
    elif name == "musicgen-small":
        # Shapes of facebook/musicgen-small: T5-base text encoder, EnCodec 32 kHz, 24x1024 decoder.
        text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
        audio = EncodecConfig(
            sampling_rate=SAMPLE_RATE_HZ,
            audio_channels=1,
            hidden_size=128,
            num_filters=64,
            num_residual_layers=1,
            num_lstm_layers=2,
            upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048,
            codebook_dim=128,
            target_bandwidths=[2.2],
            normalize=False,
            use_causal_conv=False,
            chunk_length_s=None,
            overlap=None,
        )
        decoder = MusicgenDecoderConfig(
            vocab_size=2048,
            max_position_embeddings=2048,
            num_hidden_layers=24,
            ffn_dim=4096,
            num_attention_heads=16,
            hidden_size=1024,
            num_codebooks=4,
            pad_token_id=PAD_TOKEN_ID,
            bos_token_id=PAD_TOKEN_ID,
            dropout=0.1,
        )
    else:  # ModelSpec validation makes this unreachable for users
        raise ModelLoadError(f"unknown offline model {name!r}")
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    return config


def _set_generation_defaults(model) -> None:
    gc = model.generation_config
    gc.decoder_start_token_id = PAD_TOKEN_ID
    gc.pad_token_id = PAD_TOKEN_ID
    gc.bos_token_id = PAD_TOKEN_ID
    gc.max_length = 1500
    gc.guidance_scale = 3.0
    gc.do_sample = True
    gc.top_k = 250


def build_offline(name: str, seed: int = 0):
    """A MusicGen with random weights shaped like ``name`` ('tiny' or 'musicgen-small')."""
    from transformers import MusicgenForConditionalGeneration

    config = _offline_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
    model.eval()
    _init_codebooks(model, seed)
    _set_generation_defaults(model)
    return model


CALIBRATION_S = 24.0


def _calibration_audio(seed: int, seconds: float = CALIBRATION_S) -> np.ndarray:
    """Seeded stand-in music: 0.25 s events of 1-3 harmonic tones (80 Hz-2 kHz) over a little noise."""
    rng = np.random.default_rng([seed, 7])
    seg = SAMPLE_RATE_HZ // 4
    t = np.arange(seg) / SAMPLE_RATE_HZ
    out = []
    for _ in range(int(seconds * 4)):
        x = 0.01 * rng.standard_normal(seg)
        for f in np.exp(rng.uniform(np.log(80), np.log(2000), size=rng.integers(1, 4))):
            x += rng.uniform(0.05, 0.3) * sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3))
        out.append(x)
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def _init_codebooks(model, seed: int) -> None:
    """Give a random-weight EnCodec usable codebooks.

    transformers creates EnCodec's codebooks as zeros (trained ones are loaded over them), so a freshly
    built model maps every frame to code 0. EnCodec initialises its codebooks from the encoder's own
    outputs (k-means on the first batch); we do the data-free equivalent: each residual codebook is a
    seeded sample of the encoder's residual vectors on seeded calibration audio. Codes then follow the
    audio (different sounds, different codes), which is all a random model needs.
    """
    audio = model.audio_encoder
    x = torch.from_numpy(_calibration_audio(seed))[None, None]
    residual = audio.encoder(x)[0].T  # (frames, dim)
    g = torch.Generator().manual_seed(seed)
    for layer in audio.quantizer.layers:
        cb = layer.codebook
        idx = torch.randint(0, len(residual), (cb.embed.shape[0],), generator=g)
        jitter = 1e-3 * residual.std() * torch.randn(cb.embed.shape, generator=g)
        cb.embed.copy_(residual[idx] + jitter)
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
        cb.inited.fill_(1)
        nearest = torch.cdist(residual, cb.embed).argmin(dim=1)
        residual = residual - cb.embed[nearest]


def _check_frame_rate(config, model_id: str) -> None:
    """``config``: a ``MusicgenConfig`` (the model's ``.config``)."""
    audio = config.audio_encoder
    if audio.sampling_rate != SAMPLE_RATE_HZ or round(audio.frame_rate) != FRAME_RATE_HZ:
        raise ModelLoadError(
            f"model {model_id!r}: EnCodec runs at {audio.sampling_rate} Hz / {audio.frame_rate} frames/s; "
            f"musicinterp's grid needs {SAMPLE_RATE_HZ} Hz / {FRAME_RATE_HZ} frames/s"
        )
    if getattr(config.decoder, "audio_channels", 1) != 1:
        raise ModelLoadError(f"model {model_id!r} is stereo; only mono MusicGen models are supported")


def weights_digest(path: Path) -> str:
    """sha256 (first 16 hex digits) of a checkpoint folder's weight files, in name order."""
    h = hashlib.sha256()
    files = sorted(f for f in path.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class _LocalCheckpoint:
    """What a ``save_pretrained`` folder says about itself: where to load from and what to record."""

    path: Path
    load_revision: str
    model_id: str
    revision: str
    weights: WeightsKind


def _local_checkpoint(spec: ModelSpec) -> _LocalCheckpoint:
    path = Path(spec.name)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {spec.name!r} does not exist")
    meta = read_checkpoint_meta(path)
    weights: WeightsKind = "trained-here" if spec.weights == "trained-here" else meta.get("weights", "pretrained")
    # a folder's name says nothing about what is in it: the store records the weights' digest, so a
    # retrained checkpoint at the same path is never resumed into activations of the old one
    revision = f"{meta.get('revision', 'local')}+sha256:{weights_digest(path)}"
    return _LocalCheckpoint(path, meta.get("revision", "local"), meta.get("model_id", str(path)), revision, weights)


def load_model(spec: ModelSpec, device: str = "cpu") -> LoadedModel:
    """Load the model a ModelSpec names; errors name the model and say what went wrong."""
    if spec.source == "offline":
        model = build_offline(spec.name, spec.seed)
        loaded = LoadedModel(model, None, f"offline/{spec.name}", f"seed-{spec.seed}", "random")
    elif spec.source == "hub":
        loaded = _load_pretrained(spec.name, _hub_revision(spec), weights="pretrained")
    else:
        ckpt = _local_checkpoint(spec)
        loaded = _load_pretrained(str(ckpt.path), ckpt.load_revision, weights=ckpt.weights)
        loaded.model_id, loaded.revision = ckpt.model_id, ckpt.revision
    _check_frame_rate(loaded.model.config, loaded.model_id)
    loaded.model.to(device)
    log.info("loaded %s@%s (weights: %s)", loaded.model_id, loaded.revision, loaded.weights)
    return loaded


def describe_model(spec: ModelSpec) -> dict[str, Any]:
    """``load_model(spec).describe()`` from the model's config alone: no weights are built or loaded.

    What planning needs (shapes, id, revision, weights kind) is in the config: a Hub model's config
    file at the revision (the commit it resolves to is recorded, as ``load_model`` does), a local
    folder's config plus the digest of its weight files, or the offline builder's config. So a run
    can be planned on a machine without the capture device and without holding the weights.
    """
    if spec.source == "offline":
        config = _offline_config(spec.name)
        model_id, revision, weights = f"offline/{spec.name}", f"seed-{spec.seed}", "random"
    elif spec.source == "hub":
        config = _pretrained_config(spec.name, _hub_revision(spec))
        model_id, weights = spec.name, "pretrained"
        revision = getattr(config, "_commit_hash", None) or spec.revision or "local"
    else:
        ckpt = _local_checkpoint(spec)
        config = _pretrained_config(str(ckpt.path), ckpt.load_revision)
        model_id, revision, weights = ckpt.model_id, ckpt.revision, ckpt.weights
    _check_frame_rate(config, model_id)
    decoder = config.decoder
    return {
        "model_id": model_id,
        "revision": revision,
        "weights": weights,
        "n_layers": decoder.num_hidden_layers,
        "hidden_size": decoder.hidden_size,
        "num_codebooks": decoder.num_codebooks,
        "codec_lookahead_frames": lookahead_frames(config.audio_encoder),
    }


def _hub_revision(spec: ModelSpec) -> str:
    """The revision of a Hub model; ModelSpec's validation already refuses a Hub model without one."""
    if not spec.revision:
        raise ModelLoadError(f"model {spec.name!r}: a Hub model needs an explicit revision (a commit sha or tag)")
    return spec.revision


def _pretrained_config(name: str, revision: str):
    from transformers import MusicgenConfig

    try:
        return MusicgenConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load the config of MusicGen {name!r} at revision {revision!r}: {e}. "
            "Without access to the Hugging Face Hub, use model.source 'offline' or a local directory."
        ) from e


def _load_pretrained(name: str, revision: str, weights: WeightsKind) -> LoadedModel:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    try:
        model = MusicgenForConditionalGeneration.from_pretrained(name, revision=revision).eval()
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load MusicGen {name!r} at revision {revision!r}: {e}. "
            "Without access to the Hugging Face Hub, use model.source 'offline' or a local directory."
        ) from e
    try:
        tokenizer = AutoProcessor.from_pretrained(name, revision=revision).tokenizer
    except (OSError, ValueError, AttributeError):
        log.warning("no tokenizer for %s; only the empty text condition can be used", name)
        tokenizer = None
    # Record the commit the revision resolved to (a branch name such as 'main' moves over time).
    resolved = getattr(model.config, "_commit_hash", None) or revision or "local"
    return LoadedModel(model, tokenizer, name, resolved, weights)


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    meta_path = path / CHECKPOINT_META_FILE
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


def save_checkpoint(model, path: str | Path, model_id: str, weights: WeightsKind, **meta: Any) -> Path:
    """Save a model with ``save_pretrained`` (safetensors) plus musicinterp's provenance file."""
    path = Path(path)
    model.save_pretrained(path)
    info = {"model_id": model_id, "weights": weights, "revision": "local", **meta}
    (path / CHECKPOINT_META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return path
