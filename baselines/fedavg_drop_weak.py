"""FedAvg over the strong clients only ("drop the weak"), the baseline every heterogeneous-FL paper reports.

Rule: a client whose resource tier can hold the whole model (``local_layers`` unset or ``>= L_G``, ``width`` unset
or 1) trains and uploads every tensor, as in ``fedavg``; every other client sits every round out (no transfer, no
compute, no weight in the average, ledger status ``idle``). The average is the ``n_k``-weighted mean over the
strong clients, so the weak clients' data never reaches the model. Without tiers every client is strong and this
is ``fedavg``. A federation with no strong tier is refused before training.
"""

from baselines.fedavg import FedAvg
from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, register
from fedbt.federated.tiers import FULL, Tier


@register
class FedAvgDropWeak(FedAvg):
    name = "fedavg-drop-weak"
    description = "FedAvg over only the clients whose tier holds the full model; weak tiers sit every round out"
    scenarios = ("pretrain", "finetune")

    def validate(self) -> None:
        if not any(tier.holds_full_model(self.arch.num_layers) for tier in self.tiers):
            raise ConfigError(
                "federation.tiers",
                f"fedavg-drop-weak needs a tier that holds the full model (local_layers >= {self.arch.num_layers} or "
                "unset, width 1 or unset); every tier is weak, so no client would train",
            )

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        if not tier.holds_full_model(self.arch.num_layers):
            return ClientPlan(layer_map=tuple(range(self.arch.num_layers)), trainable=frozenset())
        return super().plan(round_idx, client_id)
