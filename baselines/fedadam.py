"""FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): Adam on the server, on the pseudo-gradient.

Rule (Algorithm 2 of the paper; clients train as in FedAvg): with ``x_t`` the global tensor and ``Delta_t`` the
``n_k``-weighted mean of the clients' ``x_k - x_t``,

    m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2
    x_{t+1} = x_t + server_lr * m_t / (sqrt(v_t) + tau)

element-wise, with ``m_{-1} = 0`` and ``v_{-1} = tau^2``, and no bias correction (as in the paper). Only the tensors
the clients uploaded move, each with its own moments. ``m`` and ``v`` are the server's state: saved with every
checkpoint, so a resumed run continues exactly. Defaults: ``beta1 = 0.9``, ``beta2 = 0.99`` (the paper's),
``tau = 1e-3`` and ``server_lr = 1e-2`` (from the ranges the paper tunes over; tune them for your task).
``fedyogi`` changes only the ``v`` update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from baselines.fedavg import FedAvg
from fedbt.errors import ConfigError
from fedbt.federated.method import register
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import ModelArch


@register
class FedAdam(FedAvg):
    name = "fedadam"
    description = "FedAdam: FedAvg clients, Adam on the server's pseudo-gradient (options server_lr, beta1, beta2, tau)"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        server_lr: float = 1e-2
        beta1: float = 0.9
        beta2: float = 0.99
        tau: float = 1e-3

    def __init__(
        self,
        arch: ModelArch,
        rounds: int,
        seed: int,
        options: Mapping[str, Any] | None = None,
        tiers: Sequence[Tier] = (FULL,),
    ):
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        super().__init__(arch, rounds, seed, options, tiers)

    def validate(self) -> None:
        options = self.options
        if options.server_lr <= 0:
            raise ConfigError("method.options.server_lr", f"got {options.server_lr}, must be > 0")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(options, key) < 1.0:
                raise ConfigError(f"method.options.{key}", f"got {getattr(options, key)}, must be in [0, 1)")
        if options.tau <= 0:
            raise ConfigError("method.options.tau", f"got {options.tau}, must be > 0")

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        """Adam's ``v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2``."""
        beta2 = self.options.beta2
        return beta2 * v + (1 - beta2) * delta_squared

    def aggregate(
        self, global_params: Mapping[str, torch.Tensor], averaged: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        options, new = self.options, {}
        for name, mean in averaged.items():
            current = global_params[name].detach().to(mean.device, mean.dtype)
            delta = mean - current
            m = self.m.get(name, torch.zeros_like(delta))
            v = self.v.get(name, torch.full_like(delta, options.tau**2))
            self.m[name] = options.beta1 * m + (1 - options.beta1) * delta
            self.v[name] = self.second_moment(v, delta * delta)
            new[name] = current + options.server_lr * self.m[name] / (self.v[name].sqrt() + options.tau)
        return new

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"m/{n}": t for n, t in self.m.items()}, **{f"v/{n}": t for n, t in self.v.items()}}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.m = {k.removeprefix("m/"): t for k, t in tensors.items() if k.startswith("m/")}
        self.v = {k.removeprefix("v/"): t for k, t in tensors.items() if k.startswith("v/")}
