"""Weight-free cost accounting: analytic training FLOPs and per-round communication tables.

Everything here works from a :class:`~fedbt.models.ModelArch` built on the ``meta`` device and from the
:class:`~fedbt.federated.method.ClientPlan` of a method, so the paper's cost columns can be checked on any
machine without downloading weights. The measured per-client costs of real runs live in
:mod:`fedbt.ledger`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import torch
from torch import nn

from fedbt import paper
from fedbt.errors import ConfigError, FedBTError
from fedbt.federated.method import ClientPlan, Method, available_methods, create_method, get_method
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import ModelArch
from fedbt.training.objectives import ObjectiveSettings, available_objectives, get_objective

MIB = 2**20
MB = 10**6


def scenario_of(head: str) -> str:
    """The scenario whose cost figures use ``head`` (the objective's ``scenario``)."""
    return get_objective(head, key="head").scenario


# ---------------------------------------------------------------------------------- analytic FLOPs

LAYER_MODULES = {
    # role -> module path inside a Transformer layer: BERT (post-norm), then ViT (pre-norm)
    False: {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "norm2": "output.LayerNorm",
    },
    True: {
        "norm1": "layernorm_before",
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "o": "attention.o_proj",
        "norm2": "layernorm_after",
        "ffn_in": "mlp.fc1",
        "ffn_out": "mlp.fc2",
    },
}


def _matrices(arch: ModelArch, names: Sequence[str]) -> list[str]:
    """The matrices among a module's parameters, in parameter order: its weight first, then adapters (LoRA's
    ``A`` and ``B``; peft renames the wrapped weight ``<module>.base_layer.weight``)."""
    return [n for n in names if len(arch.param_shapes[n]) == 2]


class _Pass:
    """FLOPs of one forward + backward pass, accumulated matmul by matmul.

    A matmul of ``flops`` forward FLOPs costs as much again for its weight gradient if its weight trains, and as
    much again for its input gradient if its input needs one (something trained below it); a frozen weight
    below every trained tensor costs its forward only.
    """

    def __init__(self, arch: ModelArch, plan: ClientPlan):
        self.arch, self.plan = arch, plan
        self.forward = self.backward = 0

    def matmul(self, flops: int, weight_grad: bool, input_grad: bool) -> None:
        self.forward += flops
        self.backward += flops * (weight_grad + input_grad)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of the part of ``name`` the client holds (under a width slice, its selection's shape)."""
        selection = self.plan.sub_shapes.get(name, self.arch.param_shapes[name])
        return tuple(s if isinstance(s, int) else len(s) for s in selection)

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def linear(self, names: Sequence[str], trained: set[str], tokens: int, grad: bool) -> bool:
        """A linear module (its parameters ``names``) over ``tokens`` positions whose input needs a gradient if
        ``grad``: its weight (the first matrix), then the chain of adapter matrices beside it (the others in
        parameter order, from the same input: LoRA's ``A`` then ``B``), each by the shape the client holds.
        Returns whether the output needs a gradient."""
        weight, *adapters = _matrices(self.arch, names)
        self.matmul(tokens * 2 * self.numel(weight), weight in trained, grad)
        chain = grad
        for adapter in adapters:
            self.matmul(tokens * 2 * self.numel(adapter), adapter in trained, chain)
            chain = chain or adapter in trained
        return grad or any(n in trained for n in names)

    def attention(self, tokens: int, seq_len: int, widths: tuple[int, int], grads: tuple[bool, bool, bool]) -> bool:
        """Eager attention ``softmax(Q K^T) V`` (``2*S*a`` FLOPs per token for each product, ``a`` the Q/K or V
        width): the backward pass computes the gradient of each operand that needs one."""
        qk, v = (2 * seq_len * width for width in widths)
        q_grad, k_grad, v_grad = grads
        self.forward += tokens * (qk + v)
        self.backward += tokens * (v * ((q_grad or k_grad) + v_grad) + qk * (q_grad + k_grad))
        return q_grad or k_grad or v_grad

    def layer(self, position: int, tokens: int, seq_len: int, grad: bool) -> bool:
        """Local position ``position`` (its tensors train unless it is a stale copy) over ``tokens`` positions of
        ``seq_len``; returns whether its output needs a gradient."""
        arch, plan = self.arch, self.plan
        prefix = f"{arch.layer_prefix}{plan.layer_map[position]}."
        names = arch.layer_params(plan.layer_map[position])
        trained = set() if position in plan.stale_positions else set(names) & plan.trainable
        modules = {
            role: [n for n in names if n.startswith(f"{prefix}{path}.")]
            for role, path in LAYER_MODULES[arch.pre_norm].items()
        }

        def norm(role: str, needs: bool) -> bool:
            return needs or any(n in trained for n in modules[role])

        normed = norm("norm1", grad) if arch.pre_norm else grad
        q, k, v = (self.linear(modules[role], trained, tokens, normed) for role in ("q", "k", "v"))
        widths = tuple(self.shape(_matrices(arch, modules[role])[0])[0] for role in ("q", "v"))
        context = self.attention(tokens, seq_len, widths, (q, k, v))
        attended = self.linear(modules["o"], trained, tokens, context) or grad
        if not arch.pre_norm:
            attended = norm("norm1", attended)
        inner = self.linear(modules["ffn_in"], trained, tokens, norm("norm2", attended) if arch.pre_norm else attended)
        out = self.linear(modules["ffn_out"], trained, tokens, inner) or attended
        return out if arch.pre_norm else norm("norm2", out)


def analytic_train_flops(
    arch: ModelArch, plan: ClientPlan, sequences: int, seq_len: int, predicted_tokens: int, head: str = "mlm"
) -> int:
    """FLOPs of one training pass (forward + backward) of the local model of ``plan`` over ``sequences``
    sequences of ``seq_len`` tokens (``T = sequences * seq_len``), matmul by matmul from the shapes the client
    holds (a width slice's blocks under ``plan.sub_shapes``).

    Forward: every linear module ``2 * out * in`` per token (per layer ``W = 2*(4*H^2 + 2*H*I)`` unsliced), an
    adapter matrix beside it (LoRA's ``A``: ``2*r*in``, ``B``: ``2*out*r``) likewise, and the weight-free
    ``Q K^T`` and ``P V`` ``2*S*a`` each (``a``: heads x head size). Heads: MLM transform ``2*H^2`` and decoder
    ``2*H*V`` per *predicted* token (masked positions, or all ``T`` tokens for full logits: the caller decides);
    classification ``2*H^2`` (pooler) + ``2*H*num_labels`` (classifier) per sequence. Image models (``S`` =
    patches + 1): the patch-embedding projection ``2*p^2*C*H`` per patch, MIM ``2*H*p^2*C`` per patch (the
    decoder reconstructs every patch: ``predicted_tokens``), image classification ``2*H*num_labels`` per image.
    Embedding lookups, norms, activations and element-wise scalings count 0.

    Backward, walking the local positions bottom-up (the tensors of position ``j`` train if they are in
    ``plan.trainable`` and ``j`` is not a stale copy), per matmul: its forward FLOPs once for the weight gradient
    if its weight trains, once for the input gradient if its input needs one, i.e. if a tensor it depends on
    trains (a frozen weight above a trained tensor costs forward + input gradient, 2x forward; below every
    trained tensor, forward only); attention, the gradient of each of ``Q``, ``K``, ``V`` and ``P`` that needs
    one. So the lowest trained BERT layer skips its Q/K/V input gradients (in a pre-norm ViT layer its trainable
    LayerNorm before attention needs them), the patch projection never computes an input gradient, and a fully
    trainable model costs exactly 3 x forward. LoRA: base weights forward + input gradients above the lowest
    adapter, adapters their own forward and backward.

    This is the count of eager attention (and of PyTorch's SDPA when it falls back to matmuls, as on CPU with
    attention dropout); fused attention kernels (flash) recompute ``Q K^T`` in the backward pass and compute every
    operand's gradient, so measured FLOPs exceed it by ``2*S*a`` per token and layer that backpropagates (more in
    the lowest LoRA layer, whose ``K`` needs none): about 1% for MiniLM at 64 tokens, 5-7% for a narrow ViT whose
    attention share is large.
    """
    flops = _Pass(arch, plan)
    tokens = sequences * seq_len
    embeddings = [n for n in arch.names if n.startswith(arch.base_prefix + "embeddings.")]
    grad = any(n in plan.trainable for n in embeddings)
    if arch.vision:
        projection = next(n for n in embeddings if n.endswith("projection.weight"))
        flops.matmul(sequences * arch.num_patches * 2 * flops.numel(projection), projection in plan.trainable, False)
    for position in range(len(plan.layer_map)):
        grad = flops.layer(position, tokens, seq_len, grad)
    for stage_flops, weight, group in get_objective(head, key="head").head_stages(arch, sequences, predicted_tokens):
        if weight in plan.sub_shapes:  # a sliced head matmul: its FLOPs scale with the block it holds
            stage_flops = stage_flops // arch.param_numel[weight] * flops.numel(weight)
        flops.matmul(stage_flops, weight in plan.trainable, grad)
        grad = grad or any(n in plan.trainable for n in group)
    return flops.forward + flops.backward


# ------------------------------------------------------------------------------------ cost tables


def _sizes(prefix: str, params: int, nbytes: int) -> dict[str, int | float]:
    return {
        f"{prefix}_params": params,
        f"{prefix}_bytes": nbytes,
        f"{prefix}_mib": nbytes / MIB,
        f"{prefix}_mb": nbytes / MB,
    }


def _payload(method: Method, tensors: Mapping[str, torch.Tensor], dtype_bytes: int) -> tuple[int, int]:
    """``(values, bytes)`` of what ``method.encode`` sends for the weight-free ``tensors``, as the ledger counts
    them: floating-point values at ``dtype_bytes`` each, other dtypes (e.g. a packed bit mask) at their size."""
    encoded = method.encode(tensors).values()
    params = sum(t.numel() for t in encoded)
    nbytes = sum(t.numel() * (dtype_bytes if t.is_floating_point() else t.element_size()) for t in encoded)
    return params, nbytes


def _round_costs(
    method: Method,
    tensors: Mapping[str, torch.Tensor],
    round_idx: int,
    clients: int,
    flops_args: dict,
    dtype_bytes: int,
    tier: Tier = FULL,
) -> dict[str, Any]:
    """Costs of client 0 (of resource tier ``tier``) in round ``round_idx``. An empty plan sits the round out
    (nothing sent or computed); a method that does not transmit (centralised training) sends nothing."""
    arch = method.arch
    plan = method.client_plan(round_idx, 0, tier)
    sends = bool(plan.trainable) and method.transmits
    upload = _payload(method, {n: plan.block(n, tensors[n]) for n in plan.trainable}, dtype_bytes) if sends else (0, 0)
    names = plan.download_names(arch)
    download = _payload(method, {n: plan.block(n, tensors[n]) for n in names}, dtype_bytes) if sends else (0, 0)
    row: dict[str, Any] = {
        "round": round_idx,
        "trained_layers": plan.trained_layers(arch),
        "local_layers": list(plan.layer_map),
        **_sizes("upload", *upload),
        **_sizes("download", *download),
        "analytic_flops": analytic_train_flops(arch, plan, **flops_args) if plan.trainable else 0,
    }
    if clients > 1:
        union = set().union(*(method.client_plan(round_idx, k, tier).trained_layers(arch) for k in range(clients)))
        row["trained_layers_union"] = sorted(union)
    return row


def _totals(rows: list[dict[str, Any]]) -> dict[str, int | float]:
    return {
        **_sizes("upload", sum(r["upload_params"] for r in rows), sum(r["upload_bytes"] for r in rows)),
        **_sizes("download", sum(r["download_params"] for r in rows), sum(r["download_bytes"] for r in rows)),
        "analytic_flops": sum(r["analytic_flops"] for r in rows),
    }


def head_for(arch_name: str, head: str) -> str:
    """``head`` for an architecture of its modality; a text head on an image architecture becomes its
    ``image_counterpart`` (``mlm`` -> ``mim``); other mismatches are a :class:`ConfigError`."""
    from fedbt.models import arch_config, is_vision

    objective = get_objective(head, key="head")
    modality = "image" if is_vision(arch_config(arch_name)) else "text"
    if objective.modality == modality:
        return head
    counterpart = objective.image_counterpart if modality == "image" else None
    if counterpart is None:
        allowed = [name for name, o in available_objectives().items() if o.modality == modality]
        raise ConfigError(
            "head",
            f"{arch_name!r} is {'an' if modality == 'image' else 'a'} {modality} model; "
            f"allowed heads: {', '.join(allowed)}",
        )
    return counterpart


@cache
def meta_arch(arch_name: str, head: str, num_labels: int = 2) -> tuple[nn.Module, int]:
    """``arch_name`` with ``head`` built on the meta device (shapes and names, no weights) and its number of
    attention heads."""
    from fedbt.models import arch_config, meta_model

    config = arch_config(arch_name)
    if get_objective(head, key="head").scenario == "finetune":
        config.num_labels = num_labels
    try:
        model = meta_model(config, head)
    except ValueError as error:  # e.g. hidden size not a multiple of the number of heads
        raise ConfigError("arch", f"{arch_name!r}: {error}") from error
    return model, config.num_attention_heads


def cost_table(
    arch_name: str,
    method: str,
    rounds: int,
    options: Mapping[str, Any],
    head: str = "mlm",
    num_labels: int = 2,
    clients: int = 1,
    sequences: int = 256,
    seq_len: int = 128,
    mlm_probability: float = 0.15,
    masked_only: bool = True,
    seed: int = 0,
    dtype_bytes: int = 4,
    tiers: Sequence[Tier] = (),
) -> dict[str, Any]:
    """Per-round and total upload, download and analytic FLOPs of ``method`` on ``arch_name``, weight-free.

    Client 0 is representative (``trained_layers_union`` adds the union over ``clients`` clients when
    ``clients > 1``). FLOPs are one local pass over ``sequences`` sequences per client (a method that pools
    the clients, like centralised training, passes over all of theirs); the MLM decoder runs at
    ``round(mlm_probability * tokens)`` masked positions when ``masked_only``, else at every token. Bytes are
    those of the method's encoded payloads, as in the ledger; a client with an empty plan, or a method that
    does not transmit, sends nothing. A method may train another architecture than ``arch_name`` (the
    distillation baseline's student, from its ``student`` option): ``arch`` describes that one, and the ratios
    compare the totals (bytes, FLOPs) with full-model FedAvg of ``arch_name`` over the same rounds.

    With resource ``tiers`` the table also has ``tiers``: per tier, client 0 planned as a client of that tier
    (its rounds, totals and ratios to full-model FedAvg), and ``tier_mix``: the ratios of the clients' mean
    cost when the tiers hold their shares of the clients.
    """
    for key, value in (
        ("rounds", rounds),
        ("clients", clients),
        ("sequences", sequences),
        ("seq_len", seq_len),
        ("num_labels", num_labels),
        ("dtype_bytes", dtype_bytes),
    ):
        if value < 1:
            raise ConfigError(key, f"got {value}, must be >= 1")
    if not 0 < mlm_probability < 1:
        raise ConfigError("mlm_probability", f"got {mlm_probability}, must be in (0, 1)")
    scenario = scenario_of(head)
    head = head_for(arch_name, head)
    # The architecture the method trains: a distillation baseline names its student, others keep arch_name.
    source = get_method(method).starting_model(options, arch_name)

    def rows_of(name: str, model_name: str, method_options: Mapping[str, Any], n_clients: int, tier: Tier = FULL):
        model = meta_arch(model_name, head, num_labels)[0]
        instance = create_method(name, model, rounds, seed, method_options, scenario, tiers or (FULL,))
        tensors = dict(instance.prepare_model(copy.deepcopy(model)).named_parameters())
        # e.g. centralised training pools every client's sequences into one trainer
        arranged = instance.arrange_clients([[{}] * sequences for _ in range(n_clients)])
        arch = instance.arch
        length = arch.num_patches + 1 if arch.vision else seq_len
        settings = ObjectiveSettings(max_length=length, mlm_probability=mlm_probability, masked_only=masked_only)
        predicted = get_objective(head).expected_predicted(len(arranged[0]), len(arranged[0]) * length, settings)
        flops_args = {"sequences": len(arranged[0]), "seq_len": length, "predicted_tokens": predicted, "head": head}
        rounds_costs = [
            _round_costs(instance, tensors, i, len(arranged), flops_args, dtype_bytes, tier) for i in range(rounds)
        ]
        return instance, rounds_costs

    instance, rows = rows_of(method, source, options, clients)
    total = _totals(rows)
    reference = _totals(rows_of("fedavg", arch_name, {}, 1)[1])
    model, attention_heads = meta_arch(source, head, num_labels)
    arch = ModelArch.from_model(model)
    table = {
        "arch": {
            "name": source,
            "layers": arch.num_layers,
            "hidden": arch.hidden_size,
            "heads": attention_heads,
            "ffn": arch.intermediate_size,
            "vocab": arch.vocab_size,
            "params": arch.numel(arch.names),
            **(
                {"image": arch.image_size, "patch": arch.patch_size, "seq_len": arch.num_patches + 1}
                if arch.vision
                else {}
            ),
        },
        "head": head,
        "method": method,
        "options": instance.options_dict(),
        "rounds": rows,
        "total": total,
        "upload_ratio_vs_fedavg": total["upload_bytes"] / reference["upload_bytes"],
        "download_ratio_vs_fedavg": total["download_bytes"] / reference["download_bytes"],
        "flops_ratio_vs_fedavg": total["analytic_flops"] / reference["analytic_flops"],
    }
    if source != arch_name:
        table["fedavg_reference_arch"] = arch_name
    if tiers:
        table["tiers"] = []
        for tier in tiers:
            tier_rows = rows_of(method, source, options, clients, tier)[1]
            tier_total = _totals(tier_rows)
            table["tiers"].append(
                {
                    "name": tier.name,
                    "share": tier.share,
                    "local_layers": tier.local_layers,
                    "width": tier.width,
                    "rounds": tier_rows,
                    "total": tier_total,
                    **{f"{kind}_ratio_vs_fedavg": _ratio(tier_total, reference, kind) for kind in RATIOS},
                }
            )
        mix = {key: sum(t["share"] * t["total"][key] for t in table["tiers"]) for key in RATIOS.values()}
        table["tier_mix"] = {f"{kind}_ratio_vs_fedavg": _ratio(mix, reference, kind) for kind in RATIOS}
    return table


RATIOS = {"upload": "upload_bytes", "download": "download_bytes", "flops": "analytic_flops"}


def _ratio(totals: Mapping[str, float], reference: Mapping[str, float], kind: str) -> float:
    return totals[RATIOS[kind]] / reference[RATIOS[kind]]


# ------------------------------------------------------------------------------ the paper's figures


def compare_paper(scenario: str, rounds: int | None = None, **cost_args: Any) -> list[dict[str, Any]]:
    """Our upload percent of BERT-FL next to the paper's, for the rows of ``scenario`` we can compute.

    Rows whose method is not registered or whose architecture cannot be built are skipped. Ours is the
    total upload of the row's method on its architecture over that of FedAvg on bert-base-uncased, over
    ``rounds`` (default: the paper's rounds of the scenario), with the scenario's head; ``cost_args`` go to
    :func:`cost_table` (e.g. ``clients``, ``num_labels``).
    """
    if scenario not in paper.ROUNDS:
        raise FedBTError(f"unknown scenario {scenario!r}; allowed: {', '.join(paper.ROUNDS)}")
    rounds = rounds or paper.ROUNDS[scenario]
    cost_args = {"head": paper.HEAD[scenario], **cost_args}
    registered = available_methods()
    base = cost_table(paper.BASE_ARCH, "fedavg", rounds, {}, **cost_args)["total"]["upload_params"]
    comparison = []
    for (row_scenario, label), row in paper.COMM.items():
        if row_scenario != scenario or row.arch is None or row.method not in registered:
            continue
        ours = cost_table(row.arch, row.method, rounds, {}, **cost_args)["total"]["upload_params"]
        comparison.append(
            {
                "label": label,
                "method": row.method,
                "arch": row.arch,
                "paper_percent": row.percent,
                "paper_size": row.size,
                "ours_percent": 100 * ours / base,
            }
        )
    return comparison
