"""Unstructured magnitude pruning with a fixed mask (PruneFL style), FedAvg of the sparse model.

The mask is computed once, from the starting global model, per tensor: each weight matrix of the Transformer
layers (attention Q/K/V/output, FFN in/out) keeps its ``n - round(sparsity * n)`` largest-magnitude entries,
so every pruned tensor has exactly the target sparsity and cost tables know the payload sizes without weights.
Embeddings, LayerNorms, biases and the head are dense. :meth:`prepare_model` zeroes the pruned entries and
masks their gradients, so they stay exactly zero through local training (AdamW with zero gradients and zero
weights makes a zero update, decoupled weight decay keeps zero at zero), and so do their averages.

A pruned tensor travels as its kept values (in mask order) plus the mask packed 8 entries per byte
(``numpy.packbits``), in both directions: ``4 * kept + ceil(n / 8)`` bytes in fp32. The measured FLOPs in the
ledger are those of the dense kernels actually run; :meth:`report` adds ``theoretical_sparse_flops_fraction``,
the share of the dense training FLOPs a sparse kernel would need (pruned weights skipped in every matmul,
forward and backward; attention scores and dense layers unchanged), counted from the shapes seen in training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.fedavg import FedAvg
from fedbt.errors import ConfigError
from fedbt.federated.method import register
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import ModelArch

VALUES, MASK = "::kept_values", "::mask_bits"  # suffixes of a pruned tensor's parts in an encoded message


def magnitude_mask(weight: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean mask of the ``kept`` largest-magnitude entries of ``weight`` (exactly ``kept``, ties included)."""
    flat = torch.zeros(weight.numel(), dtype=torch.bool)
    flat[torch.topk(weight.detach().abs().flatten().cpu(), kept).indices] = True
    return flat.view(weight.shape)


@register
class PruneMagnitude(FedAvg):
    name = "prune-magnitude"
    description = "FedAvg of a magnitude-pruned model (fixed per-tensor mask, option sparsity); sparse payloads"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        sparsity: float = 0.5

    def __init__(
        self,
        arch: ModelArch,
        rounds: int,
        seed: int,
        options: Mapping[str, Any] | None = None,
        tiers: Sequence[Tier] = (FULL,),
    ):
        self.kept: dict[str, int] = {}  # pruned tensor -> number of kept entries, set by prepare_model
        self.masks: dict[str, torch.Tensor] = {}  # pruned tensor -> its mask, from the starting model
        self.matmul_flops = {"dense": 0, "sparse": 0}  # forward matmul FLOPs of training, see report()
        super().__init__(arch, rounds, seed, options, tiers)

    def validate(self) -> None:
        if not 0.0 <= self.options.sparsity < 1.0:
            raise ConfigError("method.options.sparsity", f"got {self.options.sparsity}, must be in [0, 1)")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Fix the mask from the first model with weights (the starting global model), then zero the pruned
        entries of ``model`` and mask their gradients. A meta-device model only gets the payload sizes."""
        params = dict(model.named_parameters())
        if not self.kept:
            self.kept = {
                name: p.numel() - round(self.options.sparsity * p.numel())
                for name, p in params.items()
                if p.dim() == 2 and self.arch.layer_of(name) is not None
            }
        if next(iter(params.values())).is_meta:
            return model
        if not self.masks:
            self.masks = {name: magnitude_mask(params[name], kept) for name, kept in self.kept.items()}
        for name, mask in self.masks.items():
            param, mask = params[name], mask.to(params[name].device)
            with torch.no_grad():
                param.mul_(mask)
            param.register_hook(lambda grad, mask=mask: grad * mask)
        self._count_matmul_flops(model)
        return model

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        encoded = {}
        for name, tensor in tensors.items():
            if name not in self.kept:
                encoded[name] = tensor
            elif tensor.is_meta:  # cost tables: the sizes without the data
                encoded[name + VALUES] = torch.empty(self.kept[name], dtype=tensor.dtype, device="meta")
                encoded[name + MASK] = torch.empty(math.ceil(tensor.numel() / 8), dtype=torch.uint8, device="meta")
            else:
                mask = self.masks[name].flatten()
                encoded[name + VALUES] = tensor.detach().flatten().cpu()[mask]
                encoded[name + MASK] = torch.from_numpy(np.packbits(mask.numpy()))
        return encoded

    def decode(self, encoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors = {}
        for key, value in encoded.items():
            if key.endswith(MASK):
                continue
            if not key.endswith(VALUES):
                tensors[key] = value
                continue
            name = key.removesuffix(VALUES)
            shape = self.masks[name].shape
            bits = np.unpackbits(encoded[name + MASK].numpy(), count=math.prod(shape))
            dense = torch.zeros(math.prod(shape), dtype=value.dtype)
            dense[torch.from_numpy(bits.astype(bool))] = value
            tensors[name] = dense.view(shape)
        return tensors

    def report(self) -> dict[str, float]:
        pruned = sum(self.arch.param_numel[n] - kept for n, kept in self.kept.items())
        report = {
            "achieved_sparsity": pruned / sum(self.arch.param_numel[n] for n in self.kept) if self.kept else 0.0,
            "pruned_params": float(pruned),
            "pruned_fraction_of_model": pruned / sum(self.arch.param_numel.values()),
        }
        if self.matmul_flops["dense"]:
            report["theoretical_sparse_flops_fraction"] = self.matmul_flops["sparse"] / self.matmul_flops["dense"]
        return report

    def _count_matmul_flops(self, model: nn.Module) -> None:
        """Count the forward matmul FLOPs of training steps, dense and with pruned weights skipped.

        Linear layers: ``2 * rows * weights`` (kept weights only, for the sparse count); attention scores and
        weighted values: ``4 * S^2 * H`` per sequence and layer, in both counts. Every tensor trains, so the
        backward pass costs twice the forward one in both counts and the ratio is that of the forward pass.
        """

        def count(dense: int, sparse: int) -> None:
            if torch.is_grad_enabled() and model.training:  # training steps only, not evaluation
                self.matmul_flops["dense"] += dense
                self.matmul_flops["sparse"] += sparse

        for module_name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                weights = module.weight.numel()
                kept = self.kept.get(f"{module_name}.weight", weights)

                def linear_hook(module, inputs, weights=weights, kept=kept):
                    rows = inputs[0].numel() // module.in_features
                    count(2 * rows * weights, 2 * rows * kept)

                module.register_forward_pre_hook(linear_hook)

        def attention_hook(module, args, kwargs):
            inputs = kwargs.get("input_ids", kwargs.get("pixel_values", args[0] if args else None))
            batch = inputs.shape[0]
            # text: tokens per sequence; images: patches + [CLS]
            length = self.arch.num_patches + 1 if self.arch.vision else inputs.shape[1]
            flops = self.arch.num_layers * 4 * batch * length * length * self.arch.hidden_size
            count(flops, flops)

        model.base_model.register_forward_pre_hook(attention_hook, with_kwargs=True)
