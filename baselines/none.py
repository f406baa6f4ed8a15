"""No further training ("BERT"): the starting model is deployed as it is; the lower reference of pre-training.

Every plan is empty, which the simulator treats as a client sitting the round out (no transfer, no compute),
so the ledger stays at zero and the saved, evaluated model is bit-identical to the starting model. Only the
pre-training scenario: in fine-tuning, "no training" would leave a randomly initialised task head.
"""

from fedbt.federated.method import ClientPlan, Method, register


@register
class NoTraining(Method):
    name = "none"
    description = "No further training (BERT): the starting model is deployed unchanged; nothing trained or sent"
    scenarios = ("pretrain",)

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        return ClientPlan(layer_map=tuple(range(self.arch.num_layers)), trainable=frozenset())
