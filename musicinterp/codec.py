"""How far past its own frame an EnCodec frame hears: the codec's look-ahead, measured from its configuration.

MusicGen's 32 kHz EnCodec has non-causal convolutions: part of each convolution's padding goes to the right, so
a frame's latent (and its codes) depend on a little audio after the frame. A probe that reads a layer at frame
t then hears audio its causal controls cannot, and a label window that starts at t gives the layer a head start.
The analysis reads the layer ``lookahead`` frames earlier than the label (see musicinterp.analysis.data).

The look-ahead is a property of the architecture, not of the weights, so it is measured on an encoder built
from the config with random weights: audio is changed from one frame boundary on, and the first latent frame
that moves tells how far ahead the encoder hears. (Counting each convolution's right padding by hand gives the
same number; the measurement cannot get transformers' padding rules wrong.)
"""

from __future__ import annotations

from functools import lru_cache

HOP_SAMPLES = 640  # 32 kHz / 50 Hz
PROBE_FRAME = 12  # the perturbation starts here; enough frames after it for any look-ahead under 12


def lookahead_frames(audio_encoder_config) -> int:
    """Frames of later audio a frame's latent depends on (0 for a causal codec)."""
    return _measure(audio_encoder_config.to_json_string())


@lru_cache(maxsize=8)
def _measure(config_json: str) -> int:
    import json

    import torch
    from transformers import EncodecConfig
    from transformers.models.encodec.modeling_encodec import EncodecEncoder

    config = EncodecConfig(
        **{
            k: v
            for k, v in json.loads(config_json).items()
            if k not in ("transformers_version", "model_type", "architectures")
        }
    )
    hop = int(round(config.sampling_rate / config.frame_rate))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = EncodecEncoder(config).eval()
        n = hop * (2 * PROBE_FRAME)
        x = torch.randn(1, config.audio_channels, n)
        y = x.clone()
        y[..., PROBE_FRAME * hop :] = torch.randn(1, config.audio_channels, n - PROBE_FRAME * hop)
    with torch.no_grad():
        a, b = encoder(x)[0], encoder(y)[0]
    changed = (a - b).abs().amax(dim=0) > 1e-6 * a.abs().max()
    first = int(torch.nonzero(changed)[0]) if changed.any() else PROBE_FRAME
    return max(0, PROBE_FRAME - first)
