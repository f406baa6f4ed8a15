"""FedProx (Li et al., MLSys 2020): FedAvg whose clients add a proximal term and do the local work they can.

Rule: client ``k`` minimises ``F_k(w) + mu/2 * ||w - w^t||^2`` in round ``t``, where ``w^t`` are the global values of
the tensors it trains (as downloaded) and the norm runs over exactly those tensors; every client trains and uploads
the whole model and the server takes the ``n_k``-weighted average. The term is added at every local step through
the ``local_loss`` hook; the ledger's train loss is ``F_k`` alone, and the term's element-wise work is not in the
FLOP columns (it has no matmul; ``O(parameters)`` per step against ``O(tokens x parameters)``). The client keeps a
copy of ``w^t`` for the term: the memory estimate counts it (``extra_client_numel``).

Variable local work (the paper's inexact local solves: a straggler does a fraction of the local work instead of
being dropped): a client of a tier runs ``max(1, floor(f * S + 1/2))`` of the ``S`` local steps the run gives it
(``local_steps`` hook), where ``f`` is the tier's ``local_work`` or, when the tier does not state it, its depth share
``L_k / L_G`` (``local_layers``: the suite's measure of what a tier's device can do, so a tier that could train a
third of the layers does a third of the full-model steps in the same time), and 1 for a tier without either. The
ledger's steps and FLOPs are the steps run. The paper draws each straggler's epochs at random every round; here
the share is fixed per tier, so runs repeat. ``mu = 0`` at full work (no tiers, or ``local_work: 1``) is FedAvg;
``mu`` is ``method.options.mu``, to be chosen on dev.
"""

import math
from dataclasses import dataclass

import torch

from baselines.fedavg import FedAvg
from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, LocalContext, register
from fedbt.federated.tiers import Tier
from fedbt.memory import plan_numel


def proximal_term(client: LocalContext, mu: float) -> torch.Tensor:
    """``mu/2 * sum ||w - w^t||^2`` over the client's trained tensors."""
    return mu / 2 * sum(((param - client.start[name]) ** 2).sum() for name, param in client.trained)


@register
class FedProx(FedAvg):
    name = "fedprox"
    description = (
        "FedProx: FedAvg with the proximal term mu/2 ||w - w_global||^2 (option mu) and each tier's share of the "
        "local steps (federation.tiers[].local_work, default L_k / L_G)"
    )
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        mu: float = 0.01

    def validate(self) -> None:
        if self.options.mu < 0:
            raise ConfigError("method.options.mu", f"got {self.options.mu}, must be >= 0")

    def local_work(self, tier: Tier) -> float:
        """The share of the local steps a client of ``tier`` runs: ``local_work``, else ``L_k / L_G``, else 1."""
        if tier.local_work is not None:
            return tier.local_work
        if tier.local_layers is not None:
            return min(1.0, tier.local_layers / self.arch.num_layers)
        return 1.0

    def local_steps(self, tier: Tier, steps: int) -> int:
        return max(1, math.floor(self.local_work(tier) * steps + 0.5))

    def extra_client_numel(self, plan: ClientPlan) -> int:
        """The copy of the downloaded global values of the trained tensors that the proximal term reads."""
        return plan_numel(self.arch, plan, plan.trainable) if self.options.mu else 0

    def local_loss(self, client: LocalContext) -> torch.Tensor | None:
        return proximal_term(client, self.options.mu) if self.options.mu else None
