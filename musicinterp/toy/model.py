"""The toy model: the MusicGen architecture of a :class:`ToySpec` with the calibrated, causal, memoryless
EnCodec described in :mod:`musicinterp.toy`; its checkpoints (float16 decoder), the random-weight twin, loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from musicinterp.models import (
    CHECKPOINT_META_FILE,
    LoadedModel,
    _set_generation_defaults,
    build_offline,
    save_checkpoint,
)
from musicinterp.toy.data import _pieces
from musicinterp.toy.spec import CALIBRATION_SEED, ToySpec, _check_spec, toy_config

CALIBRATION_PIECES = 32


@torch.no_grad()
def _calibrate_codebooks(model, spec: ToySpec) -> None:
    """Set each residual codebook to k-means centroids of the calibration pieces' (residual) latents."""
    from sklearn.cluster import KMeans

    audio = model.audio_encoder
    # always the chord design: every toy shares one EnCodec, and its random twin is the same model
    samples, _, _ = _pieces(CALIBRATION_SEED, CALIBRATION_PIECES, spec.duration_s)
    latents = torch.cat([audio.encoder(torch.from_numpy(x)[None, None])[0] for x in samples], dim=1).T
    resid = latents.double()
    size = audio.quantizer.layers[0].codebook.embed.shape[0]
    for i, layer in enumerate(audio.quantizer.layers):
        clusters = spec.codebook_clusters if i == 0 else spec.residual_clusters
        km = KMeans(n_clusters=clusters, n_init=1, random_state=i).fit(resid.numpy())
        centroids = torch.from_numpy(km.cluster_centers_).float()
        # repeated to fill the codebook: ties go to the first copy, so only ids < clusters occur
        embed = centroids[torch.arange(size) % clusters]
        layer.codebook.embed.copy_(embed)
        layer.codebook.embed_avg.copy_(embed)
        layer.codebook.cluster_size.fill_(1.0)
        resid = resid - layer.codebook.decode(layer.codebook.encode(resid.float())).double()


def build_toy(spec: ToySpec, audio_state: dict[str, torch.Tensor] | None = None):
    """The untrained toy model (random decoder), with the calibrated EnCodec described in :mod:`musicinterp.toy`.

    ``audio_state``: an EnCodec state to use as it is (a trained toy's), instead of building and calibrating one.
    """
    from transformers import MusicgenForConditionalGeneration

    _check_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = MusicgenForConditionalGeneration(toy_config(spec))
    if audio_state is not None:
        model.audio_encoder.load_state_dict(audio_state)
        _set_generation_defaults(model)
        return model.eval()
    tiny = build_offline("tiny", seed=0)
    model.audio_encoder.load_state_dict(tiny.audio_encoder.state_dict())
    with torch.no_grad():
        for module in model.audio_encoder.encoder.modules():
            if isinstance(module, torch.nn.LSTM):
                for p in module.parameters():
                    p.zero_()
    _calibrate_codebooks(model, spec)
    _set_generation_defaults(model)
    return model.eval()


def _loaded(model, model_id: str, weights: str) -> LoadedModel:
    return LoadedModel(model, None, model_id, "local", weights)  # type: ignore[arg-type]


def save_half(model, path: Path, model_id: str, weights: str, **meta: Any) -> Path:
    """``save_checkpoint``, then the decoder's and text encoder's tensors rewritten as float16.

    The config still says float32, so ``from_pretrained`` loads everything as float32. EnCodec stays
    float32 so that the checkpoint encodes audio exactly as training did.
    """
    from safetensors.torch import load_file, save_file

    save_checkpoint(model, path, model_id=model_id, weights=weights, **meta)  # type: ignore[arg-type]
    file = path / "model.safetensors"
    tensors = load_file(file)
    half = {
        k: (v.half() if v.is_floating_point() and not k.startswith("audio_encoder.") else v) for k, v in tensors.items()
    }
    save_file(half, file, metadata={"format": "pt"})
    return path


RANDOM_NOTE = "untrained: the toy architecture with its initial random decoder weights (negative control)"


def save_random_twin(trained_dir: str | Path, random_dir: str | Path) -> Path:
    """Save the random-weight twin of a trained toy checkpoint, as ``train_toy`` does before training.

    For a checkpoint trained elsewhere (a GPU machine) and copied here without its twin: the decoder gets
    the initial weights of its ``toy_spec`` (seed) again; the EnCodec and text encoder are copied from the
    trained checkpoint bit for bit (a k-means rerun on another machine can differ in the last float bit,
    and the twin must encode audio exactly as the trained model does).
    """
    trained_dir = Path(trained_dir)
    meta = json.loads((trained_dir / CHECKPOINT_META_FILE).read_text())
    if meta.get("weights") != "trained-here" or "toy_spec" not in meta:
        raise ValueError(f"{trained_dir} is not a trained toy checkpoint (weights {meta.get('weights')!r})")
    spec = ToySpec(**meta["toy_spec"] | {"device": "cpu"})
    trained = load_toy(trained_dir).model
    twin = build_toy(spec, audio_state=trained.audio_encoder.state_dict())
    twin.text_encoder.load_state_dict(trained.text_encoder.state_dict())
    facts = {k: meta[k] for k in ("toy_spec", "toy_spec_fingerprint", "construction", "encodec", "text_condition")}
    return save_half(
        twin,
        Path(random_dir),
        meta["model_id"] + "-random",
        "random",
        **facts,
        note=RANDOM_NOTE,
        twin_of=str(trained_dir),
    )


def load_toy(path: str | Path) -> LoadedModel:
    """A saved toy checkpoint, through the project's own loader."""
    from musicinterp.config import ModelSpec
    from musicinterp.models import load_model

    return load_model(ModelSpec(source="local", name=str(path)))
