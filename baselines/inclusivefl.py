"""Depth-scaled FL in the manner of InclusiveFL (Liu et al., KDD 2022): weak clients train the bottom layers.

Rule: a client whose tier has local depth ``L_k`` builds a local model of the global model's bottom ``L_k``
layers (global layers ``0..L_k-1``) with the output head stacked on layer ``L_k - 1`` as its early exit, trains
every tensor of it (embeddings, those layers, the head) and uploads them. The server averages each tensor over
the clients that trained it (``n_k``-weighted), so layer ``l`` learns from the clients with ``L_k > l`` only,
and the head and embeddings from everyone. Clients of a tier without ``local_layers`` (and every client without
tiers) train the whole model (this is then ``fedavg``). The deployed model is the full-depth global model.

What is left out: InclusiveFL's momentum knowledge distillation (the deeper clients' updates of the layers above
``L_k`` distilled into a shallow model's top layer) and DepthFL's (Kim et al., ICLR 2023) classifier at every
depth with mutual self-distillation and its ensemble inference: here one set of head tensors serves every depth.
"""

from fedbt.federated.method import ClientPlan, Method, register
from fedbt.federated.tiers import FULL, Tier


@register
class InclusiveFL(Method):
    name = "inclusivefl"
    description = "Depth-scaled FL: a tier-L_k client trains the bottom L_k layers + the head as its early exit"
    scenarios = ("pretrain", "finetune")

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        layer_map = tuple(range(tier.local_layers or self.arch.num_layers))
        trainable = ClientPlan(layer_map, frozenset()).download_names(self.arch)
        return ClientPlan(layer_map=layer_map, trainable=frozenset(trainable))
