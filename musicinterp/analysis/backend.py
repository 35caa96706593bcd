"""Where the ridge probe's heavy linear algebra runs (``AnalysisSpec.device``), behind three functions.

:class:`musicinterp.analysis.ridge.GroupedRidgeCV` is written once against :class:`Backend`: ``keep`` (an
array that stays where the products run: each split's eigenbasis and validation Gram, the centred design),
``eigh`` and ``matmul``, which take numpy or kept arrays and give numpy back, so everything else (the einsums,
the solves of the own-lag columns, the choice of strength) stays numpy on the host. The default, ``'cpu'``,
is numpy itself (the reference: the same operations as before the setting existed, bit for bit); any other
device runs them in torch, float64, on that device: ``'torch-cpu'`` (torch on the CPU: the torch path where no
GPU is, for the tests and for comparison), ``'cuda'``, ``'cuda:N'``. Torch on the CPU uses torch's own thread
count (``torch.set_num_threads``, ``OMP_NUM_THREADS``), not the BLAS limit the probe sets for numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musicinterp.analysis.data import AnalysisError


class AnalysisDeviceError(AnalysisError):
    """The analysis device asked for is not available here; the message says which and what to do."""


class Backend:
    """numpy: ``keep`` is the identity, ``eigh`` and ``matmul`` are numpy's."""

    name = "cpu"

    def keep(self, a: np.ndarray) -> Any:
        return a

    def eigh(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, V = np.linalg.eigh(C)
        return w, V

    def matmul(self, A: Any, B: Any) -> np.ndarray:
        return np.asarray(A @ B)

    def nbytes(self, a: Any) -> int:
        return int(a.nbytes)


class TorchBackend(Backend):
    """torch float64 on ``device``; results come back as numpy arrays."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.name = device
        self.device = torch.device("cpu" if device == "torch-cpu" else device)

    def keep(self, a: Any) -> Any:
        return self.torch.as_tensor(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a, device=self.device)

    def _numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t.cpu().numpy())

    def eigh(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, V = self.torch.linalg.eigh(self.keep(C))
        return self._numpy(w), self._numpy(V)

    def matmul(self, A: Any, B: Any) -> np.ndarray:
        return self._numpy(self.keep(A) @ self.keep(B))


def check_device(device: str) -> None:
    """Raise :class:`AnalysisDeviceError` unless ``device`` can run here (at plan time, before any work)."""
    if device == "cpu":
        return
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency of the package
        raise AnalysisDeviceError(f"analysis.device={device!r} needs torch; install it or use 'cpu'") from e
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AnalysisDeviceError(
                f"analysis.device={device!r} but torch sees no CUDA device here (torch {torch.__version__}); "
                "run the analysis on a GPU worker or set analysis.device to 'cpu'"
            )
        index = int(device.partition(":")[2] or torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise AnalysisDeviceError(
                f"analysis.device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s) "
                f"(0..{torch.cuda.device_count() - 1}); pick one of them"
            )


def backend(device: str) -> Backend:
    """The backend of ``device`` (``AnalysisSpec.device``), checked (:func:`check_device`)."""
    check_device(device)
    return Backend() if device == "cpu" else TorchBackend(device)
