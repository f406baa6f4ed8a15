"""Weight-free memory estimate of a client plan, and the fitting of plans to tier budgets.

:func:`estimate` counts, from a :class:`~fedbt.models.ModelArch` and a :class:`~fedbt.federated.method.ClientPlan`
(like :mod:`fedbt.costs` for FLOPs), the bytes a client holds at the peak of one local step:

* **parameters**: every tensor of the local model (each local position holds its own copy of its global layer;
  a width slice holds its leading block), at the parameters' dtype;
* **gradients** of the trained tensors (a stale position's copy does not train);
* **optimizer state**: AdamW's two moments of every trained tensor;
* **activations** autograd keeps for backward at ``batch_size`` sequences of ``seq_len`` positions (text:
  ``model.max_length``, an upper bound under dynamic padding; images: patches + 1), per layer of the local
  model, counted as PyTorch saves them (eager/math attention, dropout masks included): a layer's input to a
  linear whose weight trains, Q, K, V, the attention probabilities with their dropout mask and dropped copy
  (``3 B A S^2``), the GELU input, LayerNorm inputs with their mean and rstd, dropout masks; a tensor that needs no
  gradient keeps none, so layers below the lowest trained tensor keep nothing. The head: the MLM head at the
  predicted positions (its ``P x V`` log-softmax dominates), a classifier per sequence or per token;
* **extra** tensors the method holds on the client (:meth:`Method.extra_client_numel`: e.g. FedProx's copy of the
  global trained tensors, a client's control variate), at the parameters' dtype. LoRA adapters are parameters.

On a tiny BERT (CPU, fp32, SDPA) the activation count equals the bytes ``saved_tensors_hooks`` sees to within the
position-id buffer and a scalar (``tests/test_memory.py``). Not counted: transient buffers of one op (a matmul's
output before the next op frees its input; the backward pass's own gradients of activations, of the size of one
layer's activations), the allocator's fragmentation and the framework's own memory. Fused attention kernels
(flash / memory-efficient on CUDA, the CPU flash kernel without dropout) keep no ``S x S`` scores, so the estimate
is an upper bound there. Under ``local.precision = bf16`` activations count 2 bytes.

Budgets (``federation.tiers[].memory_mb``, MB = 10^6 bytes of device memory) bind through
``federation.budget_policy`` (:func:`fit_plan`): ``warn`` trains every plan and marks the estimates that exceed
the budget; ``drop`` first lets a method that can shrink its plan (``Method.shrinks``) search the largest value
that fits, and a client whose plan still does not fit sits the round out, as a device out of memory would;
``refuse`` shrinks the same way and fails the run before training when a plan still does not fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedbt.federated.method import ClientPlan, Method
from fedbt.federated.tiers import Tier

if TYPE_CHECKING:
    from fedbt.config import RunConfig
    from fedbt.models import ModelArch

MB = 10**6
BUDGET_POLICIES = ("warn", "drop", "refuse")
WIDTH_STEP = 8
"""Width-shrinking methods search widths ``7/8, 6/8, ..., 1/8`` (below the tier's width)."""
INDEX_BYTES = 8  # int64 token ids, gather indices and targets
ADAM_MOMENTS = 2
QKV = ("query", "key", "value", "q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class MemorySettings:
    """What the activations of one local step depend on."""

    batch_size: int
    seq_len: int
    """Positions per sequence: ``model.max_length`` (text) or patches + 1 (images)."""
    head: str
    """The objective (model head): ``mlm``, ``classification``, ``token_classification``, ``mim``, ..."""
    predicted: int
    """Positions per batch where the MLM head runs (all ``B x S`` with full logits)."""
    dtype_bytes: int = 4
    """Bytes per activation element (4: fp32, 2: bf16 autocast)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a client holds at the peak of a local step, by kind."""

    params: int
    gradients: int
    optimizer: int
    activations: int
    extra: int = 0

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.activations + self.extra

    @property
    def mb(self) -> float:
        return self.total / MB

    def as_dict(self) -> dict[str, float]:
        """Each kind and the total in MB."""
        return {f"{k}_mb": v / MB for k, v in dataclasses.asdict(self).items()} | {"total_mb": self.mb}


def memory_settings(config: RunConfig, arch: ModelArch) -> MemorySettings:
    """The settings of a run config's local steps on ``arch``."""
    from fedbt.training.objectives import ObjectiveSettings, get_objective

    local = config.local
    length = arch.num_patches + 1 if arch.vision else config.model.max_length
    objective = ObjectiveSettings(
        max_length=length,
        mlm_probability=local.mlm_probability,
        masked_only=local.masked_only_logits,
        mask_ratio=local.mim_mask_ratio,
        patches=arch.num_patches,
    )
    batch = local.batch_size
    predicted = get_objective(local.objective).expected_predicted(batch, batch * length, objective)
    return MemorySettings(batch, length, local.objective, predicted, 2 if local.precision == "bf16" else 4)


# ------------------------------------------------------------------------------------------ the estimate


def held_tensors(arch: ModelArch, plan: ClientPlan) -> Iterator[tuple[str, int, bool]]:
    """``(global name, elements held, trained)`` of every tensor of the plan's local model, one per local copy."""
    shapes = plan.sub_shapes
    for name in arch.names:
        if arch.layer_of(name) is None:
            yield name, _numel(arch, shapes, name), name in plan.trainable
    for position, layer in enumerate(plan.layer_map):
        stale = position in plan.stale_positions
        for name in arch.layer_params(layer):
            yield name, _numel(arch, shapes, name), name in plan.trainable and not stale


def plan_numel(arch: ModelArch, plan: ClientPlan, names: Iterable[str]) -> int:
    """Elements of the given global tensors as the plan holds them (their leading blocks under width slices):
    what a method's :meth:`~fedbt.federated.method.Method.extra_client_numel` counts for a copy of them."""
    shapes = plan.sub_shapes
    return sum(_numel(arch, shapes, name) for name in set(names))


def _numel(arch: ModelArch, shapes: Mapping[str, Sequence[int]], name: str) -> int:
    shape = shapes.get(name)
    if shape is None:
        return arch.param_numel[name]
    count = 1
    for size in shape:
        count *= size
    return count


def estimate(
    arch: ModelArch, plan: ClientPlan, settings: MemorySettings, extra_numel: int = 0, dtype_bytes: int = 4
) -> MemoryEstimate:
    """The memory estimate of ``plan`` (see the module docstring); ``extra_numel`` elements of method tensors;
    parameters, gradients, moments and extras at ``dtype_bytes``."""
    held = list(held_tensors(arch, plan))
    params = sum(numel for _, numel, _ in held) * dtype_bytes
    gradients = sum(numel for _, numel, trained in held if trained) * dtype_bytes
    return MemoryEstimate(
        params=params,
        gradients=gradients,
        optimizer=ADAM_MOMENTS * gradients,
        activations=activation_bytes(arch, plan, settings),
        extra=extra_numel * dtype_bytes,
    )


def estimate_plan(method: Method, plan: ClientPlan, settings: MemorySettings) -> MemoryEstimate:
    """:func:`estimate` of a method's plan, with the extra tensors the method declares."""
    return estimate(method.arch, plan, settings, method.extra_client_numel(plan))


class _Walk:
    """Activation elements along the forward pass; ``grad``: the current tensor needs a gradient."""

    def __init__(self, grad: bool = False):
        self.grad, self.elements, self.index_bytes = grad, 0, 0

    def linear(self, rows: int, width_in: int, weight_trains: bool, trains: bool) -> None:
        """A linear layer keeps its input when its weight trains; its output needs a gradient once it trains."""
        self.elements += rows * width_in if weight_trains else 0
        self.grad = self.grad or trains

    def norm(self, rows: int, width: int, trains: bool) -> None:
        """LayerNorm keeps its input, mean and rstd when its input or its own tensors need gradients."""
        if self.grad or trains:
            self.elements += rows * (width + 2)
        self.grad = self.grad or trains

    def pointwise(self, rows: int, width: int) -> None:
        """GELU / tanh / a dropout mask: one tensor of the output's size, when it needs a gradient."""
        self.elements += rows * width if self.grad else 0

    def attention(self, tokens: int, width: int, batch: int, heads: int, seq_len: int) -> None:
        """Q, K, V and the probabilities, their dropout mask and dropped copy (math attention)."""
        if self.grad:
            self.elements += 3 * tokens * width + 3 * batch * heads * seq_len * seq_len

    def loss(self, rows: int, classes: int) -> None:
        """Cross-entropy keeps its log-softmax and its targets."""
        if self.grad:
            self.elements += rows * classes
            self.index_bytes += rows * INDEX_BYTES


def _find(names: Iterable[str], *suffixes: str) -> list[str]:
    return [n for n in names if n.endswith(suffixes)]


def _layer_roles(names: list[str]) -> dict[str, list[str]]:
    """A layer's tensors by role (BERT and ViT names)."""
    return {
        "qkv": [n for n in names if any(f".{p}." in n for p in QKV)],
        "attn_out": _find(names, "attention.output.dense.weight", "attention.output.dense.bias", "o_proj.weight")
        + _find(names, "o_proj.bias"),
        "norm1": _find(names, "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias")
        + _find(names, "layernorm_before.weight", "layernorm_before.bias"),
        "ffn_in": _find(names, "intermediate.dense.weight", "intermediate.dense.bias", "fc1.weight", "fc1.bias"),
        "ffn_out": [
            n
            for n in _find(names, "output.dense.weight", "output.dense.bias", "fc2.weight", "fc2.bias")
            if "attention." not in n
        ],
        "norm2": [
            n
            for n in _find(names, "output.LayerNorm.weight", "output.LayerNorm.bias", "layernorm_after.weight")
            + _find(names, "layernorm_after.bias")
            if "attention." not in n
        ],
    }


def activation_bytes(arch: ModelArch, plan: ClientPlan, settings: MemorySettings) -> int:
    """Bytes of the activations autograd keeps for one local step of ``plan`` (see the module docstring)."""
    batch, seq_len = settings.batch_size, settings.seq_len
    tokens = batch * seq_len
    trainable, shapes = plan.trainable, plan.sub_shapes
    hidden = _hidden(arch, shapes, arch.embedding_params())
    walk = _Walk(any(n in trainable for n in arch.embedding_params()))
    if walk.grad:  # the embeddings train: ids (text) or pixels (image), the sum's LayerNorm or dropout mask
        if arch.vision:
            walk.elements += batch * arch.num_channels * arch.image_size**2 + tokens * hidden
        else:
            walk.index_bytes += 2 * tokens * INDEX_BYTES
            walk.norm(tokens, hidden, True)
            walk.pointwise(tokens, hidden)
    for position, layer in enumerate(plan.layer_map):
        names = arch.layer_params(layer)
        trained = set() if position in plan.stale_positions else {n for n in names if n in trainable}
        _layer(walk, arch, shapes, _layer_roles(names), trained, settings)
    _head(walk, arch, plan, shapes, settings)
    return walk.elements * settings.dtype_bytes + walk.index_bytes


def _hidden(arch: ModelArch, shapes: Mapping[str, Sequence[int]], names: Iterable[str]) -> int:
    """The residual width of a block: a sliced LayerNorm's block size, else the hidden size."""
    for name in names:
        if "layernorm" in name.lower() and name in shapes:
            return shapes[name][0]
    return arch.hidden_size


def _rows(arch: ModelArch, shapes: Mapping[str, Sequence[int]], names: list[str], default: int) -> int:
    """Output features of a role's weight (its block's rows), else ``default``."""
    weights = [n for n in names if n.endswith("weight")]
    if not weights:
        return default
    return shapes.get(weights[0], arch.param_shapes[weights[0]])[0]


Shapes = Mapping[str, Sequence[int]]


def _layer(walk: _Walk, arch: ModelArch, shapes: Shapes, roles: dict, trained: set, settings: MemorySettings) -> None:
    """One Transformer layer's kept activations, post-norm (BERT) or pre-norm (ViT) order."""
    batch, seq_len = settings.batch_size, settings.seq_len
    tokens = batch * seq_len
    hidden = _hidden(arch, shapes, [n for names in roles.values() for n in names])
    width = _rows(arch, shapes, roles["qkv"], arch.hidden_size)  # the query block's rows: heads x head size
    ffn = _rows(arch, shapes, roles["ffn_in"], arch.intermediate_size)
    head_dim = arch.hidden_size // max(arch.num_heads, 1)
    heads = arch.num_heads if hidden != arch.hidden_size else max(1, round(width / head_dim))

    def trains(role: str) -> bool:
        return any(n in trained for n in roles[role])

    def weight_trains(role: str) -> bool:
        return any(n in trained and n.endswith("weight") for n in roles[role])

    if arch.pre_norm:
        walk.norm(tokens, hidden, trains("norm1"))
    walk.linear(tokens, hidden, weight_trains("qkv"), trains("qkv"))
    walk.attention(tokens, width, batch, heads, seq_len)
    walk.linear(tokens, width, weight_trains("attn_out"), trains("attn_out"))
    walk.pointwise(tokens, hidden)  # dropout mask
    walk.norm(tokens, hidden, trains("norm2" if arch.pre_norm else "norm1"))
    walk.linear(tokens, hidden, weight_trains("ffn_in"), trains("ffn_in"))
    walk.pointwise(tokens, ffn)  # GELU input
    walk.linear(tokens, ffn, weight_trains("ffn_out"), trains("ffn_out"))
    walk.pointwise(tokens, hidden)  # dropout mask
    if not arch.pre_norm:
        walk.norm(tokens, hidden, trains("norm2"))


def _head(
    walk: _Walk, arch: ModelArch, plan: ClientPlan, shapes: Mapping[str, Sequence[int]], settings: MemorySettings
) -> None:
    """The output head's kept activations."""
    head = arch.head_params()
    trained = {n for n in head if n in plan.trainable}
    hidden = _hidden(arch, shapes, head)
    batch, tokens = settings.batch_size, settings.batch_size * settings.seq_len
    walk.grad = walk.grad or bool(trained)
    weights = {n.rpartition(".")[0] for n in trained if n.endswith("weight")}

    def trains_weight(*suffixes: str) -> bool:
        return any(w.endswith(suffixes) for w in weights)

    if arch.vision:  # the final LayerNorm at every position, then the decoder / classifier
        walk.norm(tokens, hidden, trains_weight("layernorm"))
        walk.loss(batch, arch.num_channels * arch.image_size**2 if settings.head == "mim" else _classes(arch))
    elif settings.head == "mlm":
        predicted = settings.predicted
        walk.index_bytes += predicted * INDEX_BYTES if walk.grad else 0  # the gathered positions
        walk.linear(predicted, hidden, trains_weight("transform.dense"), trains_weight("transform.dense"))
        walk.pointwise(predicted, hidden)  # GELU input
        walk.norm(predicted, hidden, trains_weight("transform.LayerNorm"))
        decoder = "decoder" in weights or any(n.endswith("word_embeddings.weight") for n in plan.trainable)
        walk.linear(predicted, hidden, decoder, decoder)
        walk.loss(predicted, arch.vocab_size)
    elif settings.head == "token_classification":
        walk.pointwise(tokens, hidden)  # dropout mask
        walk.linear(tokens, hidden, trains_weight("classifier"), False)
        walk.loss(tokens, _classes(arch))
    else:  # sequence classification: pooler (dense + tanh), dropout, classifier
        walk.linear(batch, hidden, trains_weight("pooler.dense"), False)
        walk.pointwise(batch, hidden)
        walk.pointwise(batch, hidden)
        walk.linear(batch, hidden, trains_weight("classifier"), False)
        walk.loss(batch, _classes(arch))


def _classes(arch: ModelArch) -> int:
    classifier = [n for n in arch.head_params() if n.endswith("classifier.weight")]
    return arch.param_shapes[classifier[0]][0] if classifier else 2


# ------------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Fitted:
    """A client's plan under its tier's budget: the plan it runs (empty when it sits the round out over budget),
    the estimate of that plan (or of the plan that did not fit), the budget and the policy's verdict."""

    plan: ClientPlan
    estimate: MemoryEstimate | None
    budget_mb: float | None
    over_budget: bool = False
    """The estimate exceeds the budget (after any shrinking)."""
    dropped: bool = False
    """Over budget under ``drop``: the client sits the round out."""
    shrunk: Any = None
    """The value of ``Method.shrinks`` the plan was shrunk to (None: not shrunk)."""


def shrink_values(method: Method, plan: ClientPlan, tier: Tier) -> list[Any]:
    """The values of ``method.shrinks`` to try, largest first: local depths below the plan's down to 1, or widths
    ``j / WIDTH_STEP`` below the tier's width (default 1)."""
    if method.shrinks == "local_layers":
        return list(range(len(plan.layer_map) - 1, 0, -1))
    if method.shrinks == "width":
        top = tier.width or 1.0
        return [j / WIDTH_STEP for j in range(WIDTH_STEP - 1, 0, -1) if j / WIDTH_STEP < top - 1e-9]
    return []


def fit_plan(
    method: Method,
    round_idx: int,
    client_id: int,
    tier: Tier,
    settings: MemorySettings | None,
    policy: str = "warn",
) -> Fitted:
    """The client's plan under ``policy`` (see the module docstring); without settings or a budget, the plan."""
    plan = method.client_plan(round_idx, client_id, tier)
    if settings is None or not plan.trainable:
        return Fitted(plan, None, tier.memory_mb)
    found = estimate_plan(method, plan, settings)
    if tier.memory_mb is None or found.total <= tier.memory_mb * MB:
        return Fitted(plan, found, tier.memory_mb)
    if policy != "warn":
        for value in shrink_values(method, plan, tier):
            smaller = method.client_plan(round_idx, client_id, dataclasses.replace(tier, **{method.shrinks: value}))
            fits = estimate_plan(method, smaller, settings)
            if fits.total <= tier.memory_mb * MB:
                return Fitted(smaller, fits, tier.memory_mb, shrunk=value)
    if policy == "drop":
        return Fitted(ClientPlan(plan.layer_map, frozenset()), found, tier.memory_mb, True, True)
    return Fitted(plan, found, tier.memory_mb, True)


def check_budgets(method: Method, tiers: list[Tier], rounds: int, settings: MemorySettings) -> None:
    """``refuse``: a :class:`~fedbt.errors.ConfigError` naming the first tier (its ``memory_mb`` key) whose client
    plan does not fit, with the estimate and the budget; ``tiers`` is each client's dealt tier."""
    from fedbt.errors import ConfigError

    for round_idx in range(rounds):
        for client_id, tier in enumerate(tiers):
            fitted = fit_plan(method, round_idx, client_id, tier, settings, "refuse")
            if fitted.over_budget:
                raise ConfigError(
                    f"{tier.key}.memory_mb",
                    f"{method.name}: client {client_id} (tier {tier.name}) needs an estimated "
                    f"{fitted.estimate.mb:.1f} MB in round {round_idx}, over the budget of {tier.memory_mb:g} MB "
                    f"({_parts(fitted.estimate)}); federation.budget_policy = refuse fails before training "
                    "(warn: train and mark, drop: the client sits such rounds out)",
                )


def _parts(found: MemoryEstimate) -> str:
    return ", ".join(f"{k.removesuffix('_mb')} {v:.1f}" for k, v in found.as_dict().items() if k != "total_mb")
