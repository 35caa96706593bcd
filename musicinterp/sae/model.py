"""Sparse autoencoders: TopK ``acts = ReLU(TopK((x - b_dec) W_enc + b_enc))``, ``x_hat = acts W_dec + b_dec``,
and BatchTopK (Bussmann et al. 2024), which keeps the k x batch largest activations of a whole batch in training
and a threshold at inference.

Parameter names and shapes are SAELens' (``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc`` (d_sae),
``b_dec`` (d_in), and for BatchTopK at inference ``threshold`` (d_sae), as its JumpReLU SAE names it), and so is
the order of top-k and ReLU, so a checkpoint means the same thing in both tools.
"""

from __future__ import annotations

import torch
from torch import nn


class TopKSAE(nn.Module):
    """A TopK SAE on raw activations of one layer (any input scaling is folded into the weights)."""

    kind = "topk"

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
        """The training activation: the k largest pre-activations of each frame, through a ReLU."""
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


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann, Leask & Nanda 2024): in training, the ``k x frames`` largest ReLU'd pre-activations of
    the whole batch are kept (k per frame on average, more on some frames and fewer on others); at inference a
    frame does not see its batch, so each feature is active where its pre-activation exceeds ``threshold``
    (a JumpReLU), estimated during training as a running mean of the smallest activation each batch kept.

    ``threshold`` is one value per feature (all equal here), the layout SAELens writes a BatchTopK SAE in for
    inference (its JumpReLU architecture), so the saved folder loads there as is.
    """

    kind = "batchtopk"
    threshold: torch.Tensor  # (d_sae,) buffers, declared for the type checker
    threshold_updates: torch.Tensor

    def __init__(self, d_in: int, d_sae: int, k: int):
        super().__init__(d_in, d_sae, k)
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def topk(self, pre: torch.Tensor) -> torch.Tensor:
        """The training activation: the ``k x frames`` largest ReLU'd pre-activations of the batch ``pre``."""
        acts = torch.relu(pre)
        flat = acts.reshape(-1)
        n_keep = min(self.k * acts[..., 0].numel(), flat.numel())
        top = torch.topk(flat, n_keep)
        return torch.zeros_like(flat).scatter_(0, top.indices, top.values).reshape(acts.shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: ``ReLU(pre) * (pre > threshold)``, frame by frame (no batch needed)."""
        pre = self.pre_acts(x)
        return torch.relu(pre) * (pre > self.threshold)

    @torch.no_grad()
    def update_threshold(self, acts: torch.Tensor, lr: float) -> None:
        """Move the threshold towards this batch's smallest kept activation: an exponential running mean with
        rate ``lr`` (SAELens' ``topk_threshold_lr``), started at the first batch's value rather than at 0."""
        kept = acts[acts > 0]
        if kept.numel() == 0:
            return
        m = kept.min().to(self.threshold.dtype)
        rate = 1.0 if int(self.threshold_updates) == 0 else lr
        self.threshold.mul_(1 - rate).add_(rate * m)
        self.threshold_updates.add_(1)


def make_sae(kind: str, d_in: int, d_sae: int, k: int) -> TopKSAE:
    """An SAE of ``kind`` ('topk' or 'batchtopk'), zero-initialised."""
    if kind == "topk":
        return TopKSAE(d_in, d_sae, k)
    if kind == "batchtopk":
        return BatchTopKSAE(d_in, d_sae, k)
    raise ValueError(f"SAE kind must be 'topk' or 'batchtopk', got {kind!r}")
