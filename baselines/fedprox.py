"""FedProx (Li et al., MLSys 2020): FedAvg whose clients add a proximal term to their local objective.

Rule: client ``k`` minimises ``F_k(w) + mu/2 * ||w - w^t||^2`` in round ``t``, where ``w^t`` are the global values of
the tensors it trains (as downloaded) and the norm runs over exactly those tensors; everything else is FedAvg
(every client trains and uploads the whole model, ``n_k``-weighted average). ``mu = 0`` is FedAvg. The term is
added at every local step through the ``local_loss`` hook; the ledger's train loss is ``F_k`` alone, and the
term's element-wise work is not in the FLOP columns (it has no matmul; ``O(parameters)`` per step against
``O(tokens x parameters)``). Not implemented: the paper's inexact local solves (variable local work per client);
every client runs the configured local steps.
"""

from dataclasses import dataclass

import torch

from baselines.fedavg import FedAvg
from fedbt.errors import ConfigError
from fedbt.federated.method import LocalContext, register


def proximal_term(client: LocalContext, mu: float) -> torch.Tensor:
    """``mu/2 * sum ||w - w^t||^2`` over the client's trained tensors."""
    return mu / 2 * sum(((param - client.start[name]) ** 2).sum() for name, param in client.trained)


@register
class FedProx(FedAvg):
    name = "fedprox"
    description = "FedProx: FedAvg with the proximal term mu/2 ||w - w_global||^2 in local training (option mu)"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        mu: float = 0.01

    def validate(self) -> None:
        if self.options.mu < 0:
            raise ConfigError("method.options.mu", f"got {self.options.mu}, must be >= 0")

    def local_loss(self, client: LocalContext) -> torch.Tensor | None:
        return proximal_term(client, self.options.mu) if self.options.mu else None
