"""Worked example of a baseline (docs/adding-a-baseline.md): each client trains random layers.

Every round, every client trains and uploads ``layers_per_client`` Transformer layers drawn at random (without
replacement, from a generator seeded by the run seed, the round and the client, so runs repeat) plus the output
head's own tensors. The local model is the whole global model; the other layers only run forward.
"""

from dataclasses import dataclass

import torch

from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, Method, register


@register
class RandomLayers(Method):
    name = "example-random-layers"
    description = "Example baseline: each client trains k random layers + head per round (option layers_per_client)"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        layers_per_client: int = 1

    def validate(self) -> None:
        k = self.options.layers_per_client
        if not 1 <= k <= self.arch.num_layers:
            raise ConfigError(
                "method.options.layers_per_client", f"got {k}, must be in 1..{self.arch.num_layers} (the model's depth)"
            )

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        generator = self.generator(round_idx, client_id)
        layers = torch.randperm(self.arch.num_layers, generator=generator)[: self.options.layers_per_client]
        trainable = [n for layer in layers.tolist() for n in self.arch.layer_params(layer)]
        return ClientPlan(
            layer_map=tuple(range(self.arch.num_layers)),
            trainable=frozenset(trainable + self.arch.head_params()),
        )
