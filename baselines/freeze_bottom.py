"""Freeze the bottom: every client trains and uploads only the top ``k`` Transformer layers and the head.

The cheapest partial-training control: the local model is the whole global model, layers ``0..L_G-k-1`` and
the embeddings stay frozen (forward only, no backward below layer ``L_G-k``), layers ``L_G-k..L_G-1`` and the
output head's own tensors (MLM transform + output bias, or pooler + classifier) are trained and uploaded.
The default ``top_layers = 1`` uploads as much per round as FedBT (one layer + head), but always the top one.
"""

from dataclasses import dataclass

from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, Method, register


@register
class FreezeBottom(Method):
    name = "freeze-bottom"
    description = "Partial-training control: train and upload only the top k layers + head (option top_layers)"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        top_layers: int = 1

    def validate(self) -> None:
        if not 1 <= self.options.top_layers <= self.arch.num_layers:
            raise ConfigError(
                "method.options.top_layers",
                f"got {self.options.top_layers}, must be in 1..{self.arch.num_layers} (the global model's depth)",
            )

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        depth = self.arch.num_layers
        top = range(depth - self.options.top_layers, depth)
        trainable = [n for layer in top for n in self.arch.layer_params(layer)] + self.arch.head_params()
        return ClientPlan(layer_map=tuple(range(depth)), trainable=frozenset(trainable))
