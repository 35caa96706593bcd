"""The TopK sparse autoencoder: ``acts = ReLU(TopK((x - b_dec) W_enc + b_enc))``, ``x_hat = acts W_dec + b_dec``.

Parameter names and shapes are SAELens' (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc`` (d_sae),
``b_dec`` (d_in)), and so is the order of top-k and ReLU, so a checkpoint means the same thing in both tools.
"""

from __future__ import annotations

import torch
from torch import nn


class TopKSAE(nn.Module):
    """A TopK SAE on raw activations of one layer (any input scaling is folded into the weights)."""

    def __init__(self, d_in: int, d_sae: int, k: int):
        super().__init__()
        if not 1 <= k <= d_sae:
            raise ValueError(f"k must be in 1..d_sae = {d_sae}, got {k}")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def init_weights(self, generator: torch.Generator) -> None:
        """Decoder rows of unit norm, the encoder their transpose (Gao et al.'s tied initialisation)."""
        with torch.no_grad():
            w = torch.randn(self.d_sae, self.d_in, generator=generator)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def topk(self, pre: torch.Tensor) -> torch.Tensor:
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``(..., d_sae)``: at most k non-zero per frame."""
        return self.topk(self.pre_acts(x))

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rows of W_dec back to unit norm (after each optimiser step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each decoder row, so the step keeps the row's norm to first order."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` take raw ``x`` (SAELens' fold_activation_norm_scaling_factor)."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)
