"""Server aggregation: a streaming weighted average of client uploads.

Uploads are added one client at a time into a running sum, so the server never holds more than one
payload plus the sums: peak memory does not grow with the number of clients. Each tensor is averaged over
the clients that uploaded it, with weights renormalised per tensor (methods may upload different sets).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class WeightedAverage:
    """Accumulates ``sum_k w_k * x_k`` and ``sum_k w_k`` per tensor name."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float] = {}

    def add(self, payload: Mapping[str, torch.Tensor], weight: float) -> None:
        """Add one client's upload with its weight (``n_k`` or 1)."""
        if weight <= 0:
            raise ValueError(f"aggregation weight must be > 0, got {weight}")
        for name, tensor in payload.items():
            value = tensor.detach().to(torch.float64) * weight
            if name in self._sums:
                self._sums[name] += value
                self._weights[name] += weight
            else:
                self._sums[name] = value
                self._weights[name] = weight

    def result(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The weighted mean of every uploaded tensor."""
        return {name: (total / self._weights[name]).to(dtype) for name, total in self._sums.items()}

    def __len__(self) -> int:
        return len(self._sums)


def client_weight(num_examples: int, scheme: str) -> float:
    """``n_k`` for ``weighted`` aggregation, 1 for ``uniform`` (the original code's plain mean)."""
    if scheme == "weighted":
        return float(num_examples)
    if scheme == "uniform":
        return 1.0
    raise ValueError(f"unknown aggregation {scheme!r}; allowed: weighted, uniform")
