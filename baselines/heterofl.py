"""HeteroFL (Diao et al., ICLR 2021): width-scaled sub-models, one width rate per resource tier.

Rule, as the authors' transformer (``src/models/transformer.py``) and the transformer branch of their
``split_model`` / ``combine`` (``src/fed.py``) build it: a client of width rate ``r`` trains the sub-model that keeps
the first ``ceil(r H)`` of the hidden size ``H`` everywhere (the embeddings' columns, every LayerNorm, the input
columns and output rows of every projection, the output heads' hidden side), in every head the first
``ceil(r d)`` of its ``d`` dimensions (the ``A`` heads are kept; Q/K/V rows and the attention output's columns are
picked per head, not as one leading block), and the first ``ceil(r I)`` FFN neurons; vocabulary, positions,
token types, labels and pixels stay whole. So a layer's parameters scale by about ``r^2``. Its local model runs at
that width (:func:`fedbt.models.slice_parameters`: attention at head size ``ceil(r d)`` with softmax temperature
``sqrt(ceil(r d))``). The Scaler (:func:`fedbt.models.add_scalers`): while training, the output of each sliced
sub-layer is divided by ``r`` where the authors' transformer divides it (each embedding, Q, K, V, the attention
output, both FFN matmuls, the decoder's hidden transform); identity at evaluation and for ``r = 1``. The client
downloads, trains and uploads its slices; the server averages every element over the clients that hold it (an
element nobody held keeps its value). Weighting: ``federation.aggregation``, ``weighted`` (``n_k``, the suite's
default, as for every method) or ``uniform`` (each client counts 1: the authors' ``combine``). The deployed model
is the full-width global model (``r = 1``: every client holds it and this is ``fedavg``).

Width of a tier: its ``width``, else ``local_layers / L_G`` (the share of the layers a depth-``L_k`` model holds),
else 1. ``shrinks = "width"``: a plan that does not fit a memory budget shrinks through the tier's width.

Where this differs from the authors' code, and why:

* Sizes: the authors' local model has embedding size ``ceil(r E)`` and head size ``ceil(r E) // A``, consistent
  with their split's ``A * ceil(r d)`` Q/K/V rows only when ``r d`` is an integer (their rates are powers of 2 of
  ``E = 256``, ``A = 8``). For MiniLM at ``r = 1/3`` the split keeps ``12 * 11 = 132`` attention dimensions of a
  128-wide hidden size; here the attention projects ``ceil(r H) -> A ceil(r d) -> ceil(r H)`` as the split
  rule gives (their model would not load it). ``ceil`` ignores float noise (``384 * (1/3)`` keeps 128, not 129).
* Parts their transformer lacks follow the same rule: BERT's token-type embeddings, pooler and classifier, the MLM
  transform's LayerNorm; ViT's patch projection, [CLS], mask token, positions, final LayerNorm, MIM decoder and
  classifier (hidden side sliced). The Scaler also divides BERT's pooler output (their decoder's hidden
  transform gets one) and ViT's whole embedding block (patches, [CLS], positions: their token and position
  embeddings each get one); the vocabulary, label and pixel outputs are not scaled, as their decoder's output.
* Label splits: their ``combine`` averages the token embedding's and decoder's rows only over the clients whose
  data hold those tokens, and masks the other logits (``cfg['mask']``); here every client holds every row and the
  loss is not masked (the suite's clients share one vocabulary; the same holds for classification labels).
* Widths are fixed per tier (their ``model_split_mode: fix``), not redrawn per round (``dynamic``).
"""

from fedbt.federated.method import ClientPlan, Method, register
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import Selection, width_selections


@register
class HeteroFL(Method):
    name = "heterofl"
    description = (
        "HeteroFL: width-r sub-models per tier (hidden size, head size, FFN), Scaler, slices averaged per element"
    )
    scenarios = ("pretrain", "finetune")
    shrinks = "width"

    def __init__(self, *args, **kwargs):
        self._slices: dict[float, dict[str, Selection]] = {}
        super().__init__(*args, **kwargs)

    def width_of(self, tier: Tier) -> float:
        """``r`` of a client of ``tier``."""
        if tier.width is not None:
            return tier.width
        if tier.local_layers is not None:
            return min(1.0, tier.local_layers / self.arch.num_layers)
        return 1.0

    def slices(self, width: float) -> dict[str, Selection]:
        """The sub-model of width rate ``width``, computed once per rate."""
        if width not in self._slices:
            self._slices[width] = width_selections(self.arch, width)
        return self._slices[width]

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        arch, width = self.arch, self.width_of(tier)
        return ClientPlan(
            layer_map=tuple(range(arch.num_layers)),
            trainable=frozenset(arch.names),
            slices=self.slices(width),
            scaler_rate=width,
        )
