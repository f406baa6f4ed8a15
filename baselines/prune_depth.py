"""Structured depth pruning (uniform layer drop, as in LayerDrop, the Offsite-Tuning emulator and FedLP).

Clients train and upload a model that keeps ``k`` of the global model's ``L_G`` Transformer layers (option
``keep_layers``, default ``L_G // 2``), everything of that model trainable: embeddings, the kept layers and the
head. The kept layers are spread evenly and include the first and the last: layer ``floor(j * (L_G - 1) /
(k - 1) + 1/2)`` for ``j = 0..k-1`` (``k = 1`` keeps the top layer). For BERT-base and ``k = 6`` that is
0, 2, 4, 7, 9, 11, the layers DistilBERT was initialised from. The dropped layers are never used; the deployed
(saved, evaluated) model is the pruned depth-``k`` model.
"""

from dataclasses import dataclass

from torch import nn

from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, Method, register
from fedbt.models import build_local_model, load_from_global, local_to_global_names


def uniform_layers(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layer indices, evenly spread, first and last included (``keep = 1``: the top)."""
    if keep == 1:
        return [total - 1]
    return [int(j * (total - 1) / (keep - 1) + 0.5) for j in range(keep)]


@register
class PruneDepth(Method):
    name = "prune-depth"
    description = "Depth pruning: FedAvg of a model keeping k evenly spaced layers (option keep_layers); deploys it"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        keep_layers: int | None = None

    def validate(self) -> None:
        keep = self.options.keep_layers or max(1, self.arch.num_layers // 2)
        if not 1 <= keep <= self.arch.num_layers:
            raise ConfigError(
                "method.options.keep_layers",
                f"got {keep}, must be in 1..{self.arch.num_layers} (the global model's depth)",
            )
        self.kept = tuple(uniform_layers(self.arch.num_layers, keep))

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        everything = ClientPlan(self.kept, frozenset()).download_names(self.arch)
        return ClientPlan(layer_map=self.kept, trainable=frozenset(everything))

    def deploy(self, global_model: nn.Module) -> nn.Module:
        pruned = build_local_model(global_model, len(self.kept))
        name_map = local_to_global_names(self.arch, self.kept)
        load_from_global(pruned, dict(global_model.named_parameters()), name_map)
        return pruned
