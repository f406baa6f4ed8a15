"""Server aggregation: a streaming weighted average of client uploads.

Uploads are added one client at a time into a running sum, so the server never holds more than one
payload plus the sums: peak memory does not grow with the number of clients. Each tensor is averaged over
the clients that uploaded it, with weights renormalised per tensor (methods may upload different sets).
An upload that is part of its global tensor (a width slice, HeteroFL: the plan's selection, else an upload of
smaller shape is the leading block) is averaged per element: every element over the clients whose parts hold it,
with their weights (``n_k``, or 1 each: the HeteroFL authors' count), and an element no client held keeps its
global value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedbt.models import Selection, leading_block, selection_index


class WeightedAverage:
    """Accumulates ``sum_k w_k * x_k`` and ``sum_k w_k`` per tensor name (per element for width slices).

    ``shapes`` are the global tensors' shapes; an upload with a selection (``add(..., slices)``) is that part of
    its tensor, one of another shape without a selection its leading block.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        self._shapes = {name: tuple(shape) for name, shape in (shapes or {}).items()}
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float | torch.Tensor] = {}

    def add(
        self, payload: Mapping[str, torch.Tensor], weight: float, slices: Mapping[str, Selection] | None = None
    ) -> None:
        """Add one client's upload with its weight (``n_k`` or 1); ``slices`` are its plan's width slices."""
        if weight <= 0:
            raise ValueError(f"aggregation weight must be > 0, got {weight}")
        slices = slices or {}
        for name, tensor in payload.items():
            value = tensor.detach().to(torch.float64) * weight
            full = self._shapes.get(name, tuple(tensor.shape))
            if name in slices:
                self._add_part(name, value, weight, full, selection_index(slices[name], value.device))
            elif tuple(tensor.shape) != full:
                self._add_part(name, value, weight, full, leading_block(value.shape))
            elif name not in self._sums:
                self._sums[name] = value
                self._weights[name] = weight
            else:
                self._sums[name] += value
                self._weights[name] += weight

    def _add_part(self, name: str, value: torch.Tensor, weight: float, full: tuple[int, ...], index: tuple) -> None:
        """Add a part of a tensor (``tensor[index]``): per-element sums and weights over the whole tensor."""
        if name not in self._sums:
            self._sums[name] = torch.zeros(full, dtype=torch.float64, device=value.device)
            self._weights[name] = torch.zeros(full, dtype=torch.float64, device=value.device)
        elif not torch.is_tensor(self._weights[name]):  # full uploads so far: one weight for every element
            self._weights[name] = torch.full(full, self._weights[name], dtype=torch.float64, device=value.device)
        self._sums[name][index] += value
        self._weights[name][index] += weight

    def add_noise(self, std: float, generator: torch.Generator) -> None:
        """Add independent N(0, std^2) noise to every element of every sum, tensors in sorted name order (central
        differential privacy, :mod:`fedbt.federated.privacy`)."""
        for name in sorted(self._sums):
            total = self._sums[name]
            total += (torch.randn(total.shape, generator=generator, dtype=torch.float64) * std).to(total.device)

    def result(
        self, base: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """The weighted mean of every uploaded tensor; elements of a width-sliced tensor that no client held take
        their value from ``base`` (the current global tensors)."""
        result = {}
        for name, total in self._sums.items():
            weights = self._weights[name]
            if not torch.is_tensor(weights):
                result[name] = (total / weights).to(dtype)
                continue
            if base is None:
                raise ValueError(f"{name}: a width-sliced average needs the global tensors for uncovered elements")
            kept = base[name].detach().to(total.device, torch.float64)
            result[name] = torch.where(weights > 0, total / weights.clamp_min(1e-300), kept).to(dtype)
        return result

    def __len__(self) -> int:
        return len(self._sums)


def client_weight(num_examples: int, scheme: str) -> float:
    """``n_k`` for ``weighted`` aggregation, 1 for ``uniform`` (the original code's plain mean; for width slices
    the HeteroFL authors' count of the clients holding each element)."""
    if scheme == "weighted":
        return float(num_examples)
    if scheme == "uniform":
        return 1.0
    raise ValueError(f"unknown aggregation {scheme!r}; allowed: weighted, uniform")
