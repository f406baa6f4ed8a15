"""Head only: every client trains and uploads the output head's own tensors, the encoder frozen.

In fine-tuning this is federated linear probing (pooler + classifier, or the token classifier, on frozen
features). In pre-training it fits the MLM head (transform + output bias; the decoder weight is tied to the
frozen word embeddings) to a frozen encoder: the pipeline uses it, centrally, to give a checkpoint that ships
without an MLM head (all-MiniLM-L6-v2) a trained one before any further pre-training starts.
"""

from fedbt.federated.method import ClientPlan, Method, register


@register
class HeadOnly(Method):
    name = "head-only"
    description = "Train and upload only the output head, encoder frozen (linear probe; fits a missing MLM head)"
    scenarios = ("pretrain", "finetune")

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        return ClientPlan(layer_map=tuple(range(self.arch.num_layers)), trainable=frozenset(self.arch.head_params()))
