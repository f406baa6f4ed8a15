"""FedBT federated fine-tuning: cyclic decreasing training (method.md section 2).

Round ``i`` trains the global layers ``l..L_G-1`` with ``l = (L_G - 1) - (i mod c)`` (cycle ``c``, default
``L_G // 2``: 11, 10, ..., 6, 11, ... for BERT-base) plus the task head (pooler + classifier for sequence
classification, the token classifier for NER); embeddings and lower layers are frozen, and exactly the
trained tensors are uploaded and ``n_k``-weighted averaged.

The local model has depth ``L_k`` (default ``L_G``): its top holds global layers ``l..L_G-1``, its lower
``L_k - (L_G - l)`` positions hold global layers ``0, 1, ...`` (``fedbt-ft``) or layers sampled with
replacement from ``{0..l-1}`` and sorted (``fedbt-ft-map``). ``fedbt-ft-no-add`` (``\\Add``) trains only
layer ``l`` and the head each round.

With resource tiers (``federation.tiers``) each client's local model has its own tier's depth ``L_k`` (a tier
without ``local_layers`` takes the option) and the cycle respects it: a client trains the round's block
``l_k..L_G-1`` with ``l_k = max(l, L_G - L_k)``, i.e. in a round whose block is deeper than ``L_k`` layers it
trains the top ``L_k`` layers of the block and holds no lower layers. A tier's ``L_k`` may be below ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, Method, register
from fedbt.federated.tiers import FULL, Tier
from fedbt.methods.fedbt import sample_deep_layers

SAMPLING = 12  # tag of the lower-layer sampling random stream


def cyclic_schedule(global_layers: int, cycle: int, rounds: int) -> list[int]:
    """``l(i) = (L_G - 1) - (i mod c)`` for every round: the lowest trained layer."""
    return [(global_layers - 1) - (i % cycle) for i in range(rounds)]


class FedBTFinetune(Method):
    """Cyclic decreasing training; subclasses change how the lower part is built or what is trained."""

    scenarios = ("finetune",)
    sample_lower: ClassVar[bool] = False
    train_only_lowest: ClassVar[bool] = False

    @dataclass
    class Options:
        local_layers: int | None = None
        cycle: int | None = None

    def validate(self) -> None:
        global_layers = self.arch.num_layers
        self.cycle = self.options.cycle or max(1, global_layers // 2)
        self.local_layers = self.options.local_layers or global_layers
        if not 1 <= self.cycle <= global_layers:
            raise ConfigError("method.options.cycle", f"c = {self.cycle} must be in 1..{global_layers} (L_G)")
        if not self.cycle <= self.local_layers <= global_layers:
            raise ConfigError(
                "method.options.local_layers",
                f"L_k = {self.local_layers} must be in {self.cycle}..{global_layers}: the local model holds the "
                f"top c = {self.cycle} global layers in the deepest round of the cycle, and at most L_G layers",
            )
        self.schedule = cyclic_schedule(global_layers, self.cycle, self.rounds)

    def depth_of(self, tier: Tier) -> int:
        """``L_k`` of a client of ``tier``: the tier's ``local_layers``, else the option's."""
        return tier.local_layers or self.local_layers

    def lower_layers(self, lowest: int, round_idx: int, client_id: int, depth: int) -> list[int]:
        """Global layers at the local positions below the trained top part."""
        count = depth - (self.arch.num_layers - lowest)
        if not self.sample_lower:
            return list(range(count))
        return sample_deep_layers(self.generator(SAMPLING, round_idx, client_id), 0, lowest, count)

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        depth = self.depth_of(tier)
        lowest = max(self.schedule[round_idx], self.arch.num_layers - depth)
        top = list(range(lowest, self.arch.num_layers))
        layer_map = (*self.lower_layers(lowest, round_idx, client_id, depth), *top)
        trained_layers = [lowest] if self.train_only_lowest else top
        trainable = [n for layer in trained_layers for n in self.arch.layer_params(layer)] + self.arch.head_params()
        return ClientPlan(layer_map=layer_map, trainable=frozenset(trainable))


@register
class FedBTFT(FedBTFinetune):
    name = "fedbt-ft"
    description = "FedBT fine-tuning: cyclic decreasing training of the top layers + task head"


@register
class FedBTFTMap(FedBTFinetune):
    name = "fedbt-ft-map"
    description = "FedBT fine-tuning with the local lower part sampled from {0..l-1} (needs local_layers < L_G)"
    sample_lower = True


@register
class FedBTFTNoAdd(FedBTFinetune):
    name = "fedbt-ft-no-add"
    description = "FedBT fine-tuning ablation \\Add: only layer l (and the head) trained each round"
    train_only_lowest = True
