"""Full-model FedAvg ("BERT-FL"): every client trains and uploads the whole model every round."""

from fedbt.federated.method import ClientPlan, Method, register


@register
class FedAvg(Method):
    name = "fedavg"
    description = "Full-model FedAvg: every client trains and uploads all parameters (BERT-FL)"
    scenarios = ("pretrain", "finetune")

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        return ClientPlan(layer_map=tuple(range(self.arch.num_layers)), trainable=frozenset(self.arch.names))
