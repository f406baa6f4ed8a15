"""HeteroFL (Diao et al., ICLR 2021): width-scaled sub-models, one width per resource tier.

Rule: a client of width ``r`` trains a sub-model that keeps, in every Transformer layer, the first ``ceil(r * A)``
of the ``A`` attention heads (the Q/K/V rows and attention-output columns of those heads) and the first
``ceil(r * I)`` of the ``I`` FFN neurons (FFN-in rows and bias, FFN-out columns): leading blocks of the global
tensors, so the sub-models are nested and a narrower one is the top-left corner of a wider one. It downloads,
trains and uploads exactly those blocks, plus every tensor outside the layers' heads and FFN. The server averages
every element over the clients whose blocks hold it (``n_k``-weighted; an element nobody held keeps its value),
HeteroFL's aggregation. The deployed model is the full-width global model.

Slicing choice: the hidden size (the residual stream) is *not* scaled, so the embeddings, every LayerNorm and
every output head (MLM transform and tied decoder, pooler + classifier, token classifier; ViT's final LayerNorm
with the MIM decoder or the image classifier) keep their shapes and stay valid and shared by all widths; heads
stay whole (head size unchanged), so attention still splits into heads. A layer's parameters and FLOPs then scale
by about ``r`` (not ``r^2``, as when the hidden size shrinks too).

Width of a tier: its ``width``, else ``local_layers / L_G`` (the share of the layers' parameters a depth-``L_k``
model holds, for a comparison at equal layer parameters with depth-scaled methods), else 1 (without tiers every
client holds the full model and this is ``fedavg``).

Left out: HeteroFL's Scaler (dividing a sliced layer's output by ``r`` during training; LayerNorm after every
sub-layer re-normalises the residual stream here) and its masked cross-entropy for label-skewed classification.
"""

import math

from fedbt.federated.method import ClientPlan, Method, register
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import width_shapes


def kept(width: float, total: int) -> int:
    """``ceil(width * total)``, at least 1 (a float product just above an integer is not rounded up)."""
    return max(1, math.ceil(width * total - 1e-9))


@register
class HeteroFL(Method):
    name = "heterofl"
    description = (
        "HeteroFL: width-sliced sub-models per tier (first heads and FFN neurons), slices averaged per element"
    )
    scenarios = ("pretrain", "finetune")

    def width_of(self, tier: Tier) -> float:
        """``r`` of a client of ``tier``."""
        if tier.width is not None:
            return tier.width
        if tier.local_layers is not None:
            return min(1.0, tier.local_layers / self.arch.num_layers)
        return 1.0

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        arch, width = self.arch, self.width_of(tier)
        heads, ffn = kept(width, arch.num_heads), kept(width, arch.intermediate_size)
        shapes = {}
        if (heads, ffn) != (arch.num_heads, arch.intermediate_size):
            shapes = {
                n: s for layer in range(arch.num_layers) for n, s in width_shapes(arch, layer, heads, ffn).items()
            }
        return ClientPlan(layer_map=tuple(range(arch.num_layers)), trainable=frozenset(arch.names), sub_shapes=shapes)
